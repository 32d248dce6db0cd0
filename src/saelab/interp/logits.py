"""Logit effects of latents: the decoder direction mapped to the residual stream, then through the
unembedding (the final norm's weights folded in, LayerNorm centring applied).

For residual, attention-output and MLP-output SAEs the decoder row ``W_dec[f] [d_model]`` already lives
in the residual stream. For ``attn.hook_z`` SAEs it is split per head ``[n_heads, d_head]`` and
mapped through each head's ``W_O [d_head, d_model]`` and summed (Gemma 2's post-attention norm is
applied to the result, with its norm kept). Other sites (q/k/v, MLP hidden) have no direct path to
the logits and get no logit effects.

Every function takes the ``hook`` the SAE reads; the decoder writes there, except for a transcoder,
whose decoder writes its ``hook_name_out`` (``saelab.splicing.target_hook``): that site decides.
"""

from __future__ import annotations

import torch

from saelab.models import LoadedModel, parse_hook_name
from saelab.sae import SAE
from saelab.splicing import target_hook

#: float32 logit weights held at once: ``features x d_vocab`` values (64 MiB)
FEATURE_CHUNK_VALUES = 1 << 24

RESIDUAL_KINDS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


def residual_directions(lm: LoadedModel, sae: SAE, hook: str, features: list[int]) -> torch.Tensor | None:
    """Decoder rows of ``features`` in the residual stream ``[n_features, d_model]`` (float32), or None
    when the site the decoder writes has no linear path to the residual stream."""
    point = parse_hook_name(target_hook(sae, hook), lm.n_layers, lm.name)
    rows = sae.W_dec.detach()[features].float().cpu()                        # [F, d_out]
    if point.kind in RESIDUAL_KINDS:
        return rows
    if point.kind != "attn.hook_z":
        return None
    W_O = lm.W_O(point.layer).float().cpu()                                   # [n_heads, d_head, d_model]
    per_head = rows.reshape(len(features), lm.n_heads, lm.d_head)
    out = torch.einsum("fhd,hdm->fm", per_head, W_O)
    post_norm = lm.attn_out_norm(point.layer)
    if post_norm is not None:
        with torch.no_grad():
            param = next(post_norm.parameters())
            normed = post_norm(out.to(param.dtype).to(param.device)).float().cpu()
        out = normed * (out.norm(dim=-1, keepdim=True) / normed.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return out


def head_shares(lm: LoadedModel, sae: SAE, hook: str, features: list[int]) -> torch.Tensor | None:
    """For SAEs writing ``attn.hook_z``, each head's share of the decoder norm ``[n_features, n_heads]``
    (h_{f,k} = ‖d_{f,k}‖ / Σ_j ‖d_{f,j}‖, Kissane et al. 2024); None when the decoder writes another site."""
    if parse_hook_name(target_hook(sae, hook), lm.n_layers, lm.name).kind != "attn.hook_z":
        return None
    rows = sae.W_dec.detach()[features].float().cpu().reshape(len(features), lm.n_heads, lm.d_head)
    norms = rows.norm(dim=-1)
    return norms / norms.sum(-1, keepdim=True).clamp_min(1e-12)


def logit_weights(lm: LoadedModel, directions: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
    """Direct effect on the logits of adding each direction ``[F, d_model]`` to the final residual
    stream, up to the norm's positive scale: ``[F, d_vocab]``. ``W``: ``lm.folded_W_U()[0]`` if
    already computed."""
    final = lm.norm("final")
    if W is None:
        W, _ = lm.folded_W_U()
    if final.kind == "layernorm":
        directions = directions - directions.mean(-1, keepdim=True)
    return directions @ W.float().cpu()


def logit_effects(lm: LoadedModel, sae: SAE, hook: str, features: list[int], k: int = 10,
                  n_bins: int = 30) -> list[dict | None]:
    """Per feature: ``{"top": [(token_id, weight)], "bottom": [...], "hist": {"edges", "counts"}}``
    over the vocabulary, or None where the site has no path to the logits. Features are mapped to the
    vocabulary a chunk at a time, so memory stays bounded for any number of features and vocabularies."""
    directions = residual_directions(lm, sae, hook, features)
    if directions is None:
        return [None] * len(features)
    W, _ = lm.folded_W_U()
    k = min(k, W.shape[1])
    step = max(1, FEATURE_CHUNK_VALUES // W.shape[1])
    rows = (row for start in range(0, len(features), step)
            for row in logit_weights(lm, directions[start:start + step], W))  # [step, d_vocab] at a time
    out = []
    for row in rows:
        top_v, top_i = row.topk(k)
        bot_v, bot_i = (-row).topk(k)
        counts, edges = torch.histogram(row, bins=n_bins)
        out.append({"top": [(int(i), float(v)) for i, v in zip(top_i, top_v, strict=False)],
                    "bottom": [(int(i), float(-v)) for i, v in zip(bot_i, bot_v, strict=False)],
                    "hist": {"edges": edges.tolist(), "counts": counts.long().tolist()}})
    return out
