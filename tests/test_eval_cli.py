"""``saelab eval|recovery|sweep`` on a tiny GPT-2 folder and an SAE trained on it, and their failure paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from saelab.cli import main
from saelab.models.tiny import tiny_model, torch_threads
from saelab.sae import SAEConfig, make_sae, save_sae

HOOK = "blocks.1.hook_resid_pre"
KEYS = ("l0", "mse", "fvu", "cosine", "ce_clean", "ce_spliced", "delta_loss", "ce_loss_recovered", "kl",
        "dead_fraction", "dense_fraction")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(model folder, SAE folder): a tiny GPT-2 with the toy tokenizer and a TopK SAE trained on it."""
    from saelab.data import ActivationStore, PackingConfig, StoreConfig, ToySource
    from saelab.models import load_model
    from saelab.toy.tokenizer import save_tokenizer
    from saelab.train import TrainConfig, train_saes

    root = tmp_path_factory.mktemp("eval_cli")
    model_dir = root / "tiny"
    tiny_model("gpt2", vocab_size=690).save_pretrained(model_dir)
    save_tokenizer(model_dir, model_max_length=64)
    lm = load_model(str(model_dir))
    store = ActivationStore(lm, ToySource(0), [HOOK], StoreConfig(packing=PackingConfig(32), batch_size=128,
                                                                  buffer_windows=16, normalization_tokens=256))
    train_saes([SAEConfig("topk", 32, 64, hook_name=HOOK, k=4, name="sae")], store,
               TrainConfig(steps=6, batch_size=128, lr=3e-3), root / "run", progress=False)
    return model_dir, root / "run" / "saes" / "sae"


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--threads", "1", "--no-progress"])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_eval_json_prints_one_object_with_the_metrics(folders, capsys, tmp_path):
    _, sae_dir = folders
    code, out, err = run_cli(capsys, "eval", str(sae_dir), "--tokens", "200", "--json", "--out", str(tmp_path / "o"))
    assert code == 0, err
    metrics = json.loads(out)
    for key in KEYS:
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["context_size"] == 32 and metrics["n_tokens"] >= 200  # the SAE folder's context size
    assert metrics["l0"] == pytest.approx(4.0) and metrics["error_term_max_logit_diff"] < 1e-4
    assert metrics["source"] == {"kind": "toy", "seed": 1000003, "prose_only": False}
    assert Path(metrics["files"]["density_histogram"]).read_bytes()[:4] == b"\x89PNG"
    assert json.loads(Path(metrics["files"]["json"]).read_text())["fvu"] == metrics["fvu"]


def test_eval_table_and_the_training_data_warning(folders, capsys):
    _, sae_dir = folders
    code, out, err = run_cli(capsys, "eval", str(sae_dir), "--tokens", "100", "--source", "toy:0", "--no-error-check")
    assert code == 0
    assert "| delta_loss |" in out and "| fvu |" in out and "ce_with_error" not in out
    assert "is the SAE's training data" in err


def test_recovery_json(folders, capsys):
    _, sae_dir = folders
    code, out, err = run_cli(capsys, "recovery", str(sae_dir), "--tokens", "300", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [s["kind"] for s in report["unit_sets"]] == ["sae", "neurons", "neurons", "random_directions"]
    assert report["unit_sets"][0]["n_units"] == 64 and 0 <= report["unit_sets"][0]["mean_best_f1"] <= 1


def test_an_sae_that_does_not_fit_the_model_is_a_clear_cli_error(folders, capsys, tmp_path):
    model_dir, _ = folders
    narrow = save_sae(make_sae(SAEConfig("relu", 16, 32, hook_name=HOOK)), tmp_path / "narrow",
                      extra_meta={"model_name": str(model_dir)})
    code, out, err = run_cli(capsys, "eval", str(narrow), "--json")
    assert code == 2 and out == ""
    assert "d_in=16" in err and "has 32" in err and "Traceback" not in err
    deep = save_sae(make_sae(SAEConfig("relu", 32, 32, hook_name="blocks.9.hook_resid_pre")), tmp_path / "deep")
    code, _, err = run_cli(capsys, "eval", str(deep), "--model", str(model_dir))
    assert code == 2 and "layer 9 does not exist" in err
    code, _, err = run_cli(capsys, "eval", str(deep))
    assert code == 2 and "records no model" in err


def test_sweep_refuses_bad_arguments_before_any_work(capsys, tmp_path):
    code, _, err = run_cli(capsys, "sweep", "--model", "toy", "--hook", HOOK, "--out", str(tmp_path), "--range", "topk")
    assert code == 2 and "write ARCH=VALUE" in err
    code, _, err = run_cli(capsys, "sweep", "--model", "toy", "--hook", HOOK, "--out", str(tmp_path),
                           "--eval-source", "toy:0")
    assert code == 2 and "held-out" in err
    code, _, err = run_cli(capsys, "sweep", "--model", "toy", "--hook", HOOK, "--out", str(tmp_path), "--archs", "x")
    assert code == 2 and "archs[]='x' is not accepted" in err


def test_eval_warns_when_the_recorded_model_fingerprint_differs(folders, capsys, tmp_path):
    from saelab.sae import load_sae

    model_dir, sae_dir = folders
    moved = save_sae(load_sae(sae_dir), tmp_path / "moved",
                     extra_meta={"model_name": str(model_dir), "model_fingerprint": "0" * 64, "context_size": 32})
    code, out, err = run_cli(capsys, "eval", str(moved), "--tokens", "60", "--json", "--no-error-check")
    assert code == 0 and "other weights" in err
    assert any("other weights" in w for w in json.loads(out)["warnings"])
