"""Task generators: clean/corrupted pairs with correct answers, positions and corruptions."""

from __future__ import annotations

import pytest

from saelab.errors import ConfigError
from saelab.toy import vocabulary as V
from saelab.toy.tasks import TASK_NAMES, generate_pairs
from saelab.toy.tokenizer import build_hf_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_hf_tokenizer()


@pytest.mark.parametrize("task", TASK_NAMES)
def test_pairs_are_deterministic_and_prefix_stable(task):
    a, b = generate_pairs(task, 20, seed=3), generate_pairs(task, 20, seed=3)
    assert a == b
    assert generate_pairs(task, 5, seed=3) == a[:5]
    assert generate_pairs(task, 20, seed=4) != a


@pytest.mark.parametrize("task", TASK_NAMES)
def test_prompts_round_trip_and_share_shape(task, tokenizer):
    for pair in generate_pairs(task, 30, seed=0):
        for prompt in (pair.clean, pair.corrupted):
            assert tokenizer.tokenize(prompt.text) == list(prompt.words)
        assert len(pair.clean.words) == len(pair.corrupted.words)
        assert pair.clean.positions == pair.corrupted.positions
        assert pair.clean.positions["END"] == len(pair.clean.words) - 1
        assert set(pair.answers).isdisjoint(pair.wrong_answers)


def test_ioi_positions_and_abc_corruption():
    pairs = generate_pairs("ioi", 200, seed=1)
    assert {p.variant for p in pairs} == {"ABBA", "BABA"}
    assert len({p.clean.words[0] for p in pairs}) >= 3  # several templates
    for p in pairs:
        w, pos = p.clean.words, p.clean.positions
        io, s = p.answers[0], p.wrong_answers[0]
        assert io in V.NAMES and s in V.NAMES and io != s
        assert w[pos["IO"]] == io and w[pos["S1"]] == s and w[pos["S2"]] == s
        assert w.count(io) == 1 and w.count(s) == 2
        assert (pos["IO"] < pos["S1"]) == (p.variant == "ABBA")
        assert pos["S2"] > max(pos["IO"], pos["S1"])
        c = p.corrupted.words
        names = {c[pos["IO"]], c[pos["S1"]], c[pos["S2"]]}
        assert len(names) == 3 and c[pos["IO"]] == io and c[pos["S1"]] == s
        assert [x for i, x in enumerate(c) if i != pos["S2"]] == [x for i, x in enumerate(w) if i != pos["S2"]]


def test_greater_than_answers_and_01_corruption():
    for p in generate_pairs("greater_than", 200, seed=2):
        w, pos = p.clean.words, p.clean.positions
        yy = int(w[pos["YY"]])
        assert 2 <= yy <= 98 and w[pos["XX1"]] == w[pos["END"]]
        assert sorted(p.answers + p.wrong_answers) == list(V.TWO_DIGITS)
        assert all(int(a) > yy for a in p.answers) and all(int(a) <= yy for a in p.wrong_answers)
        assert p.corrupted.words[pos["YY"]] == "01"
        assert p.corrupted.text.count(w[pos["XX1"]] + "01") == 1


def test_docstring_answer_and_random_argument_corruption():
    for p in generate_pairs("docstring", 200, seed=3):
        w, pos = p.clean.words, p.clean.positions
        args = [w[pos[k]] for k in "ABCD"]
        assert len(set(args)) == 4
        assert [w[pos["DOC_A"]], w[pos["DOC_B"]]] == args[:2]
        assert p.answers == (args[2],) and set(p.wrong_answers) == {args[0], args[1], args[3]}
        assert w[pos["END"]] == "param" and w[pos["END"] - 1] == ":"
        corrupted_args = [p.corrupted.words[pos[k]] for k in "ABCD"]
        assert set(corrupted_args).isdisjoint(args)
        assert p.corrupted.words[pos["DOC_A"]:] == w[pos["DOC_A"]:]


def test_unknown_task_lists_accepted_names():
    with pytest.raises(ConfigError) as err:
        generate_pairs("ioi2", 3)
    for name in TASK_NAMES:
        assert name in str(err.value)
    assert "'ioi2'" in str(err.value)


@pytest.mark.parametrize("n", [0, -3, 2.5, 10**9])
def test_out_of_range_sizes_are_refused(n):
    with pytest.raises(ConfigError, match=r"n="):
        generate_pairs("ioi", n)
