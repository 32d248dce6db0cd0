"""Explainers: from a latent's top examples to a one-sentence explanation.

``TokenExplainer`` needs no LLM: it sums the latent's activation per token string over the examples
and names the tokens carrying most of it (``Fires on "a", "b".``), then the tokens that most often
precede the strongest activation (``Context: often after "x".``). ``LLMExplainer`` asks a chat model.
"""

from __future__ import annotations

import json
from collections import Counter

from saelab.errors import check_range
from saelab.interp.gather import Example
from saelab.interp.llm import LLMClient
from saelab.interp.prompts import explain_messages, parse_explanation


class TokenExplainer:
    """Summarise activating tokens and contexts; ``max_tokens`` names at most, covering ``coverage`` of
    the total activation."""

    name = "tokens"

    def __init__(self, max_tokens: int = 8, coverage: float = 0.8):
        check_range("max_tokens", max_tokens, 1, None, integer=True)
        check_range("coverage", coverage, 0, 1, lo_open=True)
        self.max_tokens, self.coverage = max_tokens, coverage

    def explain(self, examples: list[Example]) -> str:
        weight: Counter[str] = Counter()
        before: Counter[str] = Counter()
        for ex in examples:
            for tok, a in zip(ex.tokens, ex.acts, strict=False):
                if a > 0:
                    weight[tok.strip()] += a
            if ex.mark > 0:
                before[ex.tokens[ex.mark - 1].strip()] += 1
        total = sum(weight.values())
        if total <= 0:
            return "Never fires on these examples."
        chosen, covered = [], 0.0
        for tok, w in weight.most_common():
            chosen.append(tok)
            covered += w
            if covered >= self.coverage * total or len(chosen) == self.max_tokens:
                break
        text = "Fires on " + ", ".join(json.dumps(t) for t in chosen) + "."
        common = [t for t, c in before.most_common(3) if c >= 2]
        if common:
            text += " Context: often after " + ", ".join(json.dumps(t) for t in common) + "."
        return text


class LLMExplainer:
    """Ask an OpenAI-compatible chat model (``saelab.interp.prompts.explain_messages``)."""

    name = "llm"

    def __init__(self, client: LLMClient):
        self.client = client

    def explain(self, examples: list[Example]) -> str:
        return parse_explanation(self.client.chat(explain_messages(examples)))
