"""The toy corpus: an infinite, seeded stream of documents whose every token carries ground truth.

A document has one topic (``vocabulary.TOPIC_NAMES``, 10 topics) and is a run of segments drawn
with ``SEGMENT_WEIGHTS``: topical prose sentences, IOI sentences, greater-than year spans,
docstring blocks, random-token spans repeated twice, and recurrences of an earlier sentence of the
same document. ``.text`` tokenizes (bundled tokenizer) into exactly ``.words``, one token each.

Labels (``LabeledDocument.labels``, one list entry per word):

- ``topic`` (str): the document's topic, on every token (long-range context).
- ``role`` (str): syntactic role of the token in its sentence, one of ``spans.ROLES``: name,
  number, punct, det, pronoun, prep, conj, adv, verb, adj, noun, function, argument, keyword, and
  ``random`` for tokens of random spans (short-range context).
- ``segment`` (str): which generator wrote the token, one of ``SEGMENT_KINDS``.
- ``induction`` (bool): the token repeats an earlier span of the document and is not the first
  token of the repeat, so copying (induction) predicts it.
- ``task_role`` (str): ``""`` or ``"<task>.<position>"``: ``ioi.IO``, ``ioi.S1``, ``ioi.S2``,
  ``ioi.END`` (the ``to`` that predicts the IO), ``ioi.answer``; ``greater_than.NOUN``,
  ``greater_than.XX1``, ``greater_than.YY``, ``greater_than.END`` (second century token, which
  predicts the end year), ``greater_than.answer`` (an end year > YY); ``docstring.def``,
  ``docstring.self``, ``docstring.A``.. (def arguments), ``docstring.DOC_A``.. (documented
  names), ``docstring.END`` (the last ``param``), ``docstring.answer``; other position names of
  ``saelab.toy.tasks`` templates (``ioi.PLACE``, ``ioi.OBJECT``, ``ioi.VERB``).

Documents are random-access: ``make_document(seed, index)`` is the ``index``-th document of
``iter_documents(seed)``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from saelab.errors import check_range
from saelab.toy import vocabulary as V
from saelab.toy.prose import prose_sentence
from saelab.toy.spans import Span
from saelab.toy.tasks import docstring_span, greater_than_span, ioi_span

SEGMENT_WEIGHTS: dict[str, float] = {
    "prose": 0.40, "ioi": 0.17, "greater_than": 0.17, "docstring": 0.08, "repeat": 0.10, "recurrence": 0.08,
}
SEGMENT_KINDS = tuple(SEGMENT_WEIGHTS)
LABEL_NAMES = ("topic", "role", "segment", "induction", "task_role")
DOC_MIN_WORDS, DOC_MAX_WORDS = 128, 192
REPEAT_MIN_LEN, REPEAT_MAX_LEN = 5, 25


@dataclass(frozen=True)
class LabeledDocument:
    """One document: ``words`` [n_tokens], its ``text`` and per-token ``labels`` (see module doc)."""

    words: list[str]
    text: str
    labels: dict[str, list]
    topic: str
    seed: int
    index: int

    @property
    def token_ids(self) -> list[int]:
        """Token ids of ``words`` in the bundled tokenizer [n_tokens] (no ``<bos>``)."""
        return [V.WORD_ID[w] for w in self.words]


def random_span(rng: random.Random, length: int) -> Span:
    """``length`` tokens drawn uniformly from the non-special vocabulary, role ``random``."""
    span = Span()
    for _ in range(length):
        span.add(rng.choice(V.CONTENT_WORDS), "random")
    return span


def _ioi_sentence(rng: random.Random) -> Span:
    span, _, draw = ioi_span(rng)
    span.add(draw["io"], "name", "ioi.answer")
    span.add(".")
    return span


def _greater_than_sentence(rng: random.Random) -> Span:
    span, _, draw = greater_than_span(rng)
    end_yy = rng.randint(draw["yy"] + 1, 99)
    span.add(V.TWO_DIGITS[end_yy], "number", "greater_than.answer", sep="")
    span.add(".")
    return span


def _docstring_block(rng: random.Random, topic: str) -> Span:
    n_args = rng.randint(3, 5)
    span, _, draw = docstring_span(rng, n_args, rng.randint(1, n_args - 1), topic)
    span.add(draw["answer"], "argument", "docstring.answer")
    span.add(":")
    for _ in range(2):
        span.add(rng.choice(V.TOPICS[topic]["noun"]))
    return span


def _segment(kind: str, rng: random.Random, topic: str, earlier: list[Span]) -> Span:
    if kind == "ioi":
        return _ioi_sentence(rng)
    if kind == "greater_than":
        return _greater_than_sentence(rng)
    if kind == "docstring":
        return _docstring_block(rng, topic)
    if kind == "repeat":
        first = random_span(rng, rng.randint(REPEAT_MIN_LEN, REPEAT_MAX_LEN))
        first.extend(first.copy_as_repeat())
        return first
    if kind == "recurrence" and earlier:
        return rng.choice(earlier).copy_as_repeat()
    sentence = prose_sentence(rng, topic)
    earlier.append(sentence)
    return sentence


def _assemble(spans: list[tuple[str, Span]], topic: str, seed: int, index: int) -> LabeledDocument:
    whole, segments = Span(), []
    for kind, span in spans:
        whole.extend(span)
        segments += [kind] * len(span)
    labels = {"topic": [topic] * len(whole), "role": whole.roles, "segment": segments,
              "induction": whole.induction, "task_role": whole.task_roles}
    return LabeledDocument(whole.words, whole.text, labels, topic, seed, index)


def make_document(seed: int, index: int, *, prose_only: bool = False,
                  min_words: int = DOC_MIN_WORDS, max_words: int = DOC_MAX_WORDS) -> LabeledDocument:
    """The ``index``-th document for ``seed`` (at least ``min_words`` words, about ``max_words``
    at most). ``prose_only`` gives a purely topical document (used to measure topic inference)."""
    check_range("seed", seed, 0, None, integer=True)
    check_range("index", index, 0, None, integer=True)
    check_range("min_words", min_words, 1, 100_000, integer=True)
    check_range("max_words", max_words, min_words, 100_000, integer=True)
    rng = random.Random(f"saelab.toy.corpus:{'prose' if prose_only else 'mixed'}:{seed}:{index}")
    topic = rng.choice(V.TOPIC_NAMES)
    target = rng.randint(min_words, max_words)
    kinds, weights = list(SEGMENT_WEIGHTS), list(SEGMENT_WEIGHTS.values())
    spans: list[tuple[str, Span]] = []
    earlier: list[Span] = []
    n_words = 0
    while n_words < target:
        kind = "prose" if prose_only else rng.choices(kinds, weights)[0]
        if kind == "recurrence" and not earlier:
            kind = "prose"
        span = _segment(kind, rng, topic, earlier)
        spans.append((kind, span))
        n_words += len(span)
    return _assemble(spans, topic, seed, index)


def iter_documents(seed: int, start: int = 0, *, prose_only: bool = False) -> Iterator[LabeledDocument]:
    """Documents ``start, start + 1, ...`` of the infinite stream for ``seed`` (deterministic)."""
    check_range("start", start, 0, None, integer=True)
    for index in itertools.count(start):
        yield make_document(seed, index, prose_only=prose_only)
