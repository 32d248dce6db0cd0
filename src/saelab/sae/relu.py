"""ReLU SAE with an L1 penalty (Bricken et al. 2023; Cunningham et al. 2023).

f = ReLU((x − b_dec) @ W_enc + b_enc), x̂ = f @ W_dec + b_dec.
Loss = ‖x − x̂‖² + λ·Σ_i f_i·‖W_dec[i]‖ (decoder free), or + λ·‖f‖₁ with unit-norm decoder rows
(``unit_norm_decoder=True``; the trainer removes the parallel gradient and renormalises each step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.sae.base import SAE, SAEOutput
from saelab.sae.dense import DenseReLU


class ReLUSAE(SAE):
    architecture = "relu"

    def encode_flat(self, x: Tensor) -> Tensor:
        return torch.relu(self.preacts(x))

    def training_forward(self, x: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> SAEOutput:
        x_hat, l1, acts, counts = DenseReLU.apply(x, self.b_dec, self.W_enc, self.b_enc, self.W_dec,
                                                  not self.cfg.unit_norm_decoder, self.cfg.apply_b_dec_to_input,
                                                  self.workspace)
        coefficient = self.cfg.l1_coefficient * sparsity_scale
        out = SAEOutput(x_hat, {"mse": self.mse(x, x_hat), "l1": coefficient * l1}, dense_acts=acts)
        out.extras["fire_counts"] = counts
        return out
