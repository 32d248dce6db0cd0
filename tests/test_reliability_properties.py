"""Property-based fuzzing (hypothesis) of configs, CLI arguments, cfg.json contents and safetensors headers.

Every generated input is either accepted or refused with a ``SaelabError`` whose message names the
field; nothing escapes as another exception, and a hostile safetensors header is refused from its
header alone (declared sizes checked against the file size before any tensor is read).

Budgets: the ``ci`` profile (default) runs a few dozen examples per property; set
``pytest --hypothesis-profile=long`` (or ``SAELAB_HYPOTHESIS_PROFILE=long``) for a larger run on demand
(``long``: 2,000 per property). Profiles are registered in ``conftest.py``.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from saelab.cli import main
from saelab.data.cache import CacheConfig
from saelab.errors import SaelabError
from saelab.fileio import SAFETENSORS_ITEMSIZE, load_safetensors, read_safetensors_header
from saelab.sae import SAEConfig, load_sae, make_sae, save_sae
from saelab.train import InMemorySource, TrainConfig

PROFILE = settings()  # the active profile, registered in conftest.py
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# JSON-like values a hostile or careless file can hold, edge cases first.
SCALARS = st.one_of(
    st.sampled_from([0, -1, 1, 2**63, -(2**63), 10**30, 0.5, -0.0, math.nan, math.inf, -math.inf, True, False,
                     None, "", "0", "nan", "relu", "../../etc", "float32", "🙂"]),
    st.integers(), st.floats(allow_nan=True), st.text(max_size=12))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6), inner, max_size=3), max_leaves=6)


def accepted_or_named(build, field: str) -> None:
    """``build()`` either succeeds or raises a SaelabError naming ``field``."""
    try:
        build()
    except SaelabError as exc:
        assert field in str(exc), (field, str(exc))


# ----------------------------------------------------------------------------- typed configs
SAE_BASE = {"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 2, "hook_name": "h"}


@settings(PROFILE)
@given(field=st.sampled_from(["architecture", "d_in", "d_sae", "hook_name", "name", "k", "k_aux",
                              "aux_coefficient", "unit_norm_decoder", "apply_b_dec_to_input", "decoder_init_norm",
                              "encoder_init_scale", "sparse_decoding", "lr", "dtype", "l1_coefficient",
                              "not_a_field"]),
       value=JSON_VALUES)
def test_sae_config_fields(field, value):
    assume(not (field in ("d_in", "d_sae") and isinstance(value, (int, float)) and value > 4096))
    accepted_or_named(lambda: SAEConfig.from_dict({**SAE_BASE, field: value}), field)


TRAIN_FIELDS = ["steps", "batch_size", "lr", "adam_betas", "adam_eps", "lr_warmup_steps", "lr_warmup_start",
                "lr_warmup_shape", "lr_decay_steps", "sparsity_warmup_steps", "grad_clip_norm", "seed",
                "checkpoint_every", "keep_checkpoints", "log_every", "dead_window_tokens", "dense_density",
                "b_dec_init", "skip_bad_batches", "max_skipped_batches", "device", "log_to", "no_such_option"]


@settings(PROFILE)
@given(field=st.sampled_from(TRAIN_FIELDS), value=JSON_VALUES)
def test_train_config_fields(field, value):
    accepted_or_named(lambda: TrainConfig.from_dict({"steps": 10, field: value}), field)


@settings(PROFILE)
@given(field=st.sampled_from(["n_tokens", "packing", "model_batch_size", "shard_tokens", "dtype",
                              "exclude_special_tokens"]), value=JSON_VALUES)
def test_cache_config_fields(field, value):
    names = (field, "context_size", "prepend_bos", "separator", "packing")
    try:
        CacheConfig(**{"n_tokens": 10, field: value})
    except SaelabError as exc:
        assert any(name in str(exc) for name in names), str(exc)


# ----------------------------------------------------------------------------- the command line
CLI_OPTIONS = {"--steps": "steps", "--batch-size": "batch_size", "--lr": "lr", "--k": "k", "--d-sae": "d_sae",
               "--seed": "seed", "--checkpoint-every": "checkpoint_every", "--log-every": "log_every",
               "--arch": "architecture", "--lr-warmup-steps": "lr_warmup_steps",
               "--max-skipped-batches": "max_skipped_batches"}
CLI_VALUES = st.one_of(st.integers(-3, 40).map(str), st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "",
                                                                      "abc", "1.5", "relu,,topk", "topk,foo",
                                                                      "--", "-1e-3", "1e-3"]),
                       st.text(max_size=6))


@settings(PROFILE, max_examples=max(PROFILE.max_examples // 2, 10))
@given(option=st.sampled_from(sorted(CLI_OPTIONS)), value=CLI_VALUES)
def test_train_command_line(option, value, tmp_path_factory, monkeypatch, capsys):
    import saelab.train.run_spec as run_spec

    def tiny_source(model, data_spec, hooks, batch_size, **_):
        data = {"blocks.0.hook_resid_pre": torch.randn(64, 8, generator=torch.Generator().manual_seed(0))}
        return run_spec.Activations(InMemorySource(data, batch_size), {"blocks.0.hook_resid_pre": 8}, {})

    monkeypatch.setattr(run_spec, "open_activations", tiny_source)
    args = {"--steps": "3", "--batch-size": "16", "--arch": "topk", "--k": "2", "--d-sae": "16"}
    args[option] = value
    argv = ["train", "--hook", "blocks.0.hook_resid_pre", "--out", str(tmp_path_factory.mktemp("cli")),
            "--no-progress", *[f"{k}={v}" for k, v in args.items()]]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if exit_info.value.code != 0:
        assert exit_info.value.code == 2
        assert option in err or CLI_OPTIONS[option] in err, (argv, err)


# ----------------------------------------------------------------------------- cfg.json contents
@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory) -> Path:
    sae = make_sae(SAEConfig("jumprelu", 8, 16, hook_name="blocks.0.hook_resid_pre"), seed=0)
    return save_sae(sae, tmp_path_factory.mktemp("sae") / "sae", sparsity=torch.zeros(16))


def _paths(cfg, prefix=()):
    for key, value in cfg.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


@settings(PROFILE, max_examples=PROFILE.max_examples * 2)
@given(data=st.data(), saelens=st.booleans(), value=JSON_VALUES, delete=st.booleans())
def test_cfg_json_contents(sae_folder, tmp_path_factory, data, saelens, value, delete):
    cfg = json.loads((sae_folder / "cfg.json").read_text())
    if saelens:  # the layout SAELens writes: no saelab section
        del cfg["saelab"]
    path = data.draw(st.sampled_from(sorted(_paths(cfg))))
    target = cfg
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    folder = tmp_path_factory.mktemp("cfg")
    for name in ("sae_weights.safetensors", "sparsity.safetensors"):
        (folder / name).write_bytes((sae_folder / name).read_bytes())
    (folder / "cfg.json").write_text(json.dumps(cfg))
    try:
        load_sae(folder)
    except SaelabError as exc:
        assert any(str(part) in str(exc) for part in path) or "sha256" in str(exc), (path, str(exc))


# ----------------------------------------------------------------------------- safetensors headers
def _file(header: dict, data_size: int, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + bytes(data_size)


ENTRIES = st.fixed_dictionaries({
    "dtype": st.sampled_from([*SAFETENSORS_ITEMSIZE, "F33", "", "object"]) | JSON_VALUES,
    "shape": st.lists(st.integers(-2, 2**40) | st.sampled_from([2**63, 2.0, "3"]), max_size=4)
             | st.lists(st.integers(0, 6), max_size=3),
    "data_offsets": st.lists(st.integers(-4, 2**62), min_size=0, max_size=3) | st.tuples(
        st.integers(0, 64), st.integers(0, 64)).map(list),
})


@settings(PROFILE, max_examples=PROFILE.max_examples * 3)
@given(entries=st.dictionaries(st.sampled_from(["W_enc", "W_dec", "b_enc", "x", "__metadata__"]), ENTRIES,
                               max_size=4),
       data_size=st.integers(0, 256), length=st.none() | st.integers(0, 2**64 - 1))
def test_safetensors_headers(tmp_path_factory, entries, data_size, length):
    path = tmp_path_factory.mktemp("st") / "f.safetensors"
    path.write_bytes(_file(entries, data_size, length))
    try:
        header = read_safetensors_header(path)
    except SaelabError as exc:
        assert "f.safetensors" in str(exc)
        with pytest.raises(SaelabError):
            load_safetensors(path)
        return
    tensors = load_file(path)  # what the header check accepts, the safetensors reader reads
    assert {k: list(v.shape) for k, v in tensors.items()} == {k: v["shape"] for k, v in header.items()}


@settings(PROFILE)
@given(data=st.data())
def test_mutated_real_headers(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("st") / "f.safetensors"
    save_file({"W_enc": torch.zeros(8, 16), "b_enc": torch.zeros(16)}, path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    name = data.draw(st.sampled_from(["W_enc", "b_enc"]))
    key = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
    header[name][key] = data.draw(ENTRIES)[key]
    path.write_bytes(_file(header, len(raw) - 8 - n))
    try:
        load_safetensors(path, {"W_enc": (8, 16), "b_enc": (16,)})
    except SaelabError as exc:
        assert name in str(exc) or "data bytes" in str(exc) or "overlap" in str(exc), str(exc)
