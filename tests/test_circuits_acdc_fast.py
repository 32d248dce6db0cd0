"""The fast ACDC engine: layer-skipping, batched end-logit runs equal full forward passes, and the
speculative batched ACDC keeps exactly the edges of the plain sequential loop (kept here, small)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.circuits.acdc import ACDCConfig, ACDCObjective, acdc_prune, run_acdc
from saelab.circuits.compare import speedups
from saelab.circuits.graph import HeadGraph, node_set
from saelab.circuits.tasks import task_batch
from saelab.errors import ConfigError, SaelabError
from saelab.models import LoadedModel, load_model
from saelab.models.partial_forward import forwards_replaced, returning
from saelab.models.tiny import tiny_model


@pytest.fixture(scope="module")
def toy(one_torch_thread):
    lm = load_model("toy")
    return lm, HeadGraph(lm)


@pytest.fixture(scope="module")
def ioi(toy):
    return task_batch(toy[0], "ioi", 6, seed=3)


def sequential_acdc(graph: HeadGraph, batch, metric: str, threshold: float) -> torch.Tensor:
    """The textbook ACDC loop: one full forward pass (``HeadGraph.run``) per trial; the kept edges."""
    lm = graph.lm
    corrupted = graph.corrupted_outputs(batch.corrupted_ids)
    clean_logits = lm.run_with_hooks(batch.clean_ids, {})
    clean_log_probs = batch.end_logits(clean_logits).log_softmax(-1)

    def value(mask):
        logits = graph.run(batch.clean_ids, mask, corrupted)
        if metric == "kl":
            log_probs = batch.end_logits(logits).log_softmax(-1)
            return float((clean_log_probs.exp() * (clean_log_probs - log_probs)).sum(-1).mean())
        return float((batch.metric(logits).mean() - batch.metric(clean_logits).mean()).abs())

    patched = graph.empty_mask()
    current = value(patched)
    for edge in graph.edges():
        patched[edge] = 1.0
        trial = value(patched)
        if trial - current < threshold:
            current = trial
        else:
            patched[edge] = 0.0
    return graph.valid_edges * (1 - patched)


def random_masks(graph: HeadGraph, lowest_block: int, k: int, seed: int) -> torch.Tensor:
    """``k`` random edge masks whose patched edges all end in block ``lowest_block`` or later."""
    generator = torch.Generator().manual_seed(seed)
    masks = (torch.rand(k, *graph.valid_edges.shape, generator=generator) < 0.4).float() * graph.valid_edges
    masks[:, graph.row_layers < lowest_block] = 0.0
    return masks


def assert_logits_close(fast: torch.Tensor, full: torch.Tensor) -> None:
    """Equal to 1e-5 of the logits' scale (float32 sums in another order differ by a few ulps)."""
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5 * float(full.abs().max()))


@pytest.mark.parametrize("family", ["toy", "gpt_neox", "gpt_neox_sequential", "llama"])
def test_layer_skipping_batched_end_logits_equal_full_forward_passes(toy, family):
    if family == "toy":
        lm, graph = toy
    else:  # rotary embeddings, parallel residual, RMSNorm; llama with one key/value head per query head
        model = tiny_model(family, **({"num_key_value_heads": 4} if family == "llama" else {}))
        lm = LoadedModel.from_hf(model, name=f"tiny-{family}")
        graph = HeadGraph(lm)
    generator = torch.Generator().manual_seed(0)
    clean, corrupted = (torch.randint(3, lm.d_vocab, (5, 9), generator=generator) for _ in range(2))
    end = torch.tensor([8, 4, 6, 8, 2])
    runs = graph.cache_runs(clean, corrupted)
    rows = torch.arange(5)
    reference = lm.run_with_hooks(clean, {})[rows, end]
    assert_logits_close(graph.end_logits(runs, graph.empty_mask(), end)[0], reference)
    for block in range(1, lm.n_layers + 1):
        masks = random_masks(graph, block, 3, seed=block)
        assert graph.start_layer(masks) == block
        fast = graph.end_logits(runs, masks, end)
        full = torch.stack([graph.run(clean, m, runs.corrupted)[rows, end] for m in masks])
        assert_logits_close(fast, full)
        assert_logits_close(graph.end_logits(runs, masks[1], end)[0], full[1])  # one mask alone
        assert not torch.allclose(full[0], reference, atol=1e-3)  # the patches matter
    for block in graph.lm.adapter.blocks():  # every skipped forward is put back
        assert "forward" not in vars(block) and "forward" not in vars(block.mlp)


def test_replaced_forwards_are_restored_even_after_an_error(toy):
    lm, _ = toy
    block = lm.adapter.blocks()[0]
    own = block.forward
    vars(block)["forward"] = own  # an instance-level forward, as accelerate sets one
    try:
        with pytest.raises(RuntimeError, match="boom"), forwards_replaced({block: returning(torch.zeros(1))}):
            assert torch.equal(block(torch.ones(2, 3, lm.d_model)), torch.zeros(1))
            raise RuntimeError("boom")
        assert vars(block)["forward"] is own
    finally:
        vars(block).pop("forward")


@pytest.mark.parametrize(("metric", "thresholds"), [("kl", (1e-3, 1e-2)), ("task", (1e-2, 1e-1))])
def test_batched_acdc_keeps_exactly_the_sequential_edges(toy, ioi, metric, thresholds):
    lm, graph = toy
    references = {tau: sequential_acdc(graph, ioi, metric, tau) for tau in thresholds}
    for tau, kept in references.items():
        assert 0 < kept.sum() < graph.valid_edges.sum()  # mixed decisions: a real check
        for candidates in (3, 8):  # a fresh objective each time: no value comes from another run's cache
            objective = ACDCObjective(graph, ioi, metric)
            assert torch.equal(acdc_prune(objective, tau, candidates), kept), (tau, candidates)
        # speculative trials were discarded and re-run, so the walk-back path is exercised
        assert objective.counts["masks_evaluated"] > len(graph.edges()) + 1
    result = run_acdc(lm, ioi, ACDCConfig(metric=metric, threshold=thresholds[0], sweep=thresholds, candidates=8))
    assert result.details["edges_kept"] == int(references[thresholds[0]].sum())
    assert result.details["circuit"] == [str(h) for h in node_set(graph, references[thresholds[0]])]
    expected = np.zeros(len(graph.heads))
    for tau in thresholds:
        expected[[graph.heads.index(h) for h in node_set(graph, references[tau])]] = tau
    assert np.array_equal(result.scores, expected)
    counts = result.details
    assert counts["trials"] == len(graph.edges()) + 1
    assert counts["block_evaluations"] < counts["trials"] * lm.n_layers  # layers below the receiver reused


def test_plain_engine_gives_the_same_result_with_one_full_pass_per_trial(toy, ioi):
    lm, graph = toy
    cfg = ACDCConfig(threshold=1e-2, sweep=())
    fast, plain = run_acdc(lm, ioi, cfg), run_acdc(lm, ioi, ACDCConfig(threshold=1e-2, sweep=(), engine="plain"))
    assert plain.details["circuit"] == fast.details["circuit"]
    assert plain.details["edges_kept"] == fast.details["edges_kept"]
    trials = len(graph.edges()) + 1
    assert plain.details["forward_passes"] == trials and plain.details["block_evaluations"] == trials * lm.n_layers
    assert fast.details["forward_passes"] < trials


def test_candidates_per_pass_follow_the_token_budget(ioi):
    tokens = ioi.clean_ids.numel()
    assert ACDCConfig(candidates=8, batch_tokens=3 * tokens).candidates_per_pass(ioi, torch.device("cpu")) == 3
    assert ACDCConfig(candidates=2, batch_tokens=100 * tokens).candidates_per_pass(ioi, torch.device("cpu")) == 2
    assert ACDCConfig(batch_tokens=1).candidates_per_pass(ioi, torch.device("cpu")) == 1
    assert ACDCConfig(engine="plain").candidates_per_pass(ioi, torch.device("cuda")) == 1
    assert ACDCConfig().candidates_per_pass(ioi, torch.device("cuda")) == 8


def test_a_sweep_reuses_the_masks_it_has_already_evaluated(toy, ioi):
    _, graph = toy
    objective = ACDCObjective(graph, ioi, "kl")
    first = acdc_prune(objective, 1e-2, 4)
    evaluated = objective.counts["masks_evaluated"]
    assert torch.equal(acdc_prune(objective, 1e-2, 4), first)
    assert objective.counts["masks_evaluated"] == evaluated


def test_bad_masks_and_settings_are_refused_clearly(toy, ioi):
    lm, graph = toy
    runs = graph.cache_runs(ioi.clean_ids, ioi.corrupted_ids)
    with pytest.raises(SaelabError, match=r"edge masks must have shape \[n_nodes \+ 1, n_nodes\] = \(17, 16\)"):
        graph.end_logits(runs, torch.zeros(16, 16), ioi.end)
    mask = graph.empty_mask()
    mask[-1, 0] = 1.0
    with pytest.raises(SaelabError, match="corrupted run's head outputs"):
        graph.run(ioi.clean_ids, mask)
    with pytest.raises(SaelabError, match="same shape"):
        graph.cache_runs(ioi.clean_ids, ioi.corrupted_ids[:, :-1])
    with pytest.raises(ConfigError, match="candidates=0"):
        ACDCConfig(candidates=0)
    with pytest.raises(ConfigError, match="batch_tokens=0"):
        ACDCConfig(batch_tokens=0)
    with pytest.raises(ConfigError, match="engine='fastest'.*fast, plain"):
        ACDCConfig(engine="fastest")


def test_speedup_line_names_the_ratio_the_threshold_and_both_aucs():
    rows = [{"task": "ioi", "method": "dsae", "auc": 0.9, "runtime_s": 0.05, "sweep_runtime_s": ""},
            {"task": "ioi", "method": "acdc", "auc": 0.8, "runtime_s": 6.0, "sweep_runtime_s": 30.0}]
    results = {"ioi": {"acdc": {"threshold": 0.01, "metric": "kl", "n_prompts": 100, "engine": "fast",
                                "sweep_thresholds": [0.001, 0.01, 0.1]}}}
    entry = speedups(rows, results)["ioi"]
    assert entry["acdc_over_dsae"] == 120.0 and entry["acdc_sweep_over_dsae"] == 600.0
    assert entry["dsae_auc"] == 0.9 and entry["acdc_auc"] == 0.8
    line = entry["line"]
    assert line.startswith("ioi: dsae is 120x faster than one ACDC run")
    assert "tau=0.01" in line and "kl" in line and "100 prompt pairs" in line
    assert "AUC dsae 0.900 vs ACDC 0.800" in line and "3-threshold sweep" in line
    assert line.endswith("dsae's AUC is at least ACDC's")
    rows[1]["runtime_s"], rows[0]["auc"] = 0.01, 0.5  # ACDC faster and better: said so
    line = speedups(rows, results)["ioi"]["line"]
    assert line.startswith("ioi: one ACDC run is 5x faster than dsae")
    assert line.endswith("dsae's AUC is 0.300 lower: not at equal quality")
    assert speedups(rows[:1]) == {}
