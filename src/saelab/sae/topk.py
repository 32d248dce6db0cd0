"""TopK SAE with the AuxK loss (Gao et al. 2024, arXiv 2406.04093).

z = ReLU(TopK_k((x − b_dec) @ W_enc + b_enc)), x̂ = z @ W_dec + b_dec, unit-norm decoder rows.
AuxK: with e = x − x̂ (no gradient), ê = W_dec-decode of the top-k_aux pre-activations among dead
latents; loss = ‖x − x̂‖² + aux_coefficient·‖e − ê‖² (both means over the batch of squared norms).

With ``sparse_decoding`` (default) the encoder matmul is computed once without autograd, only the
selected pre-activations carry gradients, and decoding gathers the k active decoder rows
(``saelab.sae.sparse``); the dense path (``sparse_decoding=False``) gives the same values and
gradients with dense matmuls and serves as the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.sae.base import SAE, SAEOutput
from saelab.sae.sparse import SparsePattern, gather_preacts, sparse_decode


class TopKSAE(SAE):
    architecture = "topk"

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

    def training_forward(self, x: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> SAEOutput:
        if self.cfg.sparse_decoding:
            with torch.no_grad():
                pre = self.training_preacts(x)
        else:
            pre = self.training_preacts(x)
        pattern = self.select(pre.detach())
        values = self._selected(pre, pattern, x)
        x_hat = self._decode_selected(values, pattern) + self.b_dec
        losses = {"mse": self.mse(x, x_hat), "aux": self.aux_loss(x, x_hat, pre, dead_mask)}
        out = SAEOutput(x_hat, losses, pattern=pattern, values=values)
        if not self.cfg.sparse_decoding:
            out.dense_acts = pattern.scatter(values.detach())
        with torch.no_grad():
            positive = values[values > 0]
            out.extras["min_active"] = positive.min() if positive.numel() else values.new_zeros(())
        return out

    def aux_loss(self, x: Tensor, x_hat: Tensor, pre: Tensor, dead_mask: Tensor | None) -> Tensor:
        """AuxK: dead latents' top-k_aux pre-activations reconstruct the residual e = x − x̂."""
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
        residual = (x - x_hat).detach()
        return self.cfg.aux_coefficient * self.mse(residual, residual_hat)
