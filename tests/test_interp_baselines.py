"""Autointerp baselines: neurons, random directions and PCA as SAE-like coders at an SAE's hook, scored
by the unchanged autointerp; on the toy world a trained SAE's latents beat random directions."""

import json

import pytest
import torch

from saelab.errors import ConfigError
from saelab.interp.baselines import (
    BaselineConfig,
    build_baseline,
    fit_activations,
    format_rows,
    sae_density,
    score_rows,
)
from saelab.sae import SAEConfig, make_sae

HOOK = "blocks.1.hook_resid_post"


def reference(d_in=16, d_sae=32, k=4):
    torch.manual_seed(0)
    return make_sae(SAEConfig("topk", d_in=d_in, d_sae=d_sae, k=k, hook_name=HOOK))


def anisotropic(n=2000, d=16, seed=1):
    """[n, d] activations with a mean offset and one dominant direction."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.2, 1.0, d)
    return x + 3.0 * torch.randn(n, 1, generator=g) * torch.ones(d) / d ** 0.5 + 0.5


def test_neurons_with_both_signs_are_the_identity_coder_interleaved():
    sae = reference()
    base = build_baseline(sae, BaselineConfig("neurons"))
    assert base.sae.cfg.d_sae == 32 and base.sae.cfg.hook_name == HOOK
    assert base.labels[:4] == ["+x[0]", "-x[0]", "+x[1]", "-x[1]"]
    x = anisotropic()
    acts = base.sae.encode(x)
    assert torch.equal(acts[:, 0::2], x.relu()) and torch.equal(acts[:, 1::2], (-x).relu())
    torch.testing.assert_close(base.sae.reconstruct(x), x)
    positive = build_baseline(sae, BaselineConfig("neurons", signs="positive"))
    assert positive.sae.cfg.d_sae == 16 and torch.equal(positive.sae.encode(x), x.relu())
    assert base.describe([1, 2])["units"] == {"1": "-x[0]", "2": "+x[1]"}


def test_random_directions_are_seeded_unit_vectors_and_give_the_positive_part():
    sae = reference()
    a = build_baseline(sae, BaselineConfig("random", n_units=40, seed=3))
    b = build_baseline(sae, BaselineConfig("random", n_units=40, seed=3))
    c = build_baseline(sae, BaselineConfig("random", n_units=40, seed=4))
    assert torch.equal(a.sae.W_dec, b.sae.W_dec) and not torch.equal(a.sae.W_dec, c.sae.W_dec)
    torch.testing.assert_close(a.sae.W_dec.norm(dim=1), torch.ones(40))
    x = anisotropic()
    torch.testing.assert_close(a.sae.encode(x), (x @ a.sae.W_dec.T).relu())
    assert a.info["signs"] == "positive" and a.info["n_units"] == 40 and not a.info["centred"]
    assert build_baseline(sae, BaselineConfig("random")).sae.cfg.d_sae == 16      # default d_in


def test_pca_units_are_centred_orthonormal_components_by_decreasing_variance():
    sae = reference()
    x = anisotropic()
    base = build_baseline(sae, BaselineConfig("pca"), x)
    comps = base.sae.W_dec[0::2]                                                   # the + units
    torch.testing.assert_close(comps @ comps.T, torch.eye(comps.shape[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(base.sae.W_dec[1::2], -comps)
    projections = (x - x.mean(0)) @ comps.T
    variances = projections.var(0)
    assert torch.all(variances[:-1] >= variances[1:] - 1e-4)
    torch.testing.assert_close(base.sae.encode(x)[:, 0::2], projections.relu(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(base.sae.reconstruct(x), x, atol=1e-4, rtol=1e-4)  # both signs: exact
    assert base.labels[0].startswith("+pc[0] (") and base.info["centred"] and base.info["fit_tokens"] == 2000


def test_density_thresholds_fire_on_the_requested_fraction_and_sae_density_is_l0_over_width():
    sae = reference(k=4)
    x = anisotropic()
    base = build_baseline(sae, BaselineConfig("random", n_units=24, density=0.05), x)
    rates = (base.sae.encode(x) > 0).float().mean(0)
    assert torch.all(rates <= 0.05 + 1e-9) and torch.all(rates >= 0.04)
    assert sae_density(sae, x) == pytest.approx(4 / 32)
    matched = build_baseline(sae, BaselineConfig("neurons", density="sae"), x)
    assert matched.info["target_density"] == pytest.approx(0.125)
    assert float((matched.sae.encode(x) > 0).float().mean()) == pytest.approx(0.125, abs=0.01)
    values = matched.sae.encode(x)
    fired = values[:, 0] > 0
    assert torch.equal(values[fired, 0], x[fired, 0])                               # values kept (JumpReLU)


def test_bad_baseline_settings_are_refused_with_what_is_accepted():
    with pytest.raises(ConfigError, match="baseline='ica'"):
        BaselineConfig("ica")
    with pytest.raises(ConfigError, match="random directions only"):
        BaselineConfig("neurons", n_units=10)
    with pytest.raises(ConfigError, match="'often'"):
        BaselineConfig("random", density="often")
    with pytest.raises(ConfigError, match="baseline density=0"):
        BaselineConfig("random", density=0)
    with pytest.raises(ConfigError, match="signs='negative'"):
        BaselineConfig("pca", signs="negative")
    with pytest.raises(ConfigError, match="needs activations"):
        build_baseline(reference(), BaselineConfig("pca"))
    with pytest.raises(ConfigError, match=r"expected \[n_tokens >= 2, d_in=16\]"):
        build_baseline(reference(), BaselineConfig("random", density=0.1), torch.zeros(10, 8))


def test_score_rows_give_means_standard_errors_and_the_mix():
    def result(d, f, s, silent):
        return {"detection": d, "fuzzing": f, "simulation": s, "density": 0.1, "n_non_activating": silent,
                "error": None if d is not None else "never fired"}

    rows = score_rows({"a": {"results": [result(1.0, 0.5, 0.2, 10), result(0.5, 0.5, 0.4, 0),
                                         result(None, None, None, 0)]}})
    row = rows[0]
    assert row["detection"] == 0.75 and row["n_detection"] == 2 and row["n_errors"] == 1
    assert row["detection_se"] == pytest.approx(0.25) and row["fuzzing_se"] == 0.0
    assert row["mean_n_non_activating"] == pytest.approx(10 / 3)
    assert "| a | 0.750 ± 0.250 (n=2) |" in format_rows(rows)


# ----------------------------------------------------------------------------- the toy world


@pytest.fixture(scope="module")
def toy_sae(tmp_path_factory, one_torch_thread):
    """A TopK SAE (256 latents, k 8) trained on 150k tokens of the toy model's layer-1 residual stream."""
    from saelab.causal.quick_sae import SAETrainSpec, default_sae
    from saelab.models import load_model

    out = tmp_path_factory.mktemp("toy_sae")
    _, note = default_sae(load_model("toy"), HOOK, SAETrainSpec(d_sae=256, k=8, tokens=150_000, batch_size=512,
                                                                dead_window_tokens=50_000), out, progress=False)
    return note["path"]


def autointerp(capsys, folder, out, *extra):
    from saelab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["autointerp", str(folder), "--features", "0-63", "--tokens", "12000", "--threads", "1",
              "--no-progress", "--json", "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    return json.loads(captured.out)


def test_toy_sae_latents_score_above_random_directions_and_neurons_are_reported(toy_sae, tmp_path, capsys):
    reports = {"sae": autointerp(capsys, toy_sae, tmp_path / "sae"),
               "neurons": autointerp(capsys, toy_sae, tmp_path / "neurons", "--baseline", "neurons"),
               "random": autointerp(capsys, toy_sae, tmp_path / "random", "--baseline", "random"),
               "random_matched": autointerp(capsys, toy_sae, tmp_path / "rm", "--baseline", "random",
                                            "--baseline-density", "sae")}
    rows = {r["units"]: r for r in score_rows(reports)}
    print(format_rows(list(rows.values())))
    assert rows["sae"]["n_detection"] >= 30 and rows["random"]["n_detection"] >= 60
    assert rows["sae"]["detection"] > rows["random"]["detection"] + 0.05
    assert rows["sae"]["detection"] > rows["random_matched"]["detection"] + 0.03
    assert rows["neurons"]["n_detection"] == 64 and rows["neurons"]["detection"] is not None
    setup = reports["neurons"]["setup"]["baseline"]
    assert setup["kind"] == "neurons" and setup["signs"] == "both" and setup["n_units"] == 256
    assert setup["units"]["0"] == "+x[0]" and setup["units"]["63"] == "-x[31]" and setup["density"] is None
    matched = reports["random_matched"]["setup"]["baseline"]
    assert matched["target_density"] == pytest.approx(8 / 256, rel=0.01)
    assert rows["random_matched"]["mean_density"] < 0.1 < rows["random"]["mean_density"]
    assert "baseline" not in reports["sae"]["setup"]


def test_cli_refuses_baseline_flags_without_a_baseline_and_features_beyond_its_units(toy_sae, tmp_path, capsys):
    from saelab.cli import main

    cases = [(["--baseline-density", "0.01"], "--baseline-density need --baseline"),
             (["--baseline", "neurons", "--baseline-units", "8"], "random directions only"),
             (["--baseline", "random", "--baseline-density", "rare"], "--baseline-density='rare'"),
             (["--baseline", "neurons", "--features", "250-300"], "--baseline neurons has 256 units")]
    for extra, message in cases:
        args = ["autointerp", toy_sae, "--features", "0-3", "--tokens", "2000", "--no-progress",
                "--out", str(tmp_path / "x")]
        with pytest.raises(SystemExit) as exit_info:
            main(args + extra)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_fit_activations_are_the_sites_values_at_ordinary_tokens():
    import numpy as np

    from saelab.data.packing import PackingConfig, iter_windows
    from saelab.data.sources import ToySource
    from saelab.models import load_model

    lm = load_model("toy")
    x = fit_activations(lm, HOOK, ToySource(seed=0), 200, context_size=64)       # 4 windows
    stream = iter_windows(ToySource(seed=0), lm.tokenizer, PackingConfig(64), lm.bos_token_id, lm.eos_token_id)
    windows = np.stack([next(stream) for _ in range(4)])
    _, cache = lm.run_with_cache(lm.as_input_ids(windows), [HOOK])
    ordinary = torch.as_tensor(~np.isin(windows, lm.special_token_ids))
    assert int((~ordinary).sum()) > 0 and x.shape == (int(ordinary.sum()), 128)
    torch.testing.assert_close(x, cache[HOOK][ordinary].float())
    every = fit_activations(lm, HOOK, ToySource(seed=0), 200, context_size=64, exclude_special_tokens=False)
    assert every.shape == (256, 128)
