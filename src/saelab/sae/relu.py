"""ReLU SAE with an L1 penalty (Bricken et al. 2023; Cunningham et al. 2023), and ReLU transcoders.

f = ReLU((x − b_dec) @ W_enc + b_enc), ŷ = f @ W_dec + b_dec (+ x @ W_skip for a skip transcoder).
Loss = ‖y − ŷ‖² + λ·Σ_i f_i·‖W_dec[i]‖ (decoder free), or + λ·‖f‖₁ with unit-norm decoder rows
(``unit_norm_decoder=True``; the trainer removes the parallel gradient and renormalises each step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from saelab.errors import check_range
from saelab.sae.base import SAE, SAEOutput
from saelab.sae.config import ArchOptions, SAEConfig
from saelab.sae.dense import DenseReLU


@dataclass
class L1Options(ArchOptions):
    """l1_coefficient: λ of the L1 penalty (relu, tied, gated)."""

    l1_coefficient: float = 0.1

    def resolve(self, cfg: SAEConfig) -> None:
        check_range("l1_coefficient", self.l1_coefficient, 0)


class ReLUSAE(SAE):
    architecture = "relu"
    Options = L1Options
    sparsity_option = "l1_coefficient"
    sweep_range = (1.0, 0.15)
    fixed_unit_norm = False
    default_unit_norm = False
    dense_at_init = True
    resamples_dead_latents = True
    saelens_names: ClassVar[dict[str, str]] = {"sae": "standard", "transcoder": "transcoder",
                                               "skip_transcoder": "skip_transcoder"}

    def encode_flat(self, x: Tensor) -> Tensor:
        return self.preacts(x).relu()

    def training_forward(self, x: Tensor, y: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> SAEOutput:
        y_hat, l1, acts, counts = DenseReLU.apply(x, self.b_dec, self.W_enc, self.b_enc, self.W_dec,
                                                  not self.cfg.unit_norm_decoder, self.cfg.apply_b_dec_to_input,
                                                  self.workspace)
        y_hat = self.add_skip(y_hat, x)
        coefficient = self.cfg.l1_coefficient * sparsity_scale
        out = SAEOutput(y_hat, {"mse": self.mse(y, y_hat), "l1": coefficient * l1}, dense_acts=acts)
        out.extras["fire_counts"] = counts
        return out
