"""Training curves: L0, FVU and loss of every SAE of a run against training tokens, from
``metrics.jsonl``, as one PNG (``training_curves.png`` in the run folder). A flat tail on every panel
is what a converged run looks like; a curve still falling means more tokens would change the result."""

from __future__ import annotations

import json
from pathlib import Path

from saelab.errors import SaelabError
from saelab.plotting import pyplot, save_png
from saelab.train.metrics import METRICS_FILE

CURVES_FILE = "training_curves.png"
PANELS = (("l0", "L0 (active latents per token)"), ("fvu", "FVU"), ("loss", "training loss"))  # log scale


def read_curves(run_dir: str | Path) -> dict[str, list[dict]]:
    """``{sae name: [metrics line, ...]}`` in step order, from the run's ``metrics.jsonl``."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise SaelabError(f"{path} does not exist: no training metrics to plot")
    curves: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash (a resumed run truncates the log to its checkpoint)
        if "sae" in row and "tokens" in row:
            curves.setdefault(row["sae"], []).append(row)
    return {name: sorted(rows, key=lambda r: r["step"]) for name, rows in curves.items()}


def plot_training_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the curves of the run in ``run_dir`` to ``out`` (default ``run_dir/training_curves.png``)."""
    curves = read_curves(run_dir)
    if not curves:
        raise SaelabError(f"{Path(run_dir) / METRICS_FILE} holds no metrics lines")
    plt = pyplot()
    styles = line_styles(curves)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.8))
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        for name, rows in curves.items():
            points = [(r["tokens"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and r[key] > 0]
            if points:
                ax.plot(*zip(*points, strict=True), label=name, **styles[name])
        ax.set_xlabel("training tokens")
        ax.set_title(title)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize=7, ncol=1 + len(curves) // 20)
    fig.tight_layout()
    return save_png(fig, out or Path(run_dir) / CURVES_FILE)


def line_styles(curves: dict[str, list[dict]]) -> dict[str, dict]:
    """One colour per architecture and one marker/dash per SAE within it (a sweep's many SAEs stay
    tellable apart); SAEs without an architecture get a colour each."""
    archs = list(dict.fromkeys(rows[0].get("architecture", name) for name, rows in curves.items()))
    seen: dict[str, int] = {}
    styles = {}
    for name, rows in curves.items():
        arch = rows[0].get("architecture", name)
        index = seen[arch] = seen.get(arch, -1) + 1
        styles[name] = {"color": f"C{archs.index(arch) % 10}", "marker": ".os^vD"[index % 6], "markersize": 3,
                        "linestyle": ("-", "--", ":", "-.")[index % 4]}
    return styles
