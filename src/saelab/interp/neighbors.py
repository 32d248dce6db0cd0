"""Nearest latents: by decoder cosine similarity, and by activation correlation over a token stream."""

from __future__ import annotations

import torch

from saelab.sae import SAE


def decoder_neighbors(sae: SAE, features: list[int], k: int = 5) -> list[list[tuple[int, float]]]:
    """Per feature, the ``k`` other latents whose decoder rows have the largest cosine similarity."""
    W = sae.W_dec.detach().float().cpu()
    W = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = W[features] @ W.T                                                   # [F, d_sae]
    cos[torch.arange(len(features)), torch.as_tensor(features)] = float("-inf")
    k = min(k, W.shape[0] - 1)
    values, indices = cos.topk(k, dim=1)
    return [[(int(i), float(v)) for i, v in zip(ri, rv, strict=False)] for ri, rv in zip(indices, values, strict=False)]


class CorrelationStats:
    """Running sums for the Pearson correlation of the chosen features' activations with every latent.

    ``update(acts [n, d_sae], cols)`` with ``cols`` the chosen latents; ``neighbors(k)`` returns, per
    chosen latent, the ``k`` other latents most correlated with it over all tokens seen.
    """

    def __init__(self, features: list[int], d_sae: int):
        self.features = torch.as_tensor(features)
        self.n = 0
        self.sum = torch.zeros(d_sae, dtype=torch.float64)
        self.sum_sq = torch.zeros(d_sae, dtype=torch.float64)
        self.cross = torch.zeros(len(features), d_sae, dtype=torch.float64)   # Σ a_f a_g

    def update(self, acts: torch.Tensor) -> None:
        acts = acts.float()
        self.n += acts.shape[0]
        self.sum += acts.sum(0).double()
        self.sum_sq += acts.pow(2).sum(0).double()
        self.cross += (acts[:, self.features].T @ acts).double()

    def correlations(self) -> torch.Tensor:
        """``[F, d_sae]`` Pearson correlations (0 where a latent never varies)."""
        n = max(self.n, 1)
        mean = self.sum / n
        var = (self.sum_sq / n - mean.pow(2)).clamp_min(0)
        cov = self.cross / n - mean[self.features, None] * mean[None, :]
        denom = (var[self.features, None] * var[None, :]).sqrt()
        corr = torch.where(denom > 0, cov / denom.clamp_min(1e-30), torch.zeros_like(cov))
        return corr.clamp(-1, 1)

    def neighbors(self, k: int = 5) -> list[list[tuple[int, float]]]:
        corr = self.correlations()
        corr[torch.arange(len(self.features)), self.features] = float("-inf")
        k = min(k, corr.shape[1] - 1)
        values, indices = corr.topk(k, dim=1)
        return [[(int(i), float(v)) for i, v in zip(ri, rv, strict=False)] for ri, rv in zip(indices, values, strict=False)]
