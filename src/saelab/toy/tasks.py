"""Clean/corrupted prompt pairs for circuit work on the toy world, deterministic for a seed.

Tasks (``TASK_NAMES``):

- ``ioi`` (indirect object identification): ``"When Mary and John went to the store, John gave a
  book to"`` -> ``Mary``. ``variant`` is ``"ABBA"`` (IO named first) or ``"BABA"`` (S first).
  Positions ``IO``, ``S1``, ``S2``, ``END``. Corruption ``"ABC"``: S2 becomes a third name C, so
  the three names are distinct. Answer: IO; wrong answer: S.
- ``greater_than``: ``"The war lasted from the year 1732 to the year 17"`` -> a two-digit token
  greater than ``32``. Positions ``NOUN``, ``XX1`` (century), ``YY``, ``END`` (second century).
  Corruption ``"01"``: YY becomes ``01``. Answers: two-digit tokens > YY; wrong: <= YY.
- ``docstring``: ``"def load(self, size, files, mode, rate): <desc> :param size: w w :param files:
  w w :param"`` -> ``mode``. Positions ``A``, ``B``, ``C`` (the def's arguments in order),
  ``DOC_A``, ``DOC_B`` (their ``:param`` mentions) and ``END``. Corruption ``"random_def"``: every
  argument name in the def is replaced by a fresh random name (the docstring is unchanged), so the
  answer can no longer be copied from the def. Answer: C; wrong: the def's other arguments.

Positions index ``words`` (no BOS); add 1 when the model input starts with ``<bos>``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from saelab.errors import check_choice, check_range
from saelab.toy import vocabulary as V
from saelab.toy.spans import Span

TASK_NAMES = ("ioi", "greater_than", "docstring")
MAX_PAIRS = 1_000_000

IOI_TEMPLATES = (
    "When {A} and {B} went to the {PLACE} , {S2} {VERB} a {OBJECT} to",
    "Then , {A} and {B} went to the {PLACE} . {S2} {VERB} a {OBJECT} to",
    "After {A} and {B} had lunch at the {PLACE} , {S2} {VERB} a {OBJECT} to",
    "When {A} and {B} met at the {PLACE} , {S2} {VERB} a {OBJECT} to",
    "Then , {A} and {B} had fun at the {PLACE} . {S2} {VERB} a {OBJECT} to",
    "After {A} and {B} went to the {PLACE} , {S2} decided to give a {OBJECT} to",
)
GT_TEMPLATES = (
    "The {NOUN} lasted from the year {XX1} {YY} to the year {END}",
    "The {NOUN} ran from the year {XX1} {YY} until the year {END}",
    "The {NOUN} continued from the year {XX1} {YY} to the year {END}",
)
GT_CENTURIES = tuple(range(11, 18))
GT_MIN_YY, GT_MAX_YY = 2, 98


@dataclass(frozen=True)
class TaskPrompt:
    """One prompt: ``words`` (what follows ``<bos>``), its text, and labelled word positions."""

    words: tuple[str, ...]
    text: str
    positions: dict[str, int]


@dataclass(frozen=True)
class TaskPair:
    """A clean prompt, its corrupted counterpart (same length and positions) and the answers.

    ``answers``: next tokens that solve the clean prompt; ``wrong_answers``: the competing ones
    the task's metric compares against (IOI: S; greater-than: years <= YY; docstring: the def's
    other arguments).
    """

    task: str
    variant: str
    clean: TaskPrompt
    corrupted: TaskPrompt
    answers: tuple[str, ...]
    wrong_answers: tuple[str, ...]
    corruption: str


def _fill(template: str, slots: dict[str, tuple[str, str]], task: str) -> tuple[Span, dict[str, int]]:
    """Build a span from a template; ``slots[name] = (word, role)``; returns (span, slot positions)."""
    span, positions = Span(), {}
    for piece in template.split():
        if piece.startswith("{"):
            name = piece[1:-1]
            word, role = slots[name]
            sep = "" if name == "YY" else None
            positions[name] = span.add(word, role, f"{task}.{name}", sep=sep)
        else:
            span.add(piece)
    return span, positions


def _prompt(span: Span, positions: dict[str, int]) -> TaskPrompt:
    return TaskPrompt(tuple(span.words), span.text, dict(positions))


def ioi_span(rng: random.Random, names: tuple[str, str, str] | None = None,
             variant: str | None = None, template: str | None = None) -> tuple[Span, dict[str, int], dict]:
    """A clean IOI prompt span (no answer) with positions IO, S1, S2, END; also returns the draw."""
    io, s, c = names or tuple(rng.sample(V.NAMES, 3))
    variant = variant or rng.choice(("ABBA", "BABA"))
    template = template or rng.choice(IOI_TEMPLATES)
    first, second = (io, s) if variant == "ABBA" else (s, io)
    first_role, second_role = ("IO", "S1") if variant == "ABBA" else ("S1", "IO")
    draw = {"io": io, "s": s, "c": c, "variant": variant, "template": template,
            "place": rng.choice(V.IOI_PLACES), "object": rng.choice(V.IOI_OBJECTS),
            "verb": rng.choice(V.IOI_VERBS)}
    text = template.replace("{A}", "{" + first_role + "}").replace("{B}", "{" + second_role + "}")
    slots = {"IO": (io, "name"), "S1": (s, "name"), "S2": (s, "name"), "PLACE": (draw["place"], "noun"),
             "OBJECT": (draw["object"], "noun"), "VERB": (draw["verb"], "verb")}
    span, positions = _fill(text, slots, "ioi")
    positions = {k: positions[k] for k in ("IO", "S1", "S2")}
    positions["END"] = len(span) - 1
    span.task_roles[-1] = "ioi.END"
    return span, positions, draw


def ioi_pair(rng: random.Random) -> TaskPair:
    span, positions, draw = ioi_span(rng)
    corrupted = Span(list(span.words), list(span.roles), list(span.task_roles), list(span.induction),
                     list(span.seps))
    corrupted.words[positions["S2"]] = draw["c"]
    return TaskPair("ioi", draw["variant"], _prompt(span, positions), _prompt(corrupted, positions),
                    (draw["io"],), (draw["s"],), "ABC")


def greater_than_span(rng: random.Random, yy: int | None = None) -> tuple[Span, dict[str, int], dict]:
    """A greater-than prompt span ending at the second century token; positions NOUN, XX1, YY, END."""
    century = str(rng.choice(GT_CENTURIES))
    yy = rng.randint(GT_MIN_YY, GT_MAX_YY) if yy is None else yy
    draw = {"century": century, "yy": yy, "noun": rng.choice(V.GT_NOUNS), "template": rng.choice(GT_TEMPLATES)}
    slots = {"NOUN": (draw["noun"], "noun"), "XX1": (century, "number"), "YY": (f"{yy:02d}", "number"),
             "END": (century, "number")}
    span, positions = _fill(draw["template"], slots, "greater_than")
    return span, positions, draw


def greater_than_pair(rng: random.Random) -> TaskPair:
    span, positions, draw = greater_than_span(rng)
    corrupted = Span(list(span.words), list(span.roles), list(span.task_roles), list(span.induction),
                     list(span.seps))
    corrupted.words[positions["YY"]] = "01"
    yy = draw["yy"]
    return TaskPair("greater_than", draw["template"].split()[2], _prompt(span, positions),
                    _prompt(corrupted, positions), V.TWO_DIGITS[yy + 1:], V.TWO_DIGITS[: yy + 1], "01")


def docstring_span(rng: random.Random, n_args: int = 4, n_documented: int = 2,
                   topic: str | None = None) -> tuple[Span, dict[str, int], dict]:
    """``def f(self, a1..an): d d d :param a1: w w ... :param`` (documented args a1..ak, k < n).

    Positions: ``A``, ``B``, ``C``... for the def arguments (first three named, ``ARG{i}`` for
    all), ``DOC_A``, ``DOC_B``... for the documented names, ``END`` for the last ``param``.
    """
    args = rng.sample(V.DOCSTRING_ARGS, n_args)
    topic_words = V.TOPICS[topic or rng.choice(V.TOPIC_NAMES)]
    pool = topic_words["noun"] + topic_words["adj"]
    span, positions = Span(), {}
    letters = "ABCDEFGH"
    span.add("def", task_role="docstring.def")
    span.add(rng.choice(V.DOCSTRING_FUNCS))
    span.add("(")
    span.add("self", task_role="docstring.self")
    for i, arg in enumerate(args):
        span.add(",")
        positions[letters[i]] = span.add(arg, "argument", f"docstring.{letters[i]}")
    span.add(")")
    span.add(":")
    for j in range(3):
        span.add(rng.choice(pool), sep="\n    " if j == 0 else None)
    for i in range(n_documented):
        span.add(":", sep="\n    ")
        span.add("param", sep="")
        positions[f"DOC_{letters[i]}"] = span.add(args[i], "argument", f"docstring.DOC_{letters[i]}")
        span.add(":")
        for _ in range(2):
            span.add(rng.choice(pool))
    span.add(":", sep="\n    ")
    positions["END"] = span.add("param", task_role="docstring.END", sep="")
    return span, positions, {"args": args, "answer": args[n_documented]}


def docstring_pair(rng: random.Random) -> TaskPair:
    span, positions, draw = docstring_span(rng)
    args = draw["args"]
    fresh = rng.sample([a for a in V.DOCSTRING_ARGS if a not in args], len(args))
    corrupted = Span(list(span.words), list(span.roles), list(span.task_roles), list(span.induction),
                     list(span.seps))
    for letter, new in zip("ABCD", fresh, strict=True):
        corrupted.words[positions[letter]] = new
    answer = draw["answer"]
    return TaskPair("docstring", "4args", _prompt(span, positions), _prompt(corrupted, positions),
                    (answer,), tuple(a for a in args if a != answer), "random_def")


_PAIR_MAKERS = {"ioi": ioi_pair, "greater_than": greater_than_pair, "docstring": docstring_pair}


def check_task(task: str) -> None:
    """Refuse unknown task names, listing the accepted ones."""
    check_choice("task", task, TASK_NAMES)


def generate_pairs(task: str, n: int, seed: int = 0) -> list[TaskPair]:
    """``n`` clean/corrupted pairs of ``task``; the same (task, n, seed) always gives the same list,
    and a longer list starts with the shorter one."""
    check_task(task)
    check_range("n", n, 1, MAX_PAIRS, integer=True)
    check_range("seed", seed, 0, None, integer=True)
    rng = random.Random(f"saelab.toy.tasks:{task}:{seed}")
    return [_PAIR_MAKERS[task](rng) for _ in range(n)]
