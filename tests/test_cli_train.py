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
