"""Head census (Kissane et al. 2024): for every head, the latents that live in it, what they fire on,
what they write, and how many feature families they span.

- A head's latents: the ``top_latents`` live latents (fired on the windows) with the largest
  head attribution ``h_{f,k}`` (``saelab.attention.geometry``).
- Each latent: its ``n_examples`` top-activating tokens with ±5 tokens of context, and its direct
  logit effect: the decoder row through ``W_O`` (``Σ_k d_{f,k} @ W_O[k]``, through Gemma 2/3's
  attention-output norm with the direction's length kept) times the unembedding with the final
  norm's weights folded in, top and bottom ``n_logits`` tokens (direct path only).
- With toy-world labels, each latent's family (``saelab.attention.families``); a head is
  *polysemantic* when its classified top latents cover at least two families, and the census gives
  the share of polysemantic heads among heads with at least one classified latent.
- Always: how concentrated the live latents are in one head (largest attribution, its histogram, the
  shares above 0.5 and 0.9). With one key/value head shared by all query heads (Gemma 3 270M), the
  heads read the same values, so latents spread over heads more than in GPT-2 small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saelab.attention.corpus import Windows
from saelab.attention.families import FAMILY_VARIABLES, LatentFamily, classify_latents, family_counts
from saelab.attention.geometry import AttentionSAE, head_attribution
from saelab.errors import check_range

CONTEXT = 5


@dataclass
class CensusConfig:
    top_latents: int = 10
    n_examples: int = 5
    n_logits: int = 5
    min_fires: int = 5
    family_threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("top_latents", "n_examples", "n_logits", "min_fires"):
            check_range(name, getattr(self, name), 1, integer=True)
        check_range("family_threshold", self.family_threshold, 0, 1)


def logit_effects(asae: AttentionSAE, latents: list[int]) -> Tensor:
    """``[len(latents), d_vocab]`` direct logit effect of those latents' decoder rows (float32), through
    ``W_O`` (and Gemma 2/3's attention-output norm) and the folded unembedding
    (``saelab.interp.logits``). Only the latents asked for: with a 262k-token vocabulary all of an
    SAE's rows at once would take gigabytes."""
    from saelab.interp.logits import logit_weights, residual_directions

    return logit_weights(asae.lm, residual_directions(asae.lm, asae.sae, asae.hook_name, latents))


def _tokens(asae: AttentionSAE, ids: list[int]) -> list[str]:
    tok = asae.lm.tokenizer
    return [tok.convert_ids_to_tokens(i) for i in ids] if tok is not None else [str(i) for i in ids]


def top_examples(asae: AttentionSAE, windows: Windows, acts: Tensor, feature: int, n: int) -> list[dict]:
    """The ``n`` largest activations of ``feature`` in ``acts [n_win, pos, d_sae]`` (specials excluded)."""
    values = acts[..., feature].masked_fill(windows.special, 0.0).flatten()
    k = min(n, int((values > 0).sum()))
    if k == 0:
        return []
    top = values.topk(k)
    pos_len = acts.shape[1]
    out = []
    for value, index in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        w, p = divmod(index, pos_len)
        lo, hi = max(0, p - CONTEXT), min(pos_len, p + CONTEXT + 1)
        row = windows.ids[w].tolist()
        out.append({"window": w, "pos": p, "activation": round(value, 4),
                    "token": _tokens(asae, [row[p]])[0], "context": _tokens(asae, row[lo:hi]), "context_start": lo})
    return out


@dataclass
class CensusResult:
    """heads: one entry per head ``"L.h"`` with its latents; families: per latent (None without labels)."""

    layer: int
    attribution: Tensor
    heads: list[dict]
    families: list[LatentFamily] | None
    n_live: int
    live: Tensor | None = None  # [d_sae] bool

    def concentration(self) -> dict:
        """How head-specific the live latents are: the largest head attribution of each, its
        histogram, the shares above 0.5 and 0.9, and the live latents whose largest share is each head's."""
        h = self.attribution if self.live is None else self.attribution[self.live]
        if h.shape[0] == 0:
            return {}
        best, head = h.max(-1)
        counts, edges = np.histogram(best.numpy(), bins=10, range=(0.0, 1.0))
        return {"max_share_mean": round(float(best.mean()), 4),
                "share_above_0.5": round(float((best > 0.5).float().mean()), 4),
                "share_above_0.9": round(float((best > 0.9).float().mean()), 4),
                "dominant_head_counts": {f"{self.layer}.{k}": int((head == k).sum()) for k in range(h.shape[1])},
                "max_share_histogram": {"edges": edges.round(2).tolist(), "counts": counts.tolist()}}

    def summary(self) -> dict:
        out = {"layer": self.layer, "n_latents": int(self.attribution.shape[0]), "n_live_latents": self.n_live,
               "head_concentration": self.concentration()}
        if self.families is not None:
            judged = [h for h in self.heads if h["n_families"] is not None and h["n_classified"] > 0]
            poly = [h["head"] for h in judged if h["n_families"] >= 2]
            out.update({"family_counts": family_counts(self.families),
                        "polysemantic_heads": poly, "n_heads_judged": len(judged),
                        "polysemantic_share": round(len(poly) / len(judged), 4) if judged else None})
        return out

    def to_json(self) -> dict:
        return {"summary": self.summary(), "heads": self.heads}


@torch.no_grad()
def build_census(asae: AttentionSAE, windows: Windows, acts: Tensor, config: CensusConfig | None = None) -> CensusResult:
    """The census of ``asae``'s layer from latent activations ``acts [n, pos, d_sae]`` on ``windows``."""
    config = config or CensusConfig()
    h = head_attribution(asae.decoder_by_head())  # [d_sae, n_heads]
    kept = ~windows.special
    flat = acts[kept]  # [n_tokens, d_sae]
    fires = (flat > 0).sum(0)
    live = fires > 0
    families = None
    if windows.labels:
        labels = {name: np.asarray(arr)[kept.numpy()] for name, arr in windows.labels.items()}
        families = classify_latents(flat, labels, config.min_fires, config.family_threshold)
    orders = []
    for k in range(asae.n_heads):
        score = torch.where(live, h[:, k], torch.full_like(h[:, k], -1.0))
        orders.append(torch.argsort(score, descending=True)[:min(config.top_latents, int(live.sum()))].tolist())
    chosen = sorted({f for order in orders for f in order})
    effects = dict(zip(chosen, logit_effects(asae, chosen), strict=True)) if chosen else {}
    heads = []
    for k, order in enumerate(orders):
        latents = []
        for f in order:
            top = effects[f].topk(config.n_logits)
            bottom = (-effects[f]).topk(config.n_logits)
            entry = {"latent": f, "head_attribution": round(float(h[f, k]), 4), "fires": int(fires[f]),
                     "examples": top_examples(asae, windows, acts, f, config.n_examples),
                     "top_logits": [[t, round(float(v), 4)] for t, v in
                                    zip(_tokens(asae, top.indices.tolist()), top.values.tolist(), strict=True)],
                     "bottom_logits": [[t, round(-float(v), 4)] for t, v in
                                       zip(_tokens(asae, bottom.indices.tolist()), bottom.values.tolist(), strict=True)]}
            if families is not None:
                entry["family"] = families[f].family
                entry["family_value"] = families[f].value
            latents.append(entry)
        covered = sorted({e["family"] for e in latents if e.get("family") in FAMILY_VARIABLES})
        heads.append({"head": f"{asae.layer}.{k}", "latents": latents,
                      "families": covered if families is not None else None,
                      "n_families": len(covered) if families is not None else None,
                      "n_classified": sum(1 for e in latents if e.get("family") in FAMILY_VARIABLES)})
    return CensusResult(asae.layer, h, heads, families, int(live.sum()), live)
