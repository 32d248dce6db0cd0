"""Dashboards: self-contained HTML, the CLI, and a real headless Chromium opening the page."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from saelab.cli import main
from saelab.data import ToySource
from saelab.interp import FeatureDataConfig, build_feature_data, write_dashboard
from saelab.interp.dashboard import embed_json
from saelab.models import load_model
from saelab.sae import SAEConfig, make_sae, save_sae

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    lm = load_model("toy")
    hook = "blocks.1.attn.hook_z"
    torch.manual_seed(0)
    sae = make_sae(SAEConfig("topk", d_in=128, d_sae=128, k=8, hook_name=hook))
    data = build_feature_data(lm, sae, hook, ToySource(1),
                              "0-39", FeatureDataConfig(n_tokens=1024, context_size=64, progress=False))
    data.features[0].top_examples[0].tokens[0] = "</script><b>x</b>"           # hostile token text
    return write_dashboard(data, tmp_path_factory.mktemp("dash")), data


def test_embed_json_cannot_close_script():
    text = embed_json({"a": "</script><!-- & >"})
    assert "</" not in text and "<!--" not in text and json.loads(text) == {"a": "</script><!-- & >"}


def test_html_is_self_contained(dashboard):
    paths, data = dashboard
    page = paths["dashboard"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)           # nothing fetched
    assert "<link" not in page and page.count("<script") == 2
    saved = json.loads(paths["data"].read_text())
    assert [f["index"] for f in saved["features"]] == list(range(40))


def _launch():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium before the tests")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    return sync_playwright()


def test_dashboard_in_headless_chromium(dashboard, tmp_path):
    paths, data = dashboard
    with _launch() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors, requests = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(paths["dashboard"].as_uri())
            assert page.locator("tr.index-row").count() == 40
            page.select_option("#sort", "density-desc")
            densest = max(data.features, key=lambda f: f.density)
            assert page.locator("tr.index-row").first.get_attribute("data-index") == str(densest.index)
            page.fill("#search", "7")
            assert page.locator("tr.index-row").count() >= 1
            page.fill("#search", "")
            page.select_option("#sort", "index")
            page.locator("tr.index-row a").first.click()
            page.wait_for_selector("#examples .example")
            assert page.locator("#feature-title").text_content() == "Feature 0"
            first = data.features[0].top_examples
            assert page.locator("#examples > .example").count() == len(first)
            assert "</script><b>x</b>" in page.locator("#examples > .example").first.text_content()
            assert page.locator(".tok.mark").first.get_attribute("title").startswith('"')
            page.locator("details.quantile summary").first.click()
            page.wait_for_selector("details.quantile .example")  # filled on the toggle event
            assert page.locator("details.quantile .example").count() >= 1
            artifacts = Path(os.environ.get("SAELAB_ARTIFACT_DIR", tmp_path))
            artifacts.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(artifacts / "dashboard_feature.png"), full_page=True)
            page.click("#back")
            page.wait_for_selector("#index-view", state="visible")  # shown on the hashchange event
            assert page.locator("#index-view").is_visible()
            assert errors == []
            assert all(u.startswith("file://") for u in requests)
        finally:
            browser.close()


def test_cli_dashboard_and_bad_features(tmp_path, capsys):
    torch.manual_seed(1)
    sae = make_sae(SAEConfig("relu", d_in=128, d_sae=32, hook_name="blocks.0.hook_resid_post"))
    folder = save_sae(sae, tmp_path / "sae", extra_meta={"model_name": "toy"})
    with pytest.raises(SystemExit) as exit_info:
        main(["dashboard", str(folder), "--features", "0-4", "--tokens", "256", "--context-size", "64",
              "--out", str(tmp_path / "out"), "--json", "--no-progress"])
    assert exit_info.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_features"] == 5 and Path(summary["dashboard"]).exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["dashboard", str(folder), "--features", "30-40", "--tokens", "64", "--out", str(tmp_path / "o2")])
    assert exit_info.value.code == 2
    assert "out of range: 32, 33" in capsys.readouterr().err


def test_cli_autointerp_tokens(tmp_path, capsys):
    torch.manual_seed(2)
    sae = make_sae(SAEConfig("topk", d_in=128, d_sae=32, k=4, hook_name="blocks.0.hook_resid_post"))
    folder = save_sae(sae, tmp_path / "sae", extra_meta={"model_name": "toy"})
    with pytest.raises(SystemExit) as exit_info:
        main(["autointerp", str(folder), "--features", "0-2", "--tokens", "512", "--context-size", "64",
              "--explainer", "tokens", "--out", str(tmp_path / "ai"), "--json", "--no-progress"])
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["feature"] for r in report["results"]] == [0, 1, 2]
    assert report["summary"]["n_features"] == 3 and (tmp_path / "ai" / "results.json").exists()
    with pytest.raises(SystemExit):
        main(["autointerp", str(folder), "--features", "0", "--explainer", "llm", "--out", str(tmp_path / "x")])
    assert "needs --base-url URL and --model NAME" in capsys.readouterr().err
