"""The explorer's attribution-graph view on the toy model: a graph traced with ``saelab.graphs`` through
tiny random transcoders, served by the API (listing, trimming to the strongest edges, interventions
that agree with ``saelab.graphs.interventions``, every bad input refused with a clear message) and
driven in a real headless Chromium (nodes and edges drawn, a feature node clicked, ablated and steered,
the logit table filled, the threshold slider, the dashboard link); a screenshot is kept."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import openapi
from schemathesis.generation import GenerationMode

from saelab.cli import main
from saelab.errors import SaelabError
from saelab.explorer import ExplorerLimits, ExplorerService, create_app
from saelab.explorer.graphs import GraphStore, read_explorer_graph
from saelab.graphs import intervene, load_transcoders, trace_prompt, write_graph_json
from saelab.sae import SAEConfig, make_sae, save_sae
from test_explorer_browser import CHROMIUM, CHROMIUM_ARGS, serve
from test_explorer_fuzz import CHECKS

PROMPT = "When Mary and John went to the store , John gave a book to"
LIMITS = dict(max_graph_edges=200, max_intervention_nodes=4, max_scale=50.0, dashboard_tokens=256,
              dashboard_context=32)


def random_transcoders(lm, folder, seed: int = 0):
    """Untrained top-k transcoders (64 latents, k 8) of every toy block, saved as ``folder/saes/mlpL-transcoder``."""
    for layer in range(lm.n_layers):
        cfg = SAEConfig("topk", lm.d_model, 64, hook_name=f"blocks.{layer}.ln2.hook_normalized",
                        hook_name_out=f"blocks.{layer}.hook_mlp_out", k=8, name=f"mlp{layer}-transcoder")
        save_sae(make_sae(cfg, torch.Generator().manual_seed(seed + layer)), folder / "saes" / f"mlp{layer}-transcoder")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_torch_thread):
    """The toy model, its transcoders, a traced graph (``ioi/graph.json``, folders recorded) and the same graph
    without folders (``bare.json``, view only), and a served explorer over both (no --sae: the transcoders)."""
    from saelab.models import load_model

    base = tmp_path_factory.mktemp("explorer_graph")
    lm = load_model("toy")
    transcoders, folders = load_transcoders(lm, [random_transcoders(lm, base / "tc")])
    trace = trace_prompt(lm, transcoders, PROMPT)
    document = trace.document(model_name="toy", transcoder_paths=folders)
    graph_path = write_graph_json(base / "ioi" / "graph.json", document)
    bare = json.loads(json.dumps(document))
    for entry in bare["metadata"]["transcoders"]:
        entry["path"] = ""
    bare_path = write_graph_json(base / "bare.json", bare)
    service = ExplorerService.open("toy", [], graphs=[str(graph_path.parent), str(bare_path)],
                                   limits=ExplorerLimits(**LIMITS))
    return {"lm": lm, "trace": trace, "document": document, "graph": graph_path, "bare": bare_path, "base": base,
            "service": service, "folders": folders}


@pytest.fixture(scope="module")
def client(world):
    return TestClient(create_app(world["service"]), raise_server_exceptions=False)


def top_features(document, n: int = 2) -> list[str]:
    features = sorted((node for node in document["nodes"] if node["kind"] == "feature"), key=lambda x: -x["influence"])
    return [node["id"] for node in features[:n]]


def test_graphs_listed_with_their_transcoders_as_saes(client, world):
    info = client.get("/api/info").json()
    assert info["graphs"] == ["ioi", "bare"]
    assert [s["name"] for s in info["saes"]] == [f"mlp{layer}-transcoder" for layer in range(4)]
    listed = {g["name"]: g for g in client.get("/api/graphs").json()["graphs"]}
    doc = world["document"]
    assert listed["ioi"]["n_nodes"] == len(doc["nodes"]) and listed["ioi"]["n_edges"] == len(doc["edges"])
    assert listed["ioi"]["prompt"] == PROMPT and listed["ioi"]["can_intervene"]
    assert not listed["bare"]["can_intervene"] and "--graph-transcoders" in listed["bare"]["intervene_note"]


def test_graph_view_and_trimming(client, world):
    doc = world["document"]
    assert len(doc["edges"]) > 200                      # so that the server's limit trims it
    full = client.post("/api/graph", json={"graph": "ioi"}).json()
    assert full["nodes"] == doc["nodes"] and full["edges_total"] == len(doc["edges"])
    assert len(full["edges"]) == 200 and full["edges"] == doc["edges"][:200]
    weights = [abs(e["weight"]) for e in full["edges"]]
    assert weights == sorted(weights, reverse=True)
    assert full["sae_by_layer"] == [f"mlp{layer}-transcoder" for layer in range(4)]
    assert full["metadata"]["tokens"][0] == "<bos>" and full["limits"]["max_intervention_nodes"] == 4
    assert full["prompt_tokens_match"]
    top = client.post("/api/graph", json={"graph": "ioi", "max_edges": 5}).json()
    assert top["edges"] == doc["edges"][:5] and top["edges_total"] == len(doc["edges"])
    bare = client.post("/api/graph", json={"graph": "bare", "max_edges": 3}).json()
    assert bare["sae_by_layer"] == [None] * 4 and len(bare["edges"]) == 3
    for body, status, needle in (({"graph": "ioi", "max_edges": 201}, 400, "accepted: 1..200"),
                                 ({"graph": "ioi", "max_edges": 0}, 422, "greater than or equal to 1"),
                                 ({"graph": "ioi", "max_edges": "5"}, 422, "valid integer"),
                                 ({"graph": "nope"}, 404, "unknown graph 'nope'; this server loaded: ioi, bare"),
                                 ({"graph": "../ioi/graph.json"}, 404, "unknown graph"),
                                 ({"graph": "ioi", "path": "/etc/passwd"}, 422, "path")):
        r = client.post("/api/graph", json=body)
        assert r.status_code == status, (body, r.text)
        assert needle in (r.json().get("message") or r.json()["detail"]), (body, r.text)


def test_ablate_and_steer_agree_with_the_library(client, world):
    trace, doc = world["trace"], world["document"]
    nodes = top_features(doc)
    r = client.post("/api/graph/intervene", json={"graph": "ioi", "nodes": nodes, "mode": "ablate", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    want = intervene(trace.replacement, trace.graph, nodes, 0.0)
    assert body["nodes"] == want.nodes and body["scale"] == 0.0 and body["mode"] == "ablate"
    assert [x["real"] for x in body["logits"]] == pytest.approx(want.real.tolist(), abs=1e-5)
    assert [x["predicted"] for x in body["logits"]] == pytest.approx(want.predicted.tolist(), abs=1e-5)
    logit_nodes = {n["token_id"]: n for n in doc["nodes"] if n["kind"] == "logit"}
    assert [x["token_id"] for x in body["logits"]] == list(logit_nodes)
    for row in body["logits"]:
        assert row["prob_before"] == pytest.approx(logit_nodes[row["token_id"]]["probability"], abs=1e-5)
        assert row["logit_before"] == pytest.approx(logit_nodes[row["token_id"]]["activation"], abs=1e-4)
        assert row["prob_after"] == pytest.approx(float(want.probs[list(logit_nodes).index(row["token_id"])]), abs=1e-5)
    assert len(body["top_changed"]) == 5 and body["kl"] >= 0 and body["token"] == "to"
    moved = [abs(t["prob_after"] - t["prob_before"]) for t in body["top_changed"]]
    assert moved == sorted(moved, reverse=True)
    steer = client.post("/api/graph/intervene", json={"graph": "ioi", "nodes": nodes, "mode": "steer", "scale": 3}).json()
    want = intervene(trace.replacement, trace.graph, nodes, 3.0)
    assert [x["real"] for x in steer["logits"]] == pytest.approx(want.real.tolist(), abs=1e-5)
    assert steer["kl"] > 0
    same = client.post("/api/graph/intervene", json={"graph": "ioi", "nodes": nodes[:1], "mode": "steer",
                                                     "scale": 1.0}).json()
    assert max(abs(x["real"]) for x in same["logits"]) < 1e-4 and same["kl"] < 1e-8


def test_intervention_refusals(client, world):
    doc = world["document"]
    feature = top_features(doc, 1)[0]
    error = next(n["id"] for n in doc["nodes"] if n["kind"] == "error")
    features = [n["id"] for n in doc["nodes"] if n["kind"] == "feature"]
    assert len(features) >= 5
    ok = {"graph": "ioi", "nodes": [feature], "mode": "ablate"}
    cases = [({"graph": "zz"}, 404, "unknown graph 'zz'"),
             ({"nodes": ["feature:9:9:9"]}, 400, "node 'feature:9:9:9' is not in graph 'ioi'"),
             ({"nodes": [error]}, 400, f"node '{error}' is an error node; only feature nodes"),
             ({"nodes": []}, 422, "at least 1 item"),
             ({"nodes": features[:5]}, 400, "intervenes on at most 4"),
             ({"nodes": [feature] * 300}, 422, "at most 256 items"),
             ({"nodes": feature}, 422, "valid list"),
             ({"mode": "zero"}, 422, "'ablate' or 'steer'"),
             ({"mode": "steer"}, 422, "needs a scale"),
             ({"scale": 2.0}, 422, "mode 'ablate' sets the activations to 0"),
             ({"mode": "steer", "scale": 1e6}, 422, "less than or equal to 1000"),
             ({"mode": "steer", "scale": 60.0}, 400, "accepted: -50.0..50.0"),
             ({"mode": "steer", "scale": "2"}, 422, "valid number"),
             ({"graph": "bare"}, 400, "graph 'bare' cannot be intervened on"),
             ({"k": 0}, 422, "greater than or equal to 1"),
             ({"extra": 1}, 422, "extra")]
    for change, status, needle in cases:
        r = client.post("/api/graph/intervene", json={**ok, **change})
        assert r.status_code == status, (change, r.text)
        body = r.json()
        assert needle in (body.get("message") or body["detail"]), (change, body)
        assert "Traceback" not in r.text
    r = client.post("/api/graph/intervene", content=b'{"graph": "ioi", "nodes": ["x"], "mode": "steer", "scale": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "scale" in r.json()["message"]
    assert client.post("/api/graph/intervene", json={**ok, "nodes": [feature, feature]}).status_code == 200


def test_openapi_names_graphs_and_no_field_is_a_path(client):
    schema = client.get("/api/openapi.json").json()
    comps = schema["components"]["schemas"]
    assert comps["GraphRequest"]["properties"]["graph"]["enum"] == ["ioi", "bare"]
    assert comps["InterventionRequest"]["properties"]["graph"]["enum"] == ["ioi", "bare"]
    assert {"/api/graphs", "/api/graph", "/api/graph/intervene"} <= set(schema["paths"])
    fields = {name for comp in comps.values() for name in comp.get("properties", {})
              if comp.get("title", "").endswith("Request")}
    assert not [f for f in fields if any(w in f.lower() for w in ("path", "file", "dir", "folder", "url"))]
    page = client.get("/graph")
    assert page.status_code == 200 and 'src="assets/graph.js"' in page.text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)
    js = client.get("/assets/graph.js").text
    assert "fetch(" not in js and all(u.startswith("api/") for u in re.findall(r'api\("([^"]+)"', js))
    assert "innerHTML" not in js and "url(" not in client.get("/assets/graph.css").text


def fuzz(operation, generation, seen: dict[str, set[int]]) -> None:
    @settings(max_examples=30, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=generation))
    def check(case):
        response = case.call_and_validate(checks=CHECKS)
        seen.setdefault(operation.path, set()).add(response.status_code)
        assert response.status_code < 500

    check()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_graph_operations(world, mode):
    """Valid and invalid requests for the graph operations (schemathesis, as in test_explorer_fuzz)."""
    schema = openapi.from_asgi("/api/openapi.json", create_app(world["service"]))
    operations = [r.ok() for r in schema.get_all_operations() if r.ok().path.startswith("/api/graph")]
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    if mode == "negative":                               # GET /api/graphs takes no input to break
        operations = [op for op in operations if op.method.upper() == "POST"]
    seen: dict[str, set[int]] = {}
    for operation in operations:
        fuzz(operation, generation, seen)
    assert len(seen) == len(operations) >= 2
    if mode == "negative":
        assert all(codes and 200 not in codes for codes in seen.values()), seen
    else:
        assert 200 in seen["/api/graph"] and 200 in seen["/api/graphs"], seen


def test_other_transcoders_and_other_models_are_refused(world, tmp_path):
    service = world["service"]
    other = random_transcoders(world["lm"], tmp_path / "other", seed=50)
    store = GraphStore(service.lm, service.model_lock, service.limits, service.names, {})
    store.attach(read_explorer_graph("swapped", world["graph"], transcoders=[other]))
    with pytest.raises(SaelabError, match="do not reproduce the graph"):
        store.intervene("swapped", top_features(world["document"], 1), "ablate")
    assert "do not reproduce" in store.listing()["graphs"][0]["intervene_note"]      # remembered
    moved = json.loads(world["graph"].read_text())
    moved["metadata"]["model_fingerprint"] = "0" * 16
    moved["metadata"]["prompt"] = "When Mary and John"                 # no longer the graph's tokens
    write_graph_json(tmp_path / "moved.json", moved)
    store.attach(read_explorer_graph(None, tmp_path / "moved.json"))
    assert "not on the explorer's model 'toy'" in store.graphs["moved"].note
    assert store.graphs["swapped"].prompt_tokens_match and not store.graphs["moved"].prompt_tokens_match
    with pytest.raises(SaelabError, match="two graphs are named 'moved'"):
        store.attach(read_explorer_graph(None, tmp_path / "moved.json"))
    with pytest.raises(SaelabError, match="graph name 'a/b' is not accepted"):
        read_explorer_graph("a/b", tmp_path / "moved.json")
    (tmp_path / "broken.json").write_text('{"format": "saelab-attribution-graph"}')
    with pytest.raises(SaelabError, match="broken.json"):
        read_explorer_graph(None, tmp_path / "broken.json")


def test_no_graph_routes_without_graphs(world):
    service = world["service"]
    plain = ExplorerService(service.lm, {"tc": service.saes["mlp1-transcoder"].sae})
    client = TestClient(create_app(plain), raise_server_exceptions=False)
    assert client.get("/api/info").json()["graphs"] == []
    for r in (client.get("/graph"), client.get("/api/graphs"), client.post("/api/graph", json={"graph": "ioi"})):
        assert r.status_code in (404, 405)
    assert "/api/graph" not in client.get("/api/openapi.json").json()["paths"]


def test_cli_serves_graphs(world, monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: calls.append((app, host, port)))
    with pytest.raises(SystemExit) as done:
        main(["explore", "--model", "toy", "--graph", f"g1={world['graph']}", "--graph-transcoders",
              str(world["base"] / "tc"), "--port", "8125", "--threads", "1"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and calls[0][1:] == ("127.0.0.1", 8125)
    assert "graph g1 (" in out and "graphs at http://127.0.0.1:8125/graph" in out and "view only" not in out
    served = TestClient(calls[0][0]).get("/api/graphs").json()["graphs"]
    assert [g["name"] for g in served] == ["g1"] and served[0]["can_intervene"]
    with pytest.raises(SystemExit) as done:
        main(["explore", "--model", "toy"])
    assert done.value.code == 2 and "needs --sae DIR" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def graph_url(world):
    with serve(world["service"]) as url:
        yield url


@pytest.fixture
def page(graph_url):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1500, "height": 950})
            tab.errors, tab.urls = [], []
            tab.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: tab.errors.append(str(e)))
            tab.on("request", lambda r: tab.urls.append(r.url))
            yield tab
        finally:
            browser.close()


def test_graph_view_in_chromium(page, graph_url, world, tmp_path):
    doc = world["document"]
    page.goto(graph_url)
    page.wait_for_selector("#graphs-link:not([hidden])")
    assert "attribution graphs (2)" in page.text_content("#graphs-link")
    page.click("#graphs-link")
    page.wait_for_selector("#graph-svg .node")
    assert page.locator("#graph-svg .node").count() == len(doc["nodes"])
    assert page.locator("#graph-svg line.edge").count() == 200
    assert page.locator("#graph-svg .token-label").count() == len(doc["metadata"]["tokens"])
    assert page.locator("#graph-svg .node.logit").count() == sum(n["kind"] == "logit" for n in doc["nodes"])
    assert "200 of 200 edges shown (the strongest 200 of" in page.text_content("#threshold-label")

    first, second = top_features(doc)
    page.hover(f'#graph-svg [data-id="{first}"]')
    page.wait_for_selector("#tooltip:not([hidden])")
    assert first.split(":")[1] in page.text_content("#tooltip")
    page.click(f'#graph-svg [data-id="{first}"]')
    page.wait_for_selector("#node-card:not([hidden])")
    assert page.text_content("#node-body").count(first) == 1
    link = page.get_attribute("#node-body a.dashboard-link", "href")
    layer, pos, feat = first.split(":")[1:]
    assert link.startswith(f"./#sae=mlp{layer}-transcoder&latent={feat}&prompt=") and link.endswith(f"position={pos}")
    page.click(f'#graph-svg [data-id="{second}"]')
    assert page.locator("#selected .chip").count() == 2
    assert page.locator("#graph-svg .node.selected").count() == 2

    page.click("#intervene-run")
    page.wait_for_selector("#logit-table .logit-row")
    assert page.locator("#logit-table .logit-row").count() == sum(n["kind"] == "logit" for n in doc["nodes"])
    assert "2 feature nodes ablated" in page.text_content("#intervene-summary")
    assert page.locator("#changed-table .changed-row").count() == 8
    page.check("#mode-steer")
    page.fill("#scale", "3")
    page.click("#intervene-run")
    page.wait_for_function("document.querySelector('#intervene-summary')?.textContent.includes('steered ×3')")
    page.fill("#scale", "500")
    page.click("#intervene-run")
    page.wait_for_selector("#intervene-error:not([hidden])")
    assert "scale=500.0 is above this server's limit" in page.text_content("#intervene-error")

    page.locator("#edge-threshold").fill("60")                # hides the weakest 60% of the edges
    assert page.locator("#graph-svg line.edge:not(.hidden)").count() == 80
    assert "80 of 200 edges shown" in page.text_content("#threshold-label")
    page.click("#paths .path")
    assert page.locator("#graph-svg line.edge.lit").count() >= 1
    page.screenshot(path=str(tmp_path / "graph_view.png"), full_page=True)
    assert (tmp_path / "graph_view.png").stat().st_size > 10_000

    page.goto(graph_url + link[2:])                     # the dashboard link opens the latent in the explorer
    page.wait_for_function(f"document.querySelector('#latent-title')?.textContent === "
                           f"'Latent {feat} · mlp{layer}-transcoder'")
    page.wait_for_selector("#latent-body .stat")
    assert page.locator("#tokens .tok.selected").get_attribute("data-pos") == pos
    page.wait_for_selector("#compare-body .variant.ablated")
    assert [e for e in page.errors if "HTTP 400" not in e and "400 (Bad Request)" not in e] == []
    assert all(u.startswith(graph_url) for u in page.urls), page.urls
