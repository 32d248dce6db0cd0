"""Downstream fidelity: next-token cross-entropy and KL divergence of spliced runs against the clean one.

Per scored prediction (position t predicting token t+1, both ordinary tokens, i.e. not BOS/EOS/PAD):
CE = −log p(token_{t+1}), KL = Σ_v p_clean(v) (log p_clean(v) − log p_run(v)). Over the evaluation set:

- ``delta_loss`` = CE_spliced − CE_clean (Gemma Scope's primary metric)
- ``ce_loss_recovered`` = (CE_zero − CE_spliced) / (CE_zero − CE_clean), zero-ablation of the hook as
  the baseline; ``ce_loss_recovered_mean_ablation`` with the hook's evaluation-set mean instead
- ``kl_recovered`` = (KL_zero − KL_spliced) / KL_zero (KL_clean = 0), and the mean-ablation analogue
- ``ce_with_error``, ``kl_with_error``, ``error_term_max_logit_diff``: the SAE spliced with its error
  term added back, which must equal the clean run (up to float rounding)

A recovered fraction whose baseline does not change the loss (zero denominator) is None. Scoring
(``score_runs``) reads final-normed residuals and forms logits in chunks of predictions, so a
262k-token vocabulary costs one chunk of float32 logits per run at a time, never ``[batch, pos, d_vocab]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def kl_divergence(clean_log_probs: Tensor, log_probs: Tensor) -> Tensor:
    """``[...]``: KL(p_clean ‖ p) per prediction from log-probabilities ``[..., d_vocab]``."""
    return (clean_log_probs.exp() * (clean_log_probs - log_probs)).sum(-1).clamp_min(0.0)


class LossSums:
    """Sums of CE and KL over the scored predictions of one kind of run (clean, spliced, ablated)."""

    def __init__(self) -> None:
        self.ce = 0.0
        self.kl = 0.0
        self.n = 0
        self.max_logit_diff = 0.0

    @torch.no_grad()
    def add(self, log_probs: Tensor, targets: Tensor, clean_log_probs: Tensor | None = None,
            logit_diff: Tensor | None = None) -> None:
        """Add scored predictions: ``log_probs [n, d_vocab]`` of this run, ``targets [n]`` the tokens
        predicted; KL against ``clean_log_probs [n, d_vocab]`` when given; ``logit_diff [n]`` (max
        |Δlogit| per prediction) to track the largest difference from the clean logits."""
        targets = targets.to(log_probs.device)
        self.ce += float(-log_probs.gather(-1, targets[:, None]).double().sum())
        if clean_log_probs is not None:
            self.kl += float(kl_divergence(clean_log_probs, log_probs).double().sum())
        if logit_diff is not None and logit_diff.numel():
            self.max_logit_diff = max(self.max_logit_diff, float(logit_diff.max()))
        self.n += int(targets.numel())

    @property
    def mean_ce(self) -> float:
        return self.ce / self.n

    @property
    def mean_kl(self) -> float:
        return self.kl / self.n


#: float32 logits held at once per run while scoring: ``chunk rows x d_vocab`` values (256 MiB)
LOGIT_CHUNK_VALUES = 1 << 26


@dataclass
class ScoredRun:
    """One run to score against the clean one: its final-normed residual ``[batch, pos, d_model]``,
    the sums it adds to, and whether to track its largest logit difference from the clean run."""

    resid: Tensor
    sums: LossSums
    track_logit_diff: bool = False


@torch.no_grad()
def score_runs(unembed: Callable[[Tensor], Tensor], d_vocab: int, input_ids: Tensor, scored: Tensor,
               clean_resid: Tensor, clean: LossSums, runs: list[ScoredRun],
               chunk_values: int = LOGIT_CHUNK_VALUES) -> None:
    """CE of the clean run and CE/KL of every run in ``runs`` at the ``scored [batch, pos-1]``
    predictions, from final-normed residuals (``LoadedModel.run_to_unembed``). Logits are formed
    ``chunk_values // d_vocab`` predictions at a time, each run's once, so memory does not grow with
    batch, context or the number of runs."""
    where = scored.to(clean_resid.device)
    targets = input_ids[:, 1:].to(clean_resid.device)[where]
    clean_rows = clean_resid[:, :-1][where]
    rows = [r.resid[:, :-1].to(clean_resid.device)[where] for r in runs]
    step = max(1, chunk_values // d_vocab)
    for start in range(0, len(targets), step):
        stop = min(len(targets), start + step)
        clean_logits = unembed(clean_rows[start:stop]).float()
        clean_lp = F.log_softmax(clean_logits, dim=-1)
        clean.add(clean_lp, targets[start:stop])
        for run, run_rows in zip(runs, rows, strict=True):
            logits = unembed(run_rows[start:stop]).float()
            diff = (logits - clean_logits).abs().amax(-1) if run.track_logit_diff else None
            run.sums.add(F.log_softmax(logits, dim=-1), targets[start:stop], clean_lp, logit_diff=diff)
            del logits


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
