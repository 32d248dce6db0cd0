"""JumpReLU SAE (Rajamanoharan et al. 2024, arXiv 2407.14435; Gemma Scope, arXiv 2408.05147).

f = JumpReLU_θ(z) = z ⊙ H(z − θ) with z = (x − b_dec) @ W_enc + b_enc and a learned θ [d_sae];
ŷ = f @ W_dec + b_dec (+ x @ W_skip); loss = ‖y − ŷ‖² + λ‖f‖₀ (λ warmed up by the trainer).
Straight-through estimators with the rectangle kernel K(u) = 1[|u| < ½] and bandwidth ε:
  ∂JumpReLU/∂θ := −(θ/ε) K((z − θ)/ε),  ∂H(z − θ)/∂θ := −(1/ε) K((z − θ)/ε),
and ∂JumpReLU/∂z = H(z − θ) (no estimator on the input side); the L0 term reaches θ only through
the second. θ starts at 0.001 and is kept ≥ 0; decoder rows are unit norm. The training pass is
``saelab.sae.dense.DenseJumpReLU``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from saelab.errors import check_range
from saelab.sae.base import SAE, SAEOutput
from saelab.sae.config import ArchOptions, SAEConfig
from saelab.sae.dense import DenseJumpReLU


@dataclass
class JumpReLUOptions(ArchOptions):
    """l0_coefficient: λ of λ·‖f‖₀. jumprelu_bandwidth (ε), jumprelu_init_threshold (θ₀): Gemma Scope's
    0.001 and 0.001."""

    l0_coefficient: float = 2e-3
    jumprelu_bandwidth: float = 0.001
    jumprelu_init_threshold: float = 0.001

    def resolve(self, cfg: SAEConfig) -> None:
        check_range("l0_coefficient", self.l0_coefficient, 0)
        check_range("jumprelu_bandwidth", self.jumprelu_bandwidth, 0, lo_open=True)
        check_range("jumprelu_init_threshold", self.jumprelu_init_threshold, 0)


class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    Options = JumpReLUOptions
    sparsity_option = "l0_coefficient"
    sweep_range = (5e-2, 1e-3)
    dense_at_init = True
    saelens_names: ClassVar[dict[str, str]] = {"sae": "jumprelu", "transcoder": "jumprelu_transcoder",
                                               "skip_transcoder": "jumprelu_skip_transcoder"}

    def init_encoder(self, generator: torch.Generator | None) -> None:
        super().init_encoder(generator)
        self.threshold = nn.Parameter(torch.full((self.cfg.d_sae,), self.cfg.jumprelu_init_threshold,
                                                 dtype=self.cfg.torch_dtype))

    def encode_flat(self, x: Tensor) -> Tensor:
        pre = self.preacts(x)
        return torch.where(pre > self.threshold.clamp_min(0), pre, 0.0)

    def training_forward(self, x: Tensor, y: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> SAEOutput:
        y_hat, l0, acts, counts = DenseJumpReLU.apply(x, self.b_dec, self.W_enc, self.b_enc, self.threshold,
                                                      self.W_dec, self.cfg.jumprelu_bandwidth,
                                                      self.cfg.apply_b_dec_to_input, self.workspace)
        y_hat = self.add_skip(y_hat, x)
        coefficient = self.cfg.l0_coefficient * sparsity_scale
        out = SAEOutput(y_hat, {"mse": self.mse(y, y_hat), "l0": coefficient * l0}, dense_acts=acts)
        out.extras["fire_counts"] = counts
        return out

    @torch.no_grad()
    def after_step_(self, out: SAEOutput | None = None) -> None:
        super().after_step_(out)
        self.threshold.clamp_(min=0)

    def logged_values(self) -> dict[str, float]:
        return {"threshold_mean": float(self.threshold.detach().mean())}

    def saelens_tensors(self) -> dict[str, Tensor]:
        return {"b_enc": self.b_enc, "threshold": self.threshold}

    @classmethod
    def saelens_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {"b_enc": (cfg.d_sae,), "threshold": (cfg.d_sae,)}
