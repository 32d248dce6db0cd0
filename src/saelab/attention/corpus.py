"""Token windows to study latents on, and the latents' activations over them.

- ``toy_windows(n_docs, seed, context)``: BOS + the first ``context - 1`` tokens of toy documents,
  with the corpus's ground-truth labels aligned per position (BOS gets empty labels).
- ``source_windows(lm, spec, n_windows, context)``: windows of any text source
  (``saelab.data.open_source``), without labels.
- ``latent_activations(asae, ids)``: ``[n, pos, d_sae]`` SAE latents at every position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.attention.geometry import AttentionSAE
from saelab.errors import SaelabError, check_range
from saelab.models import LoadedModel


@dataclass
class Windows:
    """ids: ``[n, pos]`` token ids; labels: name -> ``[n, pos]`` numpy arrays (toy world only); special:
    ``[n, pos]`` bool, True at BOS/EOS/PAD (never counted as examples)."""

    ids: Tensor
    special: Tensor
    labels: dict[str, np.ndarray] = field(default_factory=dict)


def toy_windows(lm: LoadedModel, n_docs: int = 64, seed: int = 1, context: int = 128) -> Windows:
    """Labelled toy documents (seed 1 by default: not the stream SAEs are trained on, seed 0)."""
    from saelab.toy.corpus import LABEL_NAMES, iter_documents

    check_range("n_docs", n_docs, 1, integer=True)
    check_range("context", context, 2, integer=True)
    if lm.bos_token_id is None:
        raise SaelabError(f"{lm.name} has no BOS token; the toy windows need the toy model")
    rows, labels = [], {name: [] for name in LABEL_NAMES}
    for doc in iter_documents(seed):
        if len(rows) == n_docs:
            break
        words = doc.words[:context - 1]
        if len(words) < context - 1:
            continue
        ids = lm.tokenizer.convert_tokens_to_ids(words)
        if any(i is None or i == lm.tokenizer.unk_token_id for i in ids):
            raise SaelabError(f"{lm.name}'s tokenizer does not know the toy vocabulary; use the toy model")
        rows.append([lm.bos_token_id, *ids])
        for name in LABEL_NAMES:
            labels[name].append(["" if name != "induction" else False, *doc.labels[name][:context - 1]])
    ids = torch.tensor(rows, dtype=torch.long)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    return Windows(ids, special, {k: np.array(v) for k, v in labels.items()})


def source_windows(lm: LoadedModel, spec: str, n_windows: int = 64, context: int = 128) -> Windows:
    """Unlabelled windows of the text source ``spec`` (see ``saelab.data.open_source``)."""
    from saelab.data import PackingConfig, iter_windows, open_source, special_token_mask

    check_range("n_windows", n_windows, 1, integer=True)
    if lm.tokenizer is None:
        raise SaelabError(f"{lm.name} has no tokenizer; text sources need one")
    stream = iter_windows(open_source(spec), lm.tokenizer, PackingConfig(context_size=context), lm.bos_token_id,
                          lm.eos_token_id)
    rows = [w for _, w in zip(range(n_windows), stream, strict=False)]
    if not rows:
        raise SaelabError(f"text source {spec!r} gave no windows of {context} tokens")
    ids = np.stack(rows).astype(np.int64)
    return Windows(torch.from_numpy(ids), torch.from_numpy(special_token_mask(ids, lm.special_token_ids)))


@torch.no_grad()
def latent_activations(asae: AttentionSAE, ids: Tensor, batch_size: int = 16, progress: bool = False) -> Tensor:
    """``[n, pos, d_sae]`` latent activations (float32) of ``asae`` on ``ids [n, pos]``."""
    hook = asae.hook_name
    out = []
    for start in tqdm(range(0, ids.shape[0], batch_size), desc="SAE activations", disable=not progress):
        _, cache = asae.lm.run_with_cache(ids[start:start + batch_size], [hook], stop_at_layer="auto")
        z = cache[hook]
        flat = z.reshape(*z.shape[:2], -1).to(asae.sae.W_dec.dtype)
        out.append(asae.sae.encode(flat).float().cpu())
    return torch.cat(out)
