"""Head census (Kissane et al. 2024): for every head, the latents that live in it, what they fire on,
what they write, and how many roles they span.

- A head's latents: the ``top_latents`` live latents (fired on the windows) with the largest
  head attribution ``h_{f,k}`` (``saelab.attention.geometry``).
- Each latent: its ``n_examples`` top-activating tokens with ±5 tokens of context, and its direct
  logit effect: the decoder row through ``W_O`` (``Σ_k d_{f,k} @ W_O[k]``, through Gemma 2/3's
  attention-output norm with the direction's length kept) times the unembedding with the final
  norm's weights folded in, top and bottom ``n_logits`` tokens (direct path only).
- Always: how concentrated the live latents are in one head (largest attribution, its histogram, the
  shares above 0.5 and 0.9). With one key/value head shared by all query heads (Gemma 3 270M), the
  heads read the same values, so latents spread over heads more than in GPT-2 small.

Polysemantic heads, by two named criteria (``summary()["polysemantic"]``), each with the share of
polysemantic heads among the heads it can judge and its Wilson score interval (``confidence``,
default 95%):

- ``roles`` (any model; the automatic analogue of reading each latent's top examples, as the paper
  did): a latent's *role vocabulary* is the set of distinct ordinary tokens in the ±``role_context``
  windows around its ``role_examples`` largest activations. Two of a head's top latents share a role
  when the Jaccard overlap of their vocabularies is at least ``role_threshold``; the head's roles
  are the connected components of that relation (single linkage) over its top latents with at least
  ``min_fires`` fires. The head is judged when at least two latents qualify, and polysemantic when
  they fall into at least ``min_roles`` roles. Latents with the same top tokens in the same contexts
  share a role; latents whose top contexts share no token do not.
  Defaults: 20 examples with ±5 tokens (the context the census shows) and threshold 0.15, the cut
  that best separates pairs of same-family from different-family latents of toy-world hook_z SAEs
  (Youden's J; layers 0-3, 11k pairs). That separation is weak (AUC 0.57): top-context overlap says
  how lexically and contextually alike latents are, not whether they do the same job. On 64 toy
  windows, with ``train_toy_attention_sae``'s SAEs on layers 0-3, it calls 14 of the toy model's 16
  heads polysemantic; the other two are 3.1 and 3.2, its induction heads.
- ``families`` (toy world only: the windows carry planted labels): each latent's family
  (``saelab.attention.families``); a head is judged when at least two of its top latents are
  classified (induction, short- or long-range context) and polysemantic when those cover at least
  two families. Unclassified and rare latents count for neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
from torch import Tensor

from saelab.attention.corpus import Windows
from saelab.attention.families import FAMILY_VARIABLES, LatentFamily, classify_latents, family_counts
from saelab.attention.geometry import AttentionSAE, head_attribution
from saelab.errors import ConfigError, SaelabError, check_range

CONTEXT = 5


@dataclass
class CensusConfig:
    """What the census lists and how it judges heads (module docstring)."""

    top_latents: int = 10         # latents per head (the paper reads each head's top 10)
    n_examples: int = 5
    n_logits: int = 5
    min_fires: int = 5            # fewer fires: too rare to classify or to read a role from
    family_threshold: float = 0.5
    role_examples: int = 20       # top activations whose contexts make a latent's role vocabulary
    role_context: int = CONTEXT   # tokens each side of them
    role_threshold: float = 0.15  # Jaccard overlap at which two latents share a role
    min_roles: int = 2            # roles (families) a judged head needs to be polysemantic
    confidence: float = 0.95      # of the interval around each polysemantic share

    def __post_init__(self) -> None:
        for name in ("top_latents", "n_examples", "n_logits", "min_fires", "role_examples"):
            check_range(name, getattr(self, name), 1, integer=True)
        check_range("role_context", self.role_context, 0, integer=True)
        check_range("min_roles", self.min_roles, 2, integer=True)
        check_range("family_threshold", self.family_threshold, 0, 1)
        check_range("role_threshold", self.role_threshold, 0, 1, lo_open=True)
        check_range("confidence", self.confidence, 0, 1, lo_open=True)
        if self.confidence >= 1:
            raise ConfigError(f"confidence={self.confidence!r} is out of range; accepted: (0, 1), e.g. 0.95")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n``: centre ``(p + z²/2n) / (1 + z²/n)``,
    half-width ``z √(p(1−p)/n + z²/4n²) / (1 + z²/n)``, with z the two-sided normal quantile."""
    if not 0 <= k <= n or n < 1:
        raise SaelabError(f"a proportion needs 0 <= k <= n and n >= 1; got k={k}, n={n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, d = k / n, 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def role_vocabularies(windows: Windows, acts: Tensor, latents: list[int], n_top: int, context: int) -> dict[int, set[int]]:
    """Per latent, the distinct ordinary token ids within ±``context`` of its ``n_top`` largest
    activations in ``acts [n_win, pos, d_sae]`` (specials excluded; an empty set if it never fires)."""
    pos_len = acts.shape[1]
    out = {}
    for f in latents:
        values = acts[..., f].masked_fill(windows.special, 0.0).flatten()
        k = min(n_top, int((values > 0).sum()))
        vocab: set[int] = set()
        for index in values.topk(k).indices.tolist() if k else []:
            w, p = divmod(index, pos_len)
            lo, hi = max(0, p - context), min(pos_len, p + context + 1)
            ordinary = ~windows.special[w, lo:hi]
            vocab.update(windows.ids[w, lo:hi][ordinary].tolist())
        out[f] = vocab
    return out


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def role_clusters(vocabularies: list[set[int]], threshold: float) -> list[int]:
    """Role label (0, 1, ... in order of first appearance) of each vocabulary: connected components of
    "Jaccard overlap >= threshold" (single linkage)."""
    parent = list(range(len(vocabularies)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(vocabularies)):
        for j in range(i + 1, len(vocabularies)):
            if jaccard(vocabularies[i], vocabularies[j]) >= threshold:
                parent[root(j)] = root(i)
    labels: dict[int, int] = {}
    return [labels.setdefault(root(i), len(labels)) for i in range(len(vocabularies))]


def polysemantic_share(heads: list[dict], key: str, min_count: int, confidence: float, criterion: str) -> dict:
    """``{"criterion", "heads" (polysemantic), "n_heads_judged", "n_polysemantic", "share", "interval",
    "confidence"}`` over the heads whose ``n_{key}`` is not None (judged), polysemantic at >= min_count."""
    judged = [h for h in heads if h[f"n_{key}"] is not None]
    poly = [h["head"] for h in judged if h[f"n_{key}"] >= min_count]
    interval = wilson_interval(len(poly), len(judged), confidence) if judged else None
    return {"criterion": criterion, "heads": poly, "n_heads_judged": len(judged), "n_polysemantic": len(poly),
            "share": round(len(poly) / len(judged), 4) if judged else None,
            "interval": [round(x, 4) for x in interval] if interval else None, "confidence": confidence}


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
    """heads: one entry per head ``"L.h"`` with its latents, their roles and (with labels) families;
    families: per latent (None without labels)."""

    layer: int
    attribution: Tensor
    heads: list[dict]
    families: list[LatentFamily] | None
    n_live: int
    live: Tensor | None = None  # [d_sae] bool
    config: CensusConfig | None = None

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

    def polysemantic(self) -> dict:
        """Polysemantic heads by each criterion (``roles``; ``families`` with labels): module docstring."""
        c = self.config or CensusConfig()
        out = {"roles": polysemantic_share(
            self.heads, "roles", c.min_roles, c.confidence,
            f"top {c.top_latents} latents per head with >= {c.min_fires} fires fall into >= {c.min_roles} roles; "
            f"a role: latents linked by Jaccard >= {c.role_threshold} of the tokens within ±{c.role_context} of "
            f"their top {c.role_examples} activations (single linkage)")}
        if self.families is not None:
            out["families"] = polysemantic_share(
                self.heads, "families", c.min_roles, c.confidence,
                f"classified latents among the top {c.top_latents} per head (>= 2 needed) cover >= {c.min_roles} "
                f"planted families (specificity >= {c.family_threshold})")
        return out

    def summary(self) -> dict:
        out = {"layer": self.layer, "n_latents": int(self.attribution.shape[0]), "n_live_latents": self.n_live,
               "head_concentration": self.concentration(), "polysemantic": self.polysemantic()}
        if self.families is not None:
            out["family_counts"] = family_counts(self.families)
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
    vocab = role_vocabularies(windows, acts, chosen, config.role_examples, config.role_context)
    heads = []
    for k, order in enumerate(orders):
        latents = []
        for f in order:
            top = effects[f].topk(config.n_logits)
            bottom = (-effects[f]).topk(config.n_logits)
            entry = {"latent": f, "head_attribution": round(float(h[f, k]), 4), "fires": int(fires[f]),
                     "role": None,
                     "examples": top_examples(asae, windows, acts, f, config.n_examples),
                     "top_logits": [[t, round(float(v), 4)] for t, v in
                                    zip(_tokens(asae, top.indices.tolist()), top.values.tolist(), strict=True)],
                     "bottom_logits": [[t, round(-float(v), 4)] for t, v in
                                       zip(_tokens(asae, bottom.indices.tolist()), bottom.values.tolist(), strict=True)]}
            if families is not None:
                entry["family"] = families[f].family
                entry["family_value"] = families[f].value
            latents.append(entry)
        heads.append({"head": f"{asae.layer}.{k}", "latents": latents,
                      **_judge_roles(latents, vocab, config), **_judge_families(latents, families is not None)})
    return CensusResult(asae.layer, h, heads, families, int(live.sum()), live, config)


def _judge_roles(latents: list[dict], vocab: dict[int, set[int]], config: CensusConfig) -> dict:
    """Sets each eligible latent's ``role``; ``{"n_roles"}`` (None when fewer than two are eligible)."""
    eligible = [e for e in latents if e["fires"] >= config.min_fires]
    for e, role in zip(eligible, role_clusters([vocab[e["latent"]] for e in eligible], config.role_threshold),
                       strict=True):
        e["role"] = role
    return {"n_roles": len({e["role"] for e in eligible}) if len(eligible) >= 2 else None}


def _judge_families(latents: list[dict], labelled: bool) -> dict:
    """``{"families", "n_families", "n_classified"}``; None without labels, ``n_families`` None when fewer
    than two latents are classified."""
    if not labelled:
        return {"families": None, "n_families": None, "n_classified": None}
    classified = [e["family"] for e in latents if e["family"] in FAMILY_VARIABLES]
    covered = sorted(set(classified))
    return {"families": covered, "n_families": len(covered) if len(classified) >= 2 else None,
            "n_classified": len(classified)}
