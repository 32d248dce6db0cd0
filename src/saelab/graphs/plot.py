"""A static picture of a pruned attribution graph: positions across, layers up.

Embeddings sit on the bottom row (layer -1), logits on the top one (``n_layers``); nodes sharing a
(layer, position) cell are spread across it. Features are circles, errors grey squares, embeddings and
logits diamonds; edges are lines whose width and opacity follow |weight| (blue: positive, red: negative).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from saelab.plotting import pyplot, save_png

MARKERS = {"feature": ("o", "#f28e2b"), "error": ("s", "#9c9c9c"), "embedding": ("D", "#59a14f"),
           "logit": ("D", "#4e79a7")}


def node_positions(document: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``{node id: (x, y)}``: x the position (spread within the cell), y the layer."""
    cells: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for node in document["nodes"]:
        cells[(node["layer"], node["position"])].append(node)
    xy = {}
    for (layer, pos), nodes in cells.items():
        nodes.sort(key=lambda n: -abs(n["influence"]))
        width = min(0.8, 0.12 * (len(nodes) - 1))
        for j, node in enumerate(nodes):
            offset = 0.0 if len(nodes) == 1 else -width / 2 + width * j / (len(nodes) - 1)
            xy[node["id"]] = (pos + offset, float(layer))
    return xy


def plot_graph(document: dict[str, Any], path: str | Path, max_edges: int = 400) -> Path:
    """Draw the graph document (``saelab.graphs.graph_json``) to a PNG at ``path``; the ``max_edges`` strongest
    edges are drawn."""
    plt = pyplot()
    meta = document["metadata"]
    n_pos, n_layers = len(meta["tokens"]), meta["n_layers"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n_pos + 2), max(4.0, 0.8 * (n_layers + 2) + 1.5)))
    xy = node_positions(document)
    edges = document["edges"][:max_edges]
    top = max((abs(e["weight"]) for e in edges), default=1.0) or 1.0
    for edge in reversed(edges):  # strongest drawn last, on top
        (x0, y0), (x1, y1) = xy[edge["source"]], xy[edge["target"]]
        share = abs(edge["weight"]) / top
        ax.plot([x0, x1], [y0, y1], color="#1f77b4" if edge["weight"] > 0 else "#d62728",
                linewidth=0.3 + 2.7 * share, alpha=0.15 + 0.75 * share, zorder=1)
    for kind, (marker, color) in MARKERS.items():
        nodes = [n for n in document["nodes"] if n["kind"] == kind]
        if nodes:
            ax.scatter([xy[n["id"]][0] for n in nodes], [xy[n["id"]][1] for n in nodes], marker=marker, s=40,
                       color=color, edgecolor="black", linewidth=0.5, zorder=2, label=kind)
    for node in document["nodes"]:
        if node["kind"] == "logit":
            x, y = xy[node["id"]]
            ax.annotate(f"{node['token']} ({node['probability']:.2f})", (x, y), textcoords="offset points",
                        xytext=(0, 7), ha="center", fontsize=7)
    ax.set_xticks(range(n_pos))
    ax.set_xticklabels(meta["tokens"], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(-1, n_layers + 1))
    ax.set_yticklabels(["emb", *(f"L{layer}" for layer in range(n_layers)), "logit"])
    ax.set_xlim(-0.7, n_pos - 0.3)
    ax.set_ylim(-1.6, n_layers + 0.8)
    scores = meta["scores"]
    ax.set_title(f"attribution graph · {meta['model']} · {meta['counts']['pruned_nodes']} nodes, "
                 f"{meta['counts']['pruned_edges']} edges · replacement {scores['replacement']:.2f}, "
                 f"completeness {scores['completeness']:.2f}", fontsize=9)
    ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
    ax.grid(alpha=0.2)
    return save_png(fig, path)
