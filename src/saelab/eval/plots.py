"""PNG plots of evaluation results (matplotlib, Agg backend), each written atomically.

- ``plot_density_histogram(metrics, path)``: live latents per log10 firing-density bin, dead
  latents noted.
- ``plot_frontier(rows, metric, path)``: ``metric`` (e.g. ``delta_loss``, ``fvu``) against L0, one
  line per architecture, L0 on a log axis.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from saelab.errors import SaelabError
from saelab.plotting import pyplot, save_png

METRIC_LABELS = {"delta_loss": "delta LM loss (CE spliced − CE clean, nats)", "fvu": "FVU",
                 "ce_loss_recovered": "CE loss recovered", "kl": "KL(clean ‖ spliced)"}


def plot_density_histogram(metrics: dict, path: str | os.PathLike) -> Path:
    """The ``density_histogram`` of an evaluation's metrics as a bar chart; returns the PNG path."""
    plt = pyplot()
    hist = metrics["density_histogram"]
    edges, counts = hist["edges"], hist["counts"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color="#4c72b0", edgecolor="white")
    ax.set_xlabel("log10 firing density (fraction of evaluation tokens)")
    ax.set_ylabel("latents")
    dead = metrics["n_dead"]
    note = f"{dead} of {metrics['d_sae']} latents dead (not shown)" if dead else "no dead latents"
    if dead == metrics["d_sae"]:
        note = f"all {dead} latents dead: nothing to show"
    ax.set_title(f"{metrics['sae']}\n{note}; {metrics['n_tokens']} tokens", fontsize=9)
    ax.axvline(-1, color="grey", linestyle=":", linewidth=1)
    return save_png(fig, path)


def plot_frontier(rows: Sequence[dict], metric: str, path: str | os.PathLike, title: str = "") -> Path:
    """``metric`` against L0 for ``rows`` (dicts with ``architecture``, ``l0`` and ``metric``), one line per
    architecture sorted by L0, with error bars where rows carry ``l0_std`` and ``{metric}_std`` (seed
    spreads); rows with L0 = 0 (dead SAEs) or a null metric are left out and counted in the title.
    Returns the PNG path."""
    plt = pyplot()
    usable = [r for r in rows if r.get("l0") and r.get(metric) is not None]
    if not usable:
        raise SaelabError(f"no sweep point has both a positive L0 and a value of {metric!r}; nothing to plot")
    fig, ax = plt.subplots(figsize=(6, 4))
    for arch in dict.fromkeys(r["architecture"] for r in usable):
        group = sorted((r for r in usable if r["architecture"] == arch), key=lambda r: r["l0"])
        x, y = [r["l0"] for r in group], [r[metric] for r in group]
        if all(f"{metric}_std" in r and "l0_std" in r for r in group):  # seed spreads: one sd bars
            ax.errorbar(x, y, xerr=[r["l0_std"] for r in group], yerr=[r[f"{metric}_std"] for r in group],
                        marker="o", capsize=2, label=arch)
        else:
            ax.plot(x, y, marker="o", label=arch)
    from matplotlib.ticker import LogLocator, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2, 3, 5)))
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    if all(r[metric] > 0 for r in usable):
        ax.set_yscale("log")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    left_out = len(rows) - len(usable)
    suffix = f" ({left_out} point(s) without L0 > 0 or {metric} left out)" if left_out else ""
    ax.set_title((title or f"{metric} vs L0") + suffix, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)
