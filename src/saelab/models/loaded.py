"""``LoadedModel``: a Hugging Face causal LM, its tokenizer and its family adapter, with
TransformerLens-style reading and writing of activations.

Reading: ``logits, cache = lm.run_with_cache(input_ids, ["blocks.1.attn.hook_z"])``; with
``stop_at_layer="auto"`` the forward pass stops after the last block the hooks need and logits are
None. Writing: ``lm.run_with_hooks(input_ids, {"blocks.1.hook_resid_post": fn})`` where ``fn(value)``
returns a replacement (or None to keep the value). Both at once, or around ``model.generate``::

    with lm.hooks(edits={...}, capture=[...]) as session:
        lm.model.generate(input_ids, max_new_tokens=5)
    session.cache

The model is put in eval mode and its parameters are frozen (``requires_grad=False``); gradients
with respect to activations still flow when ``grad=True`` and an edit makes a value require grad.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from saelab.errors import SaelabError
from saelab.models import hook_points as H
from saelab.models.adapters import Adapter, adapter_for
from saelab.models.adapters.base import expand_kv
from saelab.models.hooking import EditFn, HookSession, StopForward
from saelab.models.norms import NormSpec

#: config fields that describe how a model was saved, not what it computes
FINGERPRINT_IGNORED = frozenset({"architectures", "transformers_version"})

TokensLike = torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]]


class LoadedModel:
    """A causal LM ready for hooking; see the module docstring. Build with ``load_model`` or
    ``LoadedModel.from_hf(model, tokenizer)``."""

    def __init__(self, model: nn.Module, tokenizer=None, adapter: Adapter | None = None, name: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = adapter or adapter_for(model)
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.config = self.adapter.config  # the language model's settings (text_config of a wrapper)
        model.eval()
        model.requires_grad_(False)
        a = self.adapter
        self.n_layers, self.d_model, self.n_heads = a.n_layers, a.d_model, a.n_heads
        self.n_kv_heads, self.d_head, self.d_vocab, self.d_mlp = a.n_kv_heads, a.d_head, a.d_vocab, a.d_mlp

    @classmethod
    def from_hf(cls, model: nn.Module, tokenizer=None, name: str | None = None) -> LoadedModel:
        """Wrap an already-built ``PreTrainedModel`` (e.g. one initialised from a config in a test)."""
        return cls(model, tokenizer, name=name)

    def __repr__(self) -> str:
        return (f"LoadedModel({self.name!r}, family={self.adapter.family}, n_layers={self.n_layers}, "
                f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"d_head={self.d_head}, d_vocab={self.d_vocab})")

    # --- basics ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings."""
        return self.adapter.embed_module().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.embed_module().weight.dtype

    @property
    def special_token_ids(self) -> list[int]:
        """BOS, EOS and PAD ids (tokenizer first, then config), without duplicates or Nones."""
        ids: list[int] = []
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            for source in (self.tokenizer, self.config):
                value = getattr(source, attr, None) if source is not None else None
                values = value if isinstance(value, (list, tuple)) else [value]
                ids += [int(v) for v in values if v is not None and int(v) not in ids]
        return ids

    def _token_id(self, attr: str) -> int | None:
        for source in (self.tokenizer, self.config):
            value = getattr(source, attr, None) if source is not None else None
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if value is not None:
                return int(value)
        return None

    @property
    def bos_token_id(self) -> int | None:
        """The tokenizer's BOS id (else the config's), or None."""
        return self._token_id("bos_token_id")

    @property
    def eos_token_id(self) -> int | None:
        return self._token_id("eos_token_id")

    def fingerprint(self) -> str:
        """A cheap identity of config and weights (sha256 of the config without private fields such as
        the load path and bookkeeping that does not change the model (``FINGERPRINT_IGNORED``: a GGUF
        file and its converted folder agree) and, per parameter, its name, shape and the sum of its first 4096 values)."""
        config = {k: v for k, v in self.model.config.to_dict().items()
                  if not k.startswith("_") and k not in FINGERPRINT_IGNORED}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
        for name, param in self.model.named_parameters():
            head = param.detach().reshape(-1)[:4096]
            total = float(head.double().sum()) if head.device.type != "meta" else 0.0
            digest.update(f"{name}:{tuple(param.shape)}:{total!r};".encode())
        return digest.hexdigest()

    def hook_names(self) -> list[str]:
        """Every hook name of this model, block by block."""
        return H.all_hook_names(self.n_layers)

    def parse_hooks(self, hooks: Iterable[str] | str) -> list[H.HookPoint]:
        return H.parse_hook_list(list(hooks) if not isinstance(hooks, str) else hooks, self.n_layers, self.name)

    def hook_shape(self, name: str, seq_len: int | None = None) -> tuple[int, ...]:
        """Per-token trailing shape: ``(d_model,)``, ``(n_heads, d_head)`` for hook_q/hook_z,
        ``(n_kv_heads, d_head)`` for hook_k/hook_v, ``(d_mlp,)`` for mlp.hook_post and
        ``(n_heads, seq_len)`` for hook_pattern (one query position)."""
        return self.adapter.hook_shape(H.parse_hook_name(name, self.n_layers, self.name), seq_len)

    def hook_d_in(self, name: str) -> int:
        """Width of the hook's value flattened per token (the SAE input size; n_heads * d_head for hook_z)."""
        point = H.parse_hook_name(name, self.n_layers, self.name)
        if point.kind == H.ATTN_PATTERN:
            raise SaelabError(f"hook {name!r}: attention patterns have no fixed per-token width")
        return int(np.prod(self.adapter.hook_shape(point)))

    # --- tokens ------------------------------------------------------------------------------------
    def as_input_ids(self, tokens: TokensLike) -> torch.Tensor:
        """``[batch, pos]`` (or ``[pos]``) token ids of any array-like -> long tensor on ``self.device``."""
        ids = tokens if isinstance(tokens, torch.Tensor) else torch.as_tensor(np.asarray(tokens))
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise SaelabError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2:
            raise SaelabError(f"input_ids must have shape [batch, pos] or [pos], got {tuple(ids.shape)}")
        return ids.to(device=self.device, dtype=torch.long)

    def tokenize(self, texts: str | Sequence[str], prepend_bos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[batch, pos]`` and attention mask ``[batch, pos]`` (right-padded), special tokens
        added only as BOS when ``prepend_bos`` and the tokenizer has one."""
        if self.tokenizer is None:
            raise SaelabError(f"{self.name} was loaded without a tokenizer; pass token ids instead of text")
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        bos = self.bos_token_id
        if prepend_bos and bos is not None:
            rows = [[bos, *row] for row in rows]
        width = max(1, max(len(r) for r in rows))
        pad = next(i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0) if i is not None)
        ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.as_tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        return ids.to(self.device), mask.to(self.device)

    # --- running -------------------------------------------------------------------------------
    def resolve_stop(self, points: list[H.HookPoint], stop_at_layer: int | str | None) -> int | None:
        """None (full pass), ``"auto"`` (just after the last block ``points`` need) or a block index
        ``0..n_layers`` (blocks ``0..stop_at_layer-1`` run; ``n_layers`` skips only the unembedding)."""
        if stop_at_layer is None:
            return None
        if stop_at_layer == "auto":
            return max((p.stop_layer for p in points), default=0)
        if isinstance(stop_at_layer, bool) or not isinstance(stop_at_layer, int) or not 0 <= stop_at_layer <= self.n_layers:
            raise SaelabError(f"stop_at_layer={stop_at_layer!r} is not accepted; use None, 'auto' or an "
                              f"integer in 0..{self.n_layers}")
        late = [p.name for p in points if p.stop_layer > stop_at_layer]
        if late:
            raise SaelabError(f"stop_at_layer={stop_at_layer} stops before hooks {late} are computed; "
                              f"use a larger value or 'auto'")
        return stop_at_layer

    def _forward(self, session: HookSession, input_ids: torch.Tensor, attention_mask, grad: bool,
                 forward_kwargs: dict) -> torch.Tensor | None:
        if attention_mask is not None:
            attention_mask = self.as_input_ids(attention_mask)
        with torch.set_grad_enabled(grad), session:
            try:
                out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **forward_kwargs)
            except StopForward:
                return None
        return None if session.stop_at_layer is not None else out.logits

    def run_with_cache(self, input_ids: TokensLike, hooks: Iterable[str] | str,
                       stop_at_layer: int | str | None = None, attention_mask: TokensLike | None = None,
                       grad: bool = False, **forward_kwargs) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Run ``input_ids [batch, pos]`` and return ``(logits [batch, pos, d_vocab] | None, cache)``,
        ``cache[name]`` in TransformerLens shape. Logits are None when ``stop_at_layer`` is set."""
        input_ids = self.as_input_ids(input_ids)
        points = self.parse_hooks(hooks)
        stop = self.resolve_stop(points, stop_at_layer)
        session = HookSession(self.adapter, capture=[p.name for p in points], stop_at_layer=stop,
                              detach=not grad, model_name=self.name)
        logits = self._forward(session, input_ids, attention_mask, grad, forward_kwargs)
        return logits, session.cache

    def run_with_hooks(self, input_ids: TokensLike, edits: Mapping[str, EditFn],
                       attention_mask: TokensLike | None = None, grad: bool = False,
                       **forward_kwargs) -> torch.Tensor:
        """Run with ``edits`` (hook name -> ``fn(value) -> replacement | None``); return logits
        ``[batch, pos, d_vocab]``."""
        session = HookSession(self.adapter, edits=edits, model_name=self.name)
        return self._forward(session, self.as_input_ids(input_ids), attention_mask, grad, forward_kwargs)

    def run_to_unembed(self, input_ids: TokensLike, edits: Mapping[str, EditFn] | None = None,
                       capture: Iterable[str] = (), attention_mask: TokensLike | None = None,
                       grad: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run with ``edits`` up to the unembedding and return ``(resid_final [batch, pos, d_model], cache)``:
        the final-normed residual stream the unembedding reads (``unembed`` turns it into logits) and the
        ``capture``d hooks. The ``[batch, pos, d_vocab]`` logits are never formed, which matters for
        large vocabularies (Gemma 3: 262k tokens)."""
        session = HookSession(self.adapter, edits=edits, capture=capture, detach=not grad, model_name=self.name)
        stash: dict[str, torch.Tensor] = {}

        def grab(module, args, kwargs):
            stash["resid"] = args[0] if args else kwargs["input"]
            raise StopForward

        handle = self.adapter.unembed_module().register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self._forward(session, self.as_input_ids(input_ids), attention_mask, grad, {})
        finally:
            handle.remove()
        if "resid" not in stash:
            raise SaelabError(f"{self.name}: the forward pass ended without reaching the unembedding")
        return stash["resid"], session.cache

    def unembed(self, resid_final: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., d_vocab]`` from the final-normed residual ``[..., d_model]`` (``run_to_unembed``),
        with the family's logit soft-cap applied; equal to the model's own logits."""
        logits = self.adapter.unembed_module()(resid_final)
        cap = self.logit_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def hooks(self, edits: Mapping[str, EditFn] | None = None, capture: Iterable[str] | None = None,
              detach: bool = True) -> HookSession:
        """Context manager installing ``edits`` and ``capture`` for any call of ``self.model`` inside it
        (e.g. ``generate``); captured values land in the returned session's ``cache``."""
        return HookSession(self.adapter, edits=edits, capture=capture, detach=detach, model_name=self.name)

    # --- weights ----------------------------------------------------------------------------------
    def _check_layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise SaelabError(f"layer={layer!r} is out of range; {self.name} has layers 0..{self.n_layers - 1}")
        return layer

    def W_Q(self, layer: int) -> torch.Tensor:
        """``[n_heads, d_model, d_head]`` (before rotary embeddings)."""
        return self.adapter.qkv_weights(self._check_layer(layer))[0]

    def W_K(self, layer: int) -> torch.Tensor:
        """``[n_heads, d_model, d_head]``, expanded per query head under grouped-query attention."""
        return expand_kv(self.adapter.qkv_weights(self._check_layer(layer))[1], self.n_heads)

    def W_V(self, layer: int) -> torch.Tensor:
        """``[n_heads, d_model, d_head]``, expanded per query head under grouped-query attention."""
        return expand_kv(self.adapter.qkv_weights(self._check_layer(layer))[2], self.n_heads)

    def _bias(self, layer: int, index: int) -> torch.Tensor:
        b = self.adapter.qkv_biases(self._check_layer(layer))[index]
        if b is None:
            return self.adapter._zeros(self.n_heads, self.d_head)
        return expand_kv(b, self.n_heads)

    def b_Q(self, layer: int) -> torch.Tensor:
        """``[n_heads, d_head]`` (zeros if the family has no query bias)."""
        return self._bias(layer, 0)

    def b_K(self, layer: int) -> torch.Tensor:
        return self._bias(layer, 1)

    def b_V(self, layer: int) -> torch.Tensor:
        return self._bias(layer, 2)

    def W_O(self, layer: int) -> torch.Tensor:
        """``[n_heads, d_head, d_model]``: head ``h``'s output is ``z[..., h, :] @ W_O[h]``."""
        return self.adapter.out_projection(self._check_layer(layer))[0]

    def b_O(self, layer: int) -> torch.Tensor:
        """``[d_model]`` (zeros if absent): ``hook_attn_out = sum_h z_h @ W_O[h] + b_O`` (Gemma 2: before
        ``attn_out_norm(layer)``)."""
        b = self.adapter.out_projection(self._check_layer(layer))[1]
        return self.adapter._zeros(self.d_model) if b is None else b

    def qk_norm(self, layer: int) -> tuple[NormSpec, NormSpec] | None:
        """Gemma 3's per-head query and key norms (over ``d_head``), applied after ``hook_q``/``hook_k``
        and before rotary embeddings; None for families without them."""
        return self.adapter.qk_norm_spec(self._check_layer(layer))

    def attn_out_norm(self, layer: int) -> nn.Module | None:
        """The norm between the attention output projection and the residual (Gemma 2), else None."""
        return self.adapter.attn_out_norm(self._check_layer(layer))

    @property
    def W_U(self) -> torch.Tensor:
        """``[d_model, d_vocab]``."""
        return self.adapter.unembed_module().weight.detach().T

    @property
    def b_U(self) -> torch.Tensor:
        """``[d_vocab]`` (zeros if the unembedding has no bias)."""
        bias = self.adapter.unembed_module().bias
        return self.adapter._zeros(self.d_vocab) if bias is None else bias.detach()

    @property
    def W_E(self) -> torch.Tensor:
        """``[d_vocab, d_model]`` (the raw table; Gemma multiplies it by sqrt(d_model) in the forward)."""
        return self.adapter.embed_module().weight.detach()

    @property
    def final_norm(self) -> nn.Module:
        """The module applied to the last residual stream before ``W_U``."""
        return self.adapter.final_norm_module()

    @property
    def logit_softcap(self) -> float | None:
        """Gemma 2's final logit soft-cap ``c`` (logits = c * tanh(x / c)), else None."""
        return getattr(self.config, "final_logit_softcapping", None)

    def norm(self, which: str, layer: int | None = None) -> NormSpec:
        """The norm before attention (``"attn"``) or the MLP (``"mlp"``) of ``layer``, or ``"final"``."""
        if which not in ("attn", "mlp", "final"):
            raise SaelabError(f"norm {which!r} is not accepted; choose one of: attn, mlp, final")
        if which != "final":
            self._check_layer(layer)
        return self.adapter.norm_spec(which, layer)

    def fold_layer_norm(self, W: torch.Tensor, b: torch.Tensor | None, which: str,
                        layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold the elementwise weights of ``norm(which, layer)`` into ``W [..., d_model, d_out]`` and
        ``b [..., d_out]``: ``norm(x) @ W + b == norm.normalize(x) @ W' + b'`` exactly (float32)."""
        return self.norm(which, layer).fold(W, b)

    def folded_W_U(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W [d_model, d_vocab], b [d_vocab])`` with pre-softcap logits
        ``= self.norm("final").normalize(resid_final) @ W + b``."""
        return self.fold_layer_norm(self.W_U, self.b_U, "final")
