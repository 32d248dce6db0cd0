"""Gated SAE (Rajamanoharan et al. 2024, arXiv 2404.16014).

π_gate = (x − b_dec) W_gate + b_gate; π_mag = (x − b_dec) W_mag + b_mag with
W_mag = exp(r_mag) ⊙ W_gate (so π_mag = ((x − b_dec) W_gate) ⊙ exp(r_mag) + b_mag: one matmul);
f = 1[π_gate > 0] ⊙ ReLU(π_mag); x̂ = f W_dec + b_dec.
Loss = ‖y − ŷ‖² + λ Σ_i ReLU(π_gate)_i ‖W_dec[i]‖ + ‖y − (ReLU(π_gate) sg(W_dec) + sg(b_dec))‖²,
sg = stop-gradient, so the auxiliary reconstruction trains only the gate path (y = x for an SAE;
a skip transcoder's skip term enters both reconstructions, stopped in the auxiliary one).
``W_enc`` holds W_gate (SAELens' name).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from saelab.sae.base import SAE, SAEOutput
from saelab.sae.config import SAEConfig
from saelab.sae.dense import effective_bias
from saelab.sae.relu import L1Options


class GatedSAE(SAE):
    architecture = "gated"
    Options = L1Options
    sparsity_option = "l1_coefficient"
    sweep_range = (0.6, 0.1)
    fixed_unit_norm = False
    # Unit-norm rows by default, as dictionary_learning trains it: with a free decoder the auxiliary
    # reconstruction through the frozen decoder lets row norms drift (measured on the toy residual
    # stream: L0 362 at FVU 0.38 free vs L0 24 at FVU 0.11 unit-norm, same λ=0.3).
    default_unit_norm = True
    dense_at_init = True
    saelens_names: ClassVar[dict[str, str]] = {"sae": "gated"}

    def init_encoder(self, generator: torch.Generator | None) -> None:
        zeros = torch.zeros(self.cfg.d_sae, dtype=self.cfg.torch_dtype)
        self.W_enc = nn.Parameter(self.initial_encoder(generator))
        self.b_gate = nn.Parameter(zeros.clone())
        self.r_mag = nn.Parameter(zeros.clone())
        self.b_mag = nn.Parameter(zeros.clone())

    def _paths(self, shared: Tensor) -> tuple[Tensor, Tensor]:
        """(π_gate, π_mag), each [n, d_sae], from shared = (x − b_dec) W_gate."""
        return shared + self.b_gate, torch.addcmul(self.b_mag, shared, self.r_mag.exp())

    def linear_encoder(self) -> tuple[Tensor, Tensor]:
        """The magnitude path: (W_gate · exp(r_mag) [d_in, d_sae], b_mag [d_sae])."""
        return self.W_enc * self.r_mag.exp()[None, :], self.b_mag

    def encode_flat(self, x: Tensor) -> Tensor:
        gate, mag = self._paths(self._centered(x) @ self.W_enc)
        return torch.where(gate > 0, torch.relu(mag), 0.0)

    def training_forward(self, x: Tensor, y: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> SAEOutput:
        bias = effective_bias(torch.zeros_like(self.b_mag), self.b_dec, self.W_enc, self.cfg.apply_b_dec_to_input)
        gate, mag = self._paths(torch.addmm(bias, x, self.W_enc))
        acts = torch.where(gate > 0, torch.relu(mag), 0.0)
        y_hat = self.add_skip(torch.addmm(self.b_dec, acts, self.W_dec), x)
        gate_acts = torch.relu(gate)
        if self.cfg.unit_norm_decoder:
            l1 = gate_acts.sum() / x.shape[0]
        else:
            l1 = (gate_acts @ self.decoder_norms()).mean()
        via_gate = torch.addmm(self.b_dec.detach(), gate_acts, self.W_dec.detach())
        if self.cfg.skip_connection:
            via_gate = via_gate + x @ self.W_skip.detach()
        losses = {
            "mse": self.mse(y, y_hat),
            "l1": self.cfg.l1_coefficient * sparsity_scale * l1,
            "aux_recon": self.mse(y, via_gate),
        }
        return SAEOutput(y_hat, losses, dense_acts=acts)

    def saelens_tensors(self) -> dict[str, Tensor]:
        return {"b_gate": self.b_gate, "r_mag": self.r_mag, "b_mag": self.b_mag}

    @classmethod
    def saelens_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return dict.fromkeys(("b_gate", "r_mag", "b_mag"), (cfg.d_sae,))
