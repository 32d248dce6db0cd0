"""Tied-weight SAE of Cunningham et al. 2023 (arXiv 2309.08600).

c = ReLU(M̂ x + b), x̂ = M̂ᵀ c, rows of M̂ [d_sae, d_in] unit norm; loss = ‖x − x̂‖² + α‖c‖₁.
M̂ is stored as ``W_dec``; ``W_enc`` is its transpose (a view, not a separate parameter). Keeping
the rows at unit norm by projection (parallel gradient removed, rows renormalised after each step)
gives the same update as normalising M inside the forward pass, and keeps ``W_dec`` exactly M̂.
There is no decoder bias: ``b_dec`` is a zero buffer kept for a uniform interface.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saelab.sae.base import SAE, SAEOutput, check_scale_factor


class TiedSAE(SAE):
    architecture = "tied"
    has_b_dec = False

    def init_encoder(self) -> None:
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.cfg.torch_dtype))

    @property
    def W_enc(self) -> Tensor:  # noqa: N802
        """[d_in, d_sae] = M̂ᵀ."""
        return self.W_dec.t()

    def encode_flat(self, x: Tensor) -> Tensor:
        return torch.relu(self.preacts(x))

    def decode_flat(self, acts: Tensor) -> Tensor:
        return acts @ self.W_dec

    def training_forward(self, x: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> SAEOutput:
        acts = self.preacts(x).relu_()
        x_hat = acts @ self.W_dec
        l1 = acts.sum() / x.shape[0]
        coefficient = self.cfg.l1_coefficient * sparsity_scale
        return SAEOutput(x_hat, {"mse": self.mse(x, x_hat), "l1": coefficient * l1}, dense_acts=acts)

    @torch.no_grad()
    def fold_input_scale_(self, factor: float) -> None:
        """For inputs x/c: c·ReLU(M̂x/c + b) = ReLU(M̂x + c·b), so b ← c·b and latents scale by c."""
        check_scale_factor(factor)
        self.b_enc.mul_(factor)
