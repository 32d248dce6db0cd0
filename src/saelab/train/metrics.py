"""Training metrics: JSON lines in ``out_dir/metrics.jsonl``, optionally mirrored to W&B or TensorBoard."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from saelab.errors import ConfigError
from saelab.fileio import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"
_PACKAGES = {"wandb": "wandb", "tensorboard": "tensorboard"}


class MetricsLog:
    """Appends one JSON object per line; ``truncate_after(step)`` drops lines of steps not yet replayed."""

    def __init__(self, run_dir: Path, log_to: tuple[str, ...] = (), wandb_project: str = "saelab",
                 run_config: dict[str, Any] | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sinks = [_make_sink(name, Path(run_dir), wandb_project, run_config or {}) for name in log_to]

    def truncate_after(self, step: int) -> None:
        """Keep only lines with ``step <= step`` (a resumed run re-logs what follows its checkpoint)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        atomic_write_bytes(self.path, ("\n".join(kept) + ("\n" if kept else "")).encode())

    def write(self, records: list[dict[str, Any]]) -> None:
        with open(self.path, "a") as fh:
            for record in records:
                fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        for sink in self._sinks:
            sink.write(records)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


def _require(name: str) -> None:
    package = _PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"log_to includes {name!r} but the {package} package is not installed; "
                          f"pip install {package}, or remove {name!r} from log_to")


def _make_sink(name: str, run_dir: Path, project: str, run_config: dict[str, Any]):
    _require(name)
    if name == "wandb":
        return _WandbSink(run_dir, project, run_config)
    return _TensorBoardSink(run_dir)


def _numeric(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers as ``{sae}/{key}`` (one level of nested dicts as ``{sae}/{key}/{sub}``)."""
    prefix = record.get("sae", "run")
    flat: dict[str, float] = {}
    for key, value in record.items():
        items = value.items() if isinstance(value, dict) else [("", value)]
        for sub, v in items:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and key != "step":
                flat[f"{prefix}/{key}/{sub}" if sub else f"{prefix}/{key}"] = float(v)
    return flat


class _WandbSink:
    def __init__(self, run_dir: Path, project: str, run_config: dict[str, Any]):
        self.wandb = importlib.import_module("wandb")
        self.run = self.wandb.init(project=project, name=run_dir.name, dir=str(run_dir), config=run_config,
                                   id="saelab-" + hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12], resume="allow")

    def write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.run.log(_numeric(record), step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


class _TensorBoardSink:
    def __init__(self, run_dir: Path):
        writer_cls = importlib.import_module("torch.utils.tensorboard").SummaryWriter
        self.writer = writer_cls(log_dir=str(run_dir / "tensorboard"))

    def write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            for key, value in _numeric(record).items():
                self.writer.add_scalar(key, value, int(record["step"]))

    def close(self) -> None:
        self.writer.close()
