"""Atomic training checkpoints: ``out_dir/checkpoints/step_{N:09d}/`` with safetensors and JSON only.

A checkpoint is written into a hidden temporary folder, its files checksummed in ``state.json``,
and then renamed into place, so a reader sees complete checkpoints only. The newest folder whose
checksums verify is the one resumed from; older ones beyond ``keep`` are deleted after each write.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from saelab.errors import CorruptFileError
from saelab.fileio import sha256_file

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
FORMAT = "saelab-train-checkpoint"
_PREFIX = "step_"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Checkpoint folders under ``run_dir``, newest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def write_checkpoint(run_dir: Path, step: int, state: dict[str, Any], tensor_files: dict[str, dict[str, Tensor]],
                     keep: int) -> Path:
    """Write one checkpoint atomically and prune older ones; returns its folder."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:09d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {}
    for name, tensors in tensor_files.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / name)
        files[name] = sha256_file(tmp / name)
    body = json.dumps({"format": FORMAT, "version": 1, "step": step, **state, "files": files}, indent=2)
    with open(tmp / STATE_FILE, "w") as fh:
        fh.write(body + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    for name in files:
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        trash = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    for old in checkpoint_dirs(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
    """(state.json, {file: tensors}) of one checkpoint folder, verifying checksums."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"checkpoint {folder}: {STATE_FILE} is missing or not JSON ({exc})") from exc
    if state.get("format") != FORMAT:
        raise CorruptFileError(f"checkpoint {folder}: {STATE_FILE} is not a saelab training checkpoint")
    tensors = {}
    for name, digest in state.get("files", {}).items():
        path = folder / name
        if not path.exists() or sha256_file(path) != digest:
            raise CorruptFileError(f"checkpoint {folder}: {name} is missing or its checksum does not match "
                                   f"{STATE_FILE}")
        tensors[name] = load_file(path)
    return state, tensors


def read_latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any], dict[str, dict[str, Tensor]]] | None:
    """The newest checkpoint that verifies (older ones are tried if newer ones are damaged), or None."""
    errors = []
    for folder in checkpoint_dirs(run_dir):
        try:
            state, tensors = read_checkpoint(folder)
        except CorruptFileError as exc:
            errors.append(str(exc))
            continue
        if errors:
            warnings.warn("skipped damaged checkpoints: " + "; ".join(errors), stacklevel=2)
        return folder, state, tensors
    if errors:
        raise CorruptFileError("no readable checkpoint: " + "; ".join(errors))
    return None


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Adam state as (tensors named ``{param_index}.{key}``, JSON-able param groups and scalars)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
