"""Judges answer the scorers' questions about examples given an explanation.

``detect`` (does the latent fire anywhere in each example), ``fuzz`` (are the marked tokens where it
fires), ``simulate`` (predicted activation 0–10 per token) and ``intruder`` (which example of each
trial is the one where it does not fire, ``saelab.interp.intruder``). ``TokenJudge`` needs no LLM: it
reads the double-quoted tokens of the explanation's first part (before ``Context:``) and predicts 10
on those tokens and 0 elsewhere; its intruder is the example with the fewest of them (the first of a
tie). ``LLMJudge`` asks a chat model with ``saelab.interp.prompts`` (intruder: ``intruder_messages``).
"""

from __future__ import annotations

import json
import re

from saelab.interp.gather import Example
from saelab.interp.intruder import intruder_messages, parse_intruder_reply
from saelab.interp.llm import LLMClient
from saelab.interp.prompts import (
    detection_messages,
    fuzzing_messages,
    parse_int_list,
    simulation_messages,
)

_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def quoted_tokens(explanation: str) -> set[str]:
    """Double-quoted strings (JSON escapes allowed) before ``Context:``, stripped."""
    head = explanation.split("Context:")[0]
    out = set()
    for raw in _QUOTED.findall(head):
        try:
            out.add(json.loads(f'"{raw}"').strip())
        except json.JSONDecodeError:
            out.add(raw.strip())
    return out


class TokenJudge:
    """Rule-based judge over the explanation's quoted tokens."""

    name = "tokens"

    def _hits(self, explanation: str, ex: Example) -> list[bool]:
        wanted = quoted_tokens(explanation)
        return [t.strip() in wanted for t in ex.tokens]

    def detect(self, explanation: str, examples: list[Example]) -> list[bool]:
        return [any(self._hits(explanation, ex)) for ex in examples]

    def fuzz(self, explanation: str, examples: list[Example], marks: list[set[int]]) -> list[bool]:
        out = []
        for ex, marked in zip(examples, marks, strict=False):
            hits = self._hits(explanation, ex)
            out.append(bool(marked) and sum(hits[i] for i in marked) * 2 > len(marked))
        return out

    def simulate(self, explanation: str, examples: list[Example]) -> list[list[float]]:
        return [[10.0 if h else 0.0 for h in self._hits(explanation, ex)] for ex in examples]

    def intruder(self, explanation: str, trials: list[list[Example]]) -> list[int]:
        picks = []
        for examples in trials:
            counts = [sum(self._hits(explanation, ex)) for ex in examples]
            picks.append(counts.index(min(counts)))
        return picks


class LLMJudge:
    """Judge by asking an OpenAI-compatible chat model; one call for detection, one for fuzzing, one per
    example for simulation and one per intruder trial (sent concurrently)."""

    name = "llm"

    def __init__(self, client: LLMClient):
        self.client = client

    def detect(self, explanation: str, examples: list[Example]) -> list[bool]:
        reply = self.client.chat(detection_messages(explanation, examples))
        return [bool(v) for v in parse_int_list(reply, len(examples), 0, 1)]

    def fuzz(self, explanation: str, examples: list[Example], marks: list[set[int]]) -> list[bool]:
        reply = self.client.chat(fuzzing_messages(explanation, examples, marks))
        return [bool(v) for v in parse_int_list(reply, len(examples), 0, 1)]

    def simulate(self, explanation: str, examples: list[Example]) -> list[list[float]]:
        replies = self.client.chat_many([simulation_messages(explanation, ex) for ex in examples])
        return [[float(v) for v in parse_int_list(r, len(ex.tokens), 0, 10)] for r, ex in zip(replies, examples, strict=False)]

    def intruder(self, explanation: str, trials: list[list[Example]]) -> list[int]:
        replies = self.client.chat_many([intruder_messages(explanation, examples) for examples in trials])
        return [parse_intruder_reply(r, len(examples)) for r, examples in zip(replies, trials, strict=True)]
