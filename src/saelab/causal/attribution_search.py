"""Attribution-guided search for the feature-patching curve: the greedy search's stand-in for large
models on small machines.

The greedy search (``patching_experiment``) measures the KL after removing each patched component
alone, at every threshold: about ``n_components / chunk`` batched forward passes per round, hundreds
per curve, which on Gemma 3 270M on two CPU cores is hours per basis. This search spends one forward
and backward pass per round instead, plus one batched pass of exact measurements:

For each threshold τ (ascending; the patched set carries over), repeat at most ``ROUNDS`` times:
1. Estimate every patched component's removal effect to first order (attribution patching, Syed et al.
   2023): with the patch mask ``m`` relaxed to reals, removing component i changes the KL by about
   ``−∂KL/∂m_i``.
2. Order the patched components by that estimate, smallest first.
3. Measure the exact KL after removing the first ``L`` of them, for a ladder of prefix lengths
   ``L`` (geometric, ``chunk`` of them, one batched pass).
4. Keep the longest prefix whose exact KL exceeds the current KL by less than τ. Stop when none does.

Every reported point is an exact measurement: its KL is measured, with exactly the components it
counts patched. Only the choice of which sets to measure is approximate, so its sets differ from
the greedy search's. The threshold also means something slightly different: the greedy search caps
each single removal's increase at τ, this search caps each round's total increase. Compare bases
only under the same search; ``tests/test_causal_patching.py`` compares the two on the toy model.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.causal.patching_experiment import BasisCurve, BasisPatcher, start_curve

ROUNDS = 3


def prefix_ladder(n: int, rungs: int) -> list[int]:
    """Up to ``rungs`` distinct prefix lengths in ``1..n``, geometrically spaced, always ending at ``n``."""
    if n <= 0:
        return []
    return sorted({int(round(v)) for v in np.geomspace(1, n, min(rungs, n))} | {n})


def attribution_round(patcher: BasisPatcher, patched: torch.Tensor, tau: float) -> tuple[float, int]:
    """One round of the search at ``tau`` (module docstring): un-patches the chosen prefix in
    ``patched`` ``[k]`` (bool, updated in place); returns the new KL and how many were removed."""
    kl_now, grad = patcher.kl_and_gradient(patched)
    index = patched.nonzero().squeeze(1)
    order = index[torch.argsort(-grad[index])]  # smallest estimated increase (−grad) first
    head, rest = order[:patcher.run.chunk], order[patcher.run.chunk:]
    singles = patched[None].repeat(len(head), 1)
    singles[torch.arange(len(head)), head] = False
    order = torch.cat([head[torch.argsort(patcher.kl(singles))], rest])  # the front re-ranked by exact effect
    lengths = prefix_ladder(len(order), patcher.run.chunk)
    masks = patched[None].repeat(len(lengths), 1)
    for row, length in enumerate(lengths):
        masks[row, order[:length]] = False
    kls = patcher.kl(masks).tolist()
    best = max((row for row, kl in enumerate(kls) if kl - kl_now < tau), key=lambda row: lengths[row], default=None)
    if best is None:
        return kl_now, 0
    patched[order[:lengths[best]]] = False
    return kls[best], lengths[best]


def attribution_curve(patcher: BasisPatcher, thresholds: np.ndarray, progress: bool = False) -> BasisCurve:
    """The patching curve of one basis by the attribution-guided search (module docstring)."""
    curve, patched, kl_now = start_curve(patcher)
    for tau in tqdm(thresholds, desc=f"attribution {patcher.basis.name}", disable=not progress, leave=False):
        for _ in range(ROUNDS):
            if not patched.any():
                break
            kl_next, removed = attribution_round(patcher, patched, float(tau))
            if not removed:
                break
            kl_now = kl_next
        curve.points.append({"threshold": float(tau), "n_patched": int(patched.sum()), "kl": kl_now})
    curve.forward_sets = patcher.forward_sets
    return curve
