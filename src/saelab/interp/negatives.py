"""Which non-activating contexts a latent's explanation is scored against: ``random`` or ``hard``.

``random`` (the default): the silent random contexts of the feature data in the order gathered.
``hard``: the silent contexts most similar to the latent's activating ones, so an explanation must
say more than "text like this" (delphi's similarity-chosen non-activating examples; Paulo et al.
2024, arXiv 2410.13928). A candidate is ranked by, in order:

1. whether it contains a token the latent fires on in the activating examples (the same token where
   the latent stays silent: the context, not the token, is what the explanation must name);
2. its highest cosine similarity to any activating example (the embedder's vectors of the examples'
   texts; default TF-IDF, ``saelab.interp.embedding``);
3. its position among the candidates (ties keep the gathered order).

Every chosen context is silent (activation 0 at every token), as random ones are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saelab.errors import ConfigError
from saelab.interp.embedding import Embedder, TfidfEmbedder, example_text, unit_rows
from saelab.interp.gather import Example

NEGATIVES = ("random", "hard")


@dataclass
class RankedNegative:
    """One silent candidate: ``example``, whether it ``shares_token`` with the firings, and its highest
    cosine ``similarity`` to an activating example."""

    example: Example
    shares_token: bool
    similarity: float


def firing_tokens(examples: list[Example]) -> set[str]:
    """The (stripped) token strings at which the latent fires in ``examples``."""
    return {t.strip() for ex in examples for t, a in zip(ex.tokens, ex.acts, strict=False) if a > 0}


def rank_hard_negatives(activating: list[Example], candidates: list[Example],
                        embedder: Embedder | None = None) -> list[RankedNegative]:
    """The silent ``candidates`` hardest first (module docstring); firing candidates are left out."""
    if not activating:
        raise ConfigError("hard negatives need activating examples to be similar to; the latent has none")
    silent = [c for c in candidates if not c.fires]
    if not silent:
        return []
    vectors = unit_rows((embedder or TfidfEmbedder()).embed([example_text(ex) for ex in activating + silent]))
    similarity = (vectors[len(activating):] @ vectors[:len(activating)].T).max(axis=1)   # [n_silent]
    wanted = firing_tokens(activating)
    ranked = [RankedNegative(c, bool(wanted & {t.strip() for t in c.tokens}), float(s))
              for c, s in zip(silent, similarity, strict=True)]
    order = sorted(range(len(ranked)), key=lambda i: (not ranked[i].shares_token, -ranked[i].similarity, i))
    return [ranked[i] for i in order]


def hard_negatives(activating: list[Example], candidates: list[Example], n: int,
                   embedder: Embedder | None = None) -> tuple[list[Example], dict[str, float | None]]:
    """The ``n`` hardest silent candidates, and what they are like: ``{"mean_similarity",
    "share_firing_token"}`` (None without any)."""
    chosen = rank_hard_negatives(activating, candidates, embedder)[:n]
    stats = {"mean_similarity": float(np.mean([c.similarity for c in chosen])) if chosen else None,
             "share_firing_token": float(np.mean([c.shares_token for c in chosen])) if chosen else None}
    return [c.example for c in chosen], stats
