"""Recursive DFA: from an attention latent at (dest, src), attribute the value-side input at ``src``
to the latents of an upstream SAE (Kissane et al. 2024).

Approximation (stated in every result): the attention pattern and the attention layer's input
norm are *frozen* at their values on this prompt. The norm's divisor at ``src`` (``sqrt(var + eps)``
for LayerNorm, ``sqrt(mean(x²) + eps)`` for RMSNorm) is then a constant, the norm is linear in the
residual stream, and the source term ``Σ_h DFA[h, dest, src]`` splits exactly over any additive
decomposition of ``resid_pre[src]``:

    Σ_h DFA[h, dest, src] = Σ_g act_g · (d_g · r) + (error + b_dec) · r + value_bias_term,

with ``r [d_model] = P · Σ_h pattern[h, dest, src] · W'_V[h] @ w_{f,h} / divisor`` (``P`` the
LayerNorm centring, ``W'_V`` the value weights with the norm's scale folded in) and
``value_bias_term = Σ_h pattern[h, dest, src] · b'_V[h] · w_{f,h}``.

Upstream SAEs: one on the layer's input residual stream (``blocks.L.hook_resid_pre``, or
``blocks.{L-1}.hook_resid_post``, the same tensor): the split above is exact, its error and
``b_dec`` are reported. Or an attention SAE of an earlier layer ``L' < L``: latent ``g`` writes
``d_g = Σ_k W_dec[g, k] @ W_O[L'][k]`` to the residual (its direct path only; the rest of the
residual stream is not attributed), so no exact total is claimed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.attention.dfa import (
    AttentionRun,
    as_prompt_ids,
    check_position,
    run_attention,
    source_terms,
    token_strings,
)
from saelab.attention.geometry import AttentionSAE
from saelab.errors import SaelabError
from saelab.models import parse_hook_name
from saelab.models.hook_points import ATTN_Z, RESID_POST, RESID_PRE
from saelab.sae.base import SAE

APPROXIMATION = ("frozen attention pattern and frozen attention-input norm divisor at the source position; "
                 "value path only (queries and keys are not attributed)")


@dataclass(frozen=True)
class Upstream:
    """An upstream SAE read at ``hook_name``; ``directions [d_sae, d_model]`` are what each latent writes
    to the residual stream; ``exact``: it decomposes the whole attention input."""

    sae: SAE
    hook_name: str
    directions: Tensor
    exact: bool


def bind_upstream(asae: AttentionSAE, sae: SAE) -> Upstream:
    """Check that ``sae`` can feed layer ``asae.layer``'s values (see the module docstring)."""
    lm, L = asae.lm, asae.layer  # noqa: N806
    name = sae.cfg.hook_name
    accepted = (f"blocks.{L}.{RESID_PRE}" + (f", blocks.{L - 1}.{RESID_POST}" if L > 0 else "")
                + (f" or blocks.0..{L - 1}.{ATTN_Z}" if L > 0 else ""))
    if not name:
        raise SaelabError(f"upstream SAE {sae.cfg.name!r} records no hook_name; accepted: {accepted}")
    point = parse_hook_name(name, lm.n_layers, lm.name)
    is_input = (point.kind == RESID_PRE and point.layer == L) or (point.kind == RESID_POST and point.layer == L - 1)
    if is_input:
        if sae.cfg.d_in != lm.d_model:
            raise SaelabError(f"upstream SAE {sae.cfg.name!r} has d_in={sae.cfg.d_in}; {name!r} has d_model="
                              f"{lm.d_model}")
        return Upstream(sae, name, sae.W_dec.detach().double(), exact=True)
    if point.kind == ATTN_Z and point.layer < L:
        if lm.attn_out_norm(point.layer) is not None:
            raise SaelabError(f"{lm.name}: attention outputs pass a norm before the residual stream, so an "
                              f"attention SAE's latents have no fixed residual direction; use an SAE on "
                              f"blocks.{L}.{RESID_PRE} instead")
        if sae.cfg.d_in != lm.n_heads * lm.d_head:
            raise SaelabError(f"upstream SAE {sae.cfg.name!r} has d_in={sae.cfg.d_in}; {name!r} has "
                              f"{lm.n_heads * lm.d_head}")
        W_dec = sae.W_dec.detach().double().reshape(-1, lm.n_heads, lm.d_head)  # noqa: N806
        directions = torch.einsum("ghd,hdm->gm", W_dec, lm.W_O(point.layer).double())
        return Upstream(sae, name, directions, exact=False)
    raise SaelabError(f"upstream SAE reads {name!r}, which cannot feed layer {L}'s values; accepted: {accepted}")


@dataclass
class RecursiveDFA:
    """Upstream latents' share of one source term of an attention latent's DFA.

    scores: [d_sae_upstream] act_g · (d_g · r). source_term: Σ_h DFA[h, dest, src].
    error_term, b_dec_term, value_bias_term: the rest of the exact split (None when not exact).
    """

    feature: int
    dest: int
    src: int
    tokens: list[str]
    upstream_hook: str
    scores: Tensor
    upstream_acts: Tensor
    source_term: float
    value_bias_term: float
    error_term: float | None
    b_dec_term: float | None
    exact: bool
    approximation: str = APPROXIMATION

    def to_json(self, top: int = 10) -> dict:
        order = torch.argsort(self.scores.abs(), descending=True)[:top]
        total = float(self.scores.sum()) + self.value_bias_term
        if self.exact:
            total += self.error_term + self.b_dec_term
        return {
            "feature": self.feature, "dest": self.dest, "src": self.src,
            "dest_token": self.tokens[self.dest], "src_token": self.tokens[self.src],
            "upstream_hook": self.upstream_hook, "approximation": self.approximation, "exact_split": self.exact,
            "source_term": self.source_term, "value_bias_term": self.value_bias_term,
            "error_term": self.error_term, "b_dec_term": self.b_dec_term,
            "sum_of_parts": total if self.exact else None,
            "top_upstream_latents": [{"latent": int(g), "score": float(self.scores[g]),
                                      "activation": float(self.upstream_acts[g])}
                                     for g in order if self.scores[g] != 0],
        }


def value_readout(asae: AttentionSAE, run: AttentionRun, feature: int, dest: int, src: int) -> tuple[Tensor, float]:
    """``r [d_model]`` (see module docstring) and the value-bias term, float64."""
    lm, L = asae.lm, asae.layer  # noqa: N806
    norm = lm.norm("attn", L)
    W_V, b_V = norm.fold(lm.W_V(L), lm.b_V(L))  # noqa: N806  [n_heads, d_model, d_head], [n_heads, d_head]
    w = asae.encoder_by_head()[:, :, feature]  # [n_heads, d_head]
    attn = run.pattern[:, dest, src].double()  # [n_heads]
    r = torch.einsum("h,hmd,hd->m", attn, W_V.double(), w)
    value_bias = float(torch.einsum("h,hd,hd->", attn, b_V.double(), w))
    x = run.resid_pre[src].double()
    if norm.kind == "layernorm":
        divisor = torch.sqrt((x - x.mean()).pow(2).mean() + norm.eps)
        r = r - r.mean()  # P is symmetric: (P c) · r = c · (P r)
    else:
        divisor = torch.sqrt(x.pow(2).mean() + norm.eps)
    return r / divisor, value_bias


@torch.no_grad()
def recursive_dfa(asae: AttentionSAE, upstream_sae: SAE, prompt: str | Tensor | list[int], feature: int,
                  dest: int = -1, src: int | None = None) -> RecursiveDFA:
    """Attribute the ``(dest, src)`` term of ``feature``'s DFA to ``upstream_sae``'s latents at ``src``
    (default ``src``: the source with the largest DFA term)."""
    asae.check_feature(feature)
    upstream = bind_upstream(asae, upstream_sae)
    ids = as_prompt_ids(asae, prompt)
    run = run_attention(asae, ids, extra_hooks=() if upstream.exact else (upstream.hook_name,))
    dest = check_position(dest, ids.shape[0], "dest")
    terms = source_terms(asae, run, feature)[:, dest]  # [n_heads, src]
    if src is None:
        src = int(terms.sum(0).abs().argmax())
    src = check_position(src, ids.shape[0], "src")
    if src > dest:
        raise SaelabError(f"src={src} comes after dest={dest}; attention only reads earlier positions")
    r, value_bias = value_readout(asae, run, feature, dest, src)
    x = (run.resid_pre if upstream.exact else run.extra[upstream.hook_name])[src]
    x = x.reshape(-1).to(upstream_sae.W_dec.dtype)
    acts = upstream_sae.encode(x[None])[0].double()
    scores = acts * (upstream.directions @ r)
    error_term = b_dec_term = None
    if upstream.exact:
        x_hat = upstream_sae.decode(acts[None].to(upstream_sae.W_dec.dtype))[0].double()
        error_term = float((x.double() - x_hat) @ r)
        b_dec_term = float(upstream_sae.b_dec.detach().double() @ r)
    return RecursiveDFA(feature, dest, src, token_strings(asae, ids), upstream.hook_name, scores, acts,
                        float(terms[:, src].sum()), value_bias, error_term, b_dec_term, upstream.exact)
