"""Feature labels for graph nodes, read from the folders ``saelab autointerp`` and ``saelab dashboard`` write.

A labels folder (or file) holds ``results.json`` (autointerp: each latent's ``explanation``) and/or
``feature_data.json`` (dashboard: each latent's top output tokens, else its strongest example's token).
An explanation wins over a dashboard label. Labels are given per block: ``LAYER=PATH``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from saelab.errors import ConfigError, CorruptFileError

AUTOINTERP_FILE = "results.json"
DASHBOARD_FILE = "feature_data.json"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"labels file {str(path)!r} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CorruptFileError(f"labels file {str(path)!r} holds {type(data).__name__}, not a JSON object")
    return data


def _dashboard_label(record: dict) -> str | None:
    top = (record.get("logits") or {}).get("top") or []
    if top:
        return "→ " + " ".join(str(token) for token, _ in top[:3])
    examples = record.get("top_examples") or []
    if examples and examples[0].get("tokens"):
        example = examples[0]
        return f"on {example['tokens'][int(example.get('mark', 0))]!s}"
    return None


def read_labels(path: str | Path) -> dict[int, str]:
    """``{feature index: label}`` from a labels folder or one of its files (see the module docstring)."""
    path = Path(path)
    files = [path] if path.is_file() else [path / name for name in (DASHBOARD_FILE, AUTOINTERP_FILE)]
    files = [f for f in files if f.is_file()]
    if not files:
        raise ConfigError(f"labels path {str(path)!r} holds neither {AUTOINTERP_FILE} (saelab autointerp) nor "
                          f"{DASHBOARD_FILE} (saelab dashboard)")
    labels: dict[int, str] = {}
    for file in files:  # the dashboard first, so explanations overwrite its labels
        data = _read(file)
        if isinstance(data.get("results"), list):
            labels.update({int(r["feature"]): str(r["explanation"]) for r in data["results"]
                           if isinstance(r, dict) and r.get("explanation") and "feature" in r})
        elif isinstance(data.get("features"), list):
            for record in data["features"]:
                label = _dashboard_label(record) if isinstance(record, dict) else None
                if label is not None and "index" in record:
                    labels.setdefault(int(record["index"]), label)
        else:
            raise CorruptFileError(f"labels file {str(file)!r} has neither 'results' (autointerp) nor 'features' "
                                   "(dashboard)")
    return labels


def labels_by_layer(specs: Sequence[str], n_layers: int) -> dict[int, dict[int, str]]:
    """``["LAYER=PATH", ...]`` -> ``{layer: {feature: label}}``."""
    out: dict[int, dict[int, str]] = {}
    for spec in specs:
        layer, sep, path = spec.partition("=")
        if not sep or not layer.strip().isdigit() or not path.strip():
            raise ConfigError(f"--labels {spec!r} must be LAYER=PATH, e.g. 2=runs/dash/mlp2")
        if not 0 <= int(layer) < n_layers:
            raise ConfigError(f"--labels {spec!r}: layer {layer} does not exist (the model has blocks 0..{n_layers - 1})")
        out.setdefault(int(layer), {}).update(read_labels(path.strip()))
    return out
