"""An attention-output SAE seen head by head: its hook, its encoder as one linear map, and the
head attribution of its decoder rows (Kissane et al. 2024, arXiv 2406.17759).

The SAE reads ``hook_z`` flattened per token, ``[n_heads * d_head]`` with head ``k`` in the slice
``k * d_head : (k + 1) * d_head``. Its *pre-activation* is the linear part of its encoder,
``pre_f(z) = z · w_f + c_f`` with ``w_f`` a column ``[d_in]`` and ``c_f`` the bias terms:

- relu, topk, batchtopk, jumprelu: ``w_f = W_enc[:, f]``, ``c_f = b_enc[f] − b_dec · W_enc[:, f]``
  (the last term only when the SAE subtracts ``b_dec`` from its input);
- tied: ``w_f = W_dec[f]``, ``c_f = b_enc[f]``;
- gated: the magnitude path, ``w_f = W_enc[:, f] · exp(r_mag[f])``, ``c_f = b_mag[f] − b_dec · w_f``
  (its gate path decides only whether the latent is on).

Head attribution: ``h_{f,k} = ‖d_{f,k}‖ / Σ_j ‖d_{f,j}‖`` where ``d_{f,k}`` is head ``k``'s slice of
decoder row ``f``; each row of ``h`` sums to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.errors import SaelabError
from saelab.models import LoadedModel, parse_hook_name
from saelab.models.hook_points import ATTN_Z
from saelab.sae.base import SAE


class NotAttentionSAEError(SaelabError):
    """The SAE does not read ``attn.hook_z`` of this model, or its width does not match the heads."""


@dataclass(frozen=True)
class LinearEncoder:
    """``pre = z @ W + bias + b_dec_term``: ``W [d_in, d_sae]``, ``bias [d_sae]`` (the encoder bias)
    and ``b_dec_term [d_sae]`` (``−b_dec @ W`` or zeros), all float64."""

    W: Tensor
    bias: Tensor
    b_dec_term: Tensor

    @property
    def constant(self) -> Tensor:
        """[d_sae] every bias term together."""
        return self.bias + self.b_dec_term

    def preacts(self, z: Tensor) -> Tensor:
        """``[..., d_in] -> [..., d_sae]`` (float64)."""
        return z.double() @ self.W + self.constant


def linear_encoder(sae: SAE) -> LinearEncoder:
    """The linear part of ``sae``'s encoder (see the module docstring), in float64."""
    with torch.no_grad():
        W, bias = (t.detach().double() for t in sae.linear_encoder())  # noqa: N806
        if sae.cfg.apply_b_dec_to_input:
            b_dec_term = -(sae.b_dec.detach().double() @ W)
        else:
            b_dec_term = torch.zeros_like(bias)
    return LinearEncoder(W.contiguous(), bias, b_dec_term)


@dataclass(frozen=True)
class AttentionSAE:
    """An SAE on ``blocks.{layer}.attn.hook_z`` of ``lm``, checked to fit its heads."""

    lm: LoadedModel
    sae: SAE
    layer: int
    hook_name: str

    @property
    def n_heads(self) -> int:
        return self.lm.n_heads

    @property
    def d_head(self) -> int:
        return self.lm.d_head

    @property
    def d_sae(self) -> int:
        return self.sae.cfg.d_sae

    def encoder(self) -> LinearEncoder:
        return linear_encoder(self.sae)

    def decoder_by_head(self) -> Tensor:
        """``[d_sae, n_heads, d_head]`` decoder rows split into head slices (float64)."""
        return self.sae.W_dec.detach().double().reshape(self.d_sae, self.n_heads, self.d_head)

    def encoder_by_head(self) -> Tensor:
        """``[n_heads, d_head, d_sae]`` the linear encoder split into head slices (float64)."""
        return self.encoder().W.reshape(self.n_heads, self.d_head, self.d_sae)

    def check_feature(self, feature: int) -> int:
        if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < self.d_sae:
            raise SaelabError(f"feature={feature!r} is out of range; SAE {self.sae.cfg.name!r} has latents "
                              f"0..{self.d_sae - 1}")
        return feature


def bind_attention_sae(lm: LoadedModel, sae: SAE, hook_name: str | None = None) -> AttentionSAE:
    """Check that ``sae`` reads ``attn.hook_z`` of ``lm`` (its own hook, or ``hook_name``) with width
    ``n_heads * d_head`` and return the pair."""
    name = hook_name or sae.cfg.hook_name
    if not name:
        raise NotAttentionSAEError(f"SAE {sae.cfg.name!r} records no hook_name; give the hook_z it reads, "
                                   "e.g. blocks.1.attn.hook_z")
    point = parse_hook_name(name, lm.n_layers, lm.name)
    if point.kind != ATTN_Z:
        raise NotAttentionSAEError(f"SAE {sae.cfg.name!r} reads {name!r}; attention analyses need an SAE on "
                                   f"blocks.L.{ATTN_Z} (all heads concatenated)")
    width = lm.n_heads * lm.d_head
    if sae.cfg.d_in != width:
        raise NotAttentionSAEError(f"SAE {sae.cfg.name!r} has d_in={sae.cfg.d_in}, but {name!r} of {lm.name} has "
                                   f"n_heads*d_head = {lm.n_heads}*{lm.d_head} = {width} values per token; "
                                   "use the SAE with the model it was trained on")
    return AttentionSAE(lm, sae, point.layer, name)


def head_attribution(decoder_by_head: Tensor) -> Tensor:
    """``[d_sae, n_heads, d_head] -> [d_sae, n_heads]``: h_{f,k} = ‖d_{f,k}‖ / Σ_j ‖d_{f,j}‖ (rows sum
    to 1; an all-zero row gets the uniform 1/n_heads)."""
    norms = decoder_by_head.double().norm(dim=-1)
    total = norms.sum(-1, keepdim=True)
    uniform = torch.full_like(norms, 1.0 / norms.shape[-1])
    return torch.where(total > 0, norms / total.clamp_min(1e-300), uniform)
