"""Normalisation layers as data, and folding their elementwise weights into the next linear map.

Every norm the supported families use is ``norm(x) = normalize(x) * scale + bias`` with a
weightless ``normalize``: LayerNorm centres and divides by ``sqrt(var + eps)``; RMSNorm divides by
``sqrt(mean(x^2) + eps)``. Llama-style RMSNorm has ``scale = weight``, Gemma's ``scale = 1 + weight``.

Folding is exact: for a linear map reading the norm's output,
``norm(x) @ W + b == normalize(x) @ (scale[:, None] * W) + (bias @ W + b)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

NormKind = Literal["layernorm", "rmsnorm"]


@dataclass(frozen=True)
class NormSpec:
    """One normalisation layer: ``kind``, ``eps``, ``scale [d_model]`` and ``bias [d_model] | None``."""

    kind: NormKind
    eps: float
    scale: torch.Tensor
    bias: torch.Tensor | None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The weightless part of the norm, computed in float32: ``[..., d_model] -> [..., d_model]``."""
        x = x.float()
        if self.kind == "layernorm":
            x = x - x.mean(-1, keepdim=True)
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The whole norm (float32): ``normalize(x) * scale + bias``."""
        out = self.normalize(x) * self.scale.float()
        return out if self.bias is None else out + self.bias.float()

    def fold(self, W: torch.Tensor, b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold into a linear map ``W [..., d_model, d_out]`` (``b [..., d_out]``): returns ``(W', b')``
        with ``self(x) @ W + b == self.normalize(x) @ W' + b'``."""
        W = W.float()
        W_folded = W * self.scale.float()[:, None]
        b_folded = torch.zeros(W.shape[:-2] + W.shape[-1:], dtype=W.dtype, device=W.device)
        if b is not None:
            b_folded = b_folded + b.float()
        if self.bias is not None:
            b_folded = b_folded + torch.einsum("d,...do->...o", self.bias.float(), W)
        return W_folded, b_folded


def layer_norm_spec(module: nn.LayerNorm) -> NormSpec:
    bias = module.bias.detach() if module.bias is not None else None
    return NormSpec("layernorm", float(module.eps), module.weight.detach(), bias)


def rms_norm_spec(module: nn.Module, *, offset: float = 0.0) -> NormSpec:
    """Llama-style (``offset=0``: ``weight * x``) or Gemma-style (``offset=1``: ``(1 + weight) * x``)."""
    eps = getattr(module, "variance_epsilon", None)
    if eps is None:
        eps = module.eps
    return NormSpec("rmsnorm", float(eps), module.weight.detach() + offset, None)
