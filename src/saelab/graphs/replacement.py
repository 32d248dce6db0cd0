"""The local replacement model of one prompt (Ameisen et al. 2025): every MLP replaced by its transcoder,
with everything that is not linear in the residual stream frozen at its value on the clean run.

On the clean run of the real model it records the block-0 input (the token embeddings, position
embeddings and Gemma's sqrt(d_model) scale included), every attention pattern, each transcoder's input
and each MLP's true output. Then, per block ``L`` and position ``p``:

- the transcoder's latents ``a[L, p]`` are constants (the *feature nodes* where they are non-zero; at
  special tokens, BOS/EOS/PAD, which transcoders are trained without, no features: the MLP output there
  is kept whole in the error node);
- the *error node* ``e[L, p] = mlp_out − (a @ W_dec + b_dec + x @ W_skip)`` is a constant too, so the
  replacement's MLP output equals the real one on the clean run;
- attention patterns are constants: a head's output is the pattern-weighted sum of its value vectors,
  linear in the residual stream (queries, keys, rotary embeddings, soft-caps and sliding windows only
  shape the pattern);
- every norm's denominator (LayerNorm's sqrt(var + eps), RMSNorm's sqrt(mean(x²) + eps)) is frozen per
  position; its centring (LayerNorm), scale and bias stay, so a frozen norm is affine.

What remains is affine in the block-0 input and the MLP writes (``a @ W_dec + b_dec + e``), with the skip
terms ``x @ W_skip`` as linear paths: ``run`` computes it for a batch of inputs (the attribution's backward
passes go through it). Works for every family the model adapters support: GPT-2 and GPT-NeoX (LayerNorm,
parallel or sequential blocks), Llama/Mistral/Qwen2 and Gemma (RMSNorm; Gemma's ``1 + weight``), Gemma 2/3
(norms before *and* after attention and MLP: the post-attention norm is frozen; ``hook_mlp_out`` is the
post-feed-forward norm's output, what transcoders predict there). Gemma 2's final logit soft-cap is not
linear: ``logits`` applies it; attributions target the logits before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.errors import SaelabError
from saelab.graphs.transcoders import check_transcoders
from saelab.models import LoadedModel
from saelab.models import hook_points as H
from saelab.models.norms import NormSpec
from saelab.sae.base import SAE
from saelab.splicing import ordinary_token_mask


class PromptError(SaelabError):
    """A prompt that cannot be traced: empty, batched or longer than the model's context."""


@dataclass
class FrozenNorm:
    """A norm with its denominator frozen per position: ``inv [pos, 1]`` = 1 / sqrt(var (or mean square) + eps)
    of its input on the clean run (set by the replacement model's calibration pass)."""

    spec: NormSpec
    scale: Tensor
    bias: Tensor | None
    inv: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        """``[batch, pos, d] -> [batch, pos, d]``; the first call (batch 1, the clean run) sets ``inv``."""
        if self.spec.kind == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        if self.inv is None:
            if x.shape[0] != 1:
                raise SaelabError("internal: a frozen norm must be calibrated on the clean run (batch 1) first")
            self.inv = torch.rsqrt(x.detach().pow(2).mean(-1, keepdim=True) + self.spec.eps)[0]
        out = x * self.inv * self.scale
        return out if self.bias is None else out + self.bias


def frozen_norm(spec: NormSpec, dtype: torch.dtype, device) -> FrozenNorm:
    bias = None if spec.bias is None else spec.bias.to(device=device, dtype=dtype)
    return FrozenNorm(spec, spec.scale.to(device=device, dtype=dtype), bias)


@dataclass
class FrozenBlock:
    """One block's frozen pieces. ``W_V [n_kv, d_model, d_head]``, ``b_V [n_kv, d_head] | None``,
    ``W_O [n_heads, d_head, d_model]``, ``b_O [d_model]``, ``pattern [n_heads, q, k]``; norms before attention
    (``ln1``), after it (``attn_out``, Gemma 2/3) and before the MLP (``ln2``, when the transcoder reads the
    norm's output); ``W_skip [d_in, d_out]`` of a skip transcoder."""

    ln1: FrozenNorm
    W_V: Tensor
    b_V: Tensor | None
    W_O: Tensor
    b_O: Tensor
    pattern: Tensor
    attn_out: FrozenNorm | None
    ln2: FrozenNorm | None
    W_skip: Tensor | None


class ReplacementModel:
    """The local replacement model of ``lm`` on ``input_ids [pos]`` (see the module docstring).

    Attributes (all in ``dtype``): ``embeddings [pos, d_model]`` (block-0 input), ``acts`` per block
    ``[pos, d_sae]`` (zero rows at special tokens), ``errors [n_layers, pos, d_model]``, ``mlp_inputs`` per
    block ``[pos, d_in]`` and ``real_logits [pos, d_vocab]`` of the real model's clean run;
    ``max_logit_error``: max |replacement − real| of the logits (float rounding only).
    """

    def __init__(self, lm: LoadedModel, transcoders: list[SAE], input_ids: Tensor | list[int],
                 dtype: torch.dtype = torch.float32):
        self.lm = lm
        self.transcoders = check_transcoders(lm, transcoders)
        self.dtype = dtype
        ids = lm.as_input_ids(input_ids)
        if ids.shape[0] != 1:
            raise PromptError(f"a replacement model traces one prompt; got a batch of {ids.shape[0]}")
        n_pos, context = ids.shape[1], lm.adapter.context_length
        if n_pos < 1:
            raise PromptError("the prompt has no tokens; give at least one")
        if n_pos > context:
            raise PromptError(f"the prompt has {n_pos} tokens but {lm.name} reads at most {context}; shorten it")
        self.input_ids = ids[0]
        self.n_layers, self.n_pos, self.d_model = lm.n_layers, n_pos, lm.d_model
        self.ordinary = ordinary_token_mask(ids, lm.special_token_ids)[0]  # [pos] bool
        self._capture(ids)
        self._freeze()
        self._calibrate()

    # ----- construction -----
    def _cast(self, t: Tensor) -> Tensor:
        return t.detach().to(device=self.device, dtype=self.dtype)

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def _capture(self, ids: Tensor) -> None:
        """The real model's clean run: embeddings, patterns, transcoder inputs and MLP outputs."""
        L = self.n_layers  # noqa: N806
        sources = [sae.cfg.hook_name for sae in self.transcoders]
        hooks = ["blocks.0.hook_resid_pre", *(f"blocks.{layer}.{H.ATTN_PATTERN}" for layer in range(L)),
                 *dict.fromkeys(sources), *(f"blocks.{layer}.{H.MLP_OUT}" for layer in range(L))]
        with torch.no_grad():
            logits, cache = self.lm.run_with_cache(ids, hooks)
        self.real_logits = self._cast(logits[0])
        self.embeddings = self._cast(cache["blocks.0.hook_resid_pre"][0])
        self.patterns = [self._cast(cache[f"blocks.{layer}.{H.ATTN_PATTERN}"][0]) for layer in range(L)]
        self.mlp_inputs = [self._cast(cache[hook][0]) for hook in sources]
        self.mlp_outputs = [self._cast(cache[f"blocks.{layer}.{H.MLP_OUT}"][0]) for layer in range(L)]
        with torch.no_grad():
            self.acts = [sae.encode(x.to(sae.W_dec.dtype)).to(self.dtype) * self.ordinary[:, None]
                         for sae, x in zip(self.transcoders, self.mlp_inputs, strict=True)]

    def _calibrate(self) -> None:
        """Run the frozen model once on the clean inputs: fixes every norm's denominator and the error nodes,
        ``e = mlp_out − (a @ W_dec + b_dec) − x @ W_skip`` with ``x`` the replacement's own MLP input (equal to the
        real one up to the real model's float rounding, which the error therefore absorbs too)."""
        writes = []

        def write(layer: int, x: Tensor) -> Tensor:
            writes.append(self.mlp_outputs[layer] - self.skip(self.transcoders[layer], x[0]))
            return writes[-1][None]

        with torch.no_grad():
            sites = self.run(self.embeddings[None], write)
        self.errors = torch.stack([w - self.decode(sae, a) for w, sae, a in zip(writes, self.transcoders, self.acts,
                                                                               strict=True)])
        self.max_logit_error = float((self.logits(sites[-1][0]) - self.real_logits).abs().max())

    def _freeze(self) -> None:
        lm, dtype, device = self.lm, self.dtype, self.device
        self.blocks: list[FrozenBlock] = []
        for layer, sae in enumerate(self.transcoders):
            _, _, W_V = lm.adapter.qkv_weights(layer)  # noqa: N806
            b_V = lm.adapter.qkv_biases(layer)[2]  # noqa: N806
            post = lm.attn_out_norm(layer)
            reads_norm = H.parse_hook_name(sae.cfg.hook_name, self.n_layers).kind == H.LN2_NORMALIZED
            self.blocks.append(FrozenBlock(
                ln1=frozen_norm(lm.norm("attn", layer), dtype, device),
                W_V=self._cast(W_V), b_V=None if b_V is None else self._cast(b_V),
                W_O=self._cast(lm.W_O(layer)), b_O=self._cast(lm.b_O(layer)), pattern=self.patterns[layer],
                attn_out=None if post is None else frozen_norm(lm.adapter.spec_of_norm(post), dtype, device),
                ln2=frozen_norm(lm.norm("mlp", layer), dtype, device) if reads_norm else None,
                W_skip=self._cast(sae.W_skip) if sae.cfg.skip_connection else None))
        self.final_norm = frozen_norm(lm.norm("final"), dtype, device)
        W_U, b_U = lm.W_U, lm.b_U  # noqa: N806
        self.W_U, self.b_U = self._cast(W_U), self._cast(b_U)

    # ----- transcoder pieces, in the replacement's dtype -----
    def decode(self, sae: SAE, acts: Tensor) -> Tensor:
        """``acts [..., d_sae] -> acts @ W_dec + b_dec [..., d_out]`` (no skip term)."""
        return acts @ self._cast(sae.W_dec) + self._cast(sae.b_dec)

    def skip(self, sae: SAE, x: Tensor) -> Tensor | int:
        """A skip transcoder's ``x @ W_skip`` (0 for others)."""
        return x @ self._cast(sae.W_skip) if sae.cfg.skip_connection else 0

    def encoder(self, layer: int) -> tuple[Tensor, Tensor]:
        """``(W [d_in, d_sae], b [d_sae])`` of block ``layer``'s transcoder: pre-activations ``x @ W + b``."""
        W, b = self.transcoders[layer].linear_encoder()  # noqa: N806
        return self._cast(W), self._cast(b)

    def decoder_rows(self, layer: int, features: Tensor) -> Tensor:
        """``[n, d_out]`` decoder rows of block ``layer``'s transcoder for feature indices ``features [n]``."""
        return self._cast(self.transcoders[layer].W_dec[features.to(self.transcoders[layer].W_dec.device)])

    def clean_writes(self, acts: list[Tensor] | None = None) -> list[Tensor]:
        """Per block the MLP write without the skip term, ``acts @ W_dec + b_dec + error`` ``[pos, d_model]``,
        for the clean latents or ``acts`` (e.g. some features ablated)."""
        acts = self.acts if acts is None else acts
        return [self.decode(sae, a) + e for sae, a, e in zip(self.transcoders, acts, self.errors, strict=True)]

    # ----- the frozen linear model -----
    def attention(self, layer: int, resid: Tensor, head_mask: Tensor | None = None) -> Tensor:
        """What block ``layer``'s attention adds to ``resid [batch, pos, d_model]``, patterns and norms frozen;
        ``head_mask [n_heads]`` multiplies each head's output (0 removes a head)."""
        block = self.blocks[layer]
        x = block.ln1(resid)
        v = torch.einsum("bpd,kde->bpke", x, block.W_V)
        if block.b_V is not None:
            v = v + block.b_V
        groups = block.pattern.shape[0] // v.shape[2]
        v = v.repeat_interleave(groups, dim=2) if groups > 1 else v  # [batch, pos, n_heads, d_head]
        z = torch.einsum("hqk,bkhe->bqhe", block.pattern, v)
        if head_mask is not None:
            z = z * head_mask.to(z)[:, None]
        out = torch.einsum("bqhe,hed->bqd", z, block.W_O) + block.b_O
        return out if block.attn_out is None else block.attn_out(out)

    def run(self, embeddings: Tensor, writes: list[Tensor] | Callable[[int, Tensor], Tensor], upto: int | None = None,
            head_mask: Tensor | None = None) -> list[Tensor]:
        """The frozen model on ``embeddings [batch, pos, d_model]`` (block-0 input) and per-block MLP writes
        ``[batch, pos, d_model]`` (``clean_writes``: features, b_dec and error; the skip terms are added here).

        Returns the *sites* attributions read: ``sites[L]`` the MLP input of block ``L`` (what its transcoder
        reads, ``[batch, pos, d_in]``) for ``L <= upto`` and, when ``upto`` is ``n_layers`` (the default), a last
        entry: the final-normed residual ``[batch, pos, d_model]`` the unembedding reads. ``head_mask
        [n_layers, n_heads]`` scales each head's output. ``writes`` may also be a function ``(layer, x) -> write``
        of the MLP input (the calibration pass), and the first call fixes the norms' denominators.
        """
        upto = self.n_layers if upto is None else upto
        parallel = self.lm.adapter.parallel_attn_mlp
        resid, sites = embeddings, []
        for layer, block in enumerate(self.blocks):
            attn = self.attention(layer, resid, None if head_mask is None else head_mask[layer])
            mid = resid + attn
            x = mid if not parallel else resid
            x = block.ln2(x) if block.ln2 is not None else x
            sites.append(x)
            if layer == upto:
                return sites
            write = writes(layer, x) if callable(writes) else writes[layer]
            resid = resid + attn + write + (0 if block.W_skip is None else x @ block.W_skip)
        sites.append(self.final_norm(resid))
        return sites

    def logits(self, final: Tensor) -> Tensor:
        """Logits ``[..., d_vocab]`` from the final-normed residual ``[..., d_model]`` (soft-cap applied)."""
        logits = final @ self.W_U + self.b_U
        cap = self.lm.logit_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def forward_logits(self, acts: list[Tensor] | None = None, head_mask: Tensor | None = None) -> Tensor:
        """``[pos, d_vocab]`` logits of the replacement model (equal to the real model's for the clean ``acts``)."""
        with torch.no_grad():
            sites = self.run(self.embeddings[None], [w[None] for w in self.clean_writes(acts)], head_mask=head_mask)
        return self.logits(sites[-1][0])

    def active_features(self) -> tuple[Tensor, Tensor]:
        """The feature nodes: ``index [n, 3]`` rows (layer, position, feature) in that order and their
        activations ``[n]``."""
        rows, values = [], []
        for layer, acts in enumerate(self.acts):
            pos, feat = torch.nonzero(acts, as_tuple=True)
            rows.append(torch.stack([torch.full_like(pos, layer), pos, feat], dim=1))
            values.append(acts[pos, feat])
        return torch.cat(rows), torch.cat(values)
