"""Feature-family classification recovers planted latents."""

import numpy as np
import pytest
import torch

from saelab.attention.families import classify_latents, family_counts
from saelab.errors import ConfigError, SaelabError


def planted_labels(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    topic = np.repeat(rng.choice(["art", "food", "sport", "war"], n // 100), 100)
    role = rng.choice(["noun", "verb", "det", "name"], n)
    induction = rng.random(n) < 0.15
    return {"topic": topic, "role": role, "induction": induction}


def test_planted_latents_are_classified_into_their_families():
    labels = planted_labels()
    n = len(labels["role"])
    g = torch.Generator().manual_seed(0)
    noise = lambda p: (torch.rand(n, generator=g) < p).float()  # noqa: E731
    acts = torch.stack([
        torch.from_numpy(labels["induction"]).float() * 2.0,            # 0: induction
        torch.from_numpy(labels["topic"] == "food").float() * 1.5,      # 1: long-range (topic)
        torch.from_numpy(labels["role"] == "verb").float(),             # 2: short-range (role)
        noise(0.3) * torch.rand(n, generator=g),                        # 3: fires everywhere alike
        torch.zeros(n),                                                 # 4: dead
        (torch.from_numpy(labels["role"] == "name").float() + 0.05 * noise(0.5)),  # 5: role, a little noise
    ], dim=1)
    fams = classify_latents(acts, labels, min_fires=5, threshold=0.5)
    assert [f.family for f in fams] == ["induction", "long_range_context", "short_range_context", "unclassified",
                                         "rare", "short_range_context"]
    assert fams[1].value == "food" and fams[2].value == "verb" and fams[0].value == "True"
    assert fams[0].specificity["induction"] == pytest.approx(1.0)
    assert fams[3].specificity["induction"] < 0.2
    counts = family_counts(fams)
    assert counts == {"induction": 1, "short_range_context": 2, "long_range_context": 1, "unclassified": 1, "rare": 1}


def test_missing_labels_and_bad_settings_are_refused():
    labels = planted_labels()
    acts = torch.rand(len(labels["role"]), 3)
    with pytest.raises(SaelabError, match="missing"):
        classify_latents(acts, {"role": labels["role"]})
    with pytest.raises(ConfigError, match="threshold"):
        classify_latents(acts, labels, threshold=2.0)
