"""Latent firing statistics over a stated window of tokens: frequency of every latent, dead and dense
fractions, and the histogram of log10 firing density.

A latent *fires* on a token when its activation is non-zero. It is *dead* when it fires on none of
the ``window`` tokens counted and *dense* when it fires on more than ``dense_threshold`` of them
(default 0.1, the "very high frequency" line of Rajamanoharan et al. 2024). Deadness depends on the
window: Gao et al. 2024 count 10M tokens, an evaluation set may hold 16k, so every result states its
window as ``dead_window_tokens`` (the tokens actually counted). The histogram covers live latents only
(log10 of 0 has no bin); dead ones are counted separately.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from saelab.errors import SaelabError, check_range


class LatentStats:
    """Firing counts ``[d_sae]`` (int64) over the tokens added with ``update``; with ``window``, over the
    first ``window`` tokens only (later ones are ignored, ``full`` turns True)."""

    def __init__(self, d_sae: int, window: int | None = None):
        if window is not None:
            check_range("dead_window_tokens", window, 1, None, integer=True)
        self.fires = torch.zeros(d_sae, dtype=torch.int64)
        self.n_tokens = 0
        self.window = window

    @property
    def full(self) -> bool:
        """True once ``window`` tokens have been counted (never without a window)."""
        return self.window is not None and self.n_tokens >= self.window

    @torch.no_grad()
    def update(self, acts: Tensor) -> None:
        """Count the non-zero entries of ``acts [n, d_sae]`` per latent (up to the window)."""
        if self.window is not None:
            acts = acts[:max(0, self.window - self.n_tokens)]
        self.fires += (acts != 0).sum(0).cpu()
        self.n_tokens += acts.shape[0]

    def frequency(self) -> Tensor:
        """[d_sae] float64: fraction of the counted tokens on which each latent fired."""
        if self.n_tokens == 0:
            raise SaelabError("no tokens were evaluated, so latent frequencies are undefined; the evaluation set "
                              "is empty")
        return self.fires.double() / self.n_tokens

    def result(self, dense_threshold: float = 0.1, bins_per_decade: int = 4) -> dict:
        """Dead/dense counts and fractions with ``dead_window_tokens`` (the tokens they were counted
        over), and ``density_histogram``: ``edges`` (log10 density, from the decade of one firing in the
        window up to 0) and ``counts`` of live latents per bin."""
        check_range("dense_threshold", dense_threshold, 0, 1)
        check_range("bins_per_decade", bins_per_decade, 1, 100, integer=True)
        freq = self.frequency()
        d_sae = freq.numel()
        dead = int((self.fires == 0).sum())
        dense = int((freq > dense_threshold).sum())
        live = freq[freq > 0].numpy()
        lowest = min(-1, math.floor(math.log10(1.0 / self.n_tokens)))
        edges = np.linspace(lowest, 0.0, -lowest * bins_per_decade + 1)
        counts, _ = np.histogram(np.log10(live), bins=edges)
        return {
            "n_dead": dead, "dead_fraction": dead / d_sae,
            "n_dense": dense, "dense_fraction": dense / d_sae, "dense_threshold": dense_threshold,
            "dead_window_tokens": self.n_tokens,
            "mean_log10_density": float(np.log10(live).mean()) if live.size else None,
            "density_histogram": {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()},
        }
