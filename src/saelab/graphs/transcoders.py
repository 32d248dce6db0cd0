"""Per-layer MLP transcoders for a replacement model: which hooks they may read and write, checking a
set of them against a model, finding them in folders, and the run entries that train one per layer.

A transcoder replaces the MLP of block ``L`` when it writes ``blocks.L.hook_mlp_out`` (what the block
adds to the residual stream; Gemma 2/3: the output of ``post_feedforward_layernorm``) and reads that
MLP's input at one of ``INPUT_KINDS``:

- ``ln2.hook_normalized``: the output of the MLP's norm, exactly what the MLP reads (the default, as
  in Gemma Scope and circuit-tracer's transcoders); the replacement model freezes that norm's scale;
- ``hook_mlp_in``: the norm's input (resid_mid; resid_pre where attention and MLP run in parallel);
- ``hook_resid_mid``: the same as ``hook_mlp_in`` in sequential blocks (refused for parallel ones,
  whose MLP does not read it).

Skip transcoders (``skip_connection``) are accepted: their linear term ``x @ W_skip`` stays a linear
path of the replacement model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saelab.errors import ConfigError, SaelabError
from saelab.models import LoadedModel
from saelab.models import hook_points as H
from saelab.sae.base import SAE
from saelab.sae.folder import CFG_FILENAME, load_sae
from saelab.splicing import check_sae_fits

INPUT_KINDS: tuple[str, ...] = (H.LN2_NORMALIZED, H.MLP_IN, H.RESID_MID)
DEFAULT_INPUT_KIND = H.LN2_NORMALIZED


class TranscoderSetError(SaelabError):
    """Transcoders that cannot replace the model's MLPs: wrong hooks, missing or repeated layers."""


def transcoder_name(layer: int) -> str:
    """The folder name ``train-transcoders`` gives the transcoder of block ``layer``."""
    return f"mlp{layer}-transcoder"


def transcoder_layer(lm: LoadedModel, sae: SAE) -> int:
    """The block whose MLP ``sae`` replaces, refusing coders that do not read that MLP's input and
    write its output (see the module docstring)."""
    cfg = sae.cfg
    if not cfg.is_transcoder:
        raise TranscoderSetError(
            f"SAE {cfg.name!r} reads and writes {cfg.hook_name!r}: it is not a transcoder; attribution graphs need "
            "transcoders reading blocks.L.ln2.hook_normalized (or hook_mlp_in) and writing blocks.L.hook_mlp_out "
            "(train them with `saelab graph train-transcoders`)")
    sites = check_sae_fits(lm, sae)
    source, target = H.parse_hook_name(sites.source, lm.n_layers), H.parse_hook_name(sites.target, lm.n_layers)
    kinds = [k for k in INPUT_KINDS if not (k == H.RESID_MID and lm.adapter.parallel_attn_mlp)]
    if target.kind != H.MLP_OUT or source.kind not in kinds or source.layer != target.layer:
        raise TranscoderSetError(
            f"transcoder {cfg.name!r} reads {source.name!r} and writes {target.name!r}, which does not replace one MLP; "
            f"a transcoder of block L must write blocks.L.hook_mlp_out and read blocks.L.<one of {', '.join(kinds)}> "
            "of the same block")
    return target.layer


def check_transcoders(lm: LoadedModel, transcoders: Sequence[SAE]) -> list[SAE]:
    """One transcoder per block of ``lm``, in block order; refuses a coder that replaces no MLP, two for one
    block, and missing blocks (naming them)."""
    by_layer: dict[int, SAE] = {}
    for sae in transcoders:
        layer = transcoder_layer(lm, sae)
        if layer in by_layer:
            raise TranscoderSetError(f"transcoders {by_layer[layer].cfg.name!r} and {sae.cfg.name!r} both replace the "
                                     f"MLP of block {layer}; give one transcoder per block")
        by_layer[layer] = sae
    missing = [layer for layer in range(lm.n_layers) if layer not in by_layer]
    if missing:
        have = ", ".join(str(layer) for layer in sorted(by_layer)) or "none"
        raise TranscoderSetError(
            f"the replacement model replaces every MLP, but no transcoder was given for block(s) "
            f"{', '.join(map(str, missing))} of {lm.name} ({lm.n_layers} blocks; transcoders given for: {have}); "
            "train the missing ones (`saelab graph train-transcoders`) or pass their folders")
    return [by_layer[layer] for layer in range(lm.n_layers)]


def transcoder_folders(paths: Sequence[str | Path]) -> list[Path]:
    """SAE folders named by ``paths``: an SAE folder itself (holding cfg.json), a training run (its
    ``saes/`` folders) or a folder of SAE folders."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / CFG_FILENAME).is_file():
            found.append(path)
            continue
        base = path / "saes" if (path / "saes").is_dir() else path
        if not base.is_dir():
            raise ConfigError(f"transcoder folder {str(path)!r} does not exist; give SAE folders, a training run "
                              "folder or a folder of SAE folders")
        inner = sorted(p for p in base.iterdir() if (p / CFG_FILENAME).is_file())
        if not inner:
            raise ConfigError(f"{str(path)!r} holds no SAE folder (no cfg.json in it or in its sub-folders)")
        found += inner
    return found


def load_transcoders(lm: LoadedModel, paths: Sequence[str | Path], device: str | None = None) -> tuple[list[SAE], list[str]]:
    """The transcoders in ``paths`` (see ``transcoder_folders``), checked and in block order, with their folders."""
    folders = transcoder_folders(paths)
    saes = [load_sae(folder, device=device or str(lm.device)) for folder in folders]
    where = {id(sae): str(folder) for sae, folder in zip(saes, folders, strict=True)}
    ordered = check_transcoders(lm, saes)
    return ordered, [where[id(sae)] for sae in ordered]


def training_entries(lm: LoadedModel, *, architecture: str = "topk", d_sae: int | None = None,
                     input_kind: str = DEFAULT_INPUT_KIND, skip_connection: bool = False,
                     options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Partial SAE configs (``saelab.train.run_spec.RunSpec.create``) of one transcoder per block of ``lm``,
    reading ``input_kind`` and writing ``hook_mlp_out``; ``options``: the architecture's own (e.g. ``k``)."""
    if input_kind not in INPUT_KINDS or (input_kind == H.RESID_MID and lm.adapter.parallel_attn_mlp):
        raise ConfigError(f"input kind {input_kind!r} is not accepted for {lm.name}; choose one of: "
                          f"{', '.join(k for k in INPUT_KINDS if k != H.RESID_MID or not lm.adapter.parallel_attn_mlp)}")
    return [{"architecture": architecture, "hook_name": f"blocks.{layer}.{input_kind}",
             "hook_name_out": f"blocks.{layer}.{H.MLP_OUT}", "d_sae": d_sae, "skip_connection": skip_connection,
             "name": transcoder_name(layer), **(options or {})} for layer in range(lm.n_layers)]
