"""The published prompt templates (IOI, greater-than, docstring) for any tokenizer, checked token by token.

    pairs = natural_text_pairs("ioi", 64, seed=0, tokenizer=lm.tokenizer)   # list[TextPair]

Templates: Wang et al. 2022 (IOI), Hanna et al. 2023 (greater-than), Heimersheim & Janiak 2023
(docstring), in ACDC's wording. With a ``tokenizer``, every word a pair swaps or a metric reads must be
one token of it as the model sees it there (with the leading space, after the text before it):

- each candidate list (IOI names, docstring argument names) is filtered to its single-token words; too
  few left is a ``TokenizationError`` that names the task and the words dropped;
- greater-than: if every two-digit year ``00``..``99`` is one token after "the year XX" (GPT-2), the
  answers are the years > YY; if the tokenizer writes numbers digit by digit (Gemma, Llama 3), YY ends
  in 9 and the answers are the tens digits > YY's, which is exactly P(YY' > YY) from one next-token
  distribution; anything else is refused, naming the years;
- every pair's clean and corrupted prompts must tokenize to the same length and contain no unknown
  token; a mismatching draw is replaced by another, and the task fails clearly if too many mismatch.

Without a tokenizer the lists are used as published (GPT-2's vocabulary, two-digit years). Answers
carry their leading space where the model reads one (" Mary"); years do not ("32" after " 17").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from saelab.errors import SaelabError, check_choice, check_range

TASKS = ("ioi", "greater_than", "docstring")
IOI_COUNTERFACTUALS = ("abc", "io")


class TokenizationError(SaelabError):
    """A task word that the model's tokenizer does not keep as one token."""


@dataclass(frozen=True)
class TextPair:
    """One prompt pair as text, with the answer and wrong-answer strings (each must be one token)."""

    clean: str
    corrupted: str
    answers: tuple[str, ...]
    wrong: tuple[str, ...]


NAMES = (
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Paul", "Kate", "Mark", "Lisa",
    "Michael", "Sarah", "David", "Laura", "Robert", "Anna", "Steve", "Emily", "Joe", "Rachel", "Jack",
    "Jessica", "Ben", "Alice", "Peter", "Jennifer", "Chris", "Andrew", "George", "Richard", "Daniel",
    "William", "Matthew", "Ryan", "Eric", "Adam", "Brian", "Kevin", "Jane", "Susan", "Alex", "Sam",
)
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")
IOI_TEMPLATES = (
    "Then, {A} and {B} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S2} decided to give it to",
    "After {A} and {B} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "Then, {A} and {B} had a long argument, and afterwards {S2} said to",
)
GT_NOUNS = (
    "war", "trial", "journey", "reign", "siege", "project", "dispute", "study", "program", "expedition",
    "campaign", "marriage", "tour", "voyage", "investigation", "plague", "treaty", "relationship",
)
GT_TEMPLATE = "The {NOUN} lasted from the year {XX}{YY} to the year {XX}"
GT_CENTURIES = range(11, 18)
DOC_ARGS = (
    "file", "name", "data", "size", "path", "mode", "key", "value", "state", "count", "user", "text",
    "index", "line", "url", "port", "host", "token", "item", "order", "shape", "color", "limit", "target",
)
DOC_WORDS = (
    "load", "the", "data", "from", "file", "return", "new", "object", "set", "current", "value", "get",
    "first", "item", "list", "check", "user", "name", "string", "number",
)
DOC_TEMPLATE = ('def {FUNC}(self, {P1}, {P2}, {A}, {B}, {C}, {S}):\n    """{D1} {D2} {D3}\n\n'
                '    :param {A}: {W1} {W2}\n    :param {B}: {W3} {W4}\n    :param')
#: the fewest single-token words a task can run with: IOI draws 3 names (4 for the "io" counterfactual
#: of feature patching), docstring 6 argument names and 6 fresh ones
MIN_NAMES, MIN_DOC_ARGS = 4, 12
#: draws allowed per pair before a task whose clean/corrupted lengths keep differing is refused
DRAWS_PER_PAIR = 20


# --- checking words against a tokenizer -------------------------------------------------------------
def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def continuation_ids(tokenizer, context: str, words: list[str]) -> list[list[int] | None]:
    """The tokens each of ``words`` adds after ``context`` (``ids(context + word)`` less ``ids(context)``;
    without a context, the word alone); None where the word merges with the end of the context."""
    if not context:
        return _ids(tokenizer, words)
    base, *full = _ids(tokenizer, [context, *(context + w for w in words)])
    return [row[len(base):] if row[:len(base)] == base else None for row in full]


def _is_single(tokenizer, row: list[int] | None) -> bool:
    return row is not None and len(row) == 1 and (tokenizer.unk_token_id is None or row[0] != tokenizer.unk_token_id)


def single_token_words(tokenizer, words: tuple[str, ...], context: str = "to", prefix: str = " ") -> tuple[str, ...]:
    """The ``words`` that are one known token when written ``prefix + word`` after ``context``."""
    rows = continuation_ids(tokenizer, context, [prefix + w for w in words])
    return tuple(w for w, row in zip(words, rows, strict=True) if _is_single(tokenizer, row))


def checked_words(tokenizer, task: str, what: str, words: tuple[str, ...], need: int, context: str) -> tuple[str, ...]:
    """``words`` filtered by ``single_token_words``; a ``TokenizationError`` naming the task and the dropped
    words when fewer than ``need`` remain."""
    kept = single_token_words(tokenizer, words, context)
    if len(kept) < need:
        dropped = [w for w in words if w not in kept]
        raise TokenizationError(
            f"task {task!r}: only {len(kept)} of the {len(words)} {what} are single tokens (with their leading "
            f"space) in this tokenizer, and the task needs at least {need}; split or unknown: "
            f"{', '.join(dropped[:30])}{' ...' if len(dropped) > 30 else ''}. Use a tokenizer with whole-word "
            "tokens, or the toy templates for the toy model")
    return kept


def single_token_id(tokenizer, text: str, context: str = "") -> int:
    """The id of ``text`` if the tokenizer keeps it as one token (after ``context`` when given and ``text``
    starts with a space); ``TokenizationError`` otherwise."""
    row = continuation_ids(tokenizer, context if text[:1].isspace() else "", [text])[0]
    if row is None or len(row) != 1:
        how = (f"merges it with the text before it ({context!r})" if row is None
               else f"splits it into {len(row)} tokens {tokenizer.convert_ids_to_tokens(row)}")
        raise TokenizationError(f"the task needs {text!r} to be one token, but this tokenizer {how}; use a tokenizer "
                                "that keeps task words whole (the toy model's for --templates toy), or --templates "
                                "natural, which keeps only such words")
    if tokenizer.unk_token_id is not None and row[0] == tokenizer.unk_token_id:
        raise TokenizationError(f"the task needs {text!r} as a token, but this tokenizer does not know it (it "
                                f"becomes {tokenizer.unk_token!r}); use templates made for this tokenizer")
    return int(row[0])


@dataclass(frozen=True)
class YearScheme:
    """How a tokenizer writes the YY of "the year XXYY": ``mode`` ``"two_digit"`` (each of 00..99 one token,
    GPT-2) or ``"digit"`` (digit by digit); ``valid``: the (century, YY) a prompt may use, where YY follows
    "the year XX" as that many tokens of its own."""

    mode: str
    valid: frozenset[tuple[int, str]]


def year_scheme(tokenizer=None) -> YearScheme:
    """The ``YearScheme`` of ``tokenizer`` (None: GPT-2's, every year valid); ``TokenizationError`` when
    it writes years neither way."""
    years = [f"{y:02d}" for y in range(100)]
    if tokenizer is None:
        return YearScheme("two_digit", frozenset((c, yy) for c in GT_CENTURIES for yy in years))
    alone = continuation_ids(tokenizer, "", years + [str(d) for d in range(10)])
    if all(_is_single(tokenizer, row) for row in alone[:100]):
        mode, width = "two_digit", 1
    elif all(_is_single(tokenizer, row) for row in alone[100:]):
        mode, width = "digit", 2
    else:
        split = [y for y, row in zip(years, alone, strict=False) if not _is_single(tokenizer, row)]
        raise TokenizationError(f"task 'greater_than': this tokenizer has neither every two-digit year 00..99 nor "
                                f"every digit 0..9 as one token (split: {', '.join(split[:12])}); the metric reads "
                                "the next token's distribution over one of the two")
    valid = {(century, yy) for century in GT_CENTURIES
             for yy, row in zip(years, continuation_ids(tokenizer, f"The war lasted from the year {century}", years),
                                strict=True)
             if row is not None and len(row) == width}
    if not any((century, "01") in valid for century in GT_CENTURIES):
        raise TokenizationError("task 'greater_than': in no century 11..17 does the corrupted year XX01 tokenize as "
                                "XX followed by 01 in this tokenizer")
    return YearScheme(mode, frozenset(valid))


# --- drawing pairs ----------------------------------------------------------------------------------
def _ioi_pair(rng: random.Random, names: tuple[str, ...], counterfactual: str) -> TextPair:
    io, s, c = rng.sample(names, 3)
    template = rng.choice(IOI_TEMPLATES)
    first, second = (io, s) if rng.random() < 0.5 else (s, io)
    fill = dict(PLACE=rng.choice(PLACES), OBJECT=rng.choice(OBJECTS))
    clean = template.format(A=first, B=second, S2=s, **fill)
    if counterfactual == "io":  # the indirect object becomes a third name: the answer moves to it
        swap = {io: c, s: s}
        return TextPair(clean, template.format(A=swap[first], B=swap[second], S2=s, **fill), (f" {c}",), (f" {s}",))
    return TextPair(clean, template.format(A=first, B=second, S2=c, **fill), (f" {io}",), (f" {s}",))


def _greater_than_pair(rng: random.Random, years: YearScheme) -> TextPair:
    """Draws (century, YY) until both the clean YY and the corrupted 01 follow "the year XX" as tokens of
    their own (at most ``DRAWS_PER_PAIR`` tries; GPT-2 keeps the first)."""
    for _ in range(DRAWS_PER_PAIR):
        century = rng.randint(11, 17)
        tens = rng.randint(0, 8) if years.mode == "digit" else None
        yy = rng.randint(2, 98) if tens is None else 10 * tens + 9  # digit mode: YY = d9, see the module docstring
        if {(century, f"{yy:02d}"), (century, "01")} <= years.valid:
            break
    else:
        raise TokenizationError("task 'greater_than': this tokenizer merges the years of most drawn prompts with their "
                                "century (XXYY is not XX followed by YY)")
    noun = rng.choice(GT_NOUNS)
    clean, corrupted = (GT_TEMPLATE.format(NOUN=noun, XX=century, YY=y) for y in (f"{yy:02d}", "01"))
    if tens is not None:  # YY' > d9 exactly when the tens digit of YY' is > d
        return TextPair(clean, corrupted, tuple(str(d) for d in range(tens + 1, 10)),
                        tuple(str(d) for d in range(tens + 1)))
    years_text = [f"{i:02d}" for i in range(100)]
    return TextPair(clean, corrupted, tuple(years_text[yy + 1:]), tuple(years_text[:yy + 1]))


def _docstring_pair(rng: random.Random, arg_names: tuple[str, ...]) -> TextPair:
    args = rng.sample(arg_names, 6)
    fresh = rng.sample([a for a in arg_names if a not in args], 6)
    words = {f"D{i}": rng.choice(DOC_WORDS) for i in (1, 2, 3)}
    words.update({f"W{i}": rng.choice(DOC_WORDS) for i in (1, 2, 3, 4)})
    func = rng.choice(DOC_WORDS)
    keys = ("P1", "P2", "A", "B", "C", "S")
    clean = DOC_TEMPLATE.format(FUNC=func, **dict(zip(keys, args, strict=True)), **words)
    corrupted = DOC_TEMPLATE.format(FUNC=func, **dict(zip(keys, fresh, strict=True)), **words)
    corrupted = corrupted.split("\n", 1)[0] + "\n" + clean.split("\n", 1)[1]  # only the def line changes
    return TextPair(clean, corrupted, (f" {args[4]}",), tuple(f" {a}" for a in args if a != args[4]))


def _same_length(tokenizer, pair: TextPair) -> bool:
    clean, corrupted = _ids(tokenizer, [pair.clean, pair.corrupted])
    unk = tokenizer.unk_token_id
    if unk is not None and (unk in clean or unk in corrupted):
        raise TokenizationError(f"the template text {pair.clean!r} has words this tokenizer does not know (they "
                                f"become {tokenizer.unk_token!r}); use templates made for this tokenizer (the toy "
                                "templates for the toy model)")
    return len(clean) == len(corrupted)


def natural_text_pairs(task: str, n: int, seed: int = 0, tokenizer=None, ioi_counterfactual: str = "abc") -> list[TextPair]:
    """``n`` pairs of ``task`` in the published templates, checked against ``tokenizer`` when given (see
    the module docstring). ``ioi_counterfactual``: ``"abc"`` (S2 becomes a third name, the task's
    corruption) or ``"io"`` (the indirect object becomes a third name, which is then the answer)."""
    check_choice("task", task, TASKS)
    check_choice("ioi_counterfactual", ioi_counterfactual, IOI_COUNTERFACTUALS)
    check_range("n", n, 1, None, integer=True)
    rng = random.Random(f"saelab.circuits.gpt2:{task}:{seed}")
    if task == "ioi":
        names = NAMES if tokenizer is None else checked_words(tokenizer, task, "names", NAMES, MIN_NAMES, "to")
        draw = lambda: _ioi_pair(rng, names, ioi_counterfactual)  # noqa: E731
    elif task == "greater_than":
        scheme = year_scheme(tokenizer)
        draw = lambda: _greater_than_pair(rng, scheme)  # noqa: E731
    else:
        arg_names = DOC_ARGS if tokenizer is None else checked_words(tokenizer, task, "argument names", DOC_ARGS,
                                                                       MIN_DOC_ARGS, ":param")
        draw = lambda: _docstring_pair(rng, arg_names)  # noqa: E731
    pairs: list[TextPair] = []
    mismatched: list[TextPair] = []
    while len(pairs) < n:
        pair = draw()
        if tokenizer is None or _same_length(tokenizer, pair):
            pairs.append(pair)
            continue
        mismatched.append(pair)
        if len(mismatched) > DRAWS_PER_PAIR * n:
            raise TokenizationError(f"task {task!r}: {len(mismatched)} drawn pairs had clean and corrupted prompts of "
                                    f"different token lengths in this tokenizer (e.g. {mismatched[0].clean!r} vs "
                                    f"{mismatched[0].corrupted!r}); only {len(pairs)} of {n} matched")
    return pairs


def check_answer_ids(tokenizer, pair: TextPair, words: tuple[str, ...]) -> list[int]:
    """The single-token ids of ``words`` as they would follow ``pair.clean`` (its last word as context)."""
    context = pair.clean.rsplit(" ", 1)[-1] if " " in pair.clean else ""
    return [single_token_id(tokenizer, w, context) for w in words]
