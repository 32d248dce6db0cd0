"""Llama layout (``LlamaForCausalLM``; also Mistral and Qwen2) and Gemma / Gemma 2.

Separate ``q_proj``/``k_proj``/``v_proj``/``o_proj`` (grouped-query attention: ``n_kv_heads`` key/value
heads), RMSNorm, gated MLP (``down_proj(act(gate_proj(x)) * up_proj(x))``), rotary embeddings.

Sites: ``hook_resid_pre`` input of ``model.layers[L]``; ``hook_resid_post`` its output;
``attn.hook_q|k|v`` outputs of ``self_attn.q_proj|k_proj|v_proj`` (before rotary, as in
TransformerLens); ``attn.hook_z`` input of ``self_attn.o_proj``; ``mlp.hook_post`` input of
``mlp.down_proj``; ``hook_attn_out`` output of ``self_attn`` and ``hook_mlp_out`` output of ``mlp``;
``ln1.hook_normalized`` output of ``input_layernorm``; ``hook_mlp_in`` input of the MLP's norm
(= resid_mid) and ``ln2.hook_normalized`` its output: ``post_attention_layernorm`` in Llama and
Gemma, ``pre_feedforward_layernorm`` in Gemma 2/3 (``mlp_norm_name``; there ``post_attention_layernorm``
normalises the attention output instead).

Gemma scales RMSNorm by ``1 + weight`` and the embeddings by ``sqrt(d_model)`` (inside the embedding
module, so ``hook_resid_pre`` of block 0 is the scaled embedding). Gemma 2 also normalises each
sub-layer's output before adding it (``post_attention_layernorm``, ``post_feedforward_layernorm``);
there ``hook_attn_out``/``hook_mlp_out`` are those norms' outputs (what is added to the residual, as
in TransformerLens), so ``hook_attn_out = attn_out_norm(sum_h z_h W_O[h] + b_O)``.

Gemma 3 keeps Gemma 2's four block norms and adds per-head RMSNorms on queries and keys
(``self_attn.q_norm``/``k_norm``, scale ``1 + weight``, applied after ``q_proj``/``k_proj`` and before
rotary). ``hook_q``/``hook_k`` are the projections' outputs, *before* those norms (TransformerLens'
place: ``hook_q = x @ W_Q``); the attention scores use ``rope(q_norm(hook_q))·rope(k_norm(hook_k))``,
and ``qk_norm_spec(layer)`` returns the two norms. DFA reads only ``hook_pattern`` and ``hook_v``
(no value norm in Gemma 3), so it stays exact. Layers alternate between sliding-window (local rope
base) and global attention (``config.layer_types``); no logit soft-capping; tied embeddings.
The multimodal wrapper (``model_type`` ``gemma3``) nests the same decoder at
``model.language_model``; its text settings are in ``config.text_config``.
"""

from __future__ import annotations

import torch
from torch import nn

from saelab.models import hook_points as H
from saelab.models.adapters.base import Adapter, get_module
from saelab.models.norms import NormSpec, rms_norm_spec
from saelab.models.sites import OutputSite, heads_view


class LlamaAdapter(Adapter):
    family = "llama"
    norm_offset = 0.0  # RMSNorm multiplies by weight + norm_offset
    attn_norm_name, mlp_norm_name = "input_layernorm", "post_attention_layernorm"
    attn_name, out_proj_name, mlp_out_proj_name = "self_attn", "o_proj", "mlp.down_proj"
    decoder_path = "model"  # the module holding ``layers`` and ``norm``

    def blocks(self) -> nn.ModuleList:
        return get_module(self.model, f"{self.decoder_path}.layers")

    def final_norm_module(self) -> nn.Module:
        return get_module(self.model, f"{self.decoder_path}.norm")

    def attention_module(self, layer: int) -> nn.Module:
        return get_module(self.blocks()[layer], "self_attn")

    def _d_mlp(self) -> int:
        return int(get_module(self.blocks()[0], "mlp.down_proj").weight.shape[1])

    def qkv_site(self, attn: nn.Module, kind: str):
        name, heads = {H.ATTN_Q: ("q_proj", self.n_heads), H.ATTN_K: ("k_proj", self.n_kv_heads),
                       H.ATTN_V: ("v_proj", self.n_kv_heads)}[kind]
        return OutputSite(get_module(attn, name), heads_view(heads, self.d_head))

    def qkv_weights(self, layer: int):
        attn = self.attention_module(layer)
        out = []
        for name, heads in (("q_proj", self.n_heads), ("k_proj", self.n_kv_heads), ("v_proj", self.n_kv_heads)):
            W = get_module(attn, name).weight.detach()  # [heads * d_head, d_model]
            out.append(W.unflatten(0, (heads, self.d_head)).transpose(1, 2))
        return tuple(out)

    def qkv_biases(self, layer: int):
        attn = self.attention_module(layer)
        out = []
        for name, heads in (("q_proj", self.n_heads), ("k_proj", self.n_kv_heads), ("v_proj", self.n_kv_heads)):
            b = get_module(attn, name).bias
            out.append(None if b is None else b.detach().unflatten(0, (heads, self.d_head)))
        return tuple(out)

    def out_projection(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        o_proj = get_module(self.attention_module(layer), "o_proj")
        W = o_proj.weight.detach().T.unflatten(0, (self.n_heads, self.d_head))
        return W, None if o_proj.bias is None else o_proj.bias.detach()

    def spec_of_norm(self, module: nn.Module) -> NormSpec:
        return rms_norm_spec(module, offset=self.norm_offset)


class GemmaAdapter(LlamaAdapter):
    family = "gemma"
    norm_offset = 1.0


class Gemma2Adapter(GemmaAdapter):
    family = "gemma2"
    mlp_norm_name = "pre_feedforward_layernorm"

    def attn_contribution_module(self, block: nn.Module) -> nn.Module:
        return get_module(block, "post_attention_layernorm")

    def mlp_contribution_module(self, block: nn.Module) -> nn.Module:
        return get_module(block, "post_feedforward_layernorm")

    def attn_out_norm(self, layer: int) -> nn.Module:
        return get_module(self.blocks()[layer], "post_attention_layernorm")


class Gemma3Adapter(Gemma2Adapter):
    family = "gemma3"

    def qk_norm_spec(self, layer: int) -> tuple[NormSpec, NormSpec]:
        """The per-head query and key norms of ``layer`` (each over ``d_head``)."""
        attn = self.attention_module(layer)
        return (rms_norm_spec(get_module(attn, "q_norm"), offset=self.norm_offset),
                rms_norm_spec(get_module(attn, "k_norm"), offset=self.norm_offset))


class Gemma3MultimodalAdapter(Gemma3Adapter):
    """``Gemma3ForConditionalGeneration``: the text decoder at ``model.language_model``."""

    decoder_path = "model.language_model"
