"""The toy check: prompts with the right labelled positions and answers, reference heads, and a report for
each task (here with untrained transcoders: the numbers are not the point, their bookkeeping is)."""

from __future__ import annotations

import pytest

from saelab.graphs.toy_check import TASKS, reference_heads, toy_alignment, toy_prompt
from saelab.models import load_model
from saelab.sae import SAEConfig, make_sae


@pytest.fixture(scope="module")
def toy(one_torch_thread):
    return load_model("toy")


def test_toy_prompts_label_their_positions(toy):
    names = toy.tokenizer.convert_ids_to_tokens
    ioi = toy_prompt(toy, "ioi")
    tokens = names(ioi.ids.tolist())
    assert tokens[0] == "<bos>" and ioi.positions["END"] == len(tokens) - 1
    assert tokens[ioi.positions["IO"]] == names(ioi.answers)[0]
    assert tokens[ioi.positions["S1"]] == tokens[ioi.positions["S2"]] != tokens[ioi.positions["IO"]]
    induction = toy_prompt(toy, "induction")
    ids = induction.ids.tolist()
    assert ids[induction.positions["first_next"]] == induction.answers[0]
    assert ids[induction.positions["first_current"]] == ids[-1]
    gt = toy_prompt(toy, "greater_than")
    yy = int(names([int(gt.ids[gt.positions["YY"]])])[0])
    assert all(int(a) > yy for a in names(gt.answers))
    assert toy_prompt(toy, "ioi", seed=1).text != ioi.text


def test_reference_heads(toy):
    assert [str(h) for h in reference_heads(toy, "ioi")] == ["3.0", "3.1", "3.2", "3.3"]
    assert [str(h) for h in reference_heads(toy, "induction")] == ["3.1", "3.2"]
    assert len(reference_heads(toy, "greater_than")) == 4


def test_toy_alignment_reports_every_task(toy):
    transcoders = [make_sae(SAEConfig("topk", 128, 256, hook_name=f"blocks.{layer}.ln2.hook_normalized",
                                      hook_name_out=f"blocks.{layer}.hook_mlp_out", k=8)) for layer in range(4)]
    reports, traces = toy_alignment(toy, transcoders)
    assert list(reports) == list(TASKS)
    for task, report in reports.items():
        assert report["top_logit_is_answer"], task  # the toy model solves its own tasks
        assert 0 <= report["heads_vs_reference"]["auc"] <= 1
        assert len(report["top_heads"]) == 6 and report["reference_heads"]
        assert sum(report["position_shares"].values()) == pytest.approx(1.0)
        assert traces[task].replacement.max_logit_error < 1e-3
        assert set(report["timings"]) == {"forward", "attribution", "pruning"}
    with pytest.raises(Exception, match="no toy check"):
        toy_alignment(toy, transcoders, tasks=("docstring",))
