"""Intruder detection: can a judge holding the explanation spot the one context that does not belong?

Each trial shows ``k`` activating examples and one non-activating example (the intruder) in a seeded
random order; the judge names the intruder. Score = accuracy over the trials; chance = 1/(k+1).
Trial ``t`` takes ``negatives[t]`` as its intruder (so with hard negatives the hardest come first) and
``k`` activating examples drawn without replacement from the held-out ones. This is the explanation-
based variant of delphi's intruder scorer (Paulo et al. 2024, arXiv 2410.13928; delphi also runs it
without an explanation); examples are shown without marks, as for detection.

Judges answer ``intruder(explanation, trials) -> [index of the intruder in each trial]``: the token
judge picks the example with the fewest tokens the explanation quotes (the first of a tie), the LLM
judge is asked with ``intruder_messages``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from saelab.errors import ConfigError, check_range
from saelab.interp.gather import Example
from saelab.interp.prompts import SYSTEM, ReplyFormatError, _numbered
from saelab.interp.scoring import check_explanation


@dataclass
class IntruderTrial:
    """``examples`` shown (k activating + 1 silent) and ``intruder``, the silent one's index."""

    examples: list[Example]
    intruder: int


def intruder_trials(positives: list[Example], negatives: list[Example], k: int, n_trials: int,
                    seed: int = 0) -> list[IntruderTrial]:
    """``min(n_trials, len(negatives))`` seeded trials (module docstring)."""
    check_range("intruder k", k, 1, None, integer=True)
    check_range("intruder trials", n_trials, 1, None, integer=True)
    if len(positives) < k:
        raise ConfigError(f"intruder detection with k={k} needs at least {k} activating examples per trial and "
                          f"got {len(positives)}; lower k or score more activating examples (n_activating)")
    if not negatives:
        raise ConfigError("intruder detection needs non-activating examples to use as intruders and got none; "
                          "gather random contexts (FeatureDataConfig.n_random) and set n_non_activating >= 1")
    rng = random.Random(seed)
    trials = []
    for intruder in negatives[:n_trials]:
        shown = rng.sample(positives, k)
        at = rng.randrange(k + 1)
        trials.append(IntruderTrial(shown[:at] + [intruder] + shown[at:], at))
    return trials


def intruder_score(judge, explanation: str, positives: list[Example], negatives: list[Example], k: int = 4,
                   n_trials: int = 10, seed: int = 0) -> float:
    """Share of trials in which ``judge`` names the intruder (chance: 1/(k+1))."""
    check_explanation(explanation)
    trials = intruder_trials(positives, negatives, k, n_trials, seed)
    picks = judge.intruder(explanation, [t.examples for t in trials])
    return sum(p == t.intruder for p, t in zip(picks, trials, strict=True)) / len(trials)


def intruder_messages(explanation: str, examples: list[Example]) -> list[dict[str, str]]:
    user = (f"A latent is explained as: {explanation}\n\nThe latent activates somewhere in every numbered text "
            "below except one, the intruder, where it does not activate at all. Which text is the intruder?"
            f"\n\n{_numbered(examples)}\n\nReply with only the number of the intruder text (1 to {len(examples)}).")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_intruder_reply(reply: str, n_examples: int) -> int:
    """The 0-based index of the first integer in ``reply``, which must lie in ``1..n_examples``."""
    match = re.search(r"-?\d+", reply)
    if not match:
        raise ReplyFormatError(f"no number in the reply {reply[:200]!r}; expected the intruder's number "
                               f"1..{n_examples}")
    value = int(match.group(0))
    if not 1 <= value <= n_examples:
        raise ReplyFormatError(f"the reply names text {value}; expected a number in 1..{n_examples}")
    return value - 1
