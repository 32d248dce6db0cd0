"""The prompts autointerp sends to a chat model, and the parsing of its replies.

Examples are shown as text with chosen tokens wrapped in ``<<`` ``>>``. Replies that cannot be parsed
raise ``ReplyFormatError``, which autointerp records against the feature (the run goes on).
"""

from __future__ import annotations

import json
import re

from saelab.errors import SaelabError
from saelab.interp.gather import Example

SYSTEM = ("You are a meticulous interpretability researcher studying the latents of a sparse autoencoder "
          "trained on a language model's activations. Answer exactly in the format asked for.")


class ReplyFormatError(SaelabError):
    """A chat reply that does not follow the format the prompt asked for."""


def join_tokens(tokens: list[str]) -> tuple[str, str]:
    """The separator to put between tokens: "" for tokenizers whose pieces carry their spaces, else " "."""
    spaced = sum(1 for t in tokens if t[:1].isspace())
    return ("", "") if tokens and spaced >= 0.3 * len(tokens) else (" ", " ")


def render(tokens: list[str], marks: set[int] = frozenset()) -> str:
    """Tokens as text, those at ``marks`` wrapped in ``<<`` ``>>``."""
    sep, _ = join_tokens(tokens)
    return sep.join(f"<<{t}>>" if i in marks else t for i, t in enumerate(tokens))


def explain_messages(examples: list[Example]) -> list[dict[str, str]]:
    lines = []
    for n, ex in enumerate(examples, 1):
        firing = {i for i, a in enumerate(ex.acts) if a > 0}
        strongest = sorted(firing, key=lambda i: -ex.acts[i])[:5]
        acts = ", ".join(f"{json.dumps(ex.tokens[i])}: {ex.acts[i]:.2f}" for i in strongest)
        lines.append(f"Example {n}: {render(ex.tokens, firing)}\nActivations: {acts}")
    user = ("Here are text examples where one latent activates. Tokens where it is active are marked <<like "
            "this>>, followed by the strongest activations.\n\n" + "\n\n".join(lines) +
            "\n\nIn one short sentence, say what the latent responds to: which tokens, in which contexts. "
            "Quote the tokens it fires on in double quotes. Reply with a single line starting with "
            "'Explanation:'.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_explanation(reply: str) -> str:
    """The explanation after ``Explanation:`` (or the whole reply when it is one non-empty line)."""
    match = re.search(r"explanation\s*:\s*(.+)", reply, flags=re.IGNORECASE)
    text = match.group(1).strip() if match else reply.strip()
    if not text or (not match and "\n" in text):
        raise ReplyFormatError(f"no explanation in the reply {reply[:200]!r}; expected 'Explanation: ...'")
    return text.splitlines()[0].strip()


def _numbered(examples: list[Example], marks: list[set[int]] | None = None) -> str:
    return "\n".join(f"{n}. {render(ex.tokens, marks[n - 1] if marks else frozenset())}"
                     for n, ex in enumerate(examples, 1))


def detection_messages(explanation: str, examples: list[Example]) -> list[dict[str, str]]:
    user = (f"A latent is explained as: {explanation}\n\nFor each numbered text below, decide whether the latent "
            f"activates anywhere in it.\n\n{_numbered(examples)}\n\nReply with only a JSON list of "
            f"{len(examples)} integers, 1 (activates) or 0 (does not), in order.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def fuzzing_messages(explanation: str, examples: list[Example], marks: list[set[int]]) -> list[dict[str, str]]:
    user = (f"A latent is explained as: {explanation}\n\nIn each numbered text below some tokens are marked "
            "<<like this>>. Decide whether the marked tokens are exactly where this latent would activate."
            f"\n\n{_numbered(examples, marks)}\n\nReply with only a JSON list of {len(examples)} integers, "
            "1 (the marks are right) or 0 (they are wrong), in order.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def simulation_messages(explanation: str, example: Example) -> list[dict[str, str]]:
    listing = "\n".join(f"{i}\t{json.dumps(t)}" for i, t in enumerate(example.tokens))
    user = (f"A latent is explained as: {explanation}\n\nPredict its activation on each token below, on a scale "
            f"from 0 (inactive) to 10 (maximal).\n\nindex\ttoken\n{listing}\n\nReply with only a JSON list of "
            f"{len(example.tokens)} integers from 0 to 10, one per token, in order.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_int_list(reply: str, length: int, lo: int, hi: int) -> list[int]:
    """The first JSON list in ``reply``: exactly ``length`` integers in ``lo..hi``."""
    match = re.search(r"\[[^\[\]]*\]", reply)
    if not match:
        raise ReplyFormatError(f"no JSON list in the reply {reply[:200]!r}; expected {length} integers in {lo}..{hi}")
    try:
        values = json.loads(match.group(0))
    except json.JSONDecodeError:
        raise ReplyFormatError(f"the list in the reply is not valid JSON: {match.group(0)[:200]!r}") from None
    if len(values) != length:
        raise ReplyFormatError(f"the reply lists {len(values)} values; expected {length}: {match.group(0)[:200]!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v) or not lo <= v <= hi:
            raise ReplyFormatError(f"value {v!r} in the reply is not an integer in {lo}..{hi}")
        out.append(int(v))
    return out
