"""The trainer: exact resume, checkpoints, NaN handling, metrics, normalisation folding, bad input."""

import json
import math
import shutil

import pytest
import torch

from saelab.errors import ConfigError, SaelabError
from saelab.sae import SAEConfig, load_sae
from saelab.sae.base import InputShapeError
from saelab.train import (
    InMemorySource,
    NonFiniteError,
    PlantedDictionary,
    PlantedDictionarySource,
    TrainConfig,
    Trainer,
    train_saes,
)
from saelab.train.checkpoint import checkpoint_dirs, read_latest_checkpoint

HOOK = "blocks.0.hook_resid_post"


def source(batch_size=64, **kwargs):
    return PlantedDictionarySource(PlantedDictionary(d_in=16, n_features=64, active_per_sample=3), batch_size,
                                   hook_name=HOOK, **kwargs)


def every_architecture():
    return [SAEConfig("topk", 16, 64, hook_name=HOOK, k=3), SAEConfig("batchtopk", 16, 64, hook_name=HOOK, k=3),
            SAEConfig("relu", 16, 64, hook_name=HOOK), SAEConfig("jumprelu", 16, 64, hook_name=HOOK),
            SAEConfig("gated", 16, 64, hook_name=HOOK), SAEConfig("tied", 16, 64, hook_name=HOOK),
            SAEConfig("relu", 16, 64, hook_name=HOOK, unit_norm_decoder=True, name="relu-unit", l1_coefficient=3.0,
                      lr=1e-2)]


def settings(**changes):
    base = dict(steps=24, batch_size=64, lr=3e-3, checkpoint_every=8, log_every=4, dead_window_tokens=64 * 4,
                resample_dead_every=5, lr_warmup_steps=4, lr_decay_steps=6, sparsity_warmup_steps=6)
    return TrainConfig(**{**base, **changes})


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def metric_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    cfgs, cfg = every_architecture(), settings()
    full = train_saes(cfgs, source(), cfg, tmp_path / "full", progress=False)
    partial = train_saes(cfgs, source(), cfg, tmp_path / "resumed", progress=False, stop_at_step=13)
    assert checkpoint_dirs(tmp_path / "resumed")[0].name == "step_000000013"
    assert not (tmp_path / "resumed" / "saes").exists()
    resumed = train_saes(cfgs, source(), cfg, tmp_path / "resumed", progress=False, resume=True)
    assert set(full) == set(resumed) == {c.name for c in cfgs}
    for name in full:
        assert same_weights(full[name], resumed[name]), name
        assert not same_weights(full[name], partial[name]), name
    strip = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in metric_lines(tmp_path / "full")]
    again = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in metric_lines(tmp_path / "resumed")]
    assert strip == again and len(strip) == 6 * len(cfgs)
    assert max(r["resampled"] for r in strip if r["architecture"] == "relu") > 0


def test_outputs_metrics_and_saved_folders(tmp_path):
    src = source()
    cfgs = [SAEConfig("topk", 16, 64, hook_name=HOOK, k=3), SAEConfig("jumprelu", 16, 64, hook_name=HOOK)]
    trainer = Trainer(cfgs, src, settings(resample_dead_every=0, keep_checkpoints=2), tmp_path, progress=False)
    saes = trainer.run()
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step_000000024", "step_000000016"]
    records = metric_lines(tmp_path)
    last = records[-1]
    for key in ("step", "tokens", "sae", "hook", "lr", "loss", "losses", "l0", "fvu", "dead_fraction",
                "dense_fraction", "skipped_batches", "threshold_mean"):
        assert key in last, key
    assert last["step"] == 24 and last["tokens"] == 24 * 64 and last["lr"] == pytest.approx(3e-3 / 6)
    assert all(r["l0"] == 3.0 for r in records if r["architecture"] == "topk")
    assert 0 < last["fvu"] < 1.5 and set(last["losses"]) == {"mse", "l0"}

    x_raw, _ = src.sample(999)
    factor = src.factor
    for member in trainer.members:
        name = member.name
        folder = tmp_path / "saes" / name
        loaded = load_sae(folder)
        expected = member.sae.reconstruct(x_raw / factor) * factor
        assert torch.allclose(saes[name].reconstruct(x_raw), expected, rtol=1e-4, atol=1e-5)
        assert torch.equal(loaded.encode(x_raw), saes[name].encode(x_raw))
        cfg_json = json.loads((folder / "cfg.json").read_text())
        assert cfg_json["saelab"]["normalization_factor"] == pytest.approx(factor)
        assert cfg_json["saelab"]["training"]["steps"] == 24
        assert cfg_json["metadata"]["model_name"] == "planted-dictionary"
        assert (folder / "sparsity.safetensors").exists()


class _Corrupting:
    """Wraps a source and damages one batch."""

    def __init__(self, inner, bad_batch, value):
        self.inner, self.bad_batch, self.value = inner, bad_batch, value
        self.normalization_factors = inner.normalization_factors

    def iter_batches(self, start_batch=0):
        for index, batch in enumerate(self.inner.iter_batches(start_batch), start=start_batch):
            if index == self.bad_batch:
                batch = {k: v.clone().fill_(self.value) if self.value != "nan" else v.clone().index_fill_(
                    0, torch.tensor([3]), math.nan) for k, v in batch.items()}
            yield batch


def test_nan_activations_stop_with_step_and_hook_and_keep_the_checkpoint(tmp_path):
    cfgs = [SAEConfig("relu", 16, 64, hook_name=HOOK, name="my-relu")]
    cfg = settings(checkpoint_every=4, resample_dead_every=0)
    with pytest.raises(NonFiniteError) as info:
        train_saes(cfgs, _Corrupting(source(), 9, "nan"), cfg, tmp_path, progress=False)
    message = str(info.value)
    assert "step 9" in message and HOOK in message and "my-relu" in message and "skip_bad_batches" in message
    folder, state, _ = read_latest_checkpoint(tmp_path)
    assert folder.name == "step_000000008" and state["step"] == 8

    skipped = train_saes(cfgs, _Corrupting(source(), 9, "nan"), settings(checkpoint_every=4, resample_dead_every=0,
                         skip_bad_batches=True), tmp_path / "skip", progress=False)
    assert metric_lines(tmp_path / "skip")[-1]["skipped_batches"] == 1
    assert torch.isfinite(skipped["my-relu"].W_dec).all()


def test_a_non_finite_loss_names_the_sae_and_hook(tmp_path):
    cfgs = [SAEConfig("topk", 16, 64, hook_name=HOOK, k=3, name="big")]
    with pytest.raises(NonFiniteError) as info:
        train_saes(cfgs, _Corrupting(source(), 2, 3e30), settings(resample_dead_every=0), tmp_path, progress=False)
    message = str(info.value)
    assert "step 2" in message and "'big'" in message and HOOK in message and "loss" in message


def test_resume_refuses_changed_settings_and_fresh_runs_refuse_used_folders(tmp_path):
    cfgs = [SAEConfig("relu", 16, 64, hook_name=HOOK)]
    train_saes(cfgs, source(), settings(resample_dead_every=0), tmp_path, progress=False, stop_at_step=8)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_saes(cfgs, source(), settings(resample_dead_every=0), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="train setting lr was 0.003 there and is 0.001 now"):
        train_saes(cfgs, source(), settings(resample_dead_every=0, lr=1e-3), tmp_path, progress=False, resume=True)
    with pytest.raises(ConfigError, match="differs in l1_coefficient"):
        train_saes([cfgs[0].replace(l1_coefficient=0.5)], source(), settings(resample_dead_every=0), tmp_path,
                   progress=False, resume=True)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    cfgs = [SAEConfig("topk", 16, 64, hook_name=HOOK, k=3)]
    cfg = settings(resample_dead_every=0, keep_checkpoints=2)
    full = train_saes(cfgs, source(), cfg, tmp_path / "full", progress=False)
    train_saes(cfgs, source(), cfg, tmp_path / "run", progress=False, stop_at_step=16)
    newest = checkpoint_dirs(tmp_path / "run")[0]
    weights = next(newest.glob("*.topk.64.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.warns(UserWarning, match="skipped damaged checkpoints"):
        resumed = train_saes(cfgs, source(), cfg, tmp_path / "run", progress=False, resume=True)
    name = cfgs[0].name
    assert same_weights(full[name], resumed[name])
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    assert read_latest_checkpoint(tmp_path / "run") is None


def test_several_hooks_and_shared_hooks_train_from_one_batch(tmp_path):
    gen = torch.Generator().manual_seed(0)
    acts = {"a": torch.randn(512, 8, generator=gen), "b": torch.randn(512, 12, generator=gen) * 3}
    src = InMemorySource(acts, batch_size=32, normalization_factors={"b": 3.0})
    cfgs = [SAEConfig("relu", 8, 16, hook_name="a"), SAEConfig("topk", 12, 24, hook_name="b", k=2),
            SAEConfig("topk", 12, 24, hook_name="b", k=4, name="b-k4")]
    saes = train_saes(cfgs, src, TrainConfig(steps=20, batch_size=32, log_every=10), tmp_path, progress=False)
    assert set(saes) == {"a.relu.16", "b.topk.24", "b-k4"}
    records = metric_lines(tmp_path)
    assert {r["sae"] for r in records} == set(saes) and {r["l0"] for r in records if r["sae"] == "b-k4"} == {4.0}
    assert json.loads((tmp_path / "saes" / "b-k4" / "cfg.json").read_text())["saelab"]["normalization_factor"] == 3.0


def test_bad_inputs_are_refused_clearly(tmp_path):
    acts = {"a": torch.randn(64, 8)}
    src = InMemorySource(acts, batch_size=16)
    with pytest.raises(SaelabError, match="no activations for hook 'b'.*'a'"):
        train_saes([SAEConfig("relu", 8, 16, hook_name="b")], src, TrainConfig(steps=2, batch_size=16), tmp_path,
                   progress=False)
    with pytest.raises(InputShapeError, match=r"hook 'a'.*\(16, 8\).*d_in=9"):
        train_saes([SAEConfig("relu", 9, 16, hook_name="a")], src, TrainConfig(steps=2, batch_size=16),
                   tmp_path / "w", progress=False)
    with pytest.raises(ConfigError, match="unique.*a.relu.16"):
        Trainer([SAEConfig("relu", 8, 16, hook_name="a")] * 2, src, TrainConfig(steps=2), tmp_path / "d")
    with pytest.raises(ConfigError, match="no hook_name"):
        Trainer([SAEConfig("relu", 8, 16)], src, TrainConfig(steps=2), tmp_path / "e")
    with pytest.raises(ConfigError, match="iter_batches"):
        Trainer([SAEConfig("relu", 8, 16, hook_name="a")], object(), TrainConfig(steps=2), tmp_path / "f")
    short = PlantedDictionarySource(PlantedDictionary(d_in=8, n_features=16, active_per_sample=2), 16,
                                    hook_name="a", n_batches=3)
    with pytest.raises(SaelabError, match="ended after 3 batches.*needs 5 steps"):
        train_saes([SAEConfig("relu", 8, 16, hook_name="a")], short, TrainConfig(steps=5, batch_size=16),
                   tmp_path / "g", progress=False)
