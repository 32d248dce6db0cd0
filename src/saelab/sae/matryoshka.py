"""Matryoshka BatchTopK SAE (Bussmann et al. 2025, arXiv 2503.17547; dictionary_learning's trainer).

The latents are split into nested prefix groups (``group_fractions`` of d_sae, in order); the
latents are selected once by BatchTopK over the whole dictionary, and every prefix must reconstruct
the target on its own: with f_h the selected latents of group h and ŷ_g = b_dec + Σ_{h≤g} f_h W_dec,h
(+ x W_skip),

    loss = Σ_g w_g ‖y − ŷ_g‖² + AuxK(on the full ŷ),   w = ``group_weights`` (default 1/n_groups each).

Early latents are pushed to carry the most general features, which keeps later, more specific
latents from absorbing them. Inference is BatchTopK's (one learned threshold), so SAELens reads the
folder as a JumpReLU SAE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from saelab.errors import ConfigError
from saelab.sae.batchtopk import BatchTopKOptions, BatchTopKSAE
from saelab.sae.config import SAEConfig
from saelab.sae.sparse import SparsePattern

DEFAULT_GROUP_FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2 + 1 / 32)


@dataclass
class MatryoshkaOptions(BatchTopKOptions):
    """BatchTopK's options plus group_fractions (the share of d_sae in each nested group, in order,
    summing to 1; default dictionary_learning's 1/32, 1/16, 1/8, 1/4, 1/2 + 1/32) and group_weights
    (each prefix loss's weight; default equal, 1/n_groups)."""

    group_fractions: list[float] | None = None
    group_weights: list[float] | None = None

    def resolve(self, cfg: SAEConfig) -> None:
        super().resolve(cfg)
        fractions = list(DEFAULT_GROUP_FRACTIONS if self.group_fractions is None else self.group_fractions)
        if not fractions or not all(_positive_number(f) for f in fractions):
            raise ConfigError(f"group_fractions={self.group_fractions!r} is not accepted; accepted: a list of "
                              "positive numbers summing to 1")
        if abs(sum(fractions) - 1) > 1e-6:
            raise ConfigError(f"group_fractions={fractions!r} sum to {sum(fractions):.6g}; accepted: fractions of "
                              "d_sae that sum to 1")
        if len(fractions) > cfg.d_sae:
            raise ConfigError(f"group_fractions has {len(fractions)} groups but d_sae={cfg.d_sae}; every group "
                              "needs at least one latent")
        weights = [1 / len(fractions)] * len(fractions) if self.group_weights is None else list(self.group_weights)
        if len(weights) != len(fractions) or not all(_positive_number(w) or w == 0 for w in weights):
            raise ConfigError(f"group_weights={self.group_weights!r} is not accepted; accepted: one non-negative "
                              f"number per group ({len(fractions)})")
        self.group_fractions = [float(f) for f in fractions]
        self.group_weights = [float(w) for w in weights]


def _positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def group_ends(fractions: list[float], d_sae: int) -> list[int]:
    """End (exclusive) of each nested prefix: the cumulative fraction of d_sae, rounded, with at least
    one latent per group; the last end is d_sae."""
    ends, total = [], 0.0
    for i, fraction in enumerate(fractions):
        total += fraction
        floor = ends[-1] + 1 if ends else 1
        ends.append(max(floor, min(d_sae - (len(fractions) - 1 - i), round(total * d_sae))))
    ends[-1] = d_sae
    return ends


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    architecture = "matryoshka_batchtopk"
    Options = MatryoshkaOptions

    @property
    def group_ends(self) -> list[int]:
        """[n_groups] end of each prefix group."""
        return group_ends(self.cfg.group_fractions, self.cfg.d_sae)

    def reconstruction_losses(self, y: Tensor, mse: Tensor, values: Tensor, pattern: SparsePattern,
                              x: Tensor) -> dict[str, Tensor]:
        """{"mse_prefix_E": w_g·‖y − ŷ_g‖² for each inner prefix ending at E, "mse": w_last·‖y − ŷ‖²}."""
        weights, ends = self.cfg.group_weights, self.group_ends
        losses: dict[str, Tensor] = {}
        prefix = self.add_skip(self.b_dec.expand(y.shape[0], -1), x)
        start = 0
        for weight, end in zip(weights[:-1], ends[:-1], strict=True):
            in_group = ((pattern.cols >= start) & (pattern.cols < end)).to(values.dtype)
            prefix = prefix + self._decode_selected(values * in_group, pattern)
            losses[f"mse_prefix_{end}"] = weight * self.mse(y, prefix)
            start = end
        losses["mse"] = weights[-1] * mse
        return losses
