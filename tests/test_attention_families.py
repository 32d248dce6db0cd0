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


def toy_corpus_labels(n_docs=24):
    """Ground-truth labels of real toy documents, flattened over tokens."""
    import itertools

    from saelab.toy.corpus import iter_documents

    labels = {"topic": [], "role": [], "induction": [], "segment": []}
    for doc in itertools.islice(iter_documents(0), n_docs):
        for name in labels:
            labels[name] += doc.labels[name]
    return {name: np.array(values) for name, values in labels.items()}


def test_copies_in_repeated_random_spans_are_induction_not_short_range():
    labels = toy_corpus_labels()
    induction, role, segment = labels["induction"], labels["role"], labels["segment"]
    random_token = role == "random"
    next_is_copy = np.append(induction[1:], False)
    second_copy = random_token & (induction | next_is_copy)  # the whole second copy of each random span
    first_copy = random_token & ~second_copy
    noun = role == "noun"
    copied_noun = induction & noun  # nouns of recurring prose sentences
    assert second_copy.sum() > 50 and first_copy.sum() > 50 and copied_noun.sum() >= 10
    as_acts = lambda mask: torch.from_numpy(mask.astype(np.float32))  # noqa: E731
    acts = torch.stack([
        as_acts(second_copy),                          # 0: copying in random spans (role "random")
        as_acts(first_copy),                           # 1: random tokens nothing predicts
        as_acts(random_token),                         # 2: every random-span token alike
        # 3: mostly copies of nouns (70% of its activation), some other nouns: copying, not the role
        as_acts(copied_noun) + as_acts(noun & ~induction) * 0.43 * copied_noun.sum() / (noun & ~induction).sum(),
        as_acts(noun & (segment == "prose")),          # 4: nouns of prose: a syntax role
        as_acts(segment == "repeat") * 0.0,            # 5: dead
    ], dim=1)
    fams = classify_latents(acts, labels)
    assert [f.family for f in fams] == ["induction", "unclassified", "unclassified", "induction",
                                         "short_range_context", "rare"]
    assert fams[0].specificity["induction"] > 0.8
    assert fams[0].specificity["short_range_context"] < 0  # random-span tokens count against every role
    assert fams[3].specificity["short_range_context"] > fams[3].specificity["induction"] > 0.5  # induction wins
    assert fams[4].value == "noun"
    assert all(f.value != "random" for f in fams)
