"""On-disk activation cache: sharded safetensors plus a JSON manifest, resumable, verifiable.

Layout of a cache folder::

    manifest.json                 what produced the cache, and every shard with its checksum
    shard_00000.safetensors       rows in stream order: one tensor per hook [n, d_in] (cache dtype),
    shard_00001.safetensors       token_ids [n] (int32), window_index [n] (int64), position [n] (int32),
    ...                           windows [n_windows, context_size] (int32) with windows_index [n_windows]

Rows are the kept (non-special) tokens of the packed windows, window by window; ``window_index`` is
the window's index in the source's window stream and ``windows`` holds those windows' tokens, so
each activation can be traced to its token and context. The manifest records the model, hooks,
shapes, dtype, packing, source, token count and, per shard, its row count, byte size, sha256 and
per-hook sum of squared norms (so normalisation factors come without reading the data).

Writing (``write_activation_cache``) is resumable: shards are written atomically and the manifest
is rewritten atomically after each one. A rerun with the same settings keeps the complete shards
listed in the manifest (a missing or wrongly sized one is recomputed from there on), skips the
windows they cover without running the model, and continues; forward passes stay aligned to the
same window batches, so a resumed cache is bit-identical to an uninterrupted one. A larger
``n_tokens`` extends a finished cache.

Reading (``ActivationCache``) yields shuffled batches in the ``ActivationStore`` format, with
``iter_batches(start_batch=N)``; every shard is checked against the manifest's size and sha256
when loaded, and a truncated or corrupted one raises ``CorruptFileError`` naming it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.data.activations import ActivationExtractor
from saelab.data.packing import PackingConfig, iter_windows
from saelab.data.shuffle import Chunk, chunk_generator, shuffled_batches
from saelab.data.sources import Source, dataset_path_of
from saelab.errors import ConfigError, CorruptFileError, SaelabError, check_choice, check_range
from saelab.fileio import (
    atomic_save_safetensors,
    atomic_write_json,
    check_output_folder,
    load_safetensors,
    sha256_file,
)
from saelab.models import LoadedModel

FORMAT = "saelab-activation-cache"
VERSION = 1
MANIFEST = "manifest.json"
ROW_KEYS = ("token_ids", "window_index", "position")
WINDOW_KEYS = ("windows", "windows_index")
NORMALIZATIONS = ("unit_mean_squared_norm", "none")


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


@dataclass
class CacheConfig:
    """What ``write_activation_cache`` writes: ``n_tokens`` activation rows per hook in shards of
    ``shard_tokens`` rows, stored as ``dtype``."""

    n_tokens: int
    packing: PackingConfig = field(default_factory=PackingConfig)
    model_batch_size: int = 16
    shard_tokens: int = 65536
    dtype: str = "float32"
    exclude_special_tokens: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.packing, dict):
            accepted = list(PackingConfig.__dataclass_fields__)
            unknown = sorted(map(str, set(self.packing) - set(accepted)))
            if unknown:
                raise ConfigError(f"packing has unknown key(s) {', '.join(map(repr, unknown))}; accepted: "
                                  f"{', '.join(accepted)}")
            self.packing = PackingConfig(**self.packing)
        if not isinstance(self.packing, PackingConfig):
            raise ConfigError(f"packing={self.packing!r} must be a PackingConfig or a dict of its fields")
        check_range("n_tokens", self.n_tokens, 1, None, integer=True)
        check_range("model_batch_size", self.model_batch_size, 1, None, integer=True)
        check_range("shard_tokens", self.shard_tokens, 1, None, integer=True)
        check_choice("dtype", self.dtype, ("float32", "float16", "bfloat16"))


# --- writing ---------------------------------------------------------------------------------------
def _identity(lm: LoadedModel, extractor: ActivationExtractor, source: Source, config: CacheConfig) -> dict:
    """The manifest fields that must match for a rerun to continue an existing cache."""
    return {
        "format": FORMAT, "version": VERSION, "model": lm.name, "model_class": type(lm.model).__name__,
        "model_fingerprint": lm.fingerprint(),
        "hooks": extractor.hooks, "hook_shapes": {h: list(s) for h, s in extractor.hook_shapes.items()},
        "d_in": extractor.d_in, "dtype": config.dtype, "packing": config.packing.to_dict(),
        "source": source.describe(), "exclude_special_tokens": config.exclude_special_tokens,
        "special_token_ids": extractor.special_ids, "shard_tokens": config.shard_tokens,
        "model_batch_size": config.model_batch_size,
    }


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise SaelabError(f"{str(folder)!r} is not an activation cache: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptFileError(f"{path} is not a saelab activation-cache manifest")
    if manifest.get("version") != VERSION:
        raise CorruptFileError(f"{path} has cache format version {manifest.get('version')!r}; "
                               f"this saelab reads version {VERSION}")
    missing = [k for k in ("hooks", "d_in", "dtype", "shards", "n_tokens", "complete") if k not in manifest]
    if missing:
        raise CorruptFileError(f"{path} lacks the fields {missing}")
    return manifest


def _reusable_shards(folder: Path, manifest: dict, log) -> list[dict]:
    """The manifest's full shards up to the first one that is missing or has the wrong size."""
    kept = []
    for entry in manifest["shards"]:
        path = folder / entry["file"]
        if entry["n_tokens"] != manifest["shard_tokens"]:
            break  # a final partial shard is rewritten when the cache grows
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            log(f"{entry['file']} is missing or truncated; recomputing the cache from it on")
            break
        kept.append(entry)
    return kept


class _PendingRows:
    """Rows waiting to be written: per-hook activations, their token/window/position ids, windows."""

    def __init__(self, hooks: list[str]):
        self.parts: dict[str, list[torch.Tensor]] = {k: [] for k in (*hooks, *ROW_KEYS)}
        self.windows: dict[int, np.ndarray] = {}
        self.n = 0

    def add(self, rows: dict[str, torch.Tensor], windows: dict[int, np.ndarray]) -> None:
        for key, value in rows.items():
            self.parts[key].append(value)
        self.windows.update(windows)
        self.n += len(rows["token_ids"])

    def take(self, n: int) -> dict[str, torch.Tensor]:
        """The first ``n`` rows as one tensor per key, plus the windows they come from."""
        merged = {k: torch.cat(v) for k, v in self.parts.items()}
        head = {k: v[:n] for k, v in merged.items()}
        self.parts = {k: [v[n:]] for k, v in merged.items()}
        self.n -= n
        index = sorted(set(head["window_index"].tolist()))
        head["windows"] = torch.from_numpy(np.stack([self.windows[i] for i in index]).astype(np.int32))
        head["windows_index"] = torch.tensor(index, dtype=torch.int64)
        still_needed = set(self.parts["window_index"][0].tolist())
        self.windows = {i: w for i, w in self.windows.items() if i in still_needed}
        return head


def _write_shard(folder: Path, index: int, rows: dict[str, torch.Tensor], hooks: list[str]) -> dict:
    path = folder / shard_name(index)
    # one metadata key: safetensors writes a metadata map in arbitrary order, and identical shards
    # should be identical files
    atomic_save_safetensors(path, rows, metadata={"saelab": f"{FORMAT} v{VERSION} shard {index}"})
    return {"file": path.name, "n_tokens": len(rows["token_ids"]), "bytes": path.stat().st_size,
            "sha256": sha256_file(path), "first_window": int(rows["window_index"][0]),
            "sum_sq_norm": {h: float(rows[h].double().pow(2).sum()) for h in hooks}}


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete what a killed run can leave: ``atomic_write``'s ``.<name>.*.tmp`` files and the
    ``.tmpXXXXXX`` files the safetensors writer (Rust ``tempfile``) creates next to its target."""
    for path in folder.glob(".*.tmp"):
        if path.name.startswith((f".{MANIFEST}.", ".shard_")):
            path.unlink()
    for path in folder.glob(".tmp??????"):
        if path.is_file():
            path.unlink()


def _bytes_needed(folder: Path, d_in: dict[str, int], config: CacheConfig) -> int:
    """Disk space the cache still needs: every row's activations and ids, less the shards already there."""
    item = 4 if config.dtype == "float32" else 2
    row = sum(d_in.values()) * item + 4 + 8 + 4
    present = sum(p.stat().st_size for p in folder.glob("shard_*.safetensors")) if folder.is_dir() else 0
    return max(0, config.n_tokens * row - present)


def _window_batches(source: Source, lm: LoadedModel, packing: PackingConfig, size: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for window in iter_windows(source, lm.tokenizer, packing, lm.bos_token_id, lm.eos_token_id):
        batch.append(window)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def write_activation_cache(lm: LoadedModel, source: Source, hooks: Iterable[str] | str, out_dir: str | os.PathLike,
                           config: CacheConfig, progress: bool = True) -> dict:
    """Write (or resume, or extend) the cache in ``out_dir``; return its manifest."""
    folder = Path(out_dir)
    extractor = ActivationExtractor(lm, hooks, model_batch_size=config.model_batch_size,
                                    exclude_special_tokens=config.exclude_special_tokens,
                                    dtype=config.dtype, device="cpu")
    check_output_folder(folder, _bytes_needed(folder, extractor.d_in, config), what="activation cache folder")
    _remove_stale_temporaries(folder)
    identity = _identity(lm, extractor, source, config)

    def log(message: str) -> None:
        print(f"saelab activations cache: {message}", file=sys.stderr)

    shards: list[dict] = []
    if (folder / MANIFEST).exists():
        old = read_manifest(folder)
        changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in identity.items() if old.get(k) != v]
        if changed:
            raise ConfigError(f"{str(folder)!r} holds a cache written with other settings ({'; '.join(changed)}); "
                              "rerun with the same settings to resume, or choose another output folder")
        if old["complete"] and (old["n_tokens"] >= config.n_tokens or old.get("source_exhausted")):
            return old
        shards = _reusable_shards(folder, old, log)

    written = sum(s["n_tokens"] for s in shards)
    manifest = {**identity, "n_tokens_requested": config.n_tokens, "n_tokens": written, "complete": False,
                "source_exhausted": False, "shards": shards}
    atomic_write_json(folder / MANIFEST, manifest)

    hooks_list = extractor.hooks
    pending = _PendingRows(hooks_list)
    rows_before = 0  # kept rows of the stream before the current batch of windows
    bar = tqdm(total=config.n_tokens, initial=written, unit="tok", disable=not progress, desc="activations")
    window_base = 0
    exhausted = False
    for windows in _window_batches(source, lm, config.packing, config.model_batch_size):
        if written >= config.n_tokens:
            exhausted = False
            break
        keep = extractor.valid_mask(windows)
        n_rows = int(keep.sum())
        if rows_before + n_rows <= written:  # already in the kept shards: no forward pass
            rows_before += n_rows
            window_base += len(windows)
            continue
        acts = extractor.run(windows)
        win, pos = np.nonzero(keep)
        rows = {**acts, "token_ids": torch.from_numpy(windows[win, pos].astype(np.int32)),
                "window_index": torch.from_numpy((win + window_base).astype(np.int64)),
                "position": torch.from_numpy(pos.astype(np.int32))}
        skip = max(0, written + pending.n - rows_before)  # rows of this batch already written
        need = config.n_tokens - written - pending.n
        rows = {k: v[skip:skip + need] for k, v in rows.items()}
        pending.add(rows, {window_base + i: windows[i] for i in set(win.tolist())})
        bar.update(len(rows["token_ids"]))
        rows_before += n_rows
        window_base += len(windows)
        while pending.n >= config.shard_tokens or (pending.n and written + pending.n >= config.n_tokens):
            head = pending.take(min(pending.n, config.shard_tokens))
            shards.append(_write_shard(folder, len(shards), head, hooks_list))
            written += len(head["token_ids"])
            manifest.update(n_tokens=written, shards=shards)
            atomic_write_json(folder / MANIFEST, manifest)
    else:
        exhausted = written < config.n_tokens
    bar.close()
    if pending.n:  # the source ended before n_tokens
        head = pending.take(pending.n)
        shards.append(_write_shard(folder, len(shards), head, hooks_list))
        written += len(head["token_ids"])
    manifest.update(n_tokens=written, shards=shards, complete=True, source_exhausted=exhausted)
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


EPOCH_SEED_STRIDE = 1_000_003  # seed offset of each further pass of a repeating cache


# --- reading ---------------------------------------------------------------------------------------
class ActivationCache:
    """Read a cache folder; ``iter_batches`` yields shuffled ``{hook: Tensor[batch_size, d_in]}``.

    Shards are visited in a seeded random order, ``shards_per_buffer`` at a time, and the rows of
    each group are shuffled together (``saelab.data.shuffle``). ``normalization`` as in
    ``StoreConfig``; the factors come from the manifest's exact sums over the whole cache.
    ``repeat``: after one pass start another, reshuffled (epoch ``e`` uses seed ``seed + e * EPOCH_SEED_STRIDE``;
    epoch 0 is the single pass), so a run may train on more tokens than the cache holds; batch ``i``
    is the same batch whether or not the iteration restarted in between.
    """

    def __init__(self, path: str | os.PathLike, *, hooks: Iterable[str] | None = None, batch_size: int = 4096,
                 seed: int = 0, shards_per_buffer: int = 4, shuffle: bool = True, device: str | torch.device = "cpu",
                 dtype: str | None = None, normalization: str = "unit_mean_squared_norm", verify: bool = True,
                 drop_last: bool = True, repeat: bool = False):
        self.folder = Path(path)
        self.manifest = read_manifest(self.folder)
        available = list(self.manifest["hooks"])
        self.hooks = list(hooks) if hooks is not None else available
        unknown = [h for h in self.hooks if h not in available]
        if unknown:
            raise ConfigError(f"hooks {unknown} are not in the cache {str(self.folder)!r}; it holds: "
                              f"{', '.join(available)}")
        check_range("batch_size", batch_size, 1, None, integer=True)
        check_range("shards_per_buffer", shards_per_buffer, 1, None, integer=True)
        check_range("seed", seed, 0, None, integer=True)
        check_choice("normalization", normalization, NORMALIZATIONS)
        if dtype is not None:
            check_choice("dtype", dtype, ("float32", "float16", "bfloat16", "float64"))
        self.batch_size, self.seed, self.shards_per_buffer = int(batch_size), int(seed), int(shards_per_buffer)
        self.shuffle, self.verify_on_load, self.drop_last = bool(shuffle), bool(verify), bool(drop_last)
        self.repeat = bool(repeat)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype or self.manifest["dtype"])
        self.normalization = normalization
        self.d_in = {h: int(self.manifest["d_in"][h]) for h in self.hooks}
        self.shards: list[dict] = list(self.manifest["shards"])
        self.n_tokens = int(self.manifest["n_tokens"])

    def __repr__(self) -> str:
        return (f"ActivationCache({str(self.folder)!r}, model={self.manifest.get('model')!r}, hooks={self.hooks}, "
                f"n_tokens={self.n_tokens}, shards={len(self.shards)})")

    @property
    def metadata(self) -> dict:
        """What the trainer stores in SAE folders about the data (JSON-able)."""
        m = self.manifest
        packing = m.get("packing", {})
        return {"model_name": m.get("model"), "context_size": packing.get("context_size"),
                "dataset_path": dataset_path_of(m.get("source", {})), "prepend_bos": packing.get("prepend_bos"),
                "exclude_special_tokens": m.get("exclude_special_tokens"), "activation_cache": str(self.folder)}

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def normalization_factors(self) -> dict[str, float]:
        """``{hook: sqrt(mean ||x||^2)}`` over every row of the cache; normalised batches are divided by it."""
        factors = {}
        for hook in self.hooks:
            total = sum(s["sum_sq_norm"][hook] for s in self.shards)
            factors[hook] = math.sqrt(total / self.n_tokens) if total > 0 else 1.0
        return factors

    @property
    def n_batches(self) -> int:
        full, rest = divmod(self.n_tokens, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def check_shard(self, index: int) -> Path:
        """Raise ``CorruptFileError`` unless shard ``index`` exists with the manifest's size and sha256."""
        entry = self.shards[index]
        path = self.folder / entry["file"]
        if not path.is_file():
            raise CorruptFileError(f"shard {entry['file']} of cache {str(self.folder)!r} is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CorruptFileError(f"shard {entry['file']} of cache {str(self.folder)!r} is truncated or "
                                   f"overwritten: {size} bytes, the manifest records {entry['bytes']}")
        if sha256_file(path) != entry["sha256"]:
            raise CorruptFileError(f"shard {entry['file']} of cache {str(self.folder)!r} is corrupted: "
                                   "its sha256 differs from the manifest's")
        return path

    def verify(self) -> None:
        """Check every shard (existence, size, sha256)."""
        for index in range(len(self.shards)):
            self.check_shard(index)

    def load_shard(self, index: int) -> dict[str, torch.Tensor]:
        """Every tensor of shard ``index`` as stored (activations of all hooks, token ids, windows)."""
        entry = self.shards[index]
        path = self.check_shard(index) if self.verify_on_load else self.folder / entry["file"]
        shapes = {h: (entry["n_tokens"], self.d_in[h]) for h in self.hooks}
        shapes.update({k: (entry["n_tokens"],) for k in ROW_KEYS})
        tensors = load_safetensors(path, shapes, where=f"shard {entry['file']} of cache {str(self.folder)!r}")
        bad = [k for k in (*self.hooks, *ROW_KEYS) if k not in tensors or len(tensors[k]) != entry["n_tokens"]]
        if bad:
            raise CorruptFileError(f"shard {entry['file']} of cache {str(self.folder)!r} lacks rows for {bad}")
        return tensors

    def _group_loader(self, indices: list[int]):
        factors = self.normalization_factors if self.normalization != "none" else None

        def load() -> dict[str, torch.Tensor]:
            shards = [self.load_shard(i) for i in indices]
            out = {}
            for hook in self.hooks:
                x = torch.cat([s[hook] for s in shards]).to(device=self.device, dtype=self.dtype)
                out[hook] = x.div_(factors[hook]) if factors is not None else x
            return out

        return load

    def shard_order(self, seed: int | None = None) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.shards)))
        seed = self.seed if seed is None else seed
        return torch.randperm(len(self.shards), generator=chunk_generator(seed, 0, stream=1)).tolist()

    def iter_batches(self, start_batch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches ``{hook: Tensor[batch_size, d_in]}`` from batch ``start_batch`` on (one pass over the
        cache, or endless passes with ``repeat``); identical to the batches an uninterrupted iteration
        yields at those indices."""
        check_range("start_batch", start_batch, 0, None, integer=True)
        if not self.repeat:
            return self._one_pass(self.seed, start_batch)
        per_epoch = self.n_tokens // self.batch_size
        if per_epoch == 0:
            raise ConfigError(f"cache {str(self.folder)!r} holds {self.n_tokens} rows, fewer than one batch of "
                              f"{self.batch_size}; lower batch_size or write a larger cache")
        return self._epochs(per_epoch, start_batch)

    def _epochs(self, per_epoch: int, start_batch: int) -> Iterator[dict[str, torch.Tensor]]:
        epoch, offset = divmod(start_batch, per_epoch)
        while True:
            passes = self._one_pass(self.seed + epoch * EPOCH_SEED_STRIDE, offset)
            for _, batch in zip(range(per_epoch - offset), passes, strict=False):
                yield batch
            epoch, offset = epoch + 1, 0

    def _one_pass(self, seed: int, start_batch: int) -> Iterator[dict[str, torch.Tensor]]:
        order = self.shard_order(seed)
        groups = [order[i:i + self.shards_per_buffer] for i in range(0, len(order), self.shards_per_buffer)]
        chunks = (Chunk(sum(self.shards[i]["n_tokens"] for i in g), self._group_loader(g)) for g in groups)
        return shuffled_batches(chunks, self.batch_size, seed, start_batch, shuffle=self.shuffle,
                                drop_last=self.drop_last)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iter_batches()
