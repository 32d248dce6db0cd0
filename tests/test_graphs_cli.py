"""``saelab graph``, ``graph intervene`` and ``graph train-transcoders`` on the planted model saved as an
ordinary model folder with its transcoder folders."""

from __future__ import annotations

import argparse
import json

import pytest

from saelab.errors import ConfigError, SaelabError
from saelab.graphs import commands
from saelab.graphs.graph_json import load_graph_json
from saelab.sae import save_sae
from test_graphs_attribution import PLANT_A, planted_model

PROMPT = f"the war lasted from the year {PLANT_A}"


def run(argv: list[str], capsys) -> str:
    parser = argparse.ArgumentParser(prog="saelab")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def folders(tmp_path_factory, one_torch_thread):
    lm, transcoders, facts = planted_model()
    root = tmp_path_factory.mktemp("planted")
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    for sae in transcoders:
        save_sae(sae, root / "transcoders" / sae.cfg.name)
    return root, facts


def test_graph_writes_the_json_and_the_plot(folders, tmp_path, capsys):
    root, facts = folders
    out = tmp_path / "graph"
    text = run(["graph", "--model", str(root / "model"), "--transcoders", str(root / "transcoders"), "--prompt",
                PROMPT, "--out", str(out), "--heads", "--json", "--threads", "1"], capsys)
    summary = json.loads(text)
    assert summary["score_replacement"] > 0.99 and summary["pruned_nodes"] >= 4
    assert list(summary["logits"]) == ["John"]
    assert (out / "graph.png").read_bytes()[:4] == b"\x89PNG"
    document = load_graph_json(out)
    last = len(document["metadata"]["tokens"]) - 1
    assert document["metadata"]["top_paths"][0]["nodes"] == [
        f"embedding:{last}", f"feature:0:{last}:0", f"feature:1:{last}:0", f"logit:{facts['target']}"]
    assert document["metadata"]["transcoders"][0]["path"].endswith("mlp0-transcoder")
    assert len(document["metadata"]["heads"]) == 4  # 2 blocks x 2 heads, all switched off: no share
    shares = [h["share"] for h in document["metadata"]["heads"]]
    assert max(shares) < 1e-3, shares
    # readable output too
    table = run(["graph", "--model", str(root / "model"), "--transcoders", str(root / "transcoders"), "--prompt",
                 PROMPT, "--out", str(tmp_path / "again")], capsys)
    assert "top paths (token -> logit):" in table and f"L1 #0 {PLANT_A!r}@{last}" in table

    result = json.loads(run(["graph", "intervene", "--graph", str(out), "--nodes", f"feature:1:{last}:0",
                             "--scale", "0", "--json"], capsys))
    john = result["logits"][0]
    assert john["token"] == "John" and john["real"] < -5 and john["predicted"] < -5
    assert john["probability_after"] < 0.05


def test_graph_refuses_missing_arguments(folders, tmp_path, capsys):
    root, _ = folders
    with pytest.raises(ConfigError, match="needs --transcoders, --prompt"):
        run(["graph", "--out", str(tmp_path)], capsys)
    with pytest.raises(SaelabError, match=r"block\(s\) 1"):
        run(["graph", "--model", str(root / "model"), "--transcoders", str(root / "transcoders" / "mlp0-transcoder"),
             "--prompt", PROMPT, "--out", str(tmp_path / "x")], capsys)
    with pytest.raises(ConfigError, match="holds no SAE folder"):
        run(["graph", "--model", str(root / "model"), "--transcoders", str(tmp_path), "--prompt", PROMPT, "--out",
             str(tmp_path / "y")], capsys)


def test_train_transcoders_then_graph(folders, tmp_path, capsys):
    root, _ = folders
    run_dir = tmp_path / "run"
    summary = json.loads(run(["graph", "train-transcoders", "--model", str(root / "model"), "--out", str(run_dir),
                              "--tokens", "4096", "--batch-size", "512", "--d-sae", "32", "--k", "4", "--lr", "2e-3",
                              "--context-size", "32", "--no-progress", "--json", "--threads", "1"], capsys))
    assert sorted(summary["saes"]) == ["mlp0-transcoder", "mlp1-transcoder"]
    assert summary["final"]["mlp1-transcoder"]["l0"] <= 4
    text = run(["graph", "--model", str(root / "model"), "--transcoders", str(run_dir), "--prompt", PROMPT,
                "--out", str(tmp_path / "graph"), "--json"], capsys)
    assert json.loads(text)["active_features"] > 0
    with pytest.raises(SaelabError, match="already holds a training run"):
        run(["graph", "train-transcoders", "--model", str(root / "model"), "--out", str(run_dir), "--tokens", "4096"],
            capsys)
