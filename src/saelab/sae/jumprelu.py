"""JumpReLU SAE (Rajamanoharan et al. 2024, arXiv 2407.14435; Gemma Scope, arXiv 2408.05147).

f = JumpReLU_θ(z) = z ⊙ H(z − θ) with z = (x − b_dec) @ W_enc + b_enc and a learned θ [d_sae];
x̂ = f @ W_dec + b_dec; loss = ‖x − x̂‖² + λ‖f‖₀ (λ warmed up by the trainer).
Straight-through estimators with the rectangle kernel K(u) = 1[|u| < ½] and bandwidth ε:
  ∂JumpReLU/∂θ := −(θ/ε) K((z − θ)/ε),  ∂H(z − θ)/∂θ := −(1/ε) K((z − θ)/ε),
and ∂JumpReLU/∂z = H(z − θ) (no estimator on the input side); the L0 term reaches θ only through
the second. θ starts at 0.001 and is kept ≥ 0; decoder rows are unit norm. The training pass is
``saelab.sae.dense.DenseJumpReLU``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saelab.sae.base import SAE, SAEOutput
from saelab.sae.dense import DenseJumpReLU


class JumpReLUSAE(SAE):
    architecture = "jumprelu"

    def init_encoder(self) -> None:
        super().init_encoder()
        self.threshold = nn.Parameter(torch.full((self.cfg.d_sae,), self.cfg.jumprelu_init_threshold,
                                                 dtype=self.cfg.torch_dtype))

    def encode_flat(self, x: Tensor) -> Tensor:
        pre = self.preacts(x)
        return torch.where(pre > self.threshold.clamp_min(0), pre, 0.0)

    def training_forward(self, x: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> SAEOutput:
        x_hat, l0, acts, counts = DenseJumpReLU.apply(x, self.b_dec, self.W_enc, self.b_enc, self.threshold,
                                                      self.W_dec, self.cfg.jumprelu_bandwidth,
                                                      self.cfg.apply_b_dec_to_input, self.workspace)
        coefficient = self.cfg.l0_coefficient * sparsity_scale
        out = SAEOutput(x_hat, {"mse": self.mse(x, x_hat), "l0": coefficient * l0}, dense_acts=acts)
        out.extras["fire_counts"] = counts
        return out

    @torch.no_grad()
    def after_step_(self, out: SAEOutput | None = None) -> None:
        super().after_step_(out)
        self.threshold.clamp_(min=0)
