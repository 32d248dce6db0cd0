"""Topical prose from a small grammar: the topic sets the content words, the grammar the roles.

Each sentence is one of a few patterns over determiners, adjectives, nouns, verbs, prepositions,
conjunctions, adverbs, pronouns and names; nouns, verbs and adjectives come from the topic's own
word list (with a few topic-neutral verbs), so the topic is only readable from long-range context.
"""

from __future__ import annotations

import random

from saelab.toy import vocabulary as V
from saelab.toy.spans import Span

_CAPITALISED = {"the": "The", "a": "A", "it": "It", "they": "They", "he": "He", "she": "She", "we": "We"}


def _noun_phrase(span: Span, rng: random.Random, words: dict, *, start: bool = False) -> None:
    det = rng.choice(("the", "a")) if start else rng.choice(V.DETERMINERS)
    span.add(_CAPITALISED[det] if start else det)
    if rng.random() < 0.5:
        span.add(rng.choice(words["adj"]))
    span.add(rng.choice(words["noun"]))


def _verb(rng: random.Random, words: dict) -> str:
    return rng.choice(V.GENERIC_VERBS) if rng.random() < 0.2 else rng.choice(words["verb"])


def prose_sentence(rng: random.Random, topic: str) -> Span:
    """One sentence about ``topic``, ending with ``.``."""
    words = V.TOPICS[topic]
    span = Span()
    pattern = rng.randrange(4)
    if pattern == 0:  # the (adj) noun verbs the (adj) noun (prep the noun).
        _noun_phrase(span, rng, words, start=True)
        span.add(_verb(rng, words))
        _noun_phrase(span, rng, words)
        if rng.random() < 0.5:
            span.add(rng.choice(V.PREPOSITIONS))
            _noun_phrase(span, rng, words)
    elif pattern == 1:  # Name (adv) verbs the (adj) noun.
        span.add(rng.choice(V.NAMES))
        if rng.random() < 0.4:
            span.add(rng.choice(V.ADVERBS))
        span.add(_verb(rng, words))
        _noun_phrase(span, rng, words)
    elif pattern == 2:  # Pronoun adv verbs the noun, conj pronoun verbs the noun.
        span.add(_CAPITALISED[rng.choice(V.PRONOUNS)])
        span.add(rng.choice(V.ADVERBS))
        span.add(_verb(rng, words))
        _noun_phrase(span, rng, words)
        span.add(",")
        span.add(rng.choice(V.CONJUNCTIONS))
        span.add(rng.choice(V.PRONOUNS))
        span.add(_verb(rng, words))
        _noun_phrase(span, rng, words)
    else:  # The noun prep the noun verbs (adv).
        _noun_phrase(span, rng, words, start=True)
        span.add(rng.choice(V.PREPOSITIONS))
        _noun_phrase(span, rng, words)
        span.add(_verb(rng, words))
        if rng.random() < 0.5:
            span.add(rng.choice(V.ADVERBS))
    span.add(".")
    return span
