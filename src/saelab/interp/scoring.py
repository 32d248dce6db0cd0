"""Scores of an explanation against known activations, on the held-out mix ``saelab.interp.autointerp``
draws (activating contexts across activation quantiles, and silent random contexts).

- detection: the judge labels each example (activating: positives; silent: negatives) as activating
  or not; balanced accuracy = (TPR + TNR) / 2, so the share of silent contexts in the mix does not
  move it.
- fuzzing: each activating example is shown once with its firing tokens marked and once with as many
  non-firing tokens marked; the judge says whether the marks are right; balanced accuracy.
- simulation: the judge predicts 0–10 per token; Pearson correlation of all predicted and true
  activations over the examples (OpenAI's "all at once" score; 0 when either is constant). Over
  activating contexts from every quantile, an explanation must predict the weak firings too, not
  only separate the strongest ones from silence.

The scorers beyond these three (``saelab.interp.intruder``, ``surprisal``, ``embedding``) share
``roc_auc`` and ``check_explanation`` from here.
"""

from __future__ import annotations

import math
import random

import numpy as np

from saelab.errors import ConfigError
from saelab.interp.gather import Example


def balanced_accuracy(truth: list[bool], predicted: list[bool]) -> float | None:
    """(TPR + TNR) / 2; the available rate alone when one class is absent; None without examples."""
    pos = [p for t, p in zip(truth, predicted, strict=False) if t]
    neg = [not p for t, p in zip(truth, predicted, strict=False) if not t]
    rates = [sum(group) / len(group) for group in (pos, neg) if group]
    return sum(rates) / len(rates) if rates else None


def roc_auc(positive_scores: list[float], negative_scores: list[float]) -> float | None:
    """ROC AUC of scores of two classes: the probability that a random positive outscores a random
    negative, ties counting half (Mann–Whitney U / (n_pos·n_neg)); None when a class is empty."""
    if not positive_scores or not negative_scores:
        return None
    pos = np.asarray(positive_scores, dtype=float)[:, None]
    neg = np.asarray(negative_scores, dtype=float)[None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def check_explanation(explanation: str) -> None:
    """Refuse an explanation that is not a non-empty string (nothing to score)."""
    if not isinstance(explanation, str) or not explanation.strip():
        raise ConfigError(f"explanation={explanation!r} is empty; the scorers need the explainer's text "
                          "(an explainer that has nothing to say should say so in words)")


def pearson(x: list[float], y: list[float]) -> float:
    n = len(x)
    if n < 2:
        return 0.0
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=False))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return 0.0 if sxx <= 0 or syy <= 0 else sxy / math.sqrt(sxx * syy)


def detection_score(judge, explanation: str, positives: list[Example], negatives: list[Example],
                    seed: int = 0) -> float | None:
    examples = positives + negatives
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    shown = [examples[i] for i in order]
    predicted = judge.detect(explanation, shown) if shown else []
    return balanced_accuracy([ex.fires for ex in shown], predicted)


def fuzz_marks(ex: Example, rng: random.Random) -> tuple[set[int], set[int] | None]:
    """(right marks: the firing tokens, wrong marks: as many non-firing tokens, or None if too few)."""
    firing = [i for i, a in enumerate(ex.acts) if a > 0]
    silent = [i for i, a in enumerate(ex.acts) if a <= 0]
    wrong = set(rng.sample(silent, len(firing))) if firing and len(silent) >= len(firing) else None
    return set(firing), wrong


def fuzzing_score(judge, explanation: str, positives: list[Example], seed: int = 0) -> float | None:
    rng = random.Random(seed)
    items: list[tuple[Example, set[int], bool]] = []
    for ex in positives:
        right, wrong = fuzz_marks(ex, rng)
        if right and wrong is not None:
            items += [(ex, right, True), (ex, wrong, False)]
    if not items:
        return None
    rng.shuffle(items)
    predicted = judge.fuzz(explanation, [e for e, _, _ in items], [m for _, m, _ in items])
    return balanced_accuracy([t for _, _, t in items], predicted)


def simulation_score(judge, explanation: str, examples: list[Example]) -> float | None:
    if not examples:
        return None
    predicted = judge.simulate(explanation, examples)
    flat_true = [a for ex in examples for a in ex.acts]
    flat_pred = [p for row in predicted for p in row]
    return pearson(flat_pred, flat_true)
