"""TrainConfig validation, schedules, b_dec initialisation, metrics sinks and the CPU allocator."""

import sys
import types

import pytest
import torch

from saelab.errors import ConfigError
from saelab.train import TrainConfig, geometric_median, tune_cpu_allocator
from saelab.train.init import b_dec_from_sample
from saelab.train.metrics import MetricsLog
from saelab.train.schedule import lr_factor, sparsity_scale


def test_length_is_steps_or_tokens_rounded_up_to_batches():
    assert TrainConfig(tokens=10_001, batch_size=1000).total_steps == 11
    assert TrainConfig(steps=7).total_steps == 7
    with pytest.raises(ConfigError, match="exactly one of steps or tokens"):
        TrainConfig(steps=5, tokens=100)
    with pytest.raises(ConfigError, match="exactly one of steps or tokens"):
        TrainConfig()


@pytest.mark.parametrize("changes,field", [
    ({"lr": 0}, "lr"), ({"adam_betas": (0.9, 1.0)}, "adam_betas"), ({"b_dec_init": "median"}, "b_dec_init"),
    ({"lr_warmup_steps": 60, "lr_decay_steps": 50}, "exceed"), ({"log_to": ("mlflow",)}, "log_to"),
    ({"grad_clip_norm": -1.0}, "grad_clip_norm"), ({"lr_warmup_shape": "exp"}, "lr_warmup_shape"),
    ({"batch_size": 0}, "batch_size"), ({"dead_window_tokens": 0}, "dead_window_tokens"),
])
def test_bad_settings_are_refused_with_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(steps=100, **changes)


def test_from_dict_refuses_unknown_keys_and_round_trips():
    cfg = TrainConfig(steps=50, adam_betas=(0.0, 0.999), log_to=("tensorboard",))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="learning_rate.*accepted: steps"):
        TrainConfig.from_dict({"steps": 5, "learning_rate": 1e-3})


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, lr_warmup_steps=10, lr_warmup_start=0.1, lr_warmup_shape="linear",
                      lr_decay_steps=20, lr_end_factor=0.0)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(5, cfg) == pytest.approx(0.55)
    assert lr_factor(10, cfg) == 1.0 and lr_factor(79, cfg) == 1.0
    assert lr_factor(80, cfg) == 1.0 and lr_factor(90, cfg) == pytest.approx(0.5)
    assert lr_factor(99, cfg) == pytest.approx(0.05)
    cosine = TrainConfig(steps=100, lr_warmup_steps=10, lr_warmup_start=0.1)
    assert lr_factor(5, cosine) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(2, cosine) < 0.1 + 0.9 * 0.2  # cosine starts slower than linear


def test_sparsity_coefficient_warms_up_linearly_from_zero():
    cfg = TrainConfig(steps=100, sparsity_warmup_steps=40)
    assert [sparsity_scale(s, cfg) for s in (0, 10, 40, 99)] == [0.0, 0.25, 1.0, 1.0]
    assert sparsity_scale(0, TrainConfig(steps=10)) == 1.0


def test_geometric_median_resists_outliers_and_is_optimal():
    gen = torch.Generator().manual_seed(0)
    cluster = torch.randn(200, 5, generator=gen, dtype=torch.float64) * 0.1 + 2.0
    outliers = torch.full((40, 5), 100.0, dtype=torch.float64)
    points = torch.cat([cluster, outliers])
    median = geometric_median(points)
    assert (median - 2.0).abs().max() < 0.1 and points.mean(0).min() > 15
    units = (points - median) / (points - median).norm(dim=1, keepdim=True)
    assert units.sum(0).norm() < 1e-3 * len(points)  # first-order optimality of Σ‖p − y‖
    assert torch.equal(b_dec_from_sample(points, "zeros"), torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(b_dec_from_sample(points, "mean"), points.mean(0))


def test_missing_logger_packages_are_named(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install wandb"):
        MetricsLog(tmp_path, ("wandb",))


def test_wandb_sink_receives_numeric_metrics(tmp_path, monkeypatch):
    logged = []

    class Run:
        def log(self, values, step):
            logged.append((step, values))

        def finish(self):
            logged.append("finished")

    fake = types.ModuleType("wandb")
    fake.__spec__ = types.SimpleNamespace(name="wandb")
    fake.init = lambda **kwargs: Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake.__spec__ if name == "wandb" else real(name, *a))
    log = MetricsLog(tmp_path, ("wandb",))
    log.write([{"step": 3, "sae": "s", "l0": 2.5, "hook": "h", "losses": {"mse": 1.0}}])
    log.close()
    assert logged == [(3, {"s/l0": 2.5, "s/losses/mse": 1.0}), "finished"]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1


def test_tune_cpu_allocator_is_idempotent():
    first = tune_cpu_allocator()
    assert tune_cpu_allocator() == first
    if sys.platform.startswith("linux"):
        assert first is True
