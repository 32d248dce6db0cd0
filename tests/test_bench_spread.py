"""The panel's spread over replicate SAEs (``saelab.bench.spread``): hand-computed groups, the
separation rule, and the panel writing it for SAEs saved at several seeds."""

from __future__ import annotations

import json
import math

import pytest

from saelab.bench.panel import run_panel
from saelab.bench.spread import format_spread, replicate_groups, seed_spread
from saelab.sae import SAEConfig, make_sae, save_sae
from test_bench_panel import HOOK, small_config

COLUMNS = [("core.fvu", "lower"), ("probe", "higher"), ("core.l0", "")]


def row(seed: int, name: str, arch: str, fvu: float, probe: float | None, l0: float = 8.0) -> dict:
    return {"sae": f"seed{seed}.{name}", "path": f"runs/s/seed{seed}/train/saes/{name}", "architecture": arch,
            "core.fvu": fvu, "probe": probe, "core.l0": l0}


ROWS = [row(0, "topk.k=8", "topk", 0.10, 0.70), row(1, "topk.k=8", "topk", 0.12, 0.74),
        row(2, "topk.k=8", "topk", 0.11, 0.72),
        row(0, "relu.l1=1", "relu", 0.30, 0.69), row(1, "relu.l1=1", "relu", 0.34, 0.75),
        row(2, "relu.l1=1", "relu", 0.32, None),
        {"sae": "alone", "path": "runs/alone", "architecture": "gated", "core.fvu": 0.01, "probe": 0.99, "core.l0": 3}]


def test_groups_are_folder_names_seen_more_than_once():
    groups = replicate_groups(ROWS)
    assert list(groups) == ["topk.k=8", "relu.l1=1"]  # "alone" has no replicate: not a group
    assert [r["sae"] for r in groups["topk.k=8"]] == ["seed0.topk.k=8", "seed1.topk.k=8", "seed2.topk.k=8"]
    assert seed_spread(ROWS[-1:], COLUMNS) is None


def test_mean_std_min_max_by_hand_and_missing_values_left_out():
    spread = seed_spread(ROWS, COLUMNS)
    topk, relu = spread["rows"]
    assert topk["n_replicates"] == 3 and topk["architecture"] == "topk"
    fvu = topk["core.fvu"]
    assert fvu["mean"] == pytest.approx(0.11) and fvu["std"] == pytest.approx(0.01)  # sample std of .10 .12 .11
    assert (fvu["min"], fvu["max"], fvu["n"]) == (0.10, 0.12, 3)
    assert relu["probe"]["n"] == 2 and relu["probe"]["mean"] == pytest.approx(0.72)
    assert relu["probe"]["std"] == pytest.approx(math.sqrt(2) * 0.03)
    assert topk["core.l0"]["std"] == 0.0  # equal values give exactly 0
    assert relu["values"]["probe"] == [0.69, 0.75] and relu["replicates"][2] == "seed2.relu.l1=1"


def test_a_winner_is_separated_only_beyond_two_standard_errors():
    winners = seed_spread(ROWS, COLUMNS)["winners"]
    assert "core.l0" not in winners  # shown, not ranked
    fvu = winners["core.fvu"]
    # 0.11 vs 0.32: gap 0.21 against 2 * sqrt(0.01²/3 + 0.02²/3) = 0.026
    assert (fvu["sae"], fvu["runner_up"], fvu["separated"]) == ("topk.k=8", "relu.l1=1", True)
    probe = winners["probe"]
    # 0.72 vs 0.72 (relu's two seeds): no separation
    assert probe["separated"] is False
    text = format_spread(seed_spread(ROWS, COLUMNS), COLUMNS)
    assert "| topk.k=8 | topk | 3 | 0.11 ± 0.01 |" in text and "| core.fvu | topk.k=8 |" in text


def test_the_panel_writes_the_spread_for_saes_at_several_seeds(toy_lm, tmp_path, one_torch_thread):
    paths = []
    for seed in (0, 1):
        sae = make_sae(SAEConfig("topk", d_in=128, d_sae=64, hook_name=HOOK, name="topk.k=8", k=8), seed=seed)
        paths.append(str(save_sae(sae, tmp_path / f"seed{seed}" / "saes" / "topk.k=8", extra_meta={"model_name": "toy"})))
    out = tmp_path / "panel"
    report = run_panel(toy_lm, paths, out, small_config(("meta_sae",)))
    assert [r["sae"] for r in report["rows"]] == ["seed0.topk.k=8", "seed1.topk.k=8"]
    (group,) = report["seed_spread"]["rows"]
    values = [r["meta_sae.variance_explained"] for r in report["rows"]]
    assert group["meta_sae.variance_explained"]["mean"] == pytest.approx(sum(values) / 2)
    assert json.loads((out / "panel.json").read_text())["seed_spread"]["rows"][0]["n_replicates"] == 2
    assert "topk.k=8 | topk | 2 |" in (out / "panel_seeds.md").read_text()
    assert (out / "plots" / "seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
