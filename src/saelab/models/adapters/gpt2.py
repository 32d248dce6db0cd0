"""GPT-2 (``GPT2LMHeadModel``): LayerNorm, fused ``c_attn`` laid out ``[q | k | v]``, Conv1D weights
stored ``[d_in, d_out]``.

Sites: ``hook_resid_pre`` input of ``h[L]``; ``hook_resid_post`` its output; ``attn.hook_q|k|v`` slices
of ``attn.c_attn``'s output; ``attn.hook_z`` input of ``attn.c_proj``; ``hook_attn_out`` output of
``attn`` (after ``resid_dropout``); ``hook_resid_mid`` = resid_pre + attn_out; ``mlp.hook_post``
input of ``mlp.c_proj``; ``hook_mlp_out`` output of ``mlp``; ``ln1.hook_normalized`` output of
``ln_1``; ``hook_mlp_in`` input of ``ln_2`` (= resid_mid) and ``ln2.hook_normalized`` its output.
"""

from __future__ import annotations

import torch
from torch import nn

from saelab.models import hook_points as H
from saelab.models.adapters.base import Adapter, get_module
from saelab.models.norms import NormSpec, layer_norm_spec
from saelab.models.sites import OutputSite, slice_heads_view


class GPT2Adapter(Adapter):
    family = "gpt2"
    attn_name, out_proj_name, mlp_out_proj_name, proj_arg_name = "attn", "c_proj", "mlp.c_proj", "x"
    attn_norm_name, mlp_norm_name = "ln_1", "ln_2"

    def blocks(self) -> nn.ModuleList:
        return get_module(self.model, "transformer.h")

    def final_norm_module(self) -> nn.Module:
        return get_module(self.model, "transformer.ln_f")

    def attention_module(self, layer: int) -> nn.Module:
        return get_module(self.blocks()[layer], "attn")

    def _d_mlp(self) -> int:
        return int(get_module(self.blocks()[0], "mlp.c_fc").weight.shape[1])

    def qkv_site(self, attn: nn.Module, kind: str):
        part = (H.ATTN_Q, H.ATTN_K, H.ATTN_V).index(kind)
        return OutputSite(get_module(attn, "c_attn"), slice_heads_view(part * self.d_model, self.n_heads, self.d_head))

    def qkv_weights(self, layer: int):
        W = get_module(self.attention_module(layer), "c_attn").weight.detach()  # [d_model, 3 * d_model]
        parts = W.split(self.d_model, dim=1)
        return tuple(p.unflatten(1, (self.n_heads, self.d_head)).permute(1, 0, 2) for p in parts)

    def qkv_biases(self, layer: int):
        b = get_module(self.attention_module(layer), "c_attn").bias
        if b is None:
            return None, None, None
        return tuple(p.unflatten(0, (self.n_heads, self.d_head)) for p in b.detach().split(self.d_model))

    def out_projection(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        proj = get_module(self.attention_module(layer), "c_proj")
        W = proj.weight.detach().unflatten(0, (self.n_heads, self.d_head))  # [n_heads, d_head, d_model]
        return W, None if proj.bias is None else proj.bias.detach()

    def spec_of_norm(self, module: nn.Module) -> NormSpec:
        return layer_norm_spec(module)
