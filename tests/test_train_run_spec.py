"""``RunSpec``: a training run as one typed object, saved once to run.json and loaded back unchanged."""

from __future__ import annotations

import json
import shutil

import pytest

from saelab.errors import ConfigError, SaelabError
from saelab.sae import SAEConfig
from saelab.train import DataSpec, ModelSpec, RunSpec, TrainConfig
from saelab.train.run_spec import folder_meta, refuse_existing_run, resume_spec

HOOK = "blocks.0.hook_resid_post"


def _spec(out, **changes) -> RunSpec:
    fields = {"saes": [SAEConfig("topk", 8, 32, hook_name=HOOK, k=4),
                       SAEConfig("relu", 8, 16, hook_name=HOOK, hook_name_out="blocks.1.hook_mlp_out")],
              "train": TrainConfig(steps=10, batch_size=64), "out": str(out),
              "normalization_factors": {HOOK: 2.0, "blocks.1.hook_mlp_out": 3.0}}
    return RunSpec(**{**fields, **changes})


def test_a_spec_round_trips_through_run_json(tmp_path):
    spec = _spec(tmp_path / "run")
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.hooks == ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
    spec.save()
    assert RunSpec.load(tmp_path / "run") == spec
    with pytest.raises(SaelabError, match="already holds a training run"):
        spec.save()
    with pytest.raises(SaelabError, match="already holds a training run"):
        refuse_existing_run(tmp_path / "run")
    shutil.move(tmp_path / "run", tmp_path / "moved")
    assert RunSpec.load(tmp_path / "moved").out == str(tmp_path / "moved")  # out is where run.json is


def test_resume_changes_only_the_length_and_parallel_mode(tmp_path):
    spec = _spec(tmp_path)
    spec.save()
    assert resume_spec(tmp_path) == spec
    longer = resume_spec(tmp_path, tokens=1280, parallel="sae")
    assert (longer.train.steps, longer.train.tokens, longer.train.total_steps, longer.train.parallel) == \
        (None, 1280, 20, "sae")
    assert RunSpec.load(tmp_path) == longer
    with pytest.raises(ConfigError, match="exactly one of steps or tokens"):
        spec.lengthened(steps=5, tokens=100)
    moved = spec.on_device("cuda:1")
    assert (moved.model.device, moved.train.device, spec.train.device) == ("cuda:1", "cuda:1", "cpu")


@pytest.mark.parametrize(("change", "message"), [
    ({"saes": []}, "non-empty list"),
    ({"saes": [SAEConfig("topk", 8, 32, hook_name=HOOK)] * 2}, "repeated: blocks.0.hook_resid_post.topk.32"),
    ({"normalization_factors": {HOOK: 1.0}}, "no factor for hook.*blocks.1.hook_mlp_out"),
    ({"normalization_factors": {HOOK: 0.0, "blocks.1.hook_mlp_out": 1.0}}, "normalization_factors"),
    ({"data": {"model_batch_size": 0}}, "model_batch_size=0"),
    ({"data": {"text": {"context_size": 1}}}, "context_size=1"),
    ({"data": {"bogus": 1}}, "unknown data key.*bogus.*accepted: text, cache"),
    ({"model": {"name": ""}}, "model.name"),
    ({"train": {"steps": 0}}, "steps=0"),
])
def test_bad_values_are_refused_with_the_field(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        _spec(tmp_path, **change)


def test_other_run_json_formats_are_refused_clearly(tmp_path):
    data = _spec(tmp_path).to_dict()
    with pytest.raises(ConfigError, match="version=3 is not a run spec this saelab reads"):
        RunSpec.from_dict({**data, "version": 3})
    with pytest.raises(ConfigError, match="unknown run spec key.*extra"):
        RunSpec.from_dict({**data, "extra": 1})
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(SaelabError, match="not a readable JSON run spec"):
        RunSpec.load(tmp_path)
    with pytest.raises(SaelabError, match="holds no training run"):
        RunSpec.load(tmp_path / "nothing")


def test_create_resolves_widths_and_records_normalisation(tmp_path):
    from saelab.models import load_model

    lm = load_model("toy")
    spec = RunSpec.create([{"architecture": "topk", "hook_name": HOOK},
                           {"architecture": "relu", "hook_name": "blocks.1.hook_resid_mid", "d_sae": 16,
                            "hook_name_out": "blocks.1.hook_mlp_out", "skip_connection": True}],
                          TrainConfig(steps=2, batch_size=64), tmp_path, model=ModelSpec("toy"),
                          data=DataSpec(model_batch_size=4, buffer_windows=8), lm=lm)
    topk, skip = spec.saes
    assert (topk.d_in, topk.d_sae) == (lm.hook_d_in(HOOK), 8 * lm.hook_d_in(HOOK))
    assert (skip.d_out, skip.skip_connection) == (lm.hook_d_in("blocks.1.hook_mlp_out"), True)
    assert set(spec.normalization_factors) == set(spec.hooks) and all(f > 0 for f in spec.normalization_factors.values())
    with pytest.raises(ConfigError, match="hook_name"):
        RunSpec.create([{"architecture": "topk"}], TrainConfig(steps=2), tmp_path, lm=lm)
    assert folder_meta("toy", "toy:1", 32, False, "abc") == {
        "model_name": "toy", "model": {"spec": "toy"}, "context_size": 32, "prepend_bos": False,
        "dataset_path": "toy:1", "model_fingerprint": "abc"}
