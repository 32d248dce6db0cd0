"""The explorer page in a real headless Chromium against a server started on 127.0.0.1: type a prompt,
see tokens, click a token, see latents, click a latent, see the dashboard and the DFA view, recurse
one step, compare predictions; no console errors, no request leaves the server; a screenshot is kept."""

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from saelab.explorer import ExplorerLimits, ExplorerService, create_app
from saelab.explorer.toy import train_toy_explorer_saes

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SPAN = "target waters strict reset 38 Kevin at crop"
PROMPT = f"The singer plays a song . {SPAN} {SPAN}"
ARTIFACTS = Path(os.environ.get("SAELAB_ARTIFACT_DIR", Path(__file__).resolve().parents[1] / "test-artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(service: ExplorerService, wait_s: float = 20.0) -> Iterator[str]:
    """Run the explorer app for ``service`` on a free 127.0.0.1 port; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + wait_s
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the explorer server did not start"
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory, one_torch_thread):
    l3, l2 = train_toy_explorer_saes(tmp_path_factory.getbasetemp() / "explorer_saes", small=True)
    service = ExplorerService.open("toy", [f"L3={l3}", f"L2={l2}"],
                                   limits=ExplorerLimits(dashboard_tokens=1024, dashboard_context=32))
    with serve(service) as url:
        yield url


@pytest.fixture
def page(server_url):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium before the tests")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 900})
            tab.errors, tab.urls = [], []
            tab.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: tab.errors.append(str(e)))
            tab.on("request", lambda r: tab.urls.append(r.url))
            tab.goto(server_url)
            tab.wait_for_selector("#sae-select option", state="attached")
            yield tab
        finally:
            browser.close()


def test_prompt_token_latent_dfa_recurse_compare(page, server_url):
    page.fill("#prompt", PROMPT)
    page.click("#run")
    page.wait_for_selector("#tokens .tok")
    assert page.locator("#tokens .tok").count() == 23                 # BOS + 22 words
    assert page.locator("#tokens .tok").nth(16).text_content() == "waters"

    page.locator('#tokens .tok[data-pos="16"]').click()
    page.wait_for_selector("#token-latents .latent-row")
    assert "Token 16" in page.text_content("#token-title")
    first = page.locator("#token-latents .latent-row").first
    latent = first.get_attribute("data-latent")
    first.locator(".latent-link").click()

    page.wait_for_selector("#latent-body .stat")
    assert page.text_content("#latent-title") == f"Latent {latent} · L3"
    page.wait_for_selector("#dfa-body .source-row")
    assert f"latent {latent} at token 16" in page.text_content("#dfa-where")
    assert page.locator("#dfa-body table.heat tr").count() == 5      # header + 4 heads
    page.wait_for_selector("#compare-body .variant.steered")
    assert page.locator("#compare-body .variant").count() == 4

    page.locator("#dfa-body .source-row button.recurse").first.click()
    page.wait_for_selector("#recurse-body .upstream-row")
    upstream = page.locator("#recurse-body .upstream-row").first.get_attribute("data-latent")
    page.locator("#recurse-body .upstream-row .latent-link").first.click()
    page.wait_for_function(f"document.querySelector('#latent-title').textContent === 'Latent {upstream} · L2'")
    page.wait_for_function(f"document.querySelector('#dfa-where').textContent.startsWith('latent {upstream} ')")
    assert page.locator("#trail .crumb").count() == 2
    page.wait_for_selector("#latent-body .stat")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "explorer.png"), full_page=True)
    assert page.errors == []
    assert all(u.startswith(server_url) for u in page.urls), page.urls


def test_refusal_is_shown_not_thrown(page):
    page.fill("#prompt", "   ")
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    assert "empty" in page.text_content("#error")
    page.fill("#prompt", "When Mary and John went to the store")
    page.click("#run")
    page.wait_for_selector("#tokens .tok")
    assert page.locator("#error").is_hidden() and page.locator("#tokens .tok").count() == 9
    assert all("HTTP 4" not in e for e in page.errors)
