"""The feature-patching experiment: bases, greedy invariants, CLI, steering CLI, demo stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saelab.causal import (
    PatchingConfig,
    SAEBasis,
    fit_ica,
    fit_pca,
    neuron_basis,
    random_rotation,
    run_patching_experiment,
    task_prompts,
)
from saelab.causal.attribution_search import attribution_curve, prefix_ladder
from saelab.causal.patching_experiment import BasisPatcher, PatchingRun, _removal_kls, greedy_curve
from saelab.cli import main
from saelab.errors import ConfigError
from saelab.models import load_model
from saelab.report import Section
from saelab.sae import SAEConfig, make_sae, save_sae

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def toy(one_torch_thread):
    lm = load_model("toy")
    return lm, task_prompts(lm, "ioi", 3, seed=0)


def test_prefix_ladder_is_geometric_and_ends_at_n():
    assert prefix_ladder(0, 8) == [] and prefix_ladder(3, 8) == [1, 2, 3]
    ladder = prefix_ladder(640, 16)
    assert ladder[0] == 1 and ladder[-1] == 640 and len(ladder) <= 17 and ladder == sorted(set(ladder))


def test_bases_round_trip_and_are_orthonormal_where_claimed():
    x = torch.randn(400, 6) @ torch.randn(6, 6) + 2.0
    for basis in (fit_pca(x), fit_ica(x), neuron_basis(6), random_rotation(6, seed=3)):
        torch.testing.assert_close(basis.decode(basis.encode(x)), x, atol=1e-3, rtol=1e-3)
    q = random_rotation(6, seed=3).encoder
    torch.testing.assert_close(q.T @ q, torch.eye(6), atol=1e-5, rtol=0)
    pca = fit_pca(x)
    variances = pca.encode(x).var(0)
    assert torch.all(variances[:-1] >= variances[1:])


def test_full_patch_reaches_the_counterfactual_and_greedy_stops_where_it_should(toy):
    lm, prompts = toy
    assert prompts.answer_ids is not None and prompts.n == 3
    run = PatchingRun(lm, HOOK, prompts, chunk=16)
    assert run.kl_unpatched > 0.5
    x = torch.stack([run.x_clean, run.x_cf])
    kls = run.kl_of_values(x)
    assert kls[0] == pytest.approx(run.kl_unpatched, rel=1e-4) and kls[1] < 1e-5
    patcher = BasisPatcher(run, neuron_basis(lm.d_model))
    thresholds = np.array([1e-3, 1e-1])
    curve = greedy_curve(patcher, thresholds)
    assert curve.points[0]["n_patched"] == lm.d_model and curve.kl_all_patched < 1e-5
    counts = [p["n_patched"] for p in curve.points]
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
    final = curve.points[-1]
    # rebuild the final set: re-running the greedy is deterministic, so the removal test holds on its result
    patched = _final_set(patcher, thresholds)
    assert int(patched.sum()) == final["n_patched"]
    _, removal = _removal_kls(patcher, patched)
    assert float((removal - final["kl"]).min()) >= thresholds[-1] - 1e-6  # nothing left removable below tau


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.2.hook_resid_pre", HOOK])
def test_skipping_the_blocks_below_a_residual_hook_changes_no_kl(toy, hook):
    """Patched runs at a residual hook skip the blocks below it; the KL equals the full forward's."""
    lm, prompts = toy
    run = PatchingRun(lm, hook, prompts, chunk=16)
    assert run.start > 0
    x = run.x_clean[None] + 0.5 * torch.randn(2, *run.x_clean.shape, generator=torch.Generator().manual_seed(0))
    fast = run.kl_of_values(x)
    run.start, (run.keep_kwargs, run.final_index) = 0, run._logits_to_keep()
    torch.testing.assert_close(fast, run.kl_of_values(x), atol=1e-4, rtol=1e-4)
    assert float(fast.min()) > 0


def test_mask_gradient_matches_a_finite_difference(toy):
    lm, prompts = toy
    patcher = BasisPatcher(PatchingRun(lm, HOOK, prompts), neuron_basis(lm.d_model))
    mask = patcher.differing.clone()
    mask[::3] = False
    kl, grad = patcher.kl_and_gradient(mask)
    direction = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)) * 0.01
    m = mask.float()
    up, down = patcher.kl(torch.stack([m + direction, m - direction])).tolist()
    assert kl == pytest.approx(float(patcher.kl(mask[None])[0]), rel=1e-5)
    assert (up - down) / 2 == pytest.approx(float(grad @ direction), rel=0.05, abs=1e-5)


def test_attribution_search_reports_exact_kls_and_stays_near_the_greedy(toy):
    lm, prompts = toy
    run = PatchingRun(lm, HOOK, prompts)
    thresholds = np.logspace(-3, 0, 6)
    greedy = greedy_curve(BasisPatcher(run, neuron_basis(lm.d_model)), thresholds)
    patcher = BasisPatcher(run, neuron_basis(lm.d_model))
    measured, kl = [], patcher.kl

    def spy(masks):
        out = kl(masks)
        measured.extend(zip(masks.float().sum(-1).round().long().tolist(), out.tolist(), strict=True))
        return out

    patcher.kl = spy
    curve = attribution_curve(patcher, thresholds)
    counts = [p["n_patched"] for p in curve.points]
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
    for point in curve.points:  # every point is a measured set: its count and exact KL were seen together
        assert any(n == point["n_patched"] and abs(k - point["kl"]) < 1e-6 for n, k in measured), point
    assert curve.forward_sets < greedy.forward_sets
    level = 0.5 * run.kl_unpatched
    assert curve.fewest_reaching(level) <= 2 * greedy.fewest_reaching(level)


def _final_set(patcher, thresholds):
    from saelab.causal import patching_experiment as pe

    captured = {}
    original = pe._remove_in_order

    def spy(patcher_, patched, *args):
        captured["patched"] = patched
        return original(patcher_, patched, *args)

    pe._remove_in_order = spy
    try:
        greedy_curve(patcher, thresholds)
    finally:
        pe._remove_in_order = original
    return captured["patched"]


def test_experiment_summary_counts_fewest_components(toy):
    lm, prompts = toy
    sae = make_sae(SAEConfig("relu", d_in=lm.d_model, d_sae=64, hook_name=HOOK),
                   generator=torch.Generator().manual_seed(0))
    cfg = PatchingConfig(n_thresholds=3, min_threshold=1e-3, max_threshold=0.3, kl_fractions=(0.5, 0.1))
    result = run_patching_experiment(lm, HOOK, prompts, {"sae": SAEBasis(sae), "neuron": neuron_basis(lm.d_model)},
                                     cfg, progress=False)
    assert set(result["curves"]) == {"sae", "neuron"}
    for name, curve in result["curves"].items():
        for key, level in result["kl_levels"].items():
            reached = [p["n_patched"] for p in curve["points"] if p["kl"] <= level]
            assert result["fewest_components"][name][key] == (min(reached) if reached else None)
    with pytest.raises(ConfigError, match="max_threshold"):
        PatchingConfig(min_threshold=0.1, max_threshold=0.01)


def test_cli_patching_steer_and_attribution(toy, tmp_path, capsys):
    lm, _ = toy
    sae = make_sae(SAEConfig("relu", d_in=lm.hook_d_in("blocks.3.attn.hook_z"), d_sae=32,
                             hook_name="blocks.3.attn.hook_z"), generator=torch.Generator().manual_seed(0))
    save_sae(sae, tmp_path / "sae")
    main_args = ["causal", "patching", "--model", "toy", "--task", "ioi", "--n-prompts", "2", "--thresholds", "2",
                 "--bases", "sae,pca,neuron", "--fit-windows", "8", "--sae", str(tmp_path / "sae"), "--json",
                 "--no-progress", "--threads", "1", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main(main_args)
    assert exit_info.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["hook"] == "blocks.3.attn.hook_z" and set(printed["curves"]) == {"sae", "pca", "neuron"}
    assert (tmp_path / "out" / "patching.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "patching.json").read_text())["kl_unpatched"] == printed["kl_unpatched"]
    with pytest.raises(SystemExit) as exit_info:
        main([*main_args[:-1], str(tmp_path / "attribution"), "--search", "attribution", "--bases", "pca"])
    assert exit_info.value.code == 0
    searched = json.loads(capsys.readouterr().out)
    assert searched["search"] == "attribution" and searched["curves"]["pca"]["points"][-1]["n_patched"] >= 0

    with pytest.raises(SystemExit) as exit_info:
        main(["steer", "--model", "toy", "--sae", str(tmp_path / "sae"), "--feature", "3", "--scale", "0",
              "--prompt", "When Mary and John went to the", "--max-new-tokens", "3", "--json"])
    steered = json.loads(capsys.readouterr().out)
    assert exit_info.value.code == 0 and steered["steered_ids"] == steered["baseline_ids"]

    with pytest.raises(SystemExit) as exit_info:
        main(["causal", "attribution", "--model", "toy", "--sae", str(tmp_path / "sae"), "--n-prompts", "2",
              "--check", "4", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert exit_info.value.code == 0 and report["metric"] == "logit_diff" and report["check_cells"] == 4

    for bad, message in ((["--hook", "blocks.9.hook_resid_post"], "blocks.9"), (["--bases", "sae,svd"], "svd"),
                         (["--task", "nope"], "nope")):
        with pytest.raises(SystemExit) as exit_info:
            main([*main_args[:-2], "--out", str(tmp_path / "bad"), *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_causal_demo_stage_small(toy, tmp_path):
    from saelab.causal import causal_demo_stage

    lm, _ = toy
    sae = make_sae(SAEConfig("jumprelu", d_in=lm.hook_d_in("blocks.3.attn.hook_z"), d_sae=64,
                             hook_name="blocks.3.attn.hook_z"), generator=torch.Generator().manual_seed(0))
    section = Section("Causal")
    summary = causal_demo_stage(lm, sae, tmp_path / "causal", section, small=True)
    assert json.loads(json.dumps(summary)) == summary
    assert set(summary["fewest_components"]) == {"sae", "pca", "ica", "neuron", "random_rotation"}
    assert len(summary["steering"]["steered_ids"]) == 6
    assert "data:image/png;base64" in section.render()


def test_io_counterfactual_swaps_the_indirect_object_and_the_prediction(toy):
    lm, _ = toy
    from saelab.errors import SaelabError
    from saelab.toy.tasks import generate_pairs

    prompts = task_prompts(lm, "ioi", 6, seed=2, counterfactual="io")
    clean_pairs = generate_pairs("ioi", 6, seed=2)
    assert prompts.n == 6 and prompts.dropped == 0
    differs = prompts.clean_ids != prompts.counterfactual_ids
    io_positions = torch.tensor([p.clean.positions["IO"] + 1 for p in clean_pairs])  # BOS first
    assert differs.sum(1).tolist() == [1] * 6 and differs.float().argmax(1).tolist() == io_positions.tolist()
    rows = torch.arange(prompts.n)
    with torch.no_grad():
        clean_top = lm.model(prompts.clean_ids).logits[rows, prompts.final].argmax(-1)
        cf_top = lm.model(prompts.counterfactual_ids).logits[rows, prompts.final].argmax(-1)
    assert torch.equal(clean_top, prompts.answer_ids)      # the clean prompt predicts IO ...
    new_io = prompts.counterfactual_ids[rows, io_positions]
    assert torch.equal(cf_top, new_io)                     # ... the counterfactual its new name
    with pytest.raises(SaelabError, match="counterfactual 'io'"):
        task_prompts(lm, "greater_than", 2, counterfactual="io")
    with pytest.raises(ConfigError, match="counterfactual"):
        task_prompts(lm, "ioi", 2, counterfactual="swap")
