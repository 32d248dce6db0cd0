"""A labelled run of words: the unit every toy generator emits and documents are built from.

Each word carries a syntactic ``role``, a ``task_role`` (e.g. ``"ioi.S2"``, ``""`` for none), an
``induction`` flag (predictable by copying an earlier occurrence) and an optional separator that
overrides the default spacing of :func:`saelab.toy.tokenizer.render_text`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from saelab.toy import vocabulary as V
from saelab.toy.tokenizer import render_text

_ROLE_GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("name", V.NAMES),
    ("number", V.TWO_DIGITS),
    ("punct", V.PUNCTUATION),
    ("det", V.DETERMINERS + ("The", "A")),
    ("pronoun", V.PRONOUNS + ("It", "They", "He", "She", "We")),
    ("prep", V.PREPOSITIONS + ("to", "at", "from", "until")),
    ("conj", V.CONJUNCTIONS + ("When", "After")),
    ("adv", V.ADVERBS + ("Then",)),
    ("verb", tuple(w for t in V.TOPICS.values() for w in t["verb"]) + V.GENERIC_VERBS + V.IOI_VERBS
     + ("went", "had", "met", "decided", "give", "lasted", "ran", "continued")),
    ("adj", tuple(w for t in V.TOPICS.values() for w in t["adj"])),
    ("noun", tuple(w for t in V.TOPICS.values() for w in t["noun"]) + V.IOI_PLACES + V.IOI_OBJECTS
     + V.GT_NOUNS + ("year", "lunch", "fun")),
    ("function", V.DOCSTRING_FUNCS),
    ("argument", V.DOCSTRING_ARGS),
    ("keyword", V.DOCSTRING_FRAME_WORDS),
]
DEFAULT_ROLE: dict[str, str] = {}
for _role, _words in _ROLE_GROUPS:
    for _word in _words:
        DEFAULT_ROLE.setdefault(_word, _role)

ROLES: tuple[str, ...] = tuple(dict.fromkeys(r for r, _ in _ROLE_GROUPS)) + ("random",)
"""Every value of the ``role`` label."""


@dataclass
class Span:
    """Words with per-word labels; all lists have the same length."""

    words: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    task_roles: list[str] = field(default_factory=list)
    induction: list[bool] = field(default_factory=list)
    seps: list[str | None] = field(default_factory=list)

    def add(self, word: str, role: str | None = None, task_role: str = "", *,
            induction: bool = False, sep: str | None = None) -> int:
        """Append one word (role defaults to the word's usual role) and return its index."""
        if word not in V.CONTENT_WORDS:
            raise KeyError(f"{word!r} is not in the toy vocabulary")
        self.words.append(word)
        self.roles.append(role if role is not None else DEFAULT_ROLE[word])
        self.task_roles.append(task_role)
        self.induction.append(induction)
        self.seps.append(sep)
        return len(self.words) - 1

    def add_words(self, text: str, role: str | None = None) -> None:
        """Append the space-separated words of ``text``."""
        for word in text.split():
            self.add(word, role)

    def extend(self, other: Span) -> None:
        self.words += other.words
        self.roles += other.roles
        self.task_roles += other.task_roles
        self.induction += other.induction
        self.seps += other.seps

    def copy_as_repeat(self) -> Span:
        """The same words again, marked predictable by induction from the second word on."""
        return Span(list(self.words), list(self.roles), [""] * len(self.words),
                    [i > 0 for i in range(len(self.words))], list(self.seps))

    @property
    def text(self) -> str:
        return render_text(self.words, self.seps)

    def __len__(self) -> int:
        return len(self.words)
