"""Data-dependent initialisation: b_dec from the geometric median (or mean) of a sample."""

from __future__ import annotations

import torch
from torch import Tensor


def geometric_median(points: Tensor, max_iter: int = 200, tol: float = 1e-7) -> Tensor:
    """[d] point minimising Σ_n ‖points[n] − y‖ (Weiszfeld's algorithm, in float64).

    points: [n, d].
    """
    p = points.detach().double()
    y = p.mean(0)
    for _ in range(max_iter):
        weights = 1.0 / (p - y).norm(dim=1).clamp_min(1e-12)
        y_next = (weights[:, None] * p).sum(0) / weights.sum()
        moved = (y_next - y).norm()
        y = y_next
        if moved <= tol * (y.norm() + 1e-12):
            break
    return y.to(points.dtype)


def b_dec_from_sample(points: Tensor, method: str) -> Tensor:
    """[d] initial decoder bias from ``points [n, d]``: "geometric_median", "mean" or "zeros"."""
    if method == "geometric_median":
        return geometric_median(points)
    if method == "mean":
        return points.double().mean(0).to(points.dtype)
    return torch.zeros(points.shape[1], dtype=points.dtype, device=points.device)
