"""SAEBench core-eval JSON from ``saelab eval``: SAEBench's field names and types, values equal to
saelab's metrics, misc metrics against direct computations, and ``saelab eval --format saebench``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from saelab.cli import main
from saelab.eval import EvalConfig, evaluate_sae
from saelab.eval.saebench import (
    CORE_EVAL_CONFIG,
    CORE_METRICS,
    NOT_MEASURED,
    OUTPUT_FIELDS,
    UNDEFINED,
    core_eval_output,
    max_cosine,
)
from saelab.models import load_model
from saelab.models.tiny import torch_threads
from saelab.sae import SAEConfig, make_sae, save_sae

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def evaluated():
    lm = load_model("toy")
    torch.manual_seed(0)
    sae = make_sae(SAEConfig("topk", d_in=128, d_sae=64, k=8, hook_name=HOOK, name="toy-topk"))
    result = evaluate_sae(lm, sae, "toy:5", EvalConfig(tokens=256, context_size=32, progress=False))
    return lm, sae, result


def check_types(output: dict) -> None:
    """Field names and types as SAEBench's ``CoreEvalOutput`` dataclasses declare them."""
    assert tuple(output) == OUTPUT_FIELDS and output["eval_type_id"] == "core"
    assert isinstance(output["eval_id"], str) and isinstance(output["datetime_epoch_millis"], int)
    assert 0 <= output["datetime_epoch_millis"] <= 9999999999999
    assert output["eval_result_details"] == [] and output["sae_bench_commit_hash"] is None
    for name, value in output["eval_config"].items():
        assert isinstance(value, CORE_EVAL_CONFIG[name]), name
    assert set(output["eval_result_metrics"]) == set(CORE_METRICS)
    for group, values in output["eval_result_metrics"].items():
        for name, value in values.items():
            kind = CORE_METRICS[group][name][0]
            assert type(value) is kind and (kind is int or math.isfinite(value)), f"{group}.{name}"
    json.dumps(output, allow_nan=False)


def test_structure_types_and_values(evaluated):
    _, sae, result = evaluated
    m = result.metrics
    out = core_eval_output(m, result.latent_frequency, sae, batch_size=16, llm_dtype="float32")
    check_types(out)
    metrics = out["eval_result_metrics"]
    assert metrics["model_behavior_preservation"] == {
        "kl_div_score": m["kl_recovered"], "kl_div_with_ablation": m["kl_zero_ablation"], "kl_div_with_sae": m["kl"]}
    assert metrics["model_performance_preservation"] == {
        "ce_loss_score": m["ce_loss_recovered"], "ce_loss_with_ablation": m["ce_zero_ablation"],
        "ce_loss_with_sae": m["ce_spliced"], "ce_loss_without_sae": m["ce_clean"]}
    assert metrics["reconstruction_quality"] == {"explained_variance": m["explained_variance"], "mse": m["mse"],
                                                 "cossim": m["cosine"]}
    assert metrics["shrinkage"] == {"l2_ratio": m["l2_ratio"],
                                    "relative_reconstruction_bias": m["relative_reconstruction_bias"]}
    assert metrics["sparsity"] == {"l0": m["l0"], "l1": m["l1"]} and m["l0"] == pytest.approx(8.0)
    assert metrics["token_stats"] == {"total_tokens_eval_reconstruction": m["n_tokens"],
                                      "total_tokens_eval_sparsity_variance": m["n_tokens"]}
    # SAEBench's score is the zero-ablation recovered fraction
    assert metrics["model_performance_preservation"]["ce_loss_score"] == pytest.approx(
        (m["ce_zero_ablation"] - m["ce_spliced"]) / (m["ce_zero_ablation"] - m["ce_clean"]))
    config = out["eval_config"]
    assert config["model_name"] == "toy" and config["dataset"] == "toy:5" and config["context_size"] == 32
    assert config["batch_size_prompts"] == 16 and config["exclude_special_tokens_from_reconstruction"] is True
    assert out["sae_cfg_dict"]["d_sae"] == 64 and out["sae_cfg_dict"]["metadata"]["hook_name"] == HOOK
    unstructured = out["eval_result_unstructured"]
    assert unstructured["saelab_metrics"] == m and set(NOT_MEASURED) <= set(unstructured["not_measured"])
    assert "shrinkage.l2_norm_in" in unstructured["not_measured"] and unstructured["undefined"] == []


def test_misc_metrics_against_direct_computation(evaluated):
    _, sae, result = evaluated
    freq = result.latent_frequency
    misc = core_eval_output(result.metrics, freq, sae)["eval_result_metrics"]["misc_metrics"]
    assert misc["frac_alive"] == pytest.approx(1 - result.metrics["dead_fraction"])
    assert misc["freq_over_1_percent"] == pytest.approx(float((freq > 0.01).double().mean()))
    assert misc["normalized_freq_over_10_percent"] == pytest.approx(float(freq[freq > 0.1].sum() / freq.sum()))
    dec = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1)
    cos = dec @ dec.T - 2 * torch.eye(64)                          # self-similarity out of the max
    assert misc["average_max_decoder_cosine_sim"] == pytest.approx(float(cos.max(1).values.mean()), abs=1e-6)
    enc = torch.nn.functional.normalize(sae.W_enc.detach().T, dim=1)
    cos = enc @ enc.T - 2 * torch.eye(64)
    assert misc["average_max_encoder_cosine_sim"] == pytest.approx(float(cos.max(1).values.mean()), abs=1e-6)
    assert torch.allclose(max_cosine(sae.W_dec, chunk=7), max_cosine(sae.W_dec))   # chunking changes nothing
    only = core_eval_output(result.metrics)["eval_result_metrics"]["misc_metrics"]
    assert set(only) == {"frac_alive"}                             # without frequencies and weights


def test_undefined_ratios_are_written_as_minus_one(evaluated):
    _, _, result = evaluated
    metrics = {**result.metrics, "ce_loss_recovered": None, "explained_variance": None}
    out = core_eval_output(metrics, eval_id="fixed", epoch_millis=1234)
    check_types(out)
    assert out["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"] == UNDEFINED
    assert out["eval_result_metrics"]["reconstruction_quality"]["explained_variance"] == UNDEFINED
    assert out["eval_result_unstructured"]["undefined"] == ["model_performance_preservation.ce_loss_score",
                                                            "reconstruction_quality.explained_variance"]
    assert (out["eval_id"], out["datetime_epoch_millis"], out["sae_cfg_dict"]) == ("fixed", 1234, None)


def test_eval_format_saebench_cli(evaluated, tmp_path, capsys):
    _, sae, _ = evaluated
    folder = tmp_path / "sae"
    save_sae(sae, folder, extra_meta={"model_name": "toy"})
    common = [str(folder), "--tokens", "128", "--context-size", "32", "--source", "toy:5", "--threads", "1",
              "--no-progress", "--no-error-check"]
    with pytest.raises(SystemExit) as info:
        main(["eval", *common, "--json"])
    plain = json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit) as info:
        main(["eval", *common, "--format", "saebench", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err
    out = json.loads(captured.out)
    check_types(out)
    assert out["eval_result_metrics"]["sparsity"]["l0"] == pytest.approx(plain["l0"])
    assert out["eval_result_metrics"]["model_behavior_preservation"]["kl_div_score"] == pytest.approx(
        plain["kl_recovered"])
    assert out["eval_config"]["llm_dtype"] == "float32"
    written = json.loads((tmp_path / "out" / "toy-topk_eval_results.json").read_text())
    assert written == out and (tmp_path / "out" / "eval.json").is_file()
