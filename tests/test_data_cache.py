"""On-disk activation cache: contents, manifest, resume, extension, corruption, reader, CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import saelab.data.cache as cache_module
from saelab.cli import main
from saelab.data.activations import ActivationExtractor
from saelab.data.cache import ActivationCache, CacheConfig, read_manifest, write_activation_cache
from saelab.data.packing import PackingConfig, iter_windows
from saelab.data.sources import ToySource
from saelab.errors import ConfigError, CorruptFileError
from saelab.models import LoadedModel

HOOKS = ["blocks.1.attn.hook_z", "blocks.2.hook_resid_pre"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(tiny_gpt2_with_toy_tokenizer) -> LoadedModel:
    return tiny_gpt2_with_toy_tokenizer


def config(n_tokens: int = 1000, **overrides) -> CacheConfig:
    return CacheConfig(n_tokens=n_tokens, **{**dict(packing=PackingConfig(context_size=16), model_batch_size=4,
                                                   shard_tokens=256), **overrides})


def shard_tensors(folder) -> list[dict[str, torch.Tensor]]:
    cache = ActivationCache(folder)
    return [cache.load_shard(i) for i in range(len(cache.shards))]


@pytest.fixture(scope="module")
def written(lm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    return folder, write_activation_cache(lm, ToySource(0), HOOKS, folder, config(), progress=False)


def test_cache_holds_the_models_activations_with_their_tokens(lm, written):
    folder, manifest = written
    assert manifest["n_tokens"] == 1000 and manifest["complete"] and not manifest["source_exhausted"]
    assert [s["n_tokens"] for s in manifest["shards"]] == [256, 256, 256, 232]
    assert manifest["hook_shapes"] == {HOOKS[0]: [lm.n_heads, lm.d_head], HOOKS[1]: [lm.d_model]}
    assert manifest["model"] == "tiny-gpt2" and manifest["dtype"] == "float32"
    assert ActivationCache(folder).metadata["dataset_path"] == "toy:0"
    shards = shard_tensors(folder)
    rows = {k: torch.cat([s[k] for s in shards]) for k in (*HOOKS, "token_ids", "window_index", "position")}
    windows = np.stack(list(itertools.islice(iter_windows(ToySource(0), lm.tokenizer, PackingConfig(16), 0), 80)))
    expected = ActivationExtractor(lm, HOOKS, model_batch_size=4).run(windows)
    for hook in HOOKS:
        assert torch.equal(rows[hook], expected[hook][:1000])
    assert torch.equal(rows["token_ids"].long(), torch.from_numpy(windows[rows["window_index"], rows["position"]]))
    order = rows["window_index"] * 16 + rows["position"]
    assert bool((order[1:] > order[:-1]).all())  # stream order, no duplicates
    for shard in shards:  # each shard carries the windows its rows come from
        stored = dict(zip(shard["windows_index"].tolist(), shard["windows"].long(), strict=True))
        assert all(torch.equal(stored[w], torch.from_numpy(windows[w])) for w in shard["window_index"].tolist())


def test_reader_shuffles_every_row_once_resumes_and_normalises(written):
    folder, manifest = written
    cache = ActivationCache(folder, batch_size=100, shards_per_buffer=2, normalization="none", drop_last=False)
    batches = list(cache.iter_batches())
    assert cache.n_batches == len(batches) == 10
    got = torch.cat([b[HOOKS[1]] for b in batches])
    stored = torch.cat([s[HOOKS[1]] for s in shard_tensors(folder)])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, stored.tolist()))
    assert not torch.equal(got, stored)
    for start in (3, 7):
        resumed = list(cache.iter_batches(start_batch=start))
        assert all(torch.equal(a[h], b[h]) for a, b in zip(resumed, batches[start:], strict=True) for h in HOOKS)
    normed = ActivationCache(folder, batch_size=1000, drop_last=False)
    for hook in HOOKS:
        x = next(iter(normed))[hook]
        assert x.pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ConfigError, match="not in the cache.*it holds: blocks.1.attn.hook_z, blocks.2.hook_resid_pre"):
        ActivationCache(folder, hooks=["blocks.0.hook_resid_pre"])


def test_a_repeating_reader_reshuffles_each_pass_and_resumes_inside_any_pass(written):
    folder, _ = written
    once = list(ActivationCache(folder, batch_size=100, normalization="none").iter_batches())
    cache = ActivationCache(folder, batch_size=100, normalization="none", repeat=True)
    batches = list(itertools.islice(cache.iter_batches(), 25))  # 10 per pass: 2.5 passes
    first, second = batches[:10], batches[10:20]
    assert all(torch.equal(a[h], b[h]) for a, b in zip(first, once, strict=True) for h in HOOKS)  # pass 0 = one pass
    rows = [torch.cat([b[HOOKS[1]] for b in part]) for part in (first, second)]
    assert sorted(map(tuple, rows[0].tolist())) == sorted(map(tuple, rows[1].tolist()))  # same rows...
    assert not torch.equal(rows[0], rows[1])  # ...in a new order
    for start in (4, 13, 21):
        resumed = list(itertools.islice(cache.iter_batches(start_batch=start), 25 - start))
        assert all(torch.equal(a[h], b[h]) for a, b in zip(resumed, batches[start:], strict=True) for h in HOOKS)
    with pytest.raises(ConfigError, match="fewer than one batch of 5000"):
        next(ActivationCache(folder, batch_size=5000, repeat=True).iter_batches())


def test_interrupted_run_resumes_without_duplicates_or_gaps(lm, written, tmp_path, monkeypatch):
    reference, _ = written
    real_save = cache_module.atomic_save_safetensors
    saved = []

    def crash_on_third_shard(*args, **kwargs):
        if len(saved) == 2:
            raise KeyboardInterrupt
        saved.append(args[0])
        return real_save(*args, **kwargs)

    monkeypatch.setattr(cache_module, "atomic_save_safetensors", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        write_activation_cache(lm, ToySource(0), HOOKS, tmp_path, config(), progress=False)
    monkeypatch.undo()
    partial = read_manifest(tmp_path)
    assert partial["n_tokens"] == 512 and not partial["complete"]
    stale = [tmp_path / ".shard_00002.safetensors.k3j2.tmp", tmp_path / ".tmpAb12Cd"]  # left by a killed run
    for path in stale:
        path.write_bytes(b"partial")
    forwards = []
    handle = lm.adapter.embed_module().register_forward_hook(lambda *a: forwards.append(1))
    try:
        resumed = write_activation_cache(lm, ToySource(0), HOOKS, tmp_path, config(), progress=False)
    finally:
        handle.remove()
    assert len(forwards) < 80 // 4  # the windows of the first two shards were not run again
    assert not any(path.exists() for path in stale)
    original = read_manifest(reference)
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in original["shards"]]


def test_extending_a_finished_cache_equals_writing_it_at_once(lm, written, tmp_path):
    write_activation_cache(lm, ToySource(0), HOOKS, tmp_path / "a", config(600), progress=False)
    extended = write_activation_cache(lm, ToySource(0), HOOKS, tmp_path / "a", config(1000), progress=False)
    assert [s["sha256"] for s in extended["shards"]] == [s["sha256"] for s in read_manifest(written[0])["shards"]]
    again = write_activation_cache(lm, ToySource(0), HOOKS, tmp_path / "a", config(1000), progress=False)
    assert again == extended  # nothing left to do
    with pytest.raises(ConfigError, match="other settings.*dtype: 'float32' -> 'bfloat16'"):
        write_activation_cache(lm, ToySource(0), HOOKS, tmp_path / "a", config(1000, dtype="bfloat16"))


def test_truncated_or_corrupted_shards_are_named(lm, tmp_path):
    write_activation_cache(lm, ToySource(0), HOOKS, tmp_path, config(600), progress=False)
    shard = tmp_path / "shard_00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    cache = ActivationCache(tmp_path)
    with pytest.raises(CorruptFileError, match="shard shard_00001.safetensors .* truncated"):
        cache.verify()
    with pytest.raises(CorruptFileError, match="shard_00001.safetensors"):
        list(ActivationCache(tmp_path, batch_size=64, shuffle=False).iter_batches())
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError, match="shard shard_00001.safetensors .* corrupted: its sha256"):
        cache.load_shard(1)
    shard.write_bytes(data[:-100])  # a resumed write recomputes a damaged shard
    manifest = write_activation_cache(lm, ToySource(0), HOOKS, tmp_path, config(1000), progress=False)
    ActivationCache(tmp_path).verify()
    assert manifest["n_tokens"] == 1000
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="manifest.json is not valid JSON"):
        ActivationCache(tmp_path)


def test_finite_source_ends_the_cache_early(lm, tmp_path):
    np.save(tmp_path / "s.npy", np.arange(3, 200, dtype=np.int64))
    from saelab.data.sources import TokenArraySource

    manifest = write_activation_cache(lm, TokenArraySource(tmp_path / "s.npy"), HOOKS, tmp_path / "c",
                                      config(10_000), progress=False)
    assert manifest["complete"] and manifest["source_exhausted"] and manifest["n_tokens"] == 197 // 15 * 15


def test_cli_writes_and_verifies_a_cache(tmp_path, capsys):
    out = tmp_path / "cache"
    args = ["activations", "cache", "--model", "toy", "--hooks", "blocks.1.attn.hook_z,blocks.2.hook_resid_pre",
            "--tokens", "600", "--out", str(out), "--context-size", "32", "--shard-tokens", "256",
            "--no-progress", "--json"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_tokens"] == 600 and summary["shards"] == 3 and summary["d_in"]["blocks.1.attn.hook_z"] == 128
    with pytest.raises(SystemExit) as exit_info:
        main(["activations", "verify", str(out)])
    assert exit_info.value.code == 0 and "verified" in capsys.readouterr().out
    (out / "shard_00000.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main(["activations", "verify", str(out)])
    assert exit_info.value.code == 2 and "shard_00000.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(args[:5] + ["blocks.0.hook_nope"] + args[6:])
    assert exit_info.value.code == 2 and "valid hook names" in capsys.readouterr().err
