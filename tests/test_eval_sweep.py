"""Frontier sweeps: sparsity grids, matched-L0 interpolation, the CSV table and a tiny end-to-end sweep."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from saelab.errors import ConfigError
from saelab.eval.evaluate import EvalConfig
from saelab.eval.sweep import (
    SweepConfig,
    matched_l0,
    run_seeded_sweep,
    run_sweep,
    seed_matched_l0,
    seed_spread_rows,
    sparsity_settings,
    sweep_sae_configs,
    table_csv,
)
from saelab.models import LoadedModel
from saelab.models.tiny import tiny_model, torch_threads

HOOK = "blocks.1.hook_resid_pre"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_sparsity_settings_are_geometric_and_k_is_whole():
    assert sparsity_settings("jumprelu", 3, (1e-2, 1e-4)) == [1e-2, 1e-3, 1e-4]
    assert sparsity_settings("topk", 5, (4, 64)) == [4, 8, 16, 32, 64]
    assert sparsity_settings("batchtopk", 4, (1, 2)) == [1, 2]  # rounded duplicates collapse
    assert sparsity_settings("relu", 1, (0.5, 0.1)) == [0.5]


def test_sweep_configs_name_each_point_and_are_validated():
    cfgs = sweep_sae_configs(SweepConfig(hook=HOOK, archs="topk,jumprelu", points=2, expansion=2,
                                         ranges={"jumprelu": (1e-2, 1e-3)}, lrs={"topk": 5e-3}), d_in=32)
    assert [c.name for c in cfgs] == ["topk.k=4", "topk.k=64", "jumprelu.l0=0.01", "jumprelu.l0=0.001"]
    assert all(c.d_sae == 64 and c.hook_name == HOOK for c in cfgs)
    assert cfgs[0].lr == 5e-3 and cfgs[2].lr is None and cfgs[3].l0_coefficient == 1e-3
    with pytest.raises(ConfigError, match="archs"):
        SweepConfig(hook=HOOK, archs="topk,nonsense")
    with pytest.raises(ConfigError, match="twice"):
        SweepConfig(hook=HOOK, archs="topk,topk")
    with pytest.raises(ConfigError, match=r"ranges\['relu'\]"):
        SweepConfig(hook=HOOK, ranges={"relu": (1.0,)})
    with pytest.raises(ConfigError, match="k=64 for topk exceeds d_sae=32"):
        sweep_sae_configs(SweepConfig(hook=HOOK, archs="topk", points=2, d_sae=32), d_in=32)


def row(arch, l0, delta, fvu=0.1):
    return {"architecture": arch, "l0": l0, "delta_loss": delta, "fvu": fvu}


def test_matched_l0_interpolates_in_log_l0_over_the_shared_range():
    rows = [row("a", 4, 0.4), row("a", 16, 0.2), row("b", 8, 0.1), row("b", 64, 0.05), row("c", 0.0, 3.0)]
    entries = matched_l0(rows, n_points=4)  # a and b share L0 8..16; c (dead, L0 0) is never compared
    assert [e["l0"] for e in entries] == pytest.approx([8, 8 * 2 ** (1 / 3), 8 * 2 ** (2 / 3), 16])
    for entry in entries:
        target = entry["l0"]
        frac_a = math.log(target / 4) / math.log(16 / 4)
        frac_b = math.log(target / 8) / math.log(64 / 8)
        assert entry["values"]["a"]["delta_loss"] == pytest.approx(0.4 + frac_a * (0.2 - 0.4))
        assert entry["values"]["b"]["delta_loss"] == pytest.approx(0.1 + frac_b * (0.05 - 0.1))
        assert entry["order_by_delta_loss"] == ["b", "a"]
    # ranges that do not overlap: the grid spans both, and nothing is extrapolated
    apart = matched_l0([row("a", 4, 0.4), row("a", 16, 0.2), row("b", 32, 0.1), row("b", 64, 0.05)], n_points=3)
    assert [set(e["values"]) for e in apart] == [{"a"}, {"a"}, {"b"}]
    assert apart[1]["values"]["a"]["delta_loss"] == pytest.approx(0.2)  # L0 16 = a's last point
    assert matched_l0([row("a", 0.0, 1.0)]) == []


def test_csv_table_leaves_null_metrics_empty():
    text = table_csv([{"name": "x", "architecture": "relu", "l0": 3.5, "ce_loss_recovered": None}])
    records = list(csv.DictReader(io.StringIO(text)))
    assert records[0]["l0"] == "3.5" and records[0]["ce_loss_recovered"] == "" and records[0]["name"] == "x"


def test_a_tiny_sweep_trains_from_one_stream_and_writes_table_and_plots(tmp_path):
    from saelab.toy.tokenizer import build_hf_tokenizer

    tokenizer = build_hf_tokenizer()
    lm = LoadedModel.from_hf(tiny_model("gpt2", vocab_size=len(tokenizer)), tokenizer, name="tiny-gpt2")
    config = SweepConfig(hook=HOOK, archs=("topk", "relu"), points=2, expansion=2, train_tokens=1024,
                         batch_size=256, context_size=32, ranges={"topk": (2, 8), "relu": (1.0, 0.01)},
                         eval=EvalConfig(tokens=256, check_error_term=False), progress=False)
    with torch_threads(1):
        result = run_sweep(lm, config, tmp_path)
    assert [r["name"] for r in result["rows"]] == ["topk.k=2", "topk.k=8", "relu.l1=1", "relu.l1=0.01"]
    assert result["rows"][0]["l0"] == pytest.approx(2.0) and result["rows"][1]["l0"] == pytest.approx(8.0)
    assert all(math.isfinite(r["fvu"]) and math.isfinite(r["delta_loss"]) for r in result["rows"])
    assert all((tmp_path / "train" / "saes" / r["name"] / "cfg.json").is_file() for r in result["rows"])
    files = {key: Path(path) for key, path in result["files"].items()}
    assert len(list(csv.DictReader(io.StringIO(files["csv"].read_text())))) == 4
    assert json.loads(files["json"].read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    for key in ("delta_loss_plot", "fvu_plot"):
        assert files[key].read_bytes()[:8] == PNG_MAGIC
    assert result["matched_l0"] and "order_by_delta_loss" in result["matched_l0"][0]


def test_seed_spread_rows_give_mean_and_sample_sd_per_point():
    seeds = [[row("relu", 10, 0.5, fvu=0.2) | {"name": "relu.a"}], [row("relu", 14, 0.7, fvu=0.4) | {"name": "relu.a"}],
             [row("relu", 12, 0.6, fvu=None) | {"name": "relu.a"}]]
    (point,) = seed_spread_rows(seeds)
    assert point["n_seeds"] == 3 and point["l0"] == pytest.approx(12.0) and point["l0_std"] == pytest.approx(2.0)
    assert point["delta_loss"] == pytest.approx(0.6) and point["delta_loss_std"] == pytest.approx(0.1)
    assert point["fvu"] == pytest.approx(0.3) and point["fvu_min"] == 0.2 and point["fvu_max"] == 0.4  # None skipped


def test_seeded_matched_l0_reports_each_seeds_order_at_the_means_l0_values():
    def sweep(shift):
        return [row("relu", 4, 1.0 + shift) | {"name": "relu.a"}, row("relu", 64, 0.2 + shift) | {"name": "relu.b"},
                row("topk", 4, 0.9) | {"name": "topk.a"}, row("topk", 64, 0.25) | {"name": "topk.b"}]

    per_seed = [sweep(0.0), sweep(0.0), sweep(0.3)]  # the third seed's relu is worse everywhere
    matched = seed_matched_l0(seed_spread_rows(per_seed), per_seed)
    last = matched[-1]  # L0 64: mean relu 0.3 > topk 0.25
    assert last["order_by_delta_loss"] == ["topk", "relu"]
    assert last["seed_orders"] == [["relu", "topk"], ["relu", "topk"], ["topk", "relu"]]
    assert last["order_agreement"] == pytest.approx(1 / 3)
    assert last["values"]["relu"]["delta_loss_std"] == pytest.approx(np.std([0.2, 0.2, 0.5], ddof=1))


def test_a_seeded_sweep_runs_each_seed_in_its_folder_and_plots_spreads(tmp_path):
    from saelab.toy.tokenizer import build_hf_tokenizer

    tokenizer = build_hf_tokenizer()
    lm = LoadedModel.from_hf(tiny_model("gpt2", vocab_size=len(tokenizer)), tokenizer, name="tiny-gpt2")
    config = SweepConfig(hook=HOOK, archs=("topk",), points=2, expansion=2, train_tokens=512, batch_size=256,
                         context_size=32, ranges={"topk": (2, 8)}, adam_betas=(0.0, 0.999),
                         eval=EvalConfig(tokens=256, check_error_term=False), progress=False)
    with torch_threads(1):
        result = run_seeded_sweep(lm, config, [0, 1], tmp_path)
    assert result["seeds"] == [0, 1] and [r["n_seeds"] for r in result["rows"]] == [2, 2]
    per_seed = [json.loads((tmp_path / f"seed{s}" / "sweep.json").read_text()) for s in (0, 1)]
    assert [p["config"]["seed"] for p in per_seed] == [0, 1] and per_seed[0]["config"]["adam_betas"] == [0.0, 0.999]
    fvus = [p["rows"][0]["fvu"] for p in per_seed]
    assert fvus[0] != fvus[1] and result["rows"][0]["fvu"] == pytest.approx(np.mean(fvus))
    for key in ("delta_loss_plot", "fvu_plot"):
        assert Path(result["files"][key]).read_bytes()[:8] == PNG_MAGIC
    assert all(Path(p).read_bytes()[:8] == PNG_MAGIC for p in result["files"]["training_curves"])
    with pytest.raises(ConfigError, match="each once"):
        run_seeded_sweep(lm, config, [1, 1], tmp_path / "bad")
    with pytest.raises(ConfigError, match="adam_betas"):
        SweepConfig(hook=HOOK, adam_betas=(0.9, 1.0))


def test_a_seeded_sweep_reads_finished_seeds_instead_of_rerunning(tmp_path, monkeypatch):
    import saelab.eval.sweep as sweep_module

    config = SweepConfig(hook=HOOK, archs=("topk",), points=1, train_tokens=512, batch_size=256)
    done = {"config": json.loads(json.dumps({**config.to_dict(), "seed": 1})), "rows": [], "hook": HOOK}
    (tmp_path / "seed1").mkdir()
    (tmp_path / "seed1" / "sweep.json").write_text(json.dumps(done))
    assert sweep_module.finished_sweep(tmp_path / "seed1", replace(config, seed=1)) == done
    assert sweep_module.finished_sweep(tmp_path / "seed1", replace(config, seed=1, lr=3e-3)) is None  # other settings
    assert sweep_module.finished_sweep(tmp_path / "seed0", config) is None  # nothing there
    ran = []
    monkeypatch.setattr(sweep_module, "run_sweep", lambda lm, cfg, out, **kw: ran.append(cfg.seed) or {})
    monkeypatch.setattr(sweep_module, "finished_sweep", lambda folder, cfg: done if cfg.seed == 1 else None)
    with pytest.raises(KeyError):  # the stub sweeps hold nothing to aggregate; only which seeds ran matters
        sweep_module.run_seeded_sweep(None, config, [0, 1, 2], tmp_path)
    assert ran == [0, 2]
