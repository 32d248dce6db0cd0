"""Feature families on the toy world: which planted variable a latent follows.

For a latent ``f`` and a labelled variable ``V`` (over the non-special tokens of labelled windows),
let ``m_v`` be the share of ``f``'s total activation on tokens with ``V = v`` and ``p_v`` the share of
tokens with ``V = v``. The latent's *specificity* for ``V`` is ``max_v (m_v − p_v) / (1 − p_v)``: 1 when
all its activation sits on one value, 0 when it is spread like the tokens. Families:

- ``induction``: variable ``induction``, value True (the token continues an earlier repeated span,
  random or prose, so copying predicts it);
- ``short_range_context``: variable ``role``, the token's *syntactic* role in its sentence. Tokens of
  random spans (role ``random``) have no syntax: ``random`` is never a candidate value, and activation
  on those tokens counts against every role;
- ``long_range_context``: variable ``topic`` (the document's topic, constant over the document).

A latent firing on at least ``min_fires`` tokens is an induction latent when its induction
specificity reaches ``threshold`` (default 0.5): copying is the more specific explanation, since a
latent that fired on a role or a topic wherever it occurs could not put most of its activation on
the few copy-predictable tokens. Otherwise it joins the context family with the higher specificity
when that reaches ``threshold``, else ``unclassified``. Rarer latents are ``rare``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saelab.errors import SaelabError, check_range

FAMILY_VARIABLES: dict[str, str] = {
    "induction": "induction", "short_range_context": "role", "long_range_context": "topic",
}
UNCLASSIFIED, RARE = "unclassified", "rare"
NOT_A_SYNTAX_ROLE = "random"
"""The ``role`` of random-span tokens (``saelab.toy.corpus``): excluded from short-range context."""


@dataclass
class LatentFamily:
    family: str
    value: str
    specificity: dict[str, float]
    fires: int


def specificity(acts: Tensor, values: np.ndarray, only: object = None,
                exclude: tuple = ()) -> tuple[Tensor, list]:
    """``acts [n_tokens, d_sae]`` (non-negative), ``values [n_tokens]`` -> (``[d_sae]`` best specificity,
    ``[d_sae]`` the value achieving it). ``only``: consider that value alone (e.g. True); ``exclude``:
    values never chosen (their tokens still count in each latent's total activation)."""
    uniques = [only] if only is not None else sorted(set(values.tolist()) - set(exclude), key=str)
    total = acts.sum(0).clamp_min(1e-30)
    best = torch.full((acts.shape[1],), -float("inf"), dtype=torch.float64)
    best_value: list = [None] * acts.shape[1]
    for v in uniques:
        mask = torch.from_numpy(values == v)
        p = float(mask.float().mean())
        if p >= 1.0 or p == 0.0:
            continue
        m = acts[mask].sum(0) / total
        score = ((m - p) / (1 - p)).double()
        better = score > best
        best = torch.where(better, score, best)
        for i in better.nonzero().flatten().tolist():
            best_value[i] = v
    return best, best_value


def classify_latents(acts: Tensor, labels: dict[str, np.ndarray], min_fires: int = 5,
                     threshold: float = 0.5) -> list[LatentFamily]:
    """Family of every latent from ``acts [n_tokens, d_sae]`` and ``labels[name] [n_tokens]`` (the
    non-special tokens of labelled windows)."""
    check_range("min_fires", min_fires, 1, integer=True)
    check_range("threshold", threshold, 0, 1)
    missing = [v for v in FAMILY_VARIABLES.values() if v not in labels]
    if missing:
        raise SaelabError(f"feature families need the toy world's labels {sorted(FAMILY_VARIABLES.values())}; "
                          f"missing: {missing}")
    acts = acts.float().clamp_min(0)
    fires = (acts > 0).sum(0)
    scores, values = {}, {}
    for family, var in FAMILY_VARIABLES.items():
        only = True if var == "induction" else None
        exclude = (NOT_A_SYNTAX_ROLE,) if var == "role" else ()
        scores[family], values[family] = specificity(acts, np.asarray(labels[var]), only, exclude)
    out = []
    for f in range(acts.shape[1]):
        spec = {fam: round(float(scores[fam][f]), 4) for fam in FAMILY_VARIABLES}
        if int(fires[f]) < min_fires:
            out.append(LatentFamily(RARE, "", spec, int(fires[f])))
            continue
        context = {fam: spec[fam] for fam in FAMILY_VARIABLES if fam != "induction"}
        family = "induction" if spec["induction"] >= threshold else max(context, key=context.get)
        if spec[family] < threshold:
            out.append(LatentFamily(UNCLASSIFIED, "", spec, int(fires[f])))
        else:
            out.append(LatentFamily(family, str(values[family][f]), spec, int(fires[f])))
    return out


def family_counts(families: list[LatentFamily]) -> dict[str, int]:
    """How many latents fall in each family (every family listed, zeros included)."""
    names = [*FAMILY_VARIABLES, UNCLASSIFIED, RARE]
    return {name: sum(1 for f in families if f.family == name) for name in names}
