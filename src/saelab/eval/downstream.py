"""Downstream fidelity: next-token cross-entropy and KL divergence of spliced runs against the clean one.

Per scored prediction (position t predicting token t+1, both ordinary tokens, i.e. not BOS/EOS/PAD):
CE = −log p(token_{t+1}), KL = Σ_v p_clean(v) (log p_clean(v) − log p_run(v)). Over the evaluation set:

- ``delta_loss`` = CE_spliced − CE_clean (Gemma Scope's primary metric)
- ``ce_loss_recovered`` = (CE_zero − CE_spliced) / (CE_zero − CE_clean), zero-ablation of the hook as
  the baseline; ``ce_loss_recovered_mean_ablation`` with the hook's evaluation-set mean instead
- ``kl_recovered`` = (KL_zero − KL_spliced) / KL_zero (KL_clean = 0), and the mean-ablation analogue
- ``ce_with_error``, ``kl_with_error``, ``error_term_max_logit_diff``: the SAE spliced with its error
  term added back, which must equal the clean run (up to float rounding)

A recovered fraction whose baseline does not change the loss (zero denominator) is None.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.eval.metrics import ratio


def scored_predictions(ordinary: Tensor) -> Tensor:
    """``[batch, pos - 1]`` bool from ``ordinary [batch, pos]``: entry t is True when token t and the
    token t+1 it predicts are both ordinary (not special) tokens."""
    return ordinary[:, :-1] & ordinary[:, 1:]


def next_token_log_probs(logits: Tensor) -> Tensor:
    """``[batch, pos - 1, d_vocab]`` float32 log-probabilities of the predictions at positions 0..pos-2."""
    return F.log_softmax(logits[:, :-1].float(), dim=-1)


def cross_entropy(log_probs: Tensor, input_ids: Tensor) -> Tensor:
    """``[batch, pos - 1]``: −log p(input_ids[:, t+1]) from ``log_probs [batch, pos - 1, d_vocab]``."""
    return -log_probs.gather(-1, input_ids[:, 1:, None].to(log_probs.device)).squeeze(-1)


def kl_divergence(clean_log_probs: Tensor, log_probs: Tensor) -> Tensor:
    """``[batch, pos - 1]``: KL(p_clean ‖ p) per prediction."""
    return (clean_log_probs.exp() * (clean_log_probs - log_probs)).sum(-1).clamp_min(0.0)


class LossSums:
    """Sums of CE and KL over the scored predictions of one kind of run (clean, spliced, ablated)."""

    def __init__(self) -> None:
        self.ce = 0.0
        self.kl = 0.0
        self.n = 0
        self.max_logit_diff = 0.0

    @torch.no_grad()
    def add(self, log_probs: Tensor, input_ids: Tensor, scored: Tensor, clean_log_probs: Tensor | None = None,
            logit_diff: Tensor | None = None) -> None:
        """Add one batch: ``log_probs [batch, pos-1, d_vocab]`` of this run, ``scored [batch, pos-1]``;
        KL against ``clean_log_probs`` when given; ``logit_diff [batch, pos-1]`` (max |Δlogit| per
        prediction) to track the largest difference from the clean logits."""
        scored = scored.to(log_probs.device)
        self.ce += float(cross_entropy(log_probs, input_ids)[scored].double().sum())
        if clean_log_probs is not None:
            self.kl += float(kl_divergence(clean_log_probs, log_probs)[scored].double().sum())
        if logit_diff is not None and bool(scored.any()):
            self.max_logit_diff = max(self.max_logit_diff, float(logit_diff[scored].max()))
        self.n += int(scored.sum())

    @property
    def mean_ce(self) -> float:
        return self.ce / self.n

    @property
    def mean_kl(self) -> float:
        return self.kl / self.n


def downstream_metrics(clean: LossSums, spliced: LossSums, zero: LossSums, mean: LossSums,
                       with_error: LossSums | None = None) -> dict[str, float | None]:
    """The metrics of the module docstring from the sums of each run (same scored predictions)."""
    ce_clean, ce_sae = clean.mean_ce, spliced.mean_ce
    ce_zero, ce_mean = zero.mean_ce, mean.mean_ce
    out: dict[str, float | None] = {
        "ce_clean": ce_clean,
        "ce_spliced": ce_sae,
        "delta_loss": ce_sae - ce_clean,
        "ce_zero_ablation": ce_zero,
        "ce_mean_ablation": ce_mean,
        "ce_loss_recovered": ratio(ce_zero - ce_sae, ce_zero - ce_clean),
        "ce_loss_recovered_mean_ablation": ratio(ce_mean - ce_sae, ce_mean - ce_clean),
        "kl": spliced.mean_kl,
        "kl_zero_ablation": zero.mean_kl,
        "kl_mean_ablation": mean.mean_kl,
        "kl_recovered": ratio(zero.mean_kl - spliced.mean_kl, zero.mean_kl),
        "kl_recovered_mean_ablation": ratio(mean.mean_kl - spliced.mean_kl, mean.mean_kl),
    }
    if with_error is not None:
        out.update(ce_with_error=with_error.mean_ce, kl_with_error=with_error.mean_kl,
                   error_term_max_logit_diff=with_error.max_logit_diff)
    return out
