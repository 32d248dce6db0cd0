"""``saelab train`` end to end on the toy model: several SAEs from one pass, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saelab.cli import main
from saelab.sae import load_sae

BASE = ["train", "--model", "toy", "--hook", "blocks.1.attn.hook_z", "--arch", "topk,jumprelu", "--k", "4",
        "--d-sae", "64", "--steps", "12", "--batch-size", "256", "--checkpoint-every", "5", "--log-every", "3",
        "--buffer-windows", "32", "--no-progress", "--threads", "1"]


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def _weights(run_dir) -> dict[str, torch.Tensor]:
    out = {}
    for folder in sorted((run_dir / "saes").iterdir()):
        for key, value in load_file(folder / "sae_weights.safetensors").items():
            out[f"{folder.name}/{key}"] = value
    return out


def test_train_writes_every_sae_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run([*BASE, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(summary["saes"]) == ["blocks.1.attn.hook_z.jumprelu.64", "blocks.1.attn.hook_z.topk.64"]
    sae = load_sae(summary["saes"]["blocks.1.attn.hook_z.topk.64"])
    assert sae.cfg.d_in == 128 and sae.cfg.hook_name == "blocks.1.attn.hook_z"
    cfg = json.loads((out / "saes" / "blocks.1.attn.hook_z.topk.64" / "cfg.json").read_text())
    assert cfg["metadata"]["model_name"] == "toy"
    from saelab.models import load_model

    assert cfg["saelab"]["model_fingerprint"] == load_model("toy").fingerprint()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {line["sae"] for line in lines} == set(summary["saes"])
    assert sorted({line["step"] for line in lines}) == [3, 6, 9, 12]
    assert all(line["l0"] == 4.0 for line in lines if line["architecture"] == "topk")
    curves = Path(summary["training_curves"])
    assert curves == out / "training_curves.png" and curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from saelab.train.curves import read_curves

    assert {name: len(rows) for name, rows in read_curves(out).items()} == {name: 4 for name in summary["saes"]}


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from saelab.train.trainer import Trainer

    whole = tmp_path / "whole"
    assert _run([*BASE, "--out", str(whole)]) == 0

    broken = tmp_path / "broken"
    original = Trainer._train_step
    calls = {"n": 0}

    def crash_after_seven(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt  # the run dies after step 7; its last checkpoint is step 5
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_step", crash_after_seven)
    assert _run([*BASE, "--out", str(broken)]) == 130
    assert not (broken / "saes").exists() or not any((broken / "saes").iterdir())
    monkeypatch.setattr(Trainer, "_train_step", original)
    assert _run(["train", "--resume", "--out", str(broken), "--no-progress", "--threads", "1"]) == 0

    expected, got = _weights(whole), _weights(broken)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_bad_input_is_refused_with_a_message(tmp_path, capsys):
    assert _run([*BASE[:-2], "--hook", "blocks.9.hook_resid_pre", "--out", str(tmp_path / "a")]) == 2
    assert "blocks.9.hook_resid_pre" in capsys.readouterr().err
    assert _run([*BASE, "--arch", "nonsense", "--out", str(tmp_path / "b")]) == 2
    assert "jumprelu" in capsys.readouterr().err  # lists the accepted architectures
    assert _run(["train", "--resume", "--out", str(tmp_path / "nothing-here")]) == 2
    assert "holds no training run" in capsys.readouterr().err
    assert _run([*BASE, "--k", "999", "--out", str(tmp_path / "c")]) == 2
    assert "k" in capsys.readouterr().err


SMALL = ["train", "--model", "toy", "--d-sae", "64", "--steps", "4", "--batch-size", "128", "--checkpoint-every", "0",
         "--log-every", "2", "--buffer-windows", "16", "--model-batch-size", "8", "--context-size", "32",
         "--no-progress", "--threads", "1", "--json"]
MID, MLP_OUT = "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"


def _summary(capsys, argv: list[str]) -> dict:
    code = _run(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    return json.loads(captured.out)


def test_transcoders_and_skip_transcoders_train_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "tc"
    summary = _summary(capsys, [*SMALL, "--hook", MID, "--target-hook", MLP_OUT, "--arch", "topk", "--out", str(out)])
    (name,) = summary["saes"]
    assert name == f"{MID}.to.{MLP_OUT}.topk.64"
    tc = load_sae(summary["saes"][name])
    assert (tc.cfg.hook_name, tc.cfg.hook_name_out, tc.cfg.k) == (MID, MLP_OUT, 32)  # k defaults
    assert tc.cfg.is_transcoder and not tc.cfg.skip_connection
    from saelab.train import RunSpec

    spec = RunSpec.load(out)
    assert spec.hooks == sorted([MID, MLP_OUT]) and set(spec.normalization_factors) == {MID, MLP_OUT}

    out = tmp_path / "skip"
    summary = _summary(capsys, [*SMALL, "--hook", MID, "--target-hook", MLP_OUT, "--skip", "--arch", "relu,jumprelu",
                                "--l1", "0.5", "--out", str(out)])
    assert sorted(summary["saes"]) == [f"{MID}.to.{MLP_OUT}.jumprelu.skip.64", f"{MID}.to.{MLP_OUT}.relu.skip.64"]
    for folder in summary["saes"].values():
        sae = load_sae(folder)
        assert sae.cfg.skip_connection and sae.W_skip.shape == (sae.cfg.d_in, sae.cfg.d_out)
    assert load_sae(summary["saes"][f"{MID}.to.{MLP_OUT}.relu.skip.64"]).cfg.l1_coefficient == 0.5


def test_matryoshka_batchtopk_trains_with_its_options_from_the_registry(tmp_path, capsys):
    summary = _summary(capsys, [*SMALL, "--hook", "blocks.0.hook_resid_post", "--arch", "matryoshka_batchtopk,topk",
                                "--k", "6", "--out", str(tmp_path / "m")])
    saes = {name.split(".")[-2]: load_sae(folder) for name, folder in summary["saes"].items()}
    assert saes.keys() == {"matryoshka_batchtopk", "topk"}
    assert saes["matryoshka_batchtopk"].cfg.k == saes["topk"].cfg.k == 6
    assert len(saes["matryoshka_batchtopk"].cfg.group_fractions) == 5


def test_run_json_is_the_run_spec_and_a_resume_does_not_rewrite_it(tmp_path, capsys):
    from saelab.train import RunSpec

    out = tmp_path / "run"
    _summary(capsys, [*SMALL, "--hook", "blocks.0.hook_resid_post", "--arch", "topk", "--out", str(out)])
    saved = (out / "run.json").read_text()
    spec = RunSpec.load(out)
    assert json.loads(saved) == spec.to_dict() and spec.train.steps == 4 and spec.saes[0].d_in == 128
    stamp = (out / "run.json").stat().st_mtime_ns
    summary = _summary(capsys, ["train", "--resume", "--out", str(out), "--no-progress", "--threads", "1", "--json"])
    assert summary["steps"] == 4 and (out / "run.json").stat().st_mtime_ns == stamp
    summary = _summary(capsys, ["train", "--resume", "--steps", "6", "--out", str(out), "--no-progress", "--json"])
    assert summary["steps"] == 6 and RunSpec.load(out).train.steps == 6


def test_bad_transcoder_and_option_flags_are_refused_clearly(tmp_path, capsys):
    assert _run([*SMALL, "--hook", MID, "--skip", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "--skip" in err and "--target-hook" in err
    assert _run([*SMALL, "--hook", MID, "--hook", "blocks.0.hook_resid_mid", "--target-hook", MLP_OUT,
                 "--out", str(tmp_path / "b")]) == 2
    assert "one target per --hook" in capsys.readouterr().err
    assert _run([*SMALL, "--arch", "relu", "--k", "4", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "--k" in err and "matryoshka_batchtopk" in err  # which architectures take it, from the registry
    assert _run([*SMALL, "--hook", MID, "--target-hook", MLP_OUT, "--arch", "tied", "--out", str(tmp_path / "d")]) == 2
    assert "cannot be a transcoder" in capsys.readouterr().err
    assert not any((tmp_path / name / "run.json").exists() for name in "abcd")


def test_an_older_run_json_is_refused_with_what_to_do(tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    (old / "run.json").write_text(json.dumps({"model": "toy", "source": {"source": "toy"}, "hooks": ["h"],
                                              "saes": [{"architecture": "topk", "hook_name": "h"}], "train": {}}))
    assert _run(["train", "--resume", "--out", str(old)]) == 2
    assert "older saelab" in capsys.readouterr().err


def test_arch_help_comes_from_the_registry(capsys):
    from saelab.sae.registry import architectures

    assert _run(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(arch in text for arch in architectures()) and "matryoshka_batchtopk (--k)" in text
