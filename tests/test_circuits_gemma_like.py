"""Circuit discovery on models without the head graph (one key/value head shared by the query heads, a
norm after the attention output: Gemma 3), and head-level ACDC (``acdc_nodes``) everywhere.

The planted models: tiny Gemma 3 (1 key/value head, post-attention RMSNorm) and Llama (1 key/value head)
over the toy vocabulary in which every head's share of ``o_proj`` is zero except heads 1.2 and 2.1, so
patching any other head's ``hook_z`` changes nothing, exactly: those two heads are the whole circuit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saelab.circuits.acdc import ACDCConfig
from saelab.circuits.acdc_nodes import (
    NodeObjective,
    ZPatchRunner,
    kept_heads,
    node_prune,
    plain_end_logits,
    run_acdc_nodes,
)
from saelab.circuits.compare import CompareConfig, compare, speedups
from saelab.circuits.discover import DiscoveryConfig, discover, method_refusal
from saelab.circuits.eap import eap_attributions, eap_node_attributions, run_eap
from saelab.circuits.graph import HeadGraph, edge_graph_refusal
from saelab.circuits.ground_truth import ground_truth_for, load_ground_truth
from saelab.circuits.heads import Head, all_heads, cache_z
from saelab.circuits.patching import run_patching
from saelab.circuits.reference import ground_truth_entries, reference_circuits
from saelab.circuits.tasks import task_batch
from saelab.cli import main
from saelab.errors import ConfigError, SaelabError
from saelab.models import LoadedModel, load_model
from saelab.models.tiny import tiny_model

PLANTED = [Head(1, 2), Head(2, 1)]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted(family: str) -> LoadedModel:
    from saelab.toy.tokenizer import build_hf_tokenizer

    tokenizer = build_hf_tokenizer()
    overrides = {"num_key_value_heads": 1} if family == "llama" else {}
    model = tiny_model(family, vocab_size=len(tokenizer), seed=3, **overrides)
    d_head = model.config.head_dim
    with torch.no_grad():
        for layer, block in enumerate(model.model.layers):
            weight = block.self_attn.o_proj.weight  # [d_model, n_heads * d_head]
            for head in range(model.config.num_attention_heads):
                cols = slice(head * d_head, (head + 1) * d_head)
                if Head(layer, head) in PLANTED:
                    weight[:, cols] *= 10.0
                else:
                    weight[:, cols] = 0.0
    return LoadedModel.from_hf(model, tokenizer, name=f"planted-{family}")


@pytest.fixture(scope="module", params=["gemma3", "llama"])
def gemma_like(request) -> LoadedModel:
    return planted(request.param)


@pytest.fixture(scope="module")
def gemma3() -> LoadedModel:
    return planted("gemma3")


@pytest.fixture(scope="module")
def toy() -> LoadedModel:
    return load_model("toy")


def ioi(lm, n=16, seed=5):
    return task_batch(lm, "ioi", n, seed=seed, templates="toy")


def sequential_node_acdc(lm, batch, metric: str, threshold: float) -> list[Head]:
    """The textbook head-level ACDC loop: one full forward pass (``run_with_hooks``) per trial, heads
    from the last one back; the heads kept."""
    corrupted = cache_z(lm, batch.corrupted_ids)
    clean_logits = lm.run_with_hooks(batch.clean_ids, {})
    clean_log_probs = batch.end_logits(clean_logits).log_softmax(-1)
    patched: set[Head] = set()

    def value() -> float:
        def edit(layer):
            def fn(z):
                z = z.clone()
                for head in patched:
                    if head.layer == layer:
                        z[:, :, head.head] = corrupted[layer][:, :, head.head]
                return z
            return fn

        logits = lm.run_with_hooks(batch.clean_ids, {f"blocks.{L}.attn.hook_z": edit(L) for L in range(lm.n_layers)})
        if metric == "kl":
            log_probs = batch.end_logits(logits).log_softmax(-1)
            return float((clean_log_probs.exp() * (clean_log_probs - log_probs)).sum(-1).mean())
        return float((batch.metric(logits).mean() - batch.metric(clean_logits).mean()).abs())

    current = value()
    for head in reversed(all_heads(lm)):
        patched.add(head)
        trial = value()
        if trial - current < threshold:
            current = trial
        else:
            patched.discard(head)
    return [h for h in all_heads(lm) if h not in patched]


@pytest.mark.parametrize(("metric", "thresholds"), [("kl", (1e-3, 1e-2)), ("task", (1e-2, 1e-1))])
def test_node_acdc_takes_exactly_the_plain_loops_decisions(toy, metric, thresholds):
    batch = ioi(toy, 8, seed=3)
    for tau in thresholds:
        expected = sequential_node_acdc(toy, batch, metric, tau)
        assert 0 < len(expected) < 16  # mixed decisions: a real check
        for engine, candidates in (("fast", 1), ("fast", 4), ("plain", 1)):
            objective = NodeObjective(toy, batch, metric, engine)
            assert kept_heads(all_heads(toy), node_prune(objective, tau, candidates)) == expected, (engine, candidates)
    result = run_acdc_nodes(toy, batch, ACDCConfig(metric=metric, threshold=thresholds[0], sweep=thresholds))
    assert result.method == "acdc_nodes" and result.details["circuit"] == [
        str(h) for h in sequential_node_acdc(toy, batch, metric, thresholds[0])]
    assert result.details["trials"] == 17 and 0 < result.details["forward_passes"] <= result.details["masks_evaluated"]


def test_node_acdc_keeps_every_head_at_a_tiny_threshold_and_none_at_a_huge_one(toy):
    batch = ioi(toy, 12, seed=3)
    result = run_acdc_nodes(toy, batch, ACDCConfig(threshold=1e-9, sweep=(1e-9, 1e-2, 1e6)))
    # on the toy model every head's corrupted output moves the last-token distribution a little
    assert result.details["heads_kept"] == 16 and result.sets[0].all()
    assert {str(h) for h in ground_truth_for(toy, "ioi").heads} <= set(result.details["circuit"])
    assert not result.sets[-1].any()  # tau 1e6: every head removed
    assert 0 < result.sets[1].sum() < 16
    # the trial at a head of block L reuses the clean run's blocks below L
    assert result.details["block_evaluations"] < result.details["masks_evaluated"] * toy.n_layers
    assert result.details["sweep_runtime_s"] > 0 and result.runtime_s > 0


def test_layer_skipping_patch_runs_equal_full_forward_passes(toy, gemma_like):
    for lm in (toy, gemma_like, LoadedModel.from_hf(tiny_model("gemma2"), name="tiny-gemma2")):
        generator = torch.Generator().manual_seed(0)
        clean, corrupted = (torch.randint(3, lm.d_vocab, (5, 9), generator=generator) for _ in range(2))
        end = torch.tensor([8, 4, 6, 8, 2])
        runner, values = ZPatchRunner(lm, clean, end), cache_z(lm, corrupted)
        full = lm.run_with_hooks(clean, {})[torch.arange(5), end]
        torch.testing.assert_close(runner.clean_end, full, rtol=1e-5, atol=1e-5 * float(full.abs().max()))
        n = lm.n_layers * lm.n_heads
        for block in range(lm.n_layers):
            masks = torch.rand(3, n, generator=generator) < 0.5
            masks[:, :block * lm.n_heads] = False
            masks[:, block * lm.n_heads] = True
            assert runner.start_layer(masks) == block
            plain = plain_end_logits(lm, clean, end, masks, values)
            torch.testing.assert_close(runner.end_logits(masks, values), plain, rtol=1e-5,
                                       atol=1e-5 * float(plain.abs().max()))
        for module in [*lm.adapter.blocks(), lm.adapter.blocks()[-1].mlp]:  # every skipped forward is put back
            assert "forward" not in vars(module)
    with pytest.raises(SaelabError, match=r"head masks must have shape \[n_layers \* n_heads\] = \[16\]"):
        ZPatchRunner(toy, clean[:, :4], end.clamp(max=3)).end_logits(torch.zeros(2, 15), values)


def test_head_level_methods_find_the_planted_circuit_with_one_key_value_head(gemma_like):
    assert edge_graph_refusal(gemma_like) is not None
    with pytest.raises(SaelabError, match="grouped-query attention.*acdc_nodes"):
        HeadGraph(gemma_like)
    batch = ioi(gemma_like)
    result = run_acdc_nodes(gemma_like, batch, ACDCConfig(threshold=1e-6, sweep=(1e-9, 1e-6, 1e6)))
    assert result.details["circuit"] == ["1.2", "2.1"]  # the dead heads change nothing, exactly
    assert not result.sets[-1].any() and result.evaluate(PLANTED)["auc"] == 1.0
    for method_result in (run_patching(gemma_like, batch), run_eap(gemma_like, batch)):
        scores = np.asarray(method_result.scores)
        planted_scores = [scores[all_heads(gemma_like).index(h)] for h in PLANTED]
        assert min(planted_scores) > 0 and np.sort(scores)[-3] == 0, method_result.method


def test_node_level_eap_without_the_graph_equals_the_graphs(toy):
    batch = ioi(toy, 8)
    graph_node, _ = eap_attributions(HeadGraph(toy), batch)
    torch.testing.assert_close(eap_node_attributions(toy, batch), graph_node, rtol=1e-4, atol=1e-6)


def test_edge_methods_are_refused_with_the_reason_and_skipped_by_compare(gemma3, tmp_path):
    assert method_refusal(gemma3, "acdc").startswith("edge-level: needs one key/value head per query head")
    assert method_refusal(gemma3, "acdc_nodes") is None and method_refusal(gemma3, "eap") is None
    with pytest.raises(ConfigError, match="'eap_edges' cannot run on planted-gemma3.*use one of: dsae, dsae_edges, "
                                          "patching, eap, acdc_nodes"):
        discover(gemma3, "ioi", "eap_edges", DiscoveryConfig(n_pairs=4, templates="toy"))
    truth = tmp_path / "ioi.json"
    truth.write_text(json.dumps({"task": "ioi", "classes": {"planted": ["1.2", "2.1"]}, "source": "planted"}))
    cfg = CompareConfig(tasks=("ioi",), methods=("dsae", "patching", "eap", "eap_edges", "acdc", "acdc_nodes"),
                        discovery=DiscoveryConfig(n_pairs=8, templates="toy", acdc=ACDCConfig(sweep=(1e-6, 1e-3))),
                        ground_truths={"ioi": str(truth)}, extra_dsae_positions=())
    out = compare(gemma3, cfg, tmp_path / "cmp", progress=False)
    rows = {r["method"]: r for r in out["rows"]}
    assert list(rows) == ["dsae", "patching", "eap", "eap_edges", "acdc", "acdc_nodes"]
    for skipped in ("eap_edges", "acdc"):
        assert rows[skipped]["auc"] == "" and rows[skipped]["note"].startswith("skipped: edge-level: needs")
    assert rows["acdc_nodes"]["auc"] == 1.0 and rows["patching"]["auc"] == 1.0
    entry = out["speedups"]["ioi"]
    assert entry["acdc_method"] == "acdc_nodes"
    assert "head-level ACDC (acdc_nodes) run" in entry["line"] and "vs acdc_nodes 1.000" in entry["line"]
    assert "| eap_edges |" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert (tmp_path / "cmp" / "roc_ioi.png").exists()


def test_speed_line_prefers_edge_acdc_and_names_which_it_used():
    rows = [{"task": "ioi", "method": "dsae", "auc": 0.9, "runtime_s": 0.5, "sweep_runtime_s": ""},
            {"task": "ioi", "method": "acdc", "auc": 0.8, "runtime_s": 6.0, "sweep_runtime_s": ""},
            {"task": "ioi", "method": "acdc_nodes", "auc": 0.7, "runtime_s": 1.0, "sweep_runtime_s": ""}]
    entry = speedups(rows)["ioi"]
    assert entry["acdc_method"] == "acdc" and entry["line"].startswith("ioi: dsae is 12x faster than one ACDC run")
    rows[1] = {**rows[1], "auc": "", "runtime_s": "", "note": "skipped: edge-level"}
    entry = speedups(rows)["ioi"]
    assert entry["acdc_method"] == "acdc_nodes" and entry["acdc_over_dsae"] == 2.0
    assert entry["line"].startswith("ioi: dsae is 2x faster than one head-level ACDC (acdc_nodes) run")
    assert entry["line"].endswith("dsae's AUC is at least acdc_nodes's")


def test_reference_without_the_graph_is_node_only_and_says_why(gemma3, tmp_path, capsys):
    reference = reference_circuits(gemma3, n=12, threshold=0.01, tasks=("ioi",), progress=False, templates="toy")
    circuit = reference["circuits"]["ioi"]
    assert circuit["heads"] == ["1.2", "2.1"] and circuit["path_effects_fraction_of_gap"] == {}
    assert circuit["path_step"].startswith("skipped:") and "grouped-query" in circuit["path_step"]
    assert "per head only" in reference["method"] and "path step skipped" in reference["method"]
    assert circuit["effects"]["0.0"] == 0 and circuit["patching_effects"]["0.0"] == 0
    path = tmp_path / "ioi.json"
    path.write_text(json.dumps(ground_truth_entries(reference)["ioi"]))
    truth = load_ground_truth(str(path))
    assert truth.heads == PLANTED and "path step skipped" in truth.source
    with pytest.raises(ConfigError, match="task='nope'"):
        reference_circuits(gemma3, n=4, tasks=("nope",), progress=False)


def test_reference_and_compare_commands_write_and_read_ground_truth_files(tmp_path, capsys):
    truth_dir = tmp_path / "gt"
    with pytest.raises(SystemExit) as exit_info:
        main(["circuits", "reference", "--model", "toy", "--threads", "1", "--pairs", "6", "--tasks", "docstring",
              "--truth-dir", str(truth_dir), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert exit_info.value.code == 0 and printed["docstring.ground_truth"] == str(truth_dir / "docstring.json")
    written = json.loads((truth_dir / "docstring.json").read_text())
    assert written["classes"]["reference"] == printed["docstring.heads"] and written["path_step"] == "done"
    assert "--tasks docstring" in written["command"]
    with pytest.raises(SystemExit) as exit_info:
        main(["circuits", "compare", "--model", "toy", "--threads", "1", "--pairs", "6", "--tasks", "docstring",
              "--methods", "acdc_nodes", "--acdc-sweep", "1e-2", "--ground-truth", f"docstring={truth_dir / 'docstring.json'}",
              "--out", str(tmp_path / "cmp"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert exit_info.value.code == 0 and [r["method"] for r in out["rows"]] == ["acdc_nodes"]
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["ground_truths"]["docstring"]["heads"] == written["classes"]["reference"]
    for bad, message in (("docstring", "must be TASK=NAME_OR_FILE"), ("nope=x.json", "task='nope'")):
        with pytest.raises(SystemExit) as exit_info:
            main(["circuits", "compare", "--model", "toy", "--tasks", "docstring", "--methods", "acdc_nodes",
                  "--ground-truth", bad, "--out", str(tmp_path / "bad")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
