"""GPT-NeoX / Pythia (``GPTNeoXForCausalLM``): LayerNorm, fused ``query_key_value`` laid out per head
as ``[q | k | v]`` of ``d_head`` each, rotary embeddings on part of each head.

Sites: ``hook_resid_pre`` input of ``layers[L]``; ``hook_resid_post`` its output; ``attn.hook_q|k|v``
per-head slices of ``attention.query_key_value``'s output (before rotary, like TransformerLens);
``attn.hook_z`` input of ``attention.dense``; ``hook_attn_out`` output of ``post_attention_dropout``
(exactly what the block adds); ``mlp.hook_post`` input of ``mlp.dense_4h_to_h``; ``hook_mlp_out``
output of ``post_mlp_dropout``; ``ln1.hook_normalized`` output of ``input_layernorm``;
``hook_mlp_in`` input of ``post_attention_layernorm`` (the MLP's norm, despite its name) and
``ln2.hook_normalized`` its output.

``hook_resid_mid`` is ``resid_pre + attn_out`` in both layouts. With ``use_parallel_residual``
(Pythia's default) the block computes ``resid_pre + attn_out + mlp_out`` and its MLP reads
``resid_pre``, so resid_mid is the residual stream with the attention contribution added and the
MLP's not yet: writing it changes what the block outputs but not what its MLP reads. There
``hook_mlp_in`` is resid_pre (as in TransformerLens), and ``ln2.hook_normalized`` is the MLP's norm
of resid_pre; both still fire after attention (Hugging Face runs the MLP second), so they come after
``hook_resid_mid`` in forward order. Sequential (``use_parallel_residual=False``): ``hook_mlp_in`` is
resid_mid, as in GPT-2.
"""

from __future__ import annotations

import torch
from torch import nn

from saelab.models import hook_points as H
from saelab.models.adapters.base import Adapter, get_module
from saelab.models.norms import NormSpec, layer_norm_spec
from saelab.models.sites import OutputSite, interleaved_heads_view


class NeoXAdapter(Adapter):
    family = "gpt_neox"
    attn_name, out_proj_name, mlp_out_proj_name = "attention", "dense", "mlp.dense_4h_to_h"
    attn_norm_name, mlp_norm_name = "input_layernorm", "post_attention_layernorm"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.parallel_attn_mlp = bool(getattr(self.config, "use_parallel_residual", False))

    def blocks(self) -> nn.ModuleList:
        return get_module(self.model, "gpt_neox.layers")

    def final_norm_module(self) -> nn.Module:
        return get_module(self.model, "gpt_neox.final_layer_norm")

    def attention_module(self, layer: int) -> nn.Module:
        return get_module(self.blocks()[layer], "attention")

    def _d_mlp(self) -> int:
        return int(get_module(self.blocks()[0], "mlp.dense_h_to_4h").weight.shape[0])

    def qkv_site(self, attn: nn.Module, kind: str):
        part = (H.ATTN_Q, H.ATTN_K, H.ATTN_V).index(kind)
        return OutputSite(get_module(attn, "query_key_value"),
                          interleaved_heads_view(part, 3, self.n_heads, self.d_head))

    def attn_contribution_module(self, block: nn.Module) -> nn.Module:
        return get_module(block, "post_attention_dropout")

    def mlp_contribution_module(self, block: nn.Module) -> nn.Module:
        return get_module(block, "post_mlp_dropout")

    def _qkv_linear(self, layer: int) -> nn.Linear:
        return get_module(self.attention_module(layer), "query_key_value")

    def qkv_weights(self, layer: int):
        W = self._qkv_linear(layer).weight.detach()  # [n_heads * 3 * d_head, d_model]
        per_head = W.unflatten(0, (self.n_heads, 3, self.d_head))  # [n_heads, 3, d_head, d_model]
        return tuple(per_head[:, i].transpose(1, 2) for i in range(3))

    def qkv_biases(self, layer: int):
        b = self._qkv_linear(layer).bias
        if b is None:
            return None, None, None
        per_head = b.detach().unflatten(0, (self.n_heads, 3, self.d_head))
        return tuple(per_head[:, i] for i in range(3))

    def out_projection(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        dense = get_module(self.attention_module(layer), "dense")
        W = dense.weight.detach().T.unflatten(0, (self.n_heads, self.d_head))
        return W, None if dense.bias is None else dense.bias.detach()

    def spec_of_norm(self, module: nn.Module) -> NormSpec:
        return layer_norm_spec(module)
