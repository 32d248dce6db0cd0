"""``saelab demo`` end to end at a tiny size: every stage runs and lands in summary.json and index.html."""

from __future__ import annotations

import json

import pytest

from saelab.demo import Demo, DemoConfig
from saelab.errors import ConfigError


def test_tiny_demo_writes_summary_and_report(tmp_path):
    cfg = DemoConfig(out=str(tmp_path / "demo"), d_sae=64, tokens=8192, eval_tokens=1024,
                     frontier_archs=("topk",), frontier_points=1, frontier_tokens=8192,
                     dashboard_features=8, dashboard_tokens=1024, transcoder_k=8,
                     transcoder_tokens=8192, small=True)
    summary = Demo(cfg, progress=False).run()
    out = tmp_path / "demo"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["timings_s"].keys() == {"train", "evaluate", "transcoder", "frontier", "recovery", "dashboards", "attention", "causal", "circuits", "explorer"}
    assert saved == json.loads(json.dumps(summary))
    metrics = saved["evaluate"]
    assert 0 < metrics["l0"] <= 64 and metrics["fvu"] >= 0 and metrics["kl_with_error"] < 1e-4
    assert len(saved["frontier"]["rows"]) == 1
    tc = saved["transcoder"]
    assert tc["target"] == "blocks.1.hook_mlp_out" and 0 < tc["l0"] <= 8 and tc["kl_with_error"] < 1e-4
    assert tc["ce_loss_recovered"] is not None and tc["fvu"] >= 0
    assert any(name.startswith("neurons") for name in saved["recovery"])
    assert [h["head"] for h in saved["attention"]["induction_heads"]][0] == "3.1"
    page = (out / "index.html").read_text()
    for title in ("Training", "splicing", "frontier", "Feature recovery", "dashboards", "Attention heads"):
        assert title in page
    assert 'href="dashboard/dashboard.html"' in page
    assert (out / "dashboard" / "dashboard.html").exists()
    assert set(saved["causal"]["fewest_components"]) >= {"sae", "pca", "ica", "neuron"}
    assert (out / "causal" / "patching.png").exists()
    assert {row["method"] for row in saved["circuits"]["rows"]} >= {"dsae", "patching", "eap", "acdc"}
    assert (out / saved["circuits"]["files"]["roc_ioi"]).exists()
    assert saved["explorer"]["command"].startswith("saelab explore --model toy --sae demo=")
    assert (out / "explorer" / "walkthrough.json").exists()


def test_bad_demo_settings_are_refused():
    with pytest.raises(ConfigError, match="dashboard_features"):
        DemoConfig(d_sae=16, dashboard_features=32)
    with pytest.raises(ConfigError, match="tokens"):
        DemoConfig(tokens=10)
