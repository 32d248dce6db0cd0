"""The panel's spread over replicate SAEs: the same configuration trained at several seeds.

Replicates are panel rows whose SAE folders share a name in different parents, as ``saelab sweep
--seeds 0,1,2`` writes them (``OUT/seed0/train/saes/topk.k=64``, ``OUT/seed1/...``). Each group gets
the mean, sample standard deviation, minimum and maximum of every figure, and each ranked figure says
whether its winner by mean stands clear of the runner-up by more than two standard errors of the
difference (``separated``), so that a ranking within seed noise is not read as a result.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def replicate_groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``{folder name: rows}`` for the folder names that occur in more than one row, in row order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(Path(row["path"]).name, []).append(row)
    return {name: group for name, group in groups.items() if len(group) > 1}


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    if std <= 1e-12 * max(1.0, float(np.abs(arr).max())):
        std = 0.0  # equal values (rounding leaves ~1e-16)
    return {"mean": float(arr.mean()), "std": std, "min": float(arr.min()), "max": float(arr.max()), "n": len(arr)}


def seed_spread(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> dict[str, Any] | None:
    """Spread of every ``columns`` figure (``(name, better)``, better one of "higher", "lower", "")
    over each replicate group of ``rows``; None when no SAE has replicates.

    Returns ``{"rows": [{"sae", "architecture", "n_replicates", "replicates" (row labels), "values"
    ({column: [each replicate's value]}), <column>: {mean, std, min, max, n}}],
    "winners": {<column>: {"sae", "mean", "runner_up", "runner_up_mean", "separated"}}}``."""
    groups = replicate_groups(rows)
    if not groups:
        return None
    out_rows = []
    for name, group in groups.items():
        row: dict[str, Any] = {"sae": name, "architecture": group[0]["architecture"], "n_replicates": len(group),
                               "replicates": [r["sae"] for r in group], "values": {}}
        for column, _ in columns:
            values = [float(r[column]) for r in group if isinstance(r.get(column), (int, float))
                      and math.isfinite(r[column])]
            row[column] = _summary(values) if values else None
            row["values"][column] = values
        out_rows.append(row)
    return {"rows": out_rows, "winners": _winners(out_rows, columns)}


def _winners(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    found = {}
    for column, better in columns:
        if not better:
            continue
        scored = [r for r in rows if r.get(column)]
        if len(scored) < 2:
            continue
        sign = 1.0 if better == "higher" else -1.0
        first, second = sorted(scored, key=lambda r: -sign * r[column]["mean"])[:2]
        a, b = first[column], second[column]
        se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
        gap = sign * (a["mean"] - b["mean"])
        found[column] = {"sae": first["sae"], "mean": a["mean"], "runner_up": second["sae"],
                         "runner_up_mean": b["mean"], "separated": bool(a["n"] > 1 and b["n"] > 1 and gap > 2 * se)}
    return found


def format_spread(spread: dict[str, Any], columns: list[tuple[str, str]]) -> str:
    """Markdown: mean ± standard deviation per replicate group, then the winners by mean."""
    from saelab.eval.report import markdown_table

    def cell(summary: dict[str, float] | None) -> str:
        return "" if summary is None else f"{summary['mean']:.4g} ± {summary['std']:.2g}"

    header = ["sae", "architecture", "n"] + [c for c, _ in columns]
    table = markdown_table(header, [[r["sae"], r["architecture"], r["n_replicates"]] + [cell(r.get(c)) for c, _ in columns]
                                    for r in spread["rows"]])
    parts = ["Spread over replicates (mean ± sample standard deviation)", "", table]
    if spread["winners"]:
        parts += ["", "winners by mean (separated: ahead of the runner-up by more than 2 standard errors)", "",
                  markdown_table(["figure", "best", "mean", "runner-up", "mean", "separated"],
                                 [[c, w["sae"], w["mean"], w["runner_up"], w["runner_up_mean"],
                                   "yes" if w["separated"] else "no"] for c, w in spread["winners"].items()])]
    return "\n".join(parts) + "\n"


def plot_spread(spread: dict[str, Any], columns: list[tuple[str, str]], path: Path) -> Path:
    """One panel per ranked figure: each replicate group's mean with a bar of ± one standard
    deviation and its replicates as dots; written to ``path`` (PNG)."""
    from saelab.plotting import pyplot, save_png

    plt = pyplot()
    ranked = [(c, b) for c, b in columns if b and any(r.get(c) for r in spread["rows"])]
    labels = [r["sae"] for r in spread["rows"]]
    n_cols = min(4, max(1, len(ranked)))
    n_rows = max(1, math.ceil(len(ranked) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1 + 3.3 * n_cols, 0.6 + 3.2 * n_rows), squeeze=False)
    for ax in axes.flat[len(ranked):]:
        ax.set_visible(False)
    for ax, (column, better) in zip(axes.flat, ranked, strict=False):
        for i, row in enumerate(spread["rows"]):
            s = row.get(column)
            if s:
                ax.errorbar(i, s["mean"], yerr=s["std"], fmt="o", color="#4c72b0", capsize=3, markersize=4)
                ax.plot([i + 0.25] * len(row["values"][column]), row["values"][column], ".", color="#888888",
                        markersize=4)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{column.split('.', 1)[-1]} ({better} wins)", fontsize=8)
    fig.suptitle("mean ± std over replicate SAEs (grey: each replicate)", fontsize=8)
    fig.subplots_adjust(hspace=0.9, wspace=0.35)
    return save_png(fig, path)
