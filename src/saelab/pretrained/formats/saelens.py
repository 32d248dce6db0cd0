"""SAELens folders (``cfg.json`` + ``sae_weights.safetensors`` [+ ``sparsity.safetensors``]), as SAELens
and saelab both write them: delegated to ``saelab.sae.folder``, which maps every SAELens architecture
onto the saelab class that computes the same function (standard -> relu, topk, jumprelu, gated,
transcoders; pre-6 ``activation_fn_str: topk`` -> topk) and restores saelab's own architectures
(batchtopk, matryoshka_batchtopk, tied, TopK transcoders) from the folder's ``saelab`` section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saelab.pretrained.formats.common import Converted, FormatSpec, Hints
from saelab.sae import load_sae_with_info, save_sae
from saelab.sae.folder import CFG_FILENAME, SPARSITY_FILENAME, WEIGHTS_FILENAME


def read(folder: Path, hints: Hints) -> Converted:
    """A SAELens/saelab folder -> its SAE (hook names from the hints when the folder has none)."""
    sae, info = load_sae_with_info(folder)
    changes: dict[str, Any] = {}
    if hints.name:
        changes["name"] = hints.name
    if hints.hook_name and not sae.cfg.hook_name:
        changes["hook_name"] = hints.hook_name
        if not sae.cfg.is_transcoder:
            changes["hook_name_out"] = hints.hook_name
    if changes:
        sae.cfg = sae.cfg.replace(**changes)
    metadata = {k: v for k, v in info.metadata.items() if v is not None}
    if hints.model:
        metadata.setdefault("model_name", hints.model)
    metadata.update(source_format="saelens", layout=info.layout)
    return Converted(sae, list(info.notes), metadata, info.sparsity)


def write(item: Converted, folder: Path) -> Path:
    """``save_sae`` with the metadata in cfg.json (its SAELens keys in the metadata block) and the sparsity."""
    return save_sae(item.sae, folder, extra_meta=item.metadata, sparsity=item.sparsity)


FORMAT = FormatSpec(
    name="saelens", description="SAELens / saelab folder: cfg.json + sae_weights.safetensors (every architecture)",
    required=(CFG_FILENAME, WEIGHTS_FILENAME), optional=(SPARSITY_FILENAME,), read=read, write=write,
    writes=("every",))
