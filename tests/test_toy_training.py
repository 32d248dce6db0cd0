"""toy build on a tiny config: deterministic, resumable, validated."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from saelab.cli import main
from saelab.errors import ConfigError, CorruptFileError
from saelab.toy.bundle import build_toy_model, reproduce_command
from saelab.toy.training import CHECKPOINT_DIR, METRICS_FILE, ToyBuildConfig, train_toy_model

TINY = dict(n_layer=1, d_model=16, n_head=2, context=128, batch_size=2, steps=4, warmup_steps=1,
            checkpoint_every=1, log_every=1, threads=1)


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_same_seed_same_weights_and_other_seed_differs(tmp_path):
    threads_before = torch.get_num_threads()
    a, _ = train_toy_model(tmp_path / "a", ToyBuildConfig(**TINY), progress=False)
    assert torch.get_num_threads() == threads_before
    b, _ = train_toy_model(tmp_path / "b", ToyBuildConfig(**TINY), progress=False)
    c, _ = train_toy_model(tmp_path / "c", ToyBuildConfig(**TINY, seed=1), progress=False)
    pa, pb, pc = _params(a), _params(b), _params(c)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    cfg = ToyBuildConfig(**TINY)
    straight, info = train_toy_model(tmp_path / "straight", cfg, progress=False)
    _, partial = train_toy_model(tmp_path / "resumed", cfg, stop_after=2, progress=False)
    assert partial["step"] == 2
    assert (tmp_path / "resumed" / CHECKPOINT_DIR / "state.json").exists()
    resumed, info2 = train_toy_model(tmp_path / "resumed", cfg, progress=False)
    assert info2["step"] == info["step"] == 4
    ps, pr = _params(straight), _params(resumed)
    assert all(torch.equal(ps[k], pr[k]) for k in ps)
    logged = [json.loads(line)["step"] for line in (tmp_path / "resumed" / METRICS_FILE).read_text().splitlines()]
    assert logged == [1, 2, 3, 4]


def test_resume_with_other_settings_is_refused(tmp_path):
    train_toy_model(tmp_path, ToyBuildConfig(**TINY), stop_after=1, progress=False)
    with pytest.raises(ConfigError, match="lr="):
        train_toy_model(tmp_path, ToyBuildConfig(**{**TINY, "lr": 5e-4}), progress=False)
    model, info = train_toy_model(tmp_path, ToyBuildConfig(**{**TINY, "lr": 5e-4}), resume=False,
                                  stop_after=1, progress=False)
    assert info["step"] == 1


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    train_toy_model(tmp_path, ToyBuildConfig(**TINY), stop_after=1, progress=False)
    state = next((tmp_path / CHECKPOINT_DIR).glob("state-*.safetensors"))
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="checkpoint"):
        train_toy_model(tmp_path, ToyBuildConfig(**TINY), progress=False)


def test_build_writes_loadable_folder_with_card(tmp_path):
    cfg = ToyBuildConfig(**TINY)
    info = build_toy_model(tmp_path, cfg, progress=False, eval_prompts=4)
    assert info["finished"] and info["n_params"] > 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / CHECKPOINT_DIR).exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert model.config.n_layer == 1 and tokenizer.bos_token == "<bos>"
    card = (tmp_path / "README.md").read_text()
    assert reproduce_command(cfg) in card and "ioi.accuracy" in card
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


@pytest.mark.parametrize("field, value", [("n_layer", 0), ("d_model", 4), ("context", 1000), ("steps", 0),
                                          ("lr", 0.0), ("batch_size", 1.5), ("warmup_steps", 10)])
def test_bad_config_values_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        ToyBuildConfig(**{**TINY, field: value})


def test_cli_build_stops_and_resumes(tmp_path, capsys):
    argv = ["toy", "build", "--out", str(tmp_path), "--n-layer", "1", "--d-model", "16", "--n-head", "2",
            "--context", "128", "--batch-size", "2", "--steps", "2", "--warmup-steps", "1", "--threads", "1",
            "--eval-prompts", "4"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--stop-after", "1"])
    assert exit_info.value.code == 0
    assert "stopped after step 1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(argv + ["--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["finished"] and info["step"] == 2


def test_bad_eval_prompt_count_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="eval_prompts=0"):
        build_toy_model(tmp_path, ToyBuildConfig(**TINY), eval_prompts=0, progress=False)
    assert not (tmp_path / CHECKPOINT_DIR).exists()


def test_cli_bad_size_prints_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["toy", "build", "--out", str(tmp_path), "--n-head", "3"])
    assert exit_info.value.code == 2
    assert "d_model=128 must be divisible by n_head=3" in capsys.readouterr().err
