"""The strongest paths of a pruned attribution graph, from a token's embedding (or an error node) to a logit.

A path ``s = n_0 -> n_1 -> ... -> n_k = logit`` scores ``w(logit) · Π Â[n_{i+1}, n_i]`` with ``Â`` the full
graph's normalised adjacency and ``w`` the logit's probability: the influence the path carries (a node's
influence is the sum of this over all its paths to the logits). Only the pruned graph's edges are walked.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from saelab.graphs.attribution import AttributionGraph
from saelab.graphs.prune import PruneResult, normalize_matrix


@dataclass(frozen=True)
class GraphPath:
    """Node indices from the source to the logit, and the influence the path carries."""

    nodes: tuple[int, ...]
    score: float


def top_paths(graph: AttributionGraph, result: PruneResult, k: int = 5,
              starts: tuple[str, ...] = ("embedding",)) -> list[GraphPath]:
    """The ``k`` highest-scoring paths of the pruned graph that start at a node of a kind in ``starts``
    (``embedding``: how the tokens reach the logits; add ``error`` for paths from error nodes)."""
    layout = graph.layout
    normalized = normalize_matrix(graph.adjacency)
    weights = graph.logit_weights
    layers = layout.node_layers().tolist()
    targets, sources = result.edge_mask.nonzero(as_tuple=True)
    shares = normalized[targets, sources].tolist()
    out_edges: dict[int, list[tuple[int, float]]] = {}
    for t, s, share in zip(targets.tolist(), sources.tolist(), shares, strict=True):
        out_edges.setdefault(s, []).append((t, share))
    kept = result.node_mask.nonzero().squeeze(1).tolist()
    kinds = {i: layout.kind(i) for i in kept}
    best: dict[int, list[tuple[float, tuple[int, ...]]]] = {}
    for node in sorted(kept, key=lambda i: -layers[i]):  # every target before its sources
        if kinds[node] == "logit":
            best[node] = [(float(weights[node]), (node,))]
            continue
        candidates = [(share * score, (node, *path))
                      for t, share in out_edges.get(node, []) for score, path in best.get(t, [])]
        best[node] = heapq.nlargest(k, candidates)
    found = heapq.nlargest(k, (item for i in kept if kinds[i] in starts for item in best.get(i, [])))
    return [GraphPath(path, score) for score, path in found]
