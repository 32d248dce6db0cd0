"""The discrete SAE's position rules on hand-built cases, its option errors, per-position codes, and
the default setting on the toy model's IOI task against the shipped reference circuit."""

from __future__ import annotations

import pytest
import torch

from saelab.circuits.discover import DiscoveryConfig, discover
from saelab.circuits.discrete_sae import FitSettings
from saelab.circuits.dsae import DSAEConfig, edge_scores, node_scores
from saelab.circuits.ground_truth import ground_truth_for
from saelab.circuits.heads import POSITION_RULES, HeadVectors, position_weights
from saelab.circuits.sweep import DSAESweepConfig
from saelab.errors import ConfigError

# two prompts of widths 5 and 4 (the second right-padded); prompt 0 differs from its pair at position 2,
# prompt 1 at positions 1 and 2
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
END = torch.tensor([4, 3])
CHANGED = torch.tensor([[0, 0, 1, 0, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)


def chosen(rule: str, changed=CHANGED) -> list[list[int]]:
    weights, valid = position_weights(rule, MASK, END, changed)
    assert weights.shape == (2, 1, 5) and valid.all()
    assert torch.allclose(weights.sum(-1), torch.ones(2, 1))
    return [torch.nonzero(w[0]).flatten().tolist() for w in weights]


def test_changed_end_picks_exactly_the_differing_and_end_positions():
    assert chosen("changed_end") == [[2, 4], [1, 2, 3]]
    weights, _ = position_weights("changed_end", MASK, END, CHANGED)
    assert torch.allclose(weights[1, 0, [1, 2, 3]], torch.full((3,), 1 / 3))  # an equal-weight mean
    # a pair with no differing token still has its end position
    assert chosen("changed_end", torch.zeros(2, 5, dtype=torch.bool)) == [[4], [3]]


def test_mean_last_and_changed_rules():
    assert chosen("mean") == [[0, 1, 2, 3, 4], [0, 1, 2, 3]]  # BOS included, padding excluded
    assert chosen("last") == [[4], [3]]
    assert chosen("changed") == [[2], [1, 2]]
    # a changed flag on a padded position is ignored
    assert chosen("changed", CHANGED | torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)) == [[2], [1, 2]]


def test_positions_rule_gives_one_slot_per_real_position():
    weights, valid = position_weights("positions", MASK, END)
    assert weights.shape == (2, 5, 5) and torch.equal(weights[0], torch.eye(5))
    assert torch.equal(valid, MASK.bool())


def test_rules_that_need_the_pairs_say_so():
    with pytest.raises(ConfigError, match="differ"):
        position_weights("changed_end", MASK, END, None)
    with pytest.raises(ConfigError, match=r"prompts \[0, 1\].*changed_end"):
        position_weights("changed", MASK, END, torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ConfigError, match="'first'.*changed_end, mean, last, changed, positions"):
        position_weights("first", MASK, END, CHANGED)


def test_bad_option_values_give_clear_errors():
    with pytest.raises(ConfigError, match="loss_norm='mse'.*paper, sum_rescaled"):
        DSAEConfig(loss_norm="mse")
    with pytest.raises(ConfigError, match="loss_norm='mean'"):
        FitSettings(loss_norm="mean")
    with pytest.raises(ConfigError, match="position='max'.*" + ", ".join(POSITION_RULES)):
        DSAEConfig(position="max")
    with pytest.raises(ConfigError, match="l1=-1"):
        DSAEConfig(l1=-1.0)
    with pytest.raises(ConfigError, match="loss_norm='l2'"):
        DSAESweepConfig(loss_norms=("l2",))
    with pytest.raises(ConfigError, match=r"\(lr, epochs\)"):
        DSAESweepConfig(schedules=((1e-2,),))
    with pytest.raises(ConfigError, match="epochs=0"):
        DSAESweepConfig(schedules=((1e-2, 0),))


def test_per_position_codes_pool_over_slots():
    """With one slot per position, a head's code set is every (prompt, position) code, and an edge cell
    pairs the two heads' codes at the same prompt and position."""
    vectors = HeadVectors(torch.zeros(2, 3, 2, 4), torch.tensor([[True, True, False], [True, False, False]]))
    assert vectors.rows().shape == (3, 2, 4)
    positive = torch.tensor([[0, 1], [2, 1], [3, 1]])  # rows = valid (prompt, position) slots
    negative = torch.tensor([[0, 1], [2, 5]])
    assert node_scores(positive, negative).tolist() == [1.0, 0.0]
    assert edge_scores(positive, negative)[0, 1] == 2.0  # (2, 1) and (3, 1) never on negatives


@pytest.fixture(scope="module")
def toy_lm(one_torch_thread):
    from saelab.models import load_model

    return load_model("toy")


def test_default_scores_the_reference_ioi_heads_above_chance(toy_lm):
    """The default settings on the prompts ``saelab circuits compare`` uses, SAE seed 0 (chance is 0.5;
    the threshold sits well below the AUCs measured over seeds, see ``DSAEConfig``)."""
    truth = ground_truth_for(toy_lm, "ioi").heads
    result = discover(toy_lm, "ioi", "dsae", DiscoveryConfig())
    assert result.details["position"] == DSAEConfig().position and result.details["loss_norm"] == "paper"
    assert result.details["input_scale"] == 1.0
    assert result.evaluate(truth)["auc"] >= 0.7  # measured 0.854 at this seed, 0.73-0.92 over 5 seeds
