"""The graph JSON file: what it holds for the planted path, its round trip, the loader's checks, labels
from dashboard and autointerp folders, and the static plot."""

from __future__ import annotations

import copy
import json

import pytest

from saelab.errors import ConfigError, CorruptFileError
from saelab.graphs.graph_json import NODE_KEYS, load_graph_json, validate_graph_document, write_graph_json
from saelab.graphs.labels import labels_by_layer, read_labels
from saelab.graphs.plot import plot_graph
from saelab.graphs.trace import trace_prompt
from test_graphs_attribution import PLANT_TARGET, planted_model, planted_prompt


@pytest.fixture(scope="module")
def traced(one_torch_thread):
    lm, transcoders, facts = planted_model()
    import torch

    result = trace_prompt(lm, transcoders, planted_prompt(lm), dtype=torch.float64)
    return result, facts


def test_the_document_holds_the_pruned_graph(traced, tmp_path):
    result, facts = traced
    document = result.document(model_name="planted", transcoder_paths=["a", "b"], labels={1: {0: "writes John"}})
    last = result.replacement.n_pos - 1
    nodes = {n["id"]: n for n in document["nodes"]}
    assert all(set(n) == set(NODE_KEYS) for n in document["nodes"])
    f2 = nodes[f"feature:1:{last}:0"]
    assert f2["kind"] == "feature" and f2["layer"] == 1 and f2["position"] == last and f2["feature"] == 0
    assert f2["label"] == "writes John" and f2["activation"] > 1 and f2["influence"] > 0.5
    logit = nodes[f"logit:{facts['target']}"]
    assert logit["token"] == PLANT_TARGET and logit["layer"] == 2 and logit["probability"] > 0.9
    assert nodes[f"embedding:{last}"]["layer"] == -1
    meta = document["metadata"]
    assert meta["transcoders"][1]["path"] == "b" and meta["transcoders"][0]["hook_name_out"] == "blocks.0.hook_mlp_out"
    assert meta["config"]["node_threshold"] == 0.8 and meta["config"]["edge_threshold"] == 0.98
    assert meta["scores"]["replacement"] > 0.99 and meta["counts"]["pruned_nodes"] == len(document["nodes"])
    assert meta["top_paths"][0]["nodes"][-1] == f"logit:{facts['target']}"
    weights = [abs(e["weight"]) for e in document["edges"]]
    assert weights == sorted(weights, reverse=True) and len(weights) == meta["counts"]["pruned_edges"]
    path = write_graph_json(tmp_path / "graph.json", document)
    assert load_graph_json(tmp_path) == json.loads(path.read_text())


@pytest.mark.parametrize("break_it, message", [
    (lambda d: d.update(version=2), "version=2"),
    (lambda d: d["metadata"].pop("tokens"), "metadata lacks tokens"),
    (lambda d: d["nodes"][0].pop("influence"), "lacks one of"),
    (lambda d: d["nodes"][0].update(kind="neuron"), "kind='neuron'"),
    (lambda d: d["nodes"].append(dict(d["nodes"][0])), "appears twice"),
    (lambda d: d["edges"][0].update(target="feature:9:9:9"), "does not join"),
    (lambda d: d["edges"][0].update(weight=float("nan")), "weight nan"),
    (lambda d: d["edges"][0].update(source=d["edges"][0]["target"], target=d["edges"][0]["source"]),
     "higher layer"),
])
def test_the_loader_refuses_broken_files(traced, tmp_path, break_it, message):
    document = traced[0].document()
    validate_graph_document(document)
    broken = copy.deepcopy(document)
    break_it(broken)
    (tmp_path / "graph.json").write_text(json.dumps(broken))
    with pytest.raises(CorruptFileError, match=message):
        load_graph_json(tmp_path / "graph.json")
    with pytest.raises(CorruptFileError, match="does not exist"):
        load_graph_json(tmp_path / "missing.json")


def test_labels_come_from_dashboards_and_autointerp(tmp_path):
    (tmp_path / "feature_data.json").write_text(json.dumps({"meta": {}, "features": [
        {"index": 3, "logits": {"top": [["Mary", 1.0], ["John", 0.5]]}},
        {"index": 4, "logits": None, "top_examples": [{"tokens": ["a", "b"], "mark": 1}]}]}))
    assert read_labels(tmp_path) == {3: "→ Mary John", 4: "on b"}
    (tmp_path / "results.json").write_text(json.dumps({"results": [{"feature": 3, "explanation": "names"}]}))
    assert read_labels(tmp_path) == {3: "names", 4: "on b"}
    assert labels_by_layer([f"1={tmp_path}"], 2) == {1: {3: "names", 4: "on b"}}
    with pytest.raises(ConfigError, match="LAYER=PATH"):
        labels_by_layer([str(tmp_path)], 2)
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        labels_by_layer([f"5={tmp_path}"], 2)
    with pytest.raises(ConfigError, match="holds neither"):
        read_labels(tmp_path / "nothing")


def test_the_plot_is_written(traced, tmp_path):
    path = plot_graph(traced[0].document(), tmp_path / "graph.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
