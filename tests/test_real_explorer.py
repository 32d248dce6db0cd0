"""The explorer on Gemma 3 270M in a real headless Chromium (``real`` marker): an attention SAE and a
residual SAE trained for a few seconds on the real corpus, a real prompt, tokens, latents, the
dashboard, DFA over the 4 heads, recursion into the residual SAE, no console errors; screenshot kept
as test-artifacts/explorer_gemma3.png."""

from __future__ import annotations

import pytest

from saelab.cli import main
from saelab.explorer import ExplorerLimits, ExplorerService
from test_explorer_browser import ARTIFACTS, page, serve  # noqa: F401 - page is a fixture
from test_real_gemma3 import CORPUS, FOLDER, PROMPT, THREADS, need

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    run = tmp_path_factory.mktemp("real_explorer") / "run"
    with pytest.raises(SystemExit) as done:
        main(["train", "--model", str(need(FOLDER)), "--hook", "blocks.6.attn.hook_z", "--hook",
              "blocks.6.hook_resid_pre", "--arch", "topk", "--k", "16", "--d-sae", "512", "--tokens", "16384",
              "--batch-size", "1024", "--text", str(need(CORPUS / "train.txt")), "--out", str(run),
              "--threads", THREADS, "--no-progress", "--json"])
    assert done.value.code == 0
    saes = run / "saes"
    service = ExplorerService.open(str(FOLDER), [f"Z6={saes / 'blocks.6.attn.hook_z.topk.512'}",
                                                 f"R6={saes / 'blocks.6.hook_resid_pre.topk.512'}"],
                                   limits=ExplorerLimits(dashboard_tokens=2048, dashboard_context=32),
                                   source=str(CORPUS / "heldout.txt"))
    with serve(service) as url:
        yield url


def test_the_explorer_walks_a_real_prompt_through_gemma3(page, server_url):  # noqa: F811 - the page fixture
    page.set_default_timeout(120_000)
    page.fill("#prompt", PROMPT)
    page.click("#run")
    page.wait_for_selector("#tokens .tok")
    tokens = page.locator("#tokens .tok")
    assert tokens.count() == 15  # <bos> When Mary and John went to the store , John gave a drink to
    assert tokens.nth(10).text_content().replace("▁", " ").strip() == "John"
    page.locator('#tokens .tok[data-pos="14"]').click()
    page.wait_for_selector("#token-latents .latent-row")
    first = page.locator("#token-latents .latent-row").first
    latent = first.get_attribute("data-latent")
    first.locator(".latent-link").click()
    page.wait_for_selector("#latent-body .stat")
    assert page.text_content("#latent-title") == f"Latent {latent} · Z6"
    page.wait_for_selector("#dfa-body .source-row")
    assert page.locator("#dfa-body table.heat tr").count() == 5  # header + 4 heads
    page.wait_for_selector("#compare-body .variant.steered")
    page.locator("#dfa-body .source-row button.recurse").first.click()
    page.wait_for_selector("#recurse-body .upstream-row")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "explorer_gemma3.png"), full_page=True)
    assert page.errors == []
    assert all(u.startswith(server_url) for u in page.urls), page.urls
