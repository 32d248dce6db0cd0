"""Binary concept data sets for probing: examples read at one token each, labelled yes/no.

    concepts = toy_concepts(lm)                                   # the toy world's planted variables
    concepts = [code_vs_prose_concept(lm)]                        # saelab's own .py files vs prose
    letters = first_letter_data(lm, texts); concepts = letters.concepts()   # "starts with a", ...
    concepts = token_property_concepts(lm, texts)                 # number token, capitalised word
    concepts = label_concepts(lm, texts, labels)                  # collection=<label>, one-vs-rest

An example is one token of one context: ``input_ids [n_contexts, context]`` (right-padded, BOS first
where the tokenizer has one; shared by every concept built from the same texts), ``context [n]``
(its row) and ``positions [n]`` (its position); the probe reads the activation there, which has
seen the context up to that token. ``labels [n]`` bool. Every concept is balanced: as many
negatives as positives, drawn without replacement (at most ``n_per_class`` each, seeded by the
concept's name), as SAEBench's sparse probing balances its one-vs-rest classes. SAEBench mean-pools
document-level data sets over the sequence; here every concept is read at single tokens.

Builders (special tokens, padding and the unknown token are never examples):

- ``toy_concepts``: one concept per planted value of the toy corpus (one-vs-rest):
  ``saelab.eval.recovery.planted_variables()`` (topic, syntax role, induction, IOI / greater-than /
  docstring positions) and ``segment=<kind>`` (which generator wrote the token).
- ``code_vs_prose_concept``: tokens of Python source (default: saelab's own modules, cut at blank
  lines into chunks) against tokens of prose (default: the toy world's prose documents), each read
  after at least ``min_position`` tokens of its text.
- ``first_letter_data``: occurrences of single-token, whole, alphabetic words (the token's text,
  from the tokenizer's offsets, is letters only, starts the word and ends it) with the lowercased
  first letter as a 26-way label; ``.concepts()`` gives one balanced binary concept per letter.
- ``token_property_concepts``: ``number`` (the token's text is digits) and ``capitalised`` (a
  whole alphabetic word whose first letter is upper case) against every other ordinary token.
- ``label_concepts``: one-vs-rest per label of labelled texts, e.g. the real corpus's collection
  (``collection=python-docs|jargon|fortunes``, ``saelab.data.sources.read_labeled_texts``).

Validation (``ConceptError``): a concept needs at least ``min_per_class`` examples of each class;
the message names the concept, both counts and what to change.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from saelab.errors import SaelabError, check_range
from saelab.eval.evaluate import DEFAULT_EVAL_SEED, check_context, model_context
from saelab.eval.recovery import PlantedVariable, check_toy_vocabulary, labeled_batches, planted_variables
from saelab.models import LoadedModel
from saelab.splicing import ordinary_token_mask
from saelab.toy.corpus import SEGMENT_KINDS, iter_documents

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DEFAULT_PER_CLASS = 256
DEFAULT_MIN_PER_CLASS = 20
DEFAULT_CONTEXT = 128
CODE_CHUNK_CHARS = 1200
MAX_UNKNOWN_FRACTION = 0.5


class ConceptError(SaelabError):
    """A concept data set that cannot be probed: one class, too few examples, malformed tensors."""


def _check_examples(name: str, input_ids: Tensor, context: Tensor, positions: Tensor) -> None:
    if input_ids.ndim != 2 or input_ids.dtype != torch.long:
        raise ConceptError(f"concept {name!r}: input_ids must be a long tensor [n_contexts, context], got "
                           f"{input_ids.dtype} {tuple(input_ids.shape)}")
    for label, t in (("context", context), ("positions", positions)):
        if t.ndim != 1 or t.dtype != torch.long:
            raise ConceptError(f"concept {name!r}: {label} must be a long tensor [n], got {t.dtype} {tuple(t.shape)}")
    if context.shape != positions.shape:
        raise ConceptError(f"concept {name!r}: context {tuple(context.shape)} and positions "
                           f"{tuple(positions.shape)} must have the same length")
    if context.numel() and (int(context.min()) < 0 or int(context.max()) >= input_ids.shape[0]):
        raise ConceptError(f"concept {name!r}: context rows must lie in 0..{input_ids.shape[0] - 1}")
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= input_ids.shape[1]):
        raise ConceptError(f"concept {name!r}: positions must lie in 0..{input_ids.shape[1] - 1}")


@dataclass
class ConceptData:
    """One binary concept: examples ``(input_ids[context[i]], positions[i])`` with ``labels [n]`` bool.

    input_ids: ``[n_contexts, context]`` long (may be shared with other concepts). group: a family
    name for aggregates (``topic``, ``role``, ``first_letter``, ...). vocabulary: ``vocabulary_id`` of
    the tokenizer the ids come from ("" = unchecked)."""

    name: str
    input_ids: Tensor
    context: Tensor
    positions: Tensor
    labels: Tensor
    group: str = ""
    vocabulary: str = ""

    def __post_init__(self) -> None:
        _check_examples(self.name, self.input_ids, self.context, self.positions)
        if self.labels.dtype != torch.bool or self.labels.shape != self.context.shape:
            raise ConceptError(f"concept {self.name!r}: labels must be a bool tensor of shape "
                               f"{tuple(self.context.shape)}, got {self.labels.dtype} {tuple(self.labels.shape)}")

    @property
    def n_positive(self) -> int:
        return int(self.labels.sum())

    @property
    def n_negative(self) -> int:
        return int(self.labels.numel()) - self.n_positive

    @property
    def token_ids(self) -> Tensor:
        """[n] the token read by each example."""
        return self.input_ids[self.context, self.positions]

    def check(self, min_per_class: int = DEFAULT_MIN_PER_CLASS) -> None:
        """Refuse a concept with fewer than ``min_per_class`` examples of either class."""
        check_concept_counts(self.name, self.n_positive, self.n_negative, min_per_class)


def check_concept_counts(name: str, n_positive: int, n_negative: int, min_per_class: int) -> None:
    """The ``ConceptError`` for a concept with one class or fewer than ``min_per_class`` of one."""
    if min(n_positive, n_negative) >= min_per_class:
        return
    if n_positive == 0 or n_negative == 0:
        missing = "positive" if n_positive == 0 else "negative"
        problem = f"has only one class (no {missing} example)"
    else:
        problem = f"has fewer than min_per_class={min_per_class} examples of one class"
    raise ConceptError(f"concept {name!r} {problem}: {n_positive} positive, {n_negative} negative; give more "
                       "text (more documents or texts) so that both classes occur, lower min_per_class, or leave "
                       "this concept out")


def vocabulary_id(lm: LoadedModel) -> str:
    """A short fingerprint of ``lm``'s tokenizer: vocabulary size and a hash of its first 4096 tokens."""
    tokenizer = lm.tokenizer
    if tokenizer is None:
        return f"no-tokenizer:{lm.d_vocab}"
    size = len(tokenizer)
    head = tokenizer.convert_ids_to_tokens(list(range(min(size, 4096))))
    return f"{size}:{hashlib.sha1(json.dumps(head).encode()).hexdigest()[:12]}"


def _generator(name: str, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def balanced_concept(name: str, input_ids: Tensor, candidates: Tensor, positive: Tensor, *, group: str = "",
                     n_per_class: int = DEFAULT_PER_CLASS, min_per_class: int = DEFAULT_MIN_PER_CLASS,
                     seed: int = 0, vocabulary: str = "") -> ConceptData:
    """A balanced concept from ``candidates [n_contexts, context]`` bool (positions that may be
    examples) and ``positive`` of the same shape: min(n_per_class, #positive, #negative) of each
    class, drawn without replacement (seeded by ``seed`` and ``name``), positives first."""
    check_range("n_per_class", n_per_class, 1, None, integer=True)
    check_range("min_per_class", min_per_class, 1, None, integer=True)
    pos = (candidates & positive).nonzero()
    neg = (candidates & ~positive).nonzero()
    check_concept_counts(name, len(pos), len(neg), min_per_class)
    n = min(n_per_class, len(pos), len(neg))
    gen = _generator(name, seed)
    chosen = torch.cat([pos[torch.randperm(len(pos), generator=gen)[:n]],
                        neg[torch.randperm(len(neg), generator=gen)[:n]]])
    labels = torch.zeros(2 * n, dtype=torch.bool)
    labels[:n] = True
    return ConceptData(name, input_ids, chosen[:, 0].clone(), chosen[:, 1].clone(), labels, group, vocabulary)


# ------------------------------------------------------------------------------------ toy world
def toy_concept_variables() -> list[PlantedVariable]:
    """The planted variables of feature recovery and ``segment=<kind>`` for every segment generator."""
    return planted_variables() + [PlantedVariable(f"segment={k}", "segment", k, "segment") for k in SEGMENT_KINDS]


def toy_concepts(lm: LoadedModel | None = None, *, variables: Sequence[PlantedVariable] | None = None,
                 n_documents: int = 512, seed: int = DEFAULT_EVAL_SEED, context_size: int = DEFAULT_CONTEXT,
                 n_per_class: int = DEFAULT_PER_CLASS, min_per_class: int = DEFAULT_MIN_PER_CLASS,
                 sample_seed: int = 0) -> list[ConceptData]:
    """One balanced concept per planted variable (default ``toy_concept_variables()``) over the first
    ``n_documents`` toy documents of ``seed`` (held out from training by default), each as ``<bos>``
    + its first ``context_size - 1`` tokens. ``lm``, when given, must read the toy vocabulary."""
    check_range("n_documents", n_documents, 1, None, integer=True)
    check_range("context_size", context_size, 2, None, integer=True)
    if lm is not None:
        check_toy_vocabulary(lm)
        check_context(lm, context_size)
    variables = list(variables) if variables is not None else toy_concept_variables()
    if not variables:
        raise ConceptError("variables=[] gives no concept; leave it unset for every planted variable")
    ids, labels, scored = [], [], []
    for batch in labeled_batches(variables, seed, n_documents * (context_size - 1), context_size, 64):
        ids.append(batch[0])
        labels.append(batch[1])
        scored.append(batch[2])
    input_ids, label = torch.cat(ids)[:n_documents], torch.cat(labels)[:n_documents]
    candidates = torch.cat(scored)[:n_documents]
    vocabulary = vocabulary_id(lm) if lm is not None else ""
    out = []
    for j, var in enumerate(variables):
        out.append(balanced_concept(var.name, input_ids, candidates, label[..., j], group=var.group,
                                    n_per_class=n_per_class, min_per_class=min_per_class, seed=sample_seed,
                                    vocabulary=vocabulary))
    return out


def toy_texts(n_documents: int = 256, seed: int = DEFAULT_EVAL_SEED, prose_only: bool = False) -> list[str]:
    """The texts of the first ``n_documents`` toy documents of ``seed`` (prose-only documents with
    ``prose_only``): English words, so any tokenizer reads them."""
    check_range("n_documents", n_documents, 1, None, integer=True)
    return [d.text for d in itertools.islice(iter_documents(seed, prose_only=prose_only), n_documents)]


# ------------------------------------------------------------------------------------ real text
@dataclass
class TextPool:
    """Texts tokenized for examples: ``input_ids [n_texts, context]`` (BOS first where the tokenizer
    has one, right-padded), ``candidates [n_texts, context]`` bool (ordinary, non-unknown tokens at
    positions ≥ ``min_position``), ``n_unknown`` (unknown-token count among the text tokens) and
    ``n_text_tokens``; ``offsets`` (per text, per token, the character span in ``texts[i]``, or None
    for padding/BOS) when asked for."""

    texts: list[str]
    input_ids: Tensor
    candidates: Tensor
    n_unknown: int
    n_text_tokens: int
    offsets: list[list[tuple[int, int] | None]] | None = None

    def span_text(self, row: int, position: int) -> str:
        """The text of the token at ``(row, position)`` (needs ``offsets``)."""
        span = self.offsets[row][position]
        return "" if span is None else self.texts[row][span[0]:span[1]]


def text_pool(lm: LoadedModel, texts: Iterable[str], *, context_size: int = DEFAULT_CONTEXT, min_position: int = 1,
              with_offsets: bool = False) -> TextPool:
    """Tokenize ``texts`` with ``lm``'s tokenizer (each truncated to ``context_size`` tokens, BOS
    included); see ``TextPool``. Offsets need a fast (Rust) tokenizer."""
    check_range("context_size", context_size, 2, None, integer=True)
    check_range("min_position", min_position, 0, None, integer=True)
    check_context(lm, context_size)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ConceptError("no text to build concepts from; give at least one non-empty text")
    ids, mask = lm.tokenize(texts)
    ids, mask = ids[:, :context_size].cpu(), mask[:, :context_size].cpu().bool()
    shift = 1 if lm.bos_token_id is not None else 0
    ordinary = ordinary_token_mask(ids, lm.special_token_ids) & mask
    unk = getattr(lm.tokenizer, "unk_token_id", None)
    unknown = (ids == unk) & ordinary if unk is not None else torch.zeros_like(ordinary)
    candidates = ordinary & ~unknown
    candidates[:, :min_position] = False
    offsets = None
    if with_offsets:
        if not getattr(lm.tokenizer, "is_fast", False):
            raise ConceptError(f"the tokenizer of {lm.name!r} is not a fast tokenizer, so token offsets are unknown; "
                               "load the model with its tokenizer.json (a PreTrainedTokenizerFast)")
        raw = lm.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = []
        for row in raw["offset_mapping"]:
            spans: list[tuple[int, int] | None] = [None] * shift + [tuple(s) for s in row]
            spans = spans[:context_size]
            offsets.append(spans + [None] * (context_size - len(spans)))
    return TextPool(texts, ids, candidates, int(unknown.sum()), int((ordinary | unknown).sum()), offsets)


def package_code_texts(max_chars: int = CODE_CHUNK_CHARS) -> list[str]:
    """saelab's own Python modules, cut at blank lines into chunks of at most about ``max_chars``
    characters (files in sorted order: deterministic, and present wherever saelab is installed)."""
    check_range("max_chars", max_chars, 1, None, integer=True)
    root = Path(__file__).resolve().parents[1]
    chunks: list[str] = []
    for path in sorted(root.rglob("*.py")):
        current = ""
        for block in path.read_text(encoding="utf-8").split("\n\n"):
            if current and len(current) + len(block) > max_chars:
                chunks.append(current)
                current = ""
            current = f"{current}\n\n{block}" if current else block
        if current.strip():
            chunks.append(current)
    return chunks


def code_vs_prose_concept(lm: LoadedModel, code_texts: Sequence[str] | None = None,
                          prose_texts: Sequence[str] | None = None, *, n_per_class: int = DEFAULT_PER_CLASS,
                          min_per_class: int = DEFAULT_MIN_PER_CLASS, context_size: int = DEFAULT_CONTEXT,
                          min_position: int = 8, seed: int = 0) -> ConceptData:
    """``code``: tokens of ``code_texts`` (default ``package_code_texts()``) against tokens of
    ``prose_texts`` (default ``toy_texts(prose_only=True)``), read at positions ≥ ``min_position``."""
    code = list(code_texts) if code_texts is not None else package_code_texts()
    prose = list(prose_texts) if prose_texts is not None else toy_texts(256, prose_only=True)
    code = code[: max(1, 4 * n_per_class)]
    prose = prose[: max(1, 4 * n_per_class)]
    pool = text_pool(lm, code + prose, context_size=context_size, min_position=min_position)
    n_code_texts = sum(1 for t in code if t and t.strip())
    if pool.n_text_tokens and pool.n_unknown / pool.n_text_tokens > MAX_UNKNOWN_FRACTION:
        raise ConceptError(f"the tokenizer of {lm.name!r} maps {pool.n_unknown} of {pool.n_text_tokens} tokens to the "
                           "unknown token, so it cannot read code and prose; use a model with a real-text tokenizer "
                           "(the toy world's analogue is the toy concept segment=docstring)")
    positive = torch.zeros_like(pool.candidates)
    positive[:n_code_texts] = True
    return balanced_concept("code", pool.input_ids, pool.candidates, positive, group="code_vs_prose",
                            n_per_class=n_per_class, min_per_class=min_per_class, seed=seed,
                            vocabulary=vocabulary_id(lm))


def _word_tokens(pool: TextPool) -> tuple[Tensor, list[str]]:
    """(mask [n_texts, context] of candidates that are whole single-token words, their texts in
    row-major order of the mask), where a word is ``str.isalpha`` ASCII letters."""
    mask = torch.zeros_like(pool.candidates)
    words: list[str] = []
    for row, col in pool.candidates.nonzero().tolist():
        span = pool.offsets[row][col]
        if span is None:
            continue
        text = pool.texts[row]
        start, end = span
        while start < end and text[start].isspace():
            start += 1
        word = text[start:end]
        if not word or not (word.isascii() and word.isalpha()):
            continue
        if (start > 0 and text[start - 1].isalnum()) or (end < len(text) and text[end].isalnum()):
            continue  # part of a longer word
        mask[row, col] = True
        words.append(word)
    return mask, words


@dataclass
class FirstLetterData:
    """Occurrences of single-token whole words: examples ``(input_ids[context[i]], positions[i])``
    with ``letters [n]`` long, the index in ``LETTERS`` of the word's lowercased first letter, and
    ``words [n]`` their texts (a token id is one word: ``token_ids``)."""

    input_ids: Tensor
    context: Tensor
    positions: Tensor
    letters: Tensor
    words: list[str]
    vocabulary: str = ""

    def __post_init__(self) -> None:
        _check_examples("first_letter", self.input_ids, self.context, self.positions)
        if self.letters.dtype != torch.long or self.letters.shape != self.context.shape:
            raise ConceptError(f"first-letter data: letters must be a long tensor of shape {tuple(self.context.shape)}")
        if len(self.words) != len(self.letters):
            raise ConceptError(f"first-letter data: {len(self.words)} words for {len(self.letters)} examples")

    @property
    def token_ids(self) -> Tensor:
        return self.input_ids[self.context, self.positions]

    def words_per_letter(self) -> dict[str, int]:
        """Distinct words (token ids) per letter, letters without words left out."""
        ids = self.token_ids
        return {LETTERS[i]: int(ids[self.letters == i].unique().numel()) for i in range(len(LETTERS))
                if bool((self.letters == i).any())}

    def concepts(self, letters: str | None = None, *, n_per_class: int = DEFAULT_PER_CLASS,
                 min_per_class: int = DEFAULT_MIN_PER_CLASS, seed: int = 0) -> list[ConceptData]:
        """One balanced concept ``first_letter=<x>`` per letter (default: every letter with at least
        ``min_per_class`` examples; named letters must have them)."""
        counts = torch.bincount(self.letters, minlength=len(LETTERS))
        chosen = letters if letters is not None else "".join(
            c for i, c in enumerate(LETTERS) if min_per_class <= counts[i] <= len(self.letters) - min_per_class)
        if not chosen:
            raise ConceptError(f"no first letter has {min_per_class} examples (counts: "
                               f"{ {c: int(counts[i]) for i, c in enumerate(LETTERS) if counts[i]} }); give more text "
                               "or lower min_per_class")
        candidates = torch.zeros(self.input_ids.shape, dtype=torch.bool)
        candidates[self.context, self.positions] = True
        out = []
        for c in chosen:
            if c not in LETTERS:
                raise ConceptError(f"letters: {c!r} is not a lowercase letter a..z")
            positive = torch.zeros_like(candidates)
            where = self.letters == LETTERS.index(c)
            positive[self.context[where], self.positions[where]] = True
            out.append(balanced_concept(f"first_letter={c}", self.input_ids, candidates, positive,
                                        group="first_letter", n_per_class=n_per_class, min_per_class=min_per_class,
                                        seed=seed, vocabulary=self.vocabulary))
        return out


def first_letter_data(lm: LoadedModel, texts: Iterable[str], *, context_size: int = DEFAULT_CONTEXT,
                      max_per_word: int = 4, max_examples: int = 20_000, seed: int = 0) -> FirstLetterData:
    """Up to ``max_per_word`` occurrences (drawn by ``seed``) of every single-token whole alphabetic
    word in ``texts`` (see the module docstring), at most ``max_examples`` in all."""
    check_range("max_per_word", max_per_word, 1, None, integer=True)
    check_range("max_examples", max_examples, 1, None, integer=True)
    pool = text_pool(lm, texts, context_size=context_size, with_offsets=True)
    mask, words = _word_tokens(pool)
    where = mask.nonzero()
    if not len(where):
        raise ConceptError(f"the texts hold no single-token alphabetic word for the tokenizer of {lm.name!r}; give "
                           "prose (English text)")
    order = torch.randperm(len(where), generator=_generator("first_letter", seed))
    token = pool.input_ids[where[:, 0], where[:, 1]]
    seen: dict[int, int] = {}
    keep = []
    for i in order.tolist():
        t = int(token[i])
        if seen.get(t, 0) < max_per_word:
            seen[t] = seen.get(t, 0) + 1
            keep.append(i)
            if len(keep) == max_examples:
                break
    keep.sort()
    chosen = where[keep]
    kept_words = [words[i] for i in keep]
    letters = torch.tensor([LETTERS.index(w[0].lower()) for w in kept_words], dtype=torch.long)
    return FirstLetterData(pool.input_ids, chosen[:, 0].clone(), chosen[:, 1].clone(), letters, kept_words,
                           vocabulary_id(lm))


def token_property_concepts(lm: LoadedModel, texts: Iterable[str], properties: Sequence[str] = ("number", "capitalised"),
                            *, context_size: int = DEFAULT_CONTEXT, n_per_class: int = DEFAULT_PER_CLASS,
                            min_per_class: int = DEFAULT_MIN_PER_CLASS, seed: int = 0) -> list[ConceptData]:
    """``number`` (the token's text, spaces stripped, is digits) and ``capitalised`` (a whole
    single-token alphabetic word starting with an upper-case letter), each against every other
    ordinary token of ``texts``."""
    known = ("number", "capitalised")
    for p in properties:
        if p not in known:
            raise ConceptError(f"token property {p!r} is not known; choose from {', '.join(known)}")
    pool = text_pool(lm, texts, context_size=context_size, with_offsets=True)
    vocabulary = vocabulary_id(lm)
    out = []
    for prop in properties:
        positive = torch.zeros_like(pool.candidates)
        if prop == "number":
            for row, col in pool.candidates.nonzero().tolist():
                positive[row, col] = pool.span_text(row, col).strip().isdigit()
        else:
            mask, words = _word_tokens(pool)
            for (row, col), word in zip(mask.nonzero().tolist(), words, strict=True):
                positive[row, col] = word[0].isupper()
        out.append(balanced_concept(prop, pool.input_ids, pool.candidates, positive, group="token",
                                    n_per_class=n_per_class, min_per_class=min_per_class, seed=seed,
                                    vocabulary=vocabulary))
    return out


def label_concepts(lm: LoadedModel, texts: Sequence[str], labels: Sequence[str], *, group: str = "collection",
                   context_size: int = DEFAULT_CONTEXT, min_position: int = 8, n_per_class: int = DEFAULT_PER_CLASS,
                   min_per_class: int = DEFAULT_MIN_PER_CLASS, seed: int = 0) -> list[ConceptData]:
    """One balanced concept ``<group>=<label>`` per distinct label (sorted), one-vs-rest: the tokens of
    the texts with that label against the tokens of the others, read at positions ≥ ``min_position``
    (SAEBench's document classes, read at tokens). Needs two labels or more."""
    if len(texts) != len(labels):
        raise ConceptError(f"{len(texts)} texts but {len(labels)} labels; give one label per text")
    kept = [(t, str(label)) for t, label in zip(texts, labels, strict=True) if t and t.strip()]
    values = sorted({label for _, label in kept})
    if len(values) < 2:
        raise ConceptError(f"the {group} labels of the texts take {len(values)} value(s) {values}; a one-vs-rest "
                           "concept needs at least two (give texts from several)")
    pool = text_pool(lm, [t for t, _ in kept], context_size=context_size, min_position=min_position)
    label_of_row = [label for _, label in kept]
    vocabulary = vocabulary_id(lm)
    out = []
    for value in values:
        positive = torch.zeros_like(pool.candidates)
        positive[[i for i, label in enumerate(label_of_row) if label == value]] = True
        out.append(balanced_concept(f"{group}={value}", pool.input_ids, pool.candidates, positive, group=group,
                                    n_per_class=n_per_class, min_per_class=min_per_class, seed=seed,
                                    vocabulary=vocabulary))
    return out


def default_context(lm: LoadedModel) -> int:
    """128 tokens, or the model's context if shorter."""
    return min(DEFAULT_CONTEXT, model_context(lm) or DEFAULT_CONTEXT)
