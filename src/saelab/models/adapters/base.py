"""What every model-family adapter provides: geometry, hook sites, per-head weights and norms.

An adapter maps TransformerLens hook points and weight names onto one Hugging Face causal-LM
family. Per-head weights follow TransformerLens shapes and conventions:

- ``W_Q``, ``W_K``, ``W_V``: ``[n_heads, d_model, d_head]`` (``x @ W`` for a row vector ``x``);
  with grouped-query attention ``W_K``/``W_V`` are *expanded per query head*: query head ``h``
  reads key/value head ``h // (n_heads // n_kv_heads)``, as ``repeat_kv`` does in transformers.
  ``W_Q``/``W_K`` act before rotary embeddings.
- ``b_Q``, ``b_K``, ``b_V``: ``[n_heads, d_head]`` (zeros when the family has no bias).
- ``W_O``: ``[n_heads, d_head, d_model]``; ``b_O``: ``[d_model]``.
- ``W_U``: ``[d_model, d_vocab]``; ``b_U``: ``[d_vocab]``; ``W_E``: ``[d_vocab, d_model]``.

Weights are returned as detached tensors sharing storage with the model (no copy) where the
layout allows it; treat them as read-only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from saelab.errors import SaelabError
from saelab.models import hook_points as H
from saelab.models.hook_points import ATTN_PATTERN, ATTN_Z, HookPoint
from saelab.models.norms import NormSpec
from saelab.models.sites import InputSite, OutputSite, PatternSite, ResidMidSite, Site, heads_view


class ModelLayoutError(SaelabError):
    """The model's module tree is not the layout its family adapter expects."""


def get_module(root: nn.Module, path: str) -> nn.Module:
    """``root.a.b.0.c`` for ``path = "a.b.0.c"``, with an error naming the missing part."""
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise ModelLayoutError(f"{type(root).__name__} has no module {path!r} (missing {part!r}); "
                                   "its layout differs from the family's Hugging Face implementation")
        module = getattr(module, part)
    return module


def expand_kv(W: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[n_kv_heads, ...] -> [n_heads, ...]``: each key/value head repeated for its query group."""
    groups = n_heads // W.shape[0]
    return W if groups == 1 else W.repeat_interleave(groups, dim=0)


def text_config(config):
    """The language model's settings: ``config.text_config`` for multimodal wrappers, else ``config``."""
    getter = getattr(config, "get_text_config", None)
    return getter() if getter is not None else config


class Adapter(ABC):
    """Base class of the per-family adapters; see the module docstring for weight conventions."""

    family: str = ""
    #: True when attention and MLP both read the block input (GPT-NeoX with use_parallel_residual)
    parallel_attn_mlp: bool = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = text_config(model.config)
        self.n_layers: int = int(self.config.num_hidden_layers)
        self.d_model: int = int(self.config.hidden_size)
        self.n_heads: int = int(self.config.num_attention_heads)
        self.n_kv_heads: int = int(getattr(self.config, "num_key_value_heads", None) or self.n_heads)
        self.d_head: int = int(getattr(self.config, "head_dim", None) or self.d_model // self.n_heads)
        self.d_vocab: int = int(self.unembed_module().weight.shape[0])
        self.d_mlp: int = self._d_mlp()

    # --- module tree -------------------------------------------------------------------------
    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, in order."""

    @abstractmethod
    def final_norm_module(self) -> nn.Module:
        """The norm applied to the last residual stream before the unembedding."""

    @abstractmethod
    def attention_module(self, layer: int) -> nn.Module:
        """The attention module of block ``layer`` (the one transformers calls the interface from)."""

    def unembed_module(self) -> nn.Linear:
        return self.model.get_output_embeddings()

    def embed_module(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @abstractmethod
    def _d_mlp(self) -> int:
        """Width of the MLP hidden layer (``mlp.hook_post``)."""

    # --- where each hook kind is read and written ---------------------------------------------
    #: module names inside a block / its attention module, set per family
    attn_name: str = ""
    out_proj_name: str = ""        # attention output projection: hook_z is its input
    mlp_out_proj_name: str = ""    # MLP output projection: mlp.hook_post is its input
    proj_arg_name: str = "input"   # keyword name of those projections' input
    attn_norm_name: str = ""       # norm before attention: ln1.hook_normalized is its output
    mlp_norm_name: str = ""        # norm before the MLP: hook_mlp_in its input, ln2.hook_normalized its output

    @abstractmethod
    def qkv_site(self, attn: nn.Module, kind: str) -> Site:
        """Site of ``attn.hook_q|k|v`` (``kind``) inside the attention module ``attn``."""

    def attn_contribution_module(self, block: nn.Module) -> nn.Module:
        """The module whose output the block adds to the residual after attention (hook_attn_out)."""
        return get_module(block, self.attn_name)

    def mlp_contribution_module(self, block: nn.Module) -> nn.Module:
        """The module whose output the block adds to the residual after the MLP (hook_mlp_out)."""
        return get_module(block, "mlp")

    def site(self, point: HookPoint) -> Site:
        """Where ``point`` is read and written."""
        block = self.blocks()[point.layer]
        attn = get_module(block, self.attn_name)
        kind = point.kind
        if kind == H.RESID_PRE:
            return InputSite(block)
        if kind == H.RESID_POST:
            return OutputSite(block)
        if kind in (H.ATTN_Q, H.ATTN_K, H.ATTN_V):
            return self.qkv_site(attn, kind)
        if kind == H.ATTN_Z:
            return InputSite(get_module(attn, self.out_proj_name), heads_view(self.n_heads, self.d_head),
                             arg_name=self.proj_arg_name)
        if kind == H.ATTN_PATTERN:
            return self.pattern_site(point.layer)
        if kind == H.ATTN_OUT:
            return OutputSite(self.attn_contribution_module(block))
        if kind == H.RESID_MID:
            return ResidMidSite(block, self.attn_contribution_module(block))
        if kind == H.LN1_NORMALIZED:
            return OutputSite(self.norm_module("attn", point.layer))
        if kind == H.MLP_IN:
            return InputSite(self.norm_module("mlp", point.layer))
        if kind == H.LN2_NORMALIZED:
            return OutputSite(self.norm_module("mlp", point.layer))
        if kind == H.MLP_POST:
            return InputSite(get_module(block, self.mlp_out_proj_name), arg_name=self.proj_arg_name)
        return OutputSite(self.mlp_contribution_module(block))

    def pattern_site(self, layer: int) -> PatternSite:
        return PatternSite(self.attention_module(layer))

    def hook_shape(self, point: HookPoint, seq_len: int | None = None) -> tuple[int, ...]:
        """Trailing shape of one token's value; for ``hook_pattern`` the value of one query
        position, ``(n_heads, key_pos)`` with ``key_pos = seq_len`` (default: the context length)."""
        from saelab.models import hook_points as H

        if point.kind == ATTN_PATTERN:
            return (self.n_heads, int(seq_len or self.context_length))
        if point.kind in (H.ATTN_Q, ATTN_Z):
            return (self.n_heads, self.d_head)
        if point.kind in (H.ATTN_K, H.ATTN_V):
            return (self.n_kv_heads, self.d_head)
        if point.kind == H.MLP_POST:
            return (self.d_mlp,)
        return (self.d_model,)

    @property
    def context_length(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", None) or self.config.n_positions)

    # --- weights -----------------------------------------------------------------------------
    @abstractmethod
    def qkv_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``W_Q [n_heads, d_model, d_head]``, ``W_K``/``W_V [n_kv_heads, d_model, d_head]`` (not expanded)."""

    @abstractmethod
    def qkv_biases(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``b_Q [n_heads, d_head]``, ``b_K``/``b_V [n_kv_heads, d_head]``, None where absent."""

    @abstractmethod
    def out_projection(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``W_O [n_heads, d_head, d_model]`` and ``b_O [d_model]`` (None where absent)."""

    def norm_module(self, which: str, layer: int | None = None) -> nn.Module:
        """The norm module ``which`` of block ``layer``: ``"attn"`` (before attention), ``"mlp"`` (before
        the MLP; Gemma 2/3: ``pre_feedforward_layernorm``) or ``"final"`` (no layer)."""
        if which == "final":
            return self.final_norm_module()
        name = {"attn": self.attn_norm_name, "mlp": self.mlp_norm_name}[which]
        return get_module(self.blocks()[layer], name)

    def norm_spec(self, which: str, layer: int | None = None) -> NormSpec:
        """``norm_module(which, layer)`` as data (``which``: ``"attn"``, ``"mlp"`` or ``"final"``)."""
        return self.spec_of_norm(self.norm_module(which, layer))

    @abstractmethod
    def spec_of_norm(self, module: nn.Module) -> NormSpec:
        """One of this family's norm modules as a ``NormSpec``."""

    def qk_norm_spec(self, layer: int) -> tuple[NormSpec, NormSpec] | None:
        """Per-head norms applied to queries and keys after ``hook_q``/``hook_k`` (Gemma 3), else None."""
        return None

    def attn_out_norm(self, layer: int) -> nn.Module | None:
        """A norm applied to the attention output before it joins the residual (Gemma 2), else None."""
        return None

    def _zeros(self, *shape: int) -> torch.Tensor:
        ref = self.unembed_module().weight
        return torch.zeros(*shape, dtype=ref.dtype, device=ref.device)

    def check_layout(self) -> None:
        """Touch every module the hook sites use, so a foreign layout fails at load time."""
        from saelab.models.hook_points import HOOK_KINDS

        if self.n_layers < 1:
            raise ModelLayoutError(f"{type(self.model).__name__} has no transformer blocks")
        for kind in HOOK_KINDS:
            self.site(HookPoint(0, kind))
