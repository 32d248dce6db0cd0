"""The SAE beside its patching curve: FVU on the prompts, the KL floor, what SAE it is; the default SAE."""

from __future__ import annotations

import pytest
import torch

from saelab.causal import FitConfig, PatchingConfig, feature_patching, task_prompts
from saelab.causal.feature_patching import describe_sae_line, fewest_components_table
from saelab.causal.quick_sae import SAETrainSpec
from saelab.errors import ConfigError, SaelabError
from saelab.models import load_model
from saelab.sae import SAEConfig, load_sae, make_sae, save_sae
from saelab.splicing import flat_per_token

HOOK = "blocks.2.hook_resid_post"
FEW = PatchingConfig(n_thresholds=2, min_threshold=1e-2, max_threshold=0.3, kl_fractions=(0.5, 0.01))


@pytest.fixture(scope="module")
def toy(one_torch_thread):
    lm = load_model("toy")
    return lm, task_prompts(lm, "ioi", 3, seed=0, counterfactual="io")


def _fvu_and_floor(lm, sae, prompts):
    """Independently: the SAE's FVU over both runs' real positions and the KL with every latent patched
    (hook value x_cf + e_clean - e_cf)."""
    with torch.no_grad():
        _, clean = lm.run_with_cache(prompts.clean_ids, [HOOK], attention_mask=prompts.mask)
        cf_logits, cf = lm.run_with_cache(prompts.counterfactual_ids, [HOOK], attention_mask=prompts.mask)
        x_clean, x_cf = flat_per_token(clean[HOOK]).float(), flat_per_token(cf[HOOK]).float()
        real = prompts.mask.bool()
        x = torch.cat([x_clean[real], x_cf[real]])
        fvu = float((x - sae.reconstruct(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        value = x_cf + (x_clean - sae.reconstruct(x_clean)) - (x_cf - sae.reconstruct(x_cf))
        value = torch.where(real[..., None], value, x_clean)
        logits = lm.run_with_hooks(prompts.clean_ids, {HOOK: lambda v: value.reshape(v.shape)},
                                   attention_mask=prompts.mask)
        rows = torch.arange(prompts.n)
        p = cf_logits[rows, prompts.final].log_softmax(-1)
        q = logits[rows, prompts.final].log_softmax(-1)
    return fvu, float((p.exp() * (p - q)).sum(-1).mean())


def test_given_sae_folder_reports_fvu_floor_and_what_it_is(toy, tmp_path, monkeypatch):
    lm, prompts = toy
    sae = make_sae(SAEConfig("topk", d_in=lm.d_model, d_sae=96, hook_name=HOOK, k=8),
                   generator=torch.Generator().manual_seed(0))
    save_sae(sae, tmp_path / "topk")
    loaded = load_sae(tmp_path / "topk")
    figures = []
    from saelab.causal import plots

    monkeypatch.setattr(plots, "save_png", lambda fig, path: figures.append(fig) or path)
    result = feature_patching(lm, HOOK, prompts, tmp_path / "out", sae=loaded, bases=("sae", "pca"), cfg=FEW,
                              fit=FitConfig(n_windows=8), progress=False, sae_source=str(tmp_path / "topk"))
    note = result["sae"]
    assert (note["source"], note["path"], note["architecture"], note["d_sae"], note["k"]) == (
        "given", str(tmp_path / "topk"), "topk", 96, 8)
    fvu, floor = _fvu_and_floor(lm, loaded, prompts)
    assert note["fvu_prompts"] == pytest.approx(fvu, rel=1e-4) and note["l0_prompts"] == pytest.approx(8.0)
    assert note["kl_floor"] == pytest.approx(floor, rel=1e-3, abs=1e-5)
    assert result["curves"]["sae"]["kl_floor"] == result["curves"]["sae"]["points"][0]["kl"] == note["kl_floor"]
    assert floor > 0.01 * result["kl_unpatched"]  # a random SAE: the 1% level is out of its reach
    assert result["below_floor"]["sae"] == note["below_floor"] == [
        key for key, level in result["kl_levels"].items() if level < floor] and "0.01" in note["below_floor"]
    assert result["curves"]["pca"]["fvu_prompts"] < 1e-6 and result["curves"]["pca"]["kl_floor"] < 1e-4
    assert result["below_floor"]["pca"] == []
    rows = {row["basis"]: row for row in fewest_components_table(result)}
    level = f"KL<={0.01 * result['kl_unpatched']:.3g}"
    assert rows["sae"][level] == "below floor" and rows["sae"]["kl_floor"] == round(floor, 4)
    assert isinstance(rows["pca"][level], int) and rows["sae"]["fvu"] == round(fvu, 4)
    line = describe_sae_line(note)
    assert "topk, 96 latents, k=8" in line and "given (" in line and f"{note['kl_floor']:.4g}" in line
    (ax,) = figures[0].axes
    labels = [h.get_label() for h in ax.get_lines()]
    assert any(label.startswith("sae floor") for label in labels) and not any("pca floor" in x for x in labels)
    assert "SAE: topk, 96 latents, k=8 (given)" in ax.get_title()


def test_default_sae_is_trained_once_reused_and_tied_to_its_model(toy, tmp_path, tiny_gpt2_with_toy_tokenizer):
    lm, prompts = toy
    spec = SAETrainSpec(d_sae=64, k=8, tokens=16_384, batch_size=256, dead_window_tokens=4096)
    fit = FitConfig(n_windows=8, sae=spec)
    first = feature_patching(lm, HOOK, prompts, tmp_path, bases=("sae",), cfg=FEW, fit=fit, progress=False)
    note = first["sae"]
    assert note["source"] == "trained" and note["train_tokens"] == 16_384 and note["architecture"] == "topk"
    assert note["path"] == str(tmp_path / "sae" / HOOK / spec.run_name / "saes" / "sae")
    assert note["fvu_fit"] < 0.5 and note["l0_fit"] == pytest.approx(8.0)  # it learned something in 64 steps
    again = feature_patching(lm, HOOK, prompts, tmp_path, bases=("sae",), cfg=FEW, fit=fit, progress=False)
    assert again["sae"]["source"] == "reused" and again["sae"]["fvu_prompts"] == note["fvu_prompts"]
    assert again["curves"]["sae"]["points"] == first["curves"]["sae"]["points"]
    assert SAETrainSpec(d_sae=64, k=8, tokens=32_768).run_name != spec.run_name
    import shutil

    shutil.copytree(tmp_path / "sae" / HOOK, tmp_path / "sae" / "blocks.1.hook_resid_post")  # a misplaced folder
    with pytest.raises(SaelabError, match="holds an SAE of hook 'blocks.2.hook_resid_post', not 'blocks.1"):
        feature_patching(lm, "blocks.1.hook_resid_post", prompts, tmp_path, bases=("sae",), cfg=FEW, fit=fit,
                         progress=False)
    other = tiny_gpt2_with_toy_tokenizer
    with pytest.raises(SaelabError, match="trained on another model"):
        feature_patching(other, HOOK, task_prompts(other, "ioi", 2, templates="toy"), tmp_path, bases=("sae",),
                         cfg=FEW, fit=fit, progress=False)
    for bad, message in (({"architecture": "relu"}, "sae architecture"), ({"k": 65}, r"k=65 .* \[1, 64\]"),
                         ({"tokens": 0}, "sae tokens=0")):
        with pytest.raises(ConfigError, match=message):
            SAETrainSpec(**{"d_sae": 64, **bad})
    with pytest.raises(ConfigError, match="SAETrainSpec"):
        FitConfig(sae={"d_sae": 64})


def test_cli_without_sae_trains_names_and_reports_the_default_sae(toy, tmp_path, capsys):
    from saelab.cli import main

    args = ["causal", "patching", "--model", "toy", "--n-prompts", "2", "--thresholds", "2", "--bases", "sae,neuron",
            "--fit-windows", "8", "--sae-tokens", "8192", "--d-sae", "64", "--sae-k", "4", "--no-progress",
            "--threads", "1", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    printed = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "SAE: topk, 64 latents, k=4, 8,192 training tokens; trained here (" in printed
    assert "KL floor (all latents patched)" in printed and "kl_floor" in printed and "fvu" in printed
    run_name = SAETrainSpec(d_sae=64, k=4, tokens=8192).run_name
    assert (tmp_path / "sae" / HOOK / run_name / "saes" / "sae" / "cfg.json").exists()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--sae-arch", "relu"])
    assert exit_info.value.code == 2 and "relu" in capsys.readouterr().err
