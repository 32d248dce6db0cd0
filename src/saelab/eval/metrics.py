"""Reconstruction and sparsity metrics of an SAE, accumulated exactly over a stream of batches.

For N evaluation tokens with activations ``x [N, d_in]``, reconstructions ``x̂ [N, d_in]`` and
latents ``f [N, d_sae]``:

- ``l0`` = mean_t #{i : f_ti ≠ 0};  ``l1`` = mean_t Σ_i |f_ti|
- ``mse`` = mean over tokens and dimensions of (x − x̂)² (per element, as SAELens and SAEBench report)
- ``fvu`` = Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − x̄‖², with x̄ the mean over the *whole* evaluation set
  (merged across batches with Chan's update, so it is not a per-batch variance and not a variance
  about zero; SAELens issue #659); ``explained_variance`` = 1 − fvu
- ``cosine`` = mean_t cos(x_t, x̂_t);  ``l2_ratio`` = mean_t ‖x̂_t‖ / ‖x_t‖
- ``relative_reconstruction_bias`` γ = E‖x̂‖² / E[x · x̂] (Rajamanoharan et al. 2024; 1 = no shrinkage)

Ratios whose denominator is zero (a constant evaluation set, x̂ ⟂ x) are reported as None, never NaN.
Sums are kept in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from saelab.errors import SaelabError

RECONSTRUCTION_KEYS = ("l0", "l1", "mse", "fvu", "explained_variance", "cosine", "l2_ratio",
                       "relative_reconstruction_bias")


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None when the denominator is zero or either is not finite."""
    if denominator == 0 or not math.isfinite(numerator) or not math.isfinite(denominator):
        return None
    return numerator / denominator


class ReconstructionStats:
    """Running sums for the metrics above; ``update`` per batch, ``result`` at the end."""

    def __init__(self, d_in: int):
        self.d_in = d_in
        self.n = 0
        self.mean = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq_dev = 0.0  # Σ_t ‖x_t − x̄‖² over the tokens seen so far
        self.sse = 0.0
        self.l0 = 0.0
        self.l1 = 0.0
        self.cosine = 0.0
        self.l2_ratio = 0.0
        self.sum_xhat_sq = 0.0
        self.sum_x_dot_xhat = 0.0

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor, acts: Tensor) -> None:
        """Add ``x [n, d_in]``, ``x_hat [n, d_in]`` and ``acts [n, d_sae]`` of the same n tokens."""
        if x.shape != x_hat.shape or x.ndim != 2 or x.shape[1] != self.d_in or acts.shape[0] != x.shape[0]:
            raise SaelabError(f"ReconstructionStats.update needs x and x_hat [n, {self.d_in}] and acts [n, d_sae]; "
                              f"got {tuple(x.shape)}, {tuple(x_hat.shape)}, {tuple(acts.shape)}")
        n = x.shape[0]
        if n == 0:
            return
        x, x_hat = x.double().cpu(), x_hat.double().cpu()
        batch_mean = x.mean(0)
        batch_sq_dev = float((x - batch_mean).pow(2).sum())
        delta = batch_mean - self.mean
        total = self.n + n
        self.sum_sq_dev += batch_sq_dev + float(delta.pow(2).sum()) * self.n * n / total
        self.mean += delta * (n / total)
        self.n = total
        self.sse += float((x - x_hat).pow(2).sum())
        acts = acts.detach()
        self.l0 += float((acts != 0).sum())
        self.l1 += float(acts.abs().double().sum())
        x_norm, xhat_norm = x.norm(dim=1), x_hat.norm(dim=1)
        dot = (x * x_hat).sum(1)
        self.cosine += float((dot / (x_norm * xhat_norm).clamp_min(1e-30)).sum())
        self.l2_ratio += float((xhat_norm / x_norm.clamp_min(1e-30)).sum())
        self.sum_xhat_sq += float(xhat_norm.pow(2).sum())
        self.sum_x_dot_xhat += float(dot.sum())

    def result(self) -> dict[str, float | None]:
        """The metrics of the module docstring over every token added."""
        if self.n == 0:
            raise SaelabError("no tokens were evaluated, so there are no reconstruction metrics; the evaluation "
                              "set is empty")
        n = self.n
        fvu = ratio(self.sse, self.sum_sq_dev)
        return {
            "l0": self.l0 / n,
            "l1": self.l1 / n,
            "mse": self.sse / (n * self.d_in),
            "fvu": fvu,
            "explained_variance": None if fvu is None else 1.0 - fvu,
            "cosine": self.cosine / n,
            "l2_ratio": self.l2_ratio / n,
            "relative_reconstruction_bias": ratio(self.sum_xhat_sq, self.sum_x_dot_xhat),
        }
