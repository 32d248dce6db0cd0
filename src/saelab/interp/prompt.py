"""Prompt-centric view: for any text, the latents most active at each token."""

from __future__ import annotations

import torch

from saelab.errors import check_range
from saelab.interp.site import check_site, encode_windows
from saelab.interp.tokens import TokenNames
from saelab.models import LoadedModel
from saelab.sae import SAE


def prompt_features(lm: LoadedModel, sae: SAE, hook: str, text: str, k: int = 5,
                    prepend_bos: bool = True) -> list[dict]:
    """Per token of ``text``: ``{"token", "position", "latents": [(index, activation)]}`` with the ``k``
    most active latents (non-zero only; none at special tokens)."""
    check_range("k", k, 1, None, integer=True)
    check_site(lm, sae, hook)
    ids, _ = lm.tokenize(text, prepend_bos=prepend_bos)
    acts = encode_windows(lm, sae, hook, ids)[0]                              # [pos, d_sae]
    values, indices = acts.topk(min(k, acts.shape[-1]), dim=-1)
    names = TokenNames(lm)
    rows = []
    for pos, token_id in enumerate(ids[0].tolist()):
        keep = values[pos] > 0
        rows.append({"token": names.name(token_id), "position": pos,
                     "latents": [(int(i), round(float(v), 4)) for i, v in
                                 zip(indices[pos][keep], values[pos][keep], strict=False)]})
    return rows


def top_latents_for_prompt(lm: LoadedModel, sae: SAE, hook: str, text: str, k: int = 10) -> list[tuple[int, float]]:
    """The ``k`` latents with the largest maximum activation anywhere in ``text``."""
    check_site(lm, sae, hook)
    ids, _ = lm.tokenize(text)
    peak = encode_windows(lm, sae, hook, ids)[0].max(0).values               # [d_sae]
    values, indices = torch.topk(peak, min(k, peak.shape[0]))
    return [(int(i), round(float(v), 4)) for i, v in zip(indices, values, strict=False) if v > 0]
