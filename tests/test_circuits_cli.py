"""``saelab circuits discover|compare|reference``, the shipped toy reference and the demo stage."""

from __future__ import annotations

import json

import pytest

from saelab.circuits.compare import circuits_demo_stage
from saelab.circuits.ground_truth import load_ground_truth
from saelab.circuits.reference import reference_circuits
from saelab.cli import main
from saelab.report import HtmlReport

FAST = ["--model", "toy", "--threads", "1", "--pairs", "8", "--dsae-epochs", "100"]


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.fixture(scope="module")
def toy_lm(one_torch_thread):
    from saelab.models import load_model

    return load_model("toy")


def test_discover_prints_ranked_heads_scores_and_runtime(capsys, one_torch_thread):
    code, out, _ = run_cli(["circuits", "discover", "--task", "ioi", "--method", "dsae", "--json", "--top", "16", *FAST],
                           capsys)
    summary = json.loads(out)
    assert code == 0 and summary["method"] == "dsae" and summary["runtime_s"] > 0
    assert len(summary["ranked_heads"]) == 16 and 0 <= summary["auc"] <= 1
    assert {"precision", "recall", "f1"} <= summary["best_f1"].keys() and summary["ground_truth_name"] == "toy:ioi"
    code, out, _ = run_cli(["circuits", "discover", "--task", "greater_than", "--method", "eap_edges", *FAST], capsys)
    assert code == 0 and "eap_edges" in out and "runtime_s" in out and "auc" in out


def test_compare_writes_table_csv_markdown_and_plots(tmp_path, capsys, one_torch_thread):
    out_dir = tmp_path / "cmp"
    code, out, _ = run_cli(["circuits", "compare", "--tasks", "ioi,docstring", "--methods", "dsae,patching,eap",
                            "--out", str(out_dir), "--json", *FAST], capsys)
    assert code == 0
    printed = json.loads(out)
    assert [(r["task"], r["method"]) for r in printed["rows"]] == [
        ("ioi", "dsae"), ("ioi", "patching"), ("ioi", "eap"), ("ioi", "dsae@mean"), ("docstring", "dsae"),
        ("docstring", "patching"), ("docstring", "eap"), ("docstring", "dsae@mean")]
    # the toy reference is computed by mean ablation, not by the patching row's own definition
    assert all(r["note"] == "" for r in printed["rows"])
    saved = json.loads((out_dir / "comparison.json").read_text())
    assert saved["rows"] == printed["rows"]
    repeats = saved["results"]["ioi"]["dsae"]["runtime_repeats_s"]  # sub-second methods: median of 3 runs
    assert len(repeats) == 3 and saved["results"]["ioi"]["dsae"]["runtime_s"] == pytest.approx(sorted(repeats)[1], abs=1e-3)
    assert (out_dir / "comparison.csv").read_text().startswith("task,method,auc,f1")
    assert (out_dir / "comparison.md").read_text().startswith("| task | method | auc")
    assert (out_dir / "roc_ioi.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input_gives_clear_messages(capsys, tmp_path):
    code, _, err = run_cli(["circuits", "discover", "--task", "nope", "--method", "dsae", *FAST], capsys)
    assert code == 2 and "--task='nope'" in err and "ioi, greater_than, docstring" in err
    code, _, err = run_cli(["circuits", "discover", "--task", "ioi", "--method", "magic", *FAST], capsys)
    assert code == 2 and "--method='magic'" in err and "acdc" in err
    code, _, err = run_cli(["circuits", "discover", "--task", "ioi", "--method", "dsae", "--ground-truth",
                            "gpt2-small:ioi", *FAST], capsys)
    assert code == 2 and "toy does not have" in err and "9.9" in err
    code, _, err = run_cli(["circuits", "discover", "--task", "ioi", "--method", "dsae", "--dsae-examples", "1",
                            *FAST], capsys)
    assert code == 2 and "n_train=1" in err
    code, _, err = run_cli(["circuits", "compare", "--tasks", "ioi", "--methods", "dsae", "--pairs", "1",
                            "--out", str(tmp_path), "--model", "toy"], capsys)
    assert code == 2 and "n_pairs=1" in err


def test_the_shipped_toy_reference_is_reproduced(toy_lm):
    """greater_than: its circuit has heads added by the node step in three layers, so the path step
    runs into several receivers (the cheapest task that exercises all of the definition)."""
    shipped = load_ground_truth("toy:greater_than")
    recomputed = reference_circuits(toy_lm, tasks=("greater_than",), progress=False)
    assert recomputed["circuits"]["greater_than"]["heads"] == [str(h) for h in shipped.heads]
    assert recomputed["circuits"]["greater_than"]["effects"] == pytest.approx(shipped.extra["effects"], abs=1e-4)
    assert recomputed["command"].startswith("saelab circuits reference")


def test_reference_command(capsys, tmp_path, one_torch_thread):
    out = tmp_path / "ref.json"
    code, printed, _ = run_cli(["circuits", "reference", "--model", "toy", "--threads", "1", "--pairs", "6",
                                "--out", str(out), "--json"], capsys)
    assert code == 0 and json.loads(printed)["ioi.heads"] == json.loads(out.read_text())["circuits"]["ioi"]["heads"]


def test_demo_stage_small(toy_lm, tmp_path):
    section = HtmlReport("t").section("Circuits")
    summary = circuits_demo_stage(toy_lm, None, tmp_path, section, small=True)
    assert {r["method"] for r in summary["rows"]} == {"dsae", "dsae_edges", "dsae@mean", "dsae_edges@mean", "patching",
                                                      "eap", "eap_edges", "acdc", "acdc_nodes"}
    assert summary["reference"] and summary["speedups"]["ioi"]["acdc_over_dsae"] > 0
    assert (tmp_path / summary["files"]["roc_ioi"]).exists()
    assert json.loads(json.dumps(summary)) == summary
    assert "ROC" in section.render() and "dsae" in section.render()


def test_dsae_sweep_command(capsys, one_torch_thread):
    code, out, _ = run_cli(["circuits", "dsae-sweep", "--tasks", "ioi", "--positions", "mean,last", "--codebooks", "20",
                            "--examples", "4", "--seeds", "1", "--json", *FAST], capsys)
    rows = json.loads(out)
    assert code == 0 and [(r["position"], r["level"]) for r in rows] == [
        ("mean", "node"), ("mean", "edge"), ("last", "node"), ("last", "edge")]
    assert all(0 <= r["auc_mean"] <= 1 and r["codebook"] == 20 and r["n_train"] == 4 for r in rows)
    code, _, err = run_cli(["circuits", "dsae-sweep", "--codebooks", "2.5", *FAST], capsys)
    assert code == 2 and "whole numbers" in err
