"""Head census criteria on planted data: roles from top-context overlap (any model), planted families
(toy world), and the Wilson interval of the polysemantic share against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.attention.census import (
    CensusConfig,
    build_census,
    jaccard,
    role_clusters,
    role_vocabularies,
    wilson_interval,
)
from saelab.attention.corpus import Windows
from saelab.attention.geometry import bind_attention_sae
from saelab.errors import ConfigError, SaelabError
from saelab.models import load_model
from saelab.sae import SAEConfig, make_sae

N_WIN, POS, HOOK = 8, 32, "blocks.3.attn.hook_z"
SHARES = {"A": (0.7, 0.0, 0.3, 0.0), "B": (0.0, 0.7, 0.0, 0.3)}  # decoder-norm share per head 0..3


@pytest.fixture(scope="module")
def asae():
    """Latents 0-3 (group A) live in heads 0 and 2, latents 4-7 (group B) in heads 1 and 3."""
    lm = load_model("toy")
    sae = make_sae(SAEConfig("relu", d_in=128, d_sae=8, hook_name=HOOK), seed=0)
    direction = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(0)), dim=0)
    with torch.no_grad():
        for f in range(8):
            shares = SHARES["A" if f < 4 else "B"]
            sae.W_dec[f] = torch.cat([s * direction for s in shares])
    return bind_attention_sae(lm, sae)


def planted_world():
    """(windows, acts [n, pos, 8]). Window pair j (windows 2j, 2j+1) uses its own 16 tokens, so contexts
    in different pairs share none. Group A: four latents firing on the same tokens (the induction
    positions of pair 0) at different scales. Group B: latent 4 on induction tokens of pair 0, 5 on
    every token of pair 1 (the only "food" documents), 6 on verbs (strongest in pair 2), 7 on nouns
    (strongest in pair 3)."""
    rng = np.random.default_rng(0)
    pair = np.arange(N_WIN)[:, None] // 2
    ids = torch.from_numpy(3 + 16 * pair + rng.integers(0, 16, (N_WIN, POS)))
    special = torch.zeros(N_WIN, POS, dtype=torch.bool)
    special[:, 0] = True
    ids[:, 0] = 0
    topic = np.repeat(np.array(["war", "war", "food", "food", "art", "art", "art", "art"])[:, None], POS, 1)
    role = rng.choice(["noun", "verb", "det", "name"], (N_WIN, POS))
    induction = rng.random((N_WIN, POS)) < 0.3
    labels = {"topic": topic, "role": role, "induction": induction}
    ordinary = ~special.numpy()
    in_pair = lambda j: pair.repeat(POS, 1) == j  # noqa: E731
    acts = np.zeros((N_WIN, POS, 8), dtype=np.float32)
    a_fires = induction & in_pair(0) & ordinary
    for f, scale in enumerate((1.0, 2.0, 0.5, 3.0)):
        acts[..., f] = a_fires * scale
    acts[..., 4] = a_fires * 1.5
    acts[..., 5] = in_pair(1) & ordinary
    for f, (word, j) in ((6, ("verb", 2)), (7, ("noun", 3))):
        mask = (role == word) & ordinary
        acts[..., f] = mask * np.where(in_pair(j), 3.0, 0.2)
    return Windows(ids, special, labels), torch.from_numpy(acts)


def test_identical_top_tokens_make_one_role_and_disjoint_ones_many(asae):
    windows, acts = planted_world()
    census = build_census(asae, windows, acts, CensusConfig(top_latents=4, role_examples=10))
    heads = {h["head"]: h for h in census.heads}
    assert [e["latent"] for e in heads["3.0"]["latents"]] == [0, 1, 2, 3]   # by head attribution
    assert sorted(e["latent"] for e in heads["3.1"]["latents"]) == [4, 5, 6, 7]
    for name in ("3.0", "3.2"):                                            # group A: one role
        assert heads[name]["n_roles"] == 1 and {e["role"] for e in heads[name]["latents"]} == {0}
    for name in ("3.1", "3.3"):                                            # group B: four roles
        assert heads[name]["n_roles"] == 4
    roles = census.summary()["polysemantic"]["roles"]
    assert roles["heads"] == ["3.1", "3.3"] and roles["n_heads_judged"] == 4 and roles["share"] == 0.5
    assert roles["interval"] == pytest.approx(wilson_interval(2, 4), abs=1e-4)
    assert "Jaccard >= 0.15" in roles["criterion"] and roles["confidence"] == 0.95


def test_the_family_criterion_is_reported_beside_the_role_one(asae):
    windows, acts = planted_world()
    census = build_census(asae, windows, acts, CensusConfig(top_latents=4, role_examples=10))
    assert [census.families[f].family for f in range(8)] == ["induction"] * 5 + [
        "long_range_context", "short_range_context", "short_range_context"]
    heads = {h["head"]: h for h in census.heads}
    assert heads["3.0"]["families"] == ["induction"] and heads["3.0"]["n_families"] == 1
    assert heads["3.1"]["families"] == ["induction", "long_range_context", "short_range_context"]
    families = census.summary()["polysemantic"]["families"]
    assert families["heads"] == ["3.1", "3.3"] and families["n_heads_judged"] == 4
    unlabelled = build_census(asae, Windows(windows.ids, windows.special), acts, CensusConfig(top_latents=4))
    assert set(unlabelled.summary()["polysemantic"]) == {"roles"}          # no labels: roles only


def test_rare_latents_get_no_role_and_a_head_needs_two_to_be_judged(asae):
    windows, acts = planted_world()
    acts[..., 5:] = 0
    acts[1, 3, 5] = 1.0                                                    # latent 5: one fire
    census = build_census(asae, windows, acts, CensusConfig(top_latents=2, min_fires=2))
    head = next(h for h in census.heads if h["head"] == "3.1")
    assert {e["latent"]: e["role"] for e in head["latents"]} == {4: 0, 5: None}  # 6, 7 never fire: not listed
    assert head["n_roles"] is None
    assert census.summary()["polysemantic"]["roles"]["n_heads_judged"] == 2  # heads 0 and 2 only


def test_role_clusters_link_by_jaccard_with_single_linkage():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5 and jaccard(set(), set()) == 0.0
    assert role_clusters([{1, 2, 3}, {1, 2, 3}, {7, 8}], 0.15) == [0, 0, 1]
    chain = [{1, 2}, {2, 3}, {3, 4}]                                       # neighbours overlap by 1/3
    assert role_clusters(chain, 1 / 3) == [0, 0, 0] and role_clusters(chain, 0.34) == [0, 1, 2]
    assert role_clusters([{1, 2, 3}, {2, 3, 4}], 0.5) == [0, 0]
    assert role_clusters([{1, 2, 3}, {2, 3, 4}], 0.6) == [0, 1]


def test_role_vocabularies_read_the_top_contexts_without_specials():
    ids = torch.tensor([[0, 5, 6, 7, 8, 9], [0, 10, 11, 12, 13, 14]])
    special = ids == 0
    acts = torch.zeros(2, 6, 3)
    acts[0, 1, 0], acts[1, 4, 0], acts[1, 2, 0] = 3.0, 2.0, 0.1             # top 2: (0, 1) and (1, 4)
    acts[0, 0, 1] = 5.0                                                    # fires on BOS only: ignored
    vocab = role_vocabularies(Windows(ids, special), acts, [0, 1, 2], n_top=2, context=1)
    assert vocab == {0: {5, 6, 12, 13, 14}, 1: set(), 2: set()}


def test_wilson_interval_matches_a_hand_computation():
    # 5 of 16, z = 1.959964, z² = 3.841459: centre (0.3125 + z²/32) / (1 + z²/16) = 0.432546 / 1.240091
    # = 0.348801; half-width z·sqrt(0.3125·0.6875/16 + z²/1024) / 1.240091 = z·sqrt(0.013428 + 0.003751)
    # / 1.240091 = 1.959964 · 0.131069 / 1.240091 = 0.207155
    assert wilson_interval(5, 16) == pytest.approx((0.141646, 0.555956), abs=2e-6)
    assert wilson_interval(0, 4) == pytest.approx((0.0, 0.489891), abs=2e-6)
    assert wilson_interval(4, 4) == pytest.approx((0.510109, 1.0), abs=2e-6)
    lo99, hi99 = wilson_interval(5, 16, confidence=0.99)
    assert lo99 < 0.141646 and hi99 > 0.555956
    with pytest.raises(SaelabError, match="k=5, n=4"):
        wilson_interval(5, 4)


def test_bad_census_settings_are_refused():
    with pytest.raises(ConfigError, match="role_threshold"):
        CensusConfig(role_threshold=0)
    with pytest.raises(ConfigError, match="min_roles"):
        CensusConfig(min_roles=1)
    with pytest.raises(ConfigError, match="confidence=1"):
        CensusConfig(confidence=1.0)
    with pytest.raises(ConfigError, match="role_context"):
        CensusConfig(role_context=-1)
