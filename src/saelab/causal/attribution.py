"""Attribution patching for SAE latents: a first-order estimate of what patching each latent at each
position from a counterfactual run would do to a metric, for all of them from one backward pass.

    attr = attribute_latents(lm, sae, clean_ids, cf_ids, metric)    # attr.scores [batch, pos, d_sae]
    real = patch_effects(lm, sae, clean_ids, cf_ids, metric, cells)  # the same cells, really patched

With the SAE spliced with its error term held fixed (x = decode(f) + ε), the metric m is a function of
the latents f; patching latent i at position p from the counterfactual changes m by about
(f_cf[p, i] − f_clean[p, i]) · ∂m/∂f[p, i] (Nanda's attribution patching; Marks et al. 2024 for SAE
latents). ``patch_effects`` measures the true change by patching each cell alone, so the estimate can
be checked on a sample (``spearman``).

Metrics map logits ``[batch, pos, d_vocab]`` to one value per prompt ``[batch]``:
``logit_diff_metric(final, answer, wrong)``, ``logprob_metric(final, target)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saelab.causal.edits import InterventionError, patch_from
from saelab.models import LoadedModel
from saelab.models.hooking import EditFn
from saelab.sae.base import SAE
from saelab.splicing import Splice, check_sae_fits, hook_latents, run_spliced, splice_edits

Metric = Callable[[Tensor], Tensor]


def logit_diff_metric(final: Tensor, answer: Tensor, wrong: Tensor) -> Metric:
    """logit(answer) − logit(wrong) at each prompt's ``final`` position (all ``[batch]``)."""

    def metric(logits: Tensor) -> Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        last = logits[rows, final.to(logits.device)].float()
        return last[rows, answer.to(logits.device)] - last[rows, wrong.to(logits.device)]

    return metric


def logprob_metric(final: Tensor, target: Tensor) -> Metric:
    """log p(target) at each prompt's ``final`` position."""

    def metric(logits: Tensor) -> Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        return torch.log_softmax(logits[rows, final.to(logits.device)].float(), -1)[rows, target.to(logits.device)]

    return metric


@dataclass
class Attribution:
    """scores: ``[batch, pos, d_sae]`` estimated metric change of patching each latent at each position;
    gradient: ∂m/∂f; clean_acts / cf_acts: the two runs' latents; metric_clean: ``[batch]``."""

    scores: Tensor
    gradient: Tensor
    clean_acts: Tensor
    cf_acts: Tensor
    metric_clean: Tensor

    def top_cells(self, k: int) -> list[tuple[int, int, int]]:
        """The ``k`` (prompt, position, latent) cells with the largest |score|."""
        flat = self.scores.abs().flatten()
        k = min(k, int((flat > 0).sum()))
        index = torch.topk(flat, k).indices
        return [tuple(int(v) for v in np.unravel_index(int(i), tuple(self.scores.shape))) for i in index]


def _check_pair(clean_ids: Tensor, cf_ids: Tensor) -> None:
    if tuple(clean_ids.shape) != tuple(cf_ids.shape):
        raise InterventionError(f"clean prompts {tuple(clean_ids.shape)} and counterfactual prompts "
                                f"{tuple(cf_ids.shape)} must have the same [batch, pos]; patching needs prompts of "
                                "equal token length")


class _LatentProbe:
    """A splice edit that keeps the latents ``[batch, pos, d_sae]`` but makes them the leaf the metric is
    differentiated by: with the error term, the target's value is y + decode(leaf) − decode(acts), so
    its value is y and its gradient flows to the latents only."""

    acts: Tensor | None = None

    def check(self, d_sae: int) -> None:
        """Any width fits."""

    def apply(self, acts: Tensor, spliced: Tensor) -> Tensor:
        self.acts = acts.detach().requires_grad_(True)
        return self.acts


def _detached(edit: EditFn) -> EditFn:
    """``edit`` applied to the hook's value cut from the graph: no gradient flows upstream through it."""

    def run(value: Tensor) -> Tensor | None:
        return edit(value.detach())

    return run


def attribute_latents(lm: LoadedModel, sae: SAE, clean_ids: Tensor, cf_ids: Tensor, metric: Metric,
                      hook: str | None = None, attention_mask: Tensor | None = None) -> Attribution:
    """Attribution scores of every latent at every position (one clean forward and backward, one
    counterfactual forward)."""
    hook = check_sae_fits(lm, sae, hook).source
    clean_ids, cf_ids = lm.as_input_ids(clean_ids), lm.as_input_ids(cf_ids)
    _check_pair(clean_ids, cf_ids)
    cf_acts = hook_latents(lm, sae, cf_ids, hook, attention_mask)
    probe = _LatentProbe()
    edits = {name: _detached(fn) for name, fn in
             splice_edits(lm, [Splice(sae, add_error=True, edits=[probe], hook=hook)]).items()}
    sae_grads = [p.requires_grad for p in sae.parameters()]
    sae.requires_grad_(False)
    try:
        logits = lm.run_with_hooks(clean_ids, edits, attention_mask=attention_mask, grad=True)
        values = metric(logits)
        values.sum().backward()
    finally:
        for p, flag in zip(sae.parameters(), sae_grads, strict=True):
            p.requires_grad_(flag)
    acts = probe.acts
    gradient = acts.grad.detach()
    clean_acts = acts.detach()
    return Attribution((cf_acts - clean_acts) * gradient, gradient, clean_acts, cf_acts, values.detach())


@torch.no_grad()
def patch_effects(lm: LoadedModel, sae: SAE, clean_ids: Tensor, cf_ids: Tensor, metric: Metric,
                  cells: Sequence[tuple[int, int, int]], hook: str | None = None,
                  attention_mask: Tensor | None = None) -> Tensor:
    """``[len(cells)]`` true metric changes of patching each (prompt, position, latent) cell alone from
    the counterfactual into the clean run (SAE spliced with its error term; one batch forward per cell,
    so ``metric`` sees the whole batch it was built for)."""
    hook = check_sae_fits(lm, sae, hook).source
    clean_ids, cf_ids = lm.as_input_ids(clean_ids), lm.as_input_ids(cf_ids)
    _check_pair(clean_ids, cf_ids)
    cf_acts = hook_latents(lm, sae, cf_ids, hook, attention_mask)
    batch, seq_len = clean_ids.shape
    base = metric(run_spliced(lm, clean_ids, [Splice(sae, add_error=True, hook=hook)], attention_mask))
    effects = []
    for prompt, position, latent in cells:
        if not (0 <= prompt < batch and -seq_len <= position < seq_len and 0 <= latent < sae.cfg.d_sae):
            raise InterventionError(f"cell (prompt {prompt}, position {position}, latent {latent}) is out of range; "
                                    f"accepted: prompt 0..{batch - 1}, position {-seq_len}..{seq_len - 1}, latent "
                                    f"0..{sae.cfg.d_sae - 1}")
        where = torch.zeros(batch, seq_len, dtype=torch.bool)
        where[prompt, position] = True
        splice = Splice(sae, add_error=True, hook=hook, edits=[patch_from(cf_acts, latent, where)])
        patched = metric(run_spliced(lm, clean_ids, [splice], attention_mask))
        effects.append(float(patched[prompt] - base[prompt]))
    return torch.tensor(effects)


def spearman(a: Sequence[float] | Tensor, b: Sequence[float] | Tensor) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size < 2:
        raise InterventionError(f"spearman needs two sequences of equal length >= 2; got {a.shape} and {b.shape}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):
        tied = v == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks
