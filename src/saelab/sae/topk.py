"""TopK SAE with the AuxK loss (Gao et al. 2024, arXiv 2406.04093).

z = ReLU(TopK_k((x − b_dec) @ W_enc + b_enc)), ŷ = z @ W_dec + b_dec (+ x @ W_skip), unit-norm
decoder rows; y = x for an SAE. AuxK: with e = y − ŷ (no gradient), ê = W_dec-decode of the
top-k_aux pre-activations among dead latents; loss = ‖y − ŷ‖² + aux_coefficient·‖e − ê‖² (both
means over the batch of squared norms).

With ``sparse_decoding`` (default) the encoder matmul is computed once without autograd, only the
selected pre-activations carry gradients, and decoding gathers the k active decoder rows
(``saelab.sae.sparse``); the dense path (``sparse_decoding=False``) gives the same values and
gradients with dense matmuls and serves as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from saelab.errors import ConfigError, check_range
from saelab.sae.base import SAE, SAEOutput
from saelab.sae.config import ArchOptions, SAEConfig, default_k_aux
from saelab.sae.sparse import SparsePattern, gather_preacts, sparse_decode

DEFAULT_K = 32


@dataclass
class TopKOptions(ArchOptions):
    """k: active latents per token (per token on average for batch variants; default 32, at most d_sae).
    k_aux, aux_coefficient: AuxK (default k_aux: a power of two near d_in/2; 1/32).
    sparse_decoding: decode by gathering the active decoder rows (forward and backward sparse);
    False uses dense matmuls (the reference path)."""

    k: int | None = None
    k_aux: int | None = None
    aux_coefficient: float = 1 / 32
    sparse_decoding: bool = True

    def resolve(self, cfg: SAEConfig) -> None:
        if self.k is None:
            self.k = min(DEFAULT_K, cfg.d_sae)
        check_range("k", self.k, 1, integer=True)
        if self.k > cfg.d_sae:
            raise ConfigError(f"k={self.k!r} is out of range; accepted: [1, d_sae={cfg.d_sae}]")
        self.k = int(self.k)
        if self.k_aux is None:
            self.k_aux = default_k_aux(cfg.d_in, cfg.d_sae)
        check_range("k_aux", self.k_aux, 1, integer=True)
        if self.k_aux > cfg.d_sae:
            raise ConfigError(f"k_aux={self.k_aux!r} is out of range; accepted: [1, d_sae={cfg.d_sae}]")
        self.k_aux = int(self.k_aux)
        check_range("aux_coefficient", self.aux_coefficient, 0)
        if not isinstance(self.sparse_decoding, bool):
            raise ConfigError(f"sparse_decoding={self.sparse_decoding!r} must be true or false")


class TopKSAE(SAE):
    architecture = "topk"
    Options = TopKOptions
    sparsity_option = "k"
    sweep_range = (4, 64)
    uses_dead_mask = True
    saelens_names: ClassVar[dict[str, str]] = {"sae": "topk"}

    def select(self, pre: Tensor) -> SparsePattern:
        """The active entries of ``pre [n, d_sae]`` during training: the k largest per row."""
        return SparsePattern.from_topk(pre.topk(self.cfg.k, dim=-1, sorted=False).indices, self.cfg.d_sae)

    def encode_flat(self, x: Tensor) -> Tensor:
        pre = self.preacts(x)
        top = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())

    def _selected(self, pre: Tensor, pattern: SparsePattern, x: Tensor) -> Tensor:
        """[nnz] ReLU of the selected pre-activations, with gradients."""
        if self.cfg.sparse_decoding:
            chosen = gather_preacts(pre, pattern, x, self.b_dec, self.W_enc, self.b_enc,
                                    self.cfg.apply_b_dec_to_input)
        else:
            chosen = pattern.gather(pre)
        return chosen.relu()

    def _decode_selected(self, values: Tensor, pattern: SparsePattern) -> Tensor:
        """[n, d_in] decoded selected latents, without b_dec."""
        if self.cfg.sparse_decoding:
            return sparse_decode(values, pattern, self.W_dec)
        return pattern.scatter(values) @ self.W_dec

    def training_forward(self, x: Tensor, y: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> SAEOutput:
        if self.cfg.sparse_decoding:
            with torch.no_grad():
                pre = self.training_preacts(x)
        else:
            pre = self.training_preacts(x)
        pattern = self.select(pre.detach())
        values = self._selected(pre, pattern, x)
        y_hat = self.add_skip(self._decode_selected(values, pattern) + self.b_dec, x)
        mse = self.mse(y, y_hat)
        losses = {**self.reconstruction_losses(y, mse, values, pattern, x),
                  "aux": self.aux_loss(x, y, y_hat, pre, dead_mask)}
        out = SAEOutput(y_hat, losses, pattern=pattern, values=values)
        out.extras["mse"] = mse.detach()
        if not self.cfg.sparse_decoding:
            out.dense_acts = pattern.scatter(values.detach())
        with torch.no_grad():
            positive = values[values > 0]
            out.extras["min_active"] = positive.min() if positive.numel() else values.new_zeros(())
        return out

    def reconstruction_losses(self, y: Tensor, mse: Tensor, values: Tensor, pattern: SparsePattern,
                              x: Tensor) -> dict[str, Tensor]:
        """The reconstruction loss terms given the full ``mse`` = ‖y − ŷ‖² ({"mse": mse}; Matryoshka
        weights it and adds its prefix losses)."""
        return {"mse": mse}

    def aux_loss(self, x: Tensor, y: Tensor, y_hat: Tensor, pre: Tensor, dead_mask: Tensor | None) -> Tensor:
        """AuxK: dead latents' top-k_aux pre-activations reconstruct the residual e = y − ŷ."""
        if dead_mask is None or self.cfg.aux_coefficient == 0:
            return x.new_zeros(())
        dead = dead_mask.nonzero().squeeze(1)
        if dead.numel() == 0:
            return x.new_zeros(())
        k_aux = min(self.cfg.k_aux, dead.numel())
        with torch.no_grad():
            top = pre.detach()[:, dead].topk(k_aux, dim=-1, sorted=False).indices
        pattern = SparsePattern.from_topk(dead[top], self.cfg.d_sae)
        residual_hat = self._decode_selected(self._selected(pre, pattern, x), pattern)
        residual = (y - y_hat).detach()
        return self.cfg.aux_coefficient * self.mse(residual, residual_hat)

    @classmethod
    def saelens_cfg_fields(cls, cfg: SAEConfig) -> dict[str, Any]:
        return {"k": cfg.k, "rescale_acts_by_decoder_norm": False}

    @classmethod
    def options_from_saelens(cls, core: dict[str, Any]) -> dict[str, Any]:
        return {"k": core.get("k")}
