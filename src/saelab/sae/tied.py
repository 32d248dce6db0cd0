"""Tied-weight SAE of Cunningham et al. 2023 (arXiv 2309.08600).

c = ReLU(M̂ x + b), x̂ = M̂ᵀ c, rows of M̂ [d_sae, d_in] unit norm; loss = ‖x − x̂‖² + α‖c‖₁.
M̂ is stored as ``W_dec``; ``W_enc`` is its transpose (a view, not a separate parameter). Keeping
the rows at unit norm by projection (parallel gradient removed, rows renormalised after each step)
gives the same update as normalising M inside the forward pass, and keeps ``W_dec`` exactly M̂.
There is no decoder bias: ``b_dec`` is a zero buffer kept for a uniform interface. Reading and
writing one site is the point of the tying, so there is no tied transcoder.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from saelab.errors import CorruptFileError
from saelab.sae.base import SAE, SAEOutput, check_scale_factor
from saelab.sae.config import SAEConfig
from saelab.sae.relu import L1Options


class TiedSAE(SAE):
    architecture = "tied"
    Options = L1Options
    sparsity_option = "l1_coefficient"
    sweep_range = (1.0, 0.15)
    has_b_dec = False
    has_encoder_weights = False
    supports_transcoding = False
    saelens_names: ClassVar[dict[str, str]] = {"sae": "standard"}
    saelens_native = False  # SAELens' "standard" is our relu; tied folders load as tied via the saelab section

    def init_encoder(self, generator: torch.Generator | None) -> None:
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.cfg.torch_dtype))

    @property
    def W_enc(self) -> Tensor:  # noqa: N802
        """[d_in, d_sae] = M̂ᵀ."""
        return self.W_dec.t()

    def encode_flat(self, x: Tensor) -> Tensor:
        return torch.relu(self.preacts(x))

    def decode_flat(self, acts: Tensor) -> Tensor:
        return acts @ self.W_dec

    def training_forward(self, x: Tensor, y: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> SAEOutput:
        acts = self.preacts(x).relu_()
        x_hat = acts @ self.W_dec
        l1 = acts.sum() / x.shape[0]
        coefficient = self.cfg.l1_coefficient * sparsity_scale
        return SAEOutput(x_hat, {"mse": self.mse(y, x_hat), "l1": coefficient * l1}, dense_acts=acts)

    @torch.no_grad()
    def fold_scales_(self, in_factor: float, out_factor: float | None = None) -> None:
        """For inputs x/c: c·ReLU(M̂x/c + b) = ReLU(M̂x + c·b), so b ← c·b and latents scale by c."""
        check_scale_factor(in_factor)
        self.b_enc.mul_(in_factor)

    @classmethod
    def state_from_saelens(cls, cfg: SAEConfig, tensors: dict[str, Tensor], where: str) -> dict[str, Tensor]:
        if not torch.equal(tensors["W_enc"], tensors["W_dec"].t()):
            raise CorruptFileError(f"{where}: a tied SAE needs W_enc = W_decᵀ, but they differ")
        return {k: v for k, v in tensors.items() if k not in ("W_enc", "b_dec")}
