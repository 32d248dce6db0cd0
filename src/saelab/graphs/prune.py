"""Influence, pruning and the graph scores of an attribution graph (Ameisen et al. 2025).

- Normalised adjacency ``Â = |A|`` with each row divided by its sum: the share of a target's (absolute)
  input that comes from each source.
- Influence ``B = Â + Â² + ... = (I − Â)⁻¹ − I`` (the series ends: the graph has no cycles); a node's
  influence on the output is ``w @ B`` with ``w`` the logit nodes' probabilities.
- Node pruning keeps the nodes of highest influence that together hold ``node_threshold`` (0.8) of the
  total (the smallest such set; ties kept), and always the embeddings and logits. Edge pruning then scores
  each edge of the node-pruned graph by ``Â'[t, s] · (influence'(t) + w(t))`` (the pruned graph's own
  normalisation and influence) and keeps those holding ``edge_threshold`` (0.98) of the total score; feature
  and error nodes left without outgoing edges, and features without incoming ones, are removed until
  nothing changes.
- Replacement score: the share of the embeddings' and errors' influence that is the embeddings',
  ``infl(embeddings) / (infl(embeddings) + infl(errors))`` (1 when tokens reach the logits only through
  features). Completeness score: the influence-weighted share of the nodes' inputs that does not come
  from error nodes, ``Σ_t (1 − Σ_errors Â[t, ·]) (infl(t) + w(t)) / Σ_t (infl(t) + w(t))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.errors import check_range
from saelab.graphs.attribution import AttributionGraph

NODE_THRESHOLD = 0.8
EDGE_THRESHOLD = 0.98


@dataclass
class PruneConfig:
    """node_threshold, edge_threshold: the shares of influence kept (published defaults 0.8 and 0.98)."""

    node_threshold: float = NODE_THRESHOLD
    edge_threshold: float = EDGE_THRESHOLD

    def __post_init__(self) -> None:
        check_range("node_threshold", self.node_threshold, 0, 1)
        check_range("edge_threshold", self.edge_threshold, 0, 1)


@dataclass
class PruneResult:
    """``node_mask [n]`` and ``edge_mask [n, n]`` (target, source) of the kept graph; ``node_influence [n]`` on
    the full graph; ``node_share``: the share of total influence the node step kept (>= node_threshold)."""

    node_mask: Tensor
    edge_mask: Tensor
    node_influence: Tensor
    node_share: float

    @property
    def n_nodes(self) -> int:
        return int(self.node_mask.sum())

    @property
    def n_edges(self) -> int:
        return int(self.edge_mask.sum())


@dataclass
class GraphScores:
    """The replacement and completeness scores (see the module docstring)."""

    replacement: float
    completeness: float

    def to_dict(self) -> dict[str, float]:
        return {"replacement": self.replacement, "completeness": self.completeness}


def normalize_matrix(adjacency: Tensor) -> Tensor:
    """``|A|`` with every row divided by its sum (rows summing to 0 stay 0): ``[n, n] -> [n, n]``."""
    normalized = adjacency.abs()
    return normalized / normalized.sum(dim=1, keepdim=True).clamp_min(1e-10)


def influence_matrix(normalized: Tensor) -> Tensor:
    """``B = (I − Â)⁻¹ − I`` ``[n, n]`` (``B[t, s]``: the summed products of Â over all paths s -> t)."""
    eye = torch.eye(normalized.shape[0], dtype=torch.float64)
    return (torch.linalg.solve(eye - normalized.double(), eye) - eye).to(normalized.dtype)


def node_influence(normalized: Tensor, weights: Tensor, max_iter: int = 1024) -> Tensor:
    """``weights @ (Â + Â² + ...)`` ``[n]``, summed until a power vanishes (at most the graph's depth)."""
    step = weights.to(normalized.dtype) @ normalized
    total = step.clone()
    for _ in range(max_iter):
        step = step @ normalized
        if not step.any():
            return total
        total += step
    raise RuntimeError(f"influence did not converge in {max_iter} steps; the adjacency has a cycle")


def threshold_for_share(scores: Tensor, share: float) -> float:
    """The smallest score such that the scores at or above it hold at least ``share`` of the total."""
    flat = scores.flatten()
    ordered = torch.sort(flat[flat > 0], descending=True).values  # zeros add nothing to any share
    cumulative = ordered.double().cumsum(0)
    if len(ordered) == 0:
        return float("inf")
    cumulative = cumulative / cumulative[-1]
    index = min(int(torch.searchsorted(cumulative, torch.tensor(share, dtype=cumulative.dtype))), len(ordered) - 1)
    return float(ordered[index])


def prune_graph(graph: AttributionGraph, cfg: PruneConfig | None = None) -> PruneResult:
    """The pruned graph's masks (see the module docstring)."""
    cfg = cfg or PruneConfig()
    layout, adjacency, weights = graph.layout, graph.adjacency, graph.logit_weights
    masks = layout.kind_masks()
    always = masks["embedding"] | masks["logit"]
    influence = node_influence(normalize_matrix(adjacency), weights)
    node_mask = (influence >= threshold_for_share(influence, cfg.node_threshold)) & (influence > 0)
    total = float(influence.sum())
    node_share = float(influence[node_mask].sum()) / total if total > 0 else 1.0
    node_mask |= always

    pruned = adjacency * node_mask[:, None] * node_mask[None, :]
    normalized = normalize_matrix(pruned)
    pruned_influence = node_influence(normalized, weights) + weights
    edge_scores = normalized * pruned_influence[:, None]
    edge_mask = (edge_scores >= threshold_for_share(edge_scores, cfg.edge_threshold)) & (edge_scores > 0)

    inner = masks["feature"] | masks["error"]
    while True:
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        keep = node_mask.clone()
        keep[inner] &= edge_mask[:, inner].any(0)  # features and errors need an outgoing edge
        keep[masks["feature"]] &= edge_mask[masks["feature"]].any(1)  # features need an incoming edge
        if torch.equal(keep, node_mask):
            break
        node_mask = keep
    return PruneResult(node_mask, edge_mask, influence, node_share)


def graph_scores(graph: AttributionGraph, adjacency: Tensor | None = None) -> GraphScores:
    """Replacement and completeness scores of ``graph`` (or of another ``adjacency`` over its nodes)."""
    layout = graph.layout
    adjacency = graph.adjacency if adjacency is None else adjacency
    weights = graph.logit_weights
    normalized = normalize_matrix(adjacency)
    influence = node_influence(normalized, weights)
    masks = layout.kind_masks()
    token, error = float(influence[masks["embedding"]].sum()), float(influence[masks["error"]].sum())
    replacement = token / (token + error) if token + error > 0 else 0.0
    non_error = 1 - normalized[:, masks["error"]].sum(dim=1)
    output = influence + weights
    completeness = float((non_error * output).sum() / output.sum()) if float(output.sum()) > 0 else 0.0
    return GraphScores(replacement, completeness)


def pruned_adjacency(graph: AttributionGraph, result: PruneResult) -> Tensor:
    """``graph.adjacency`` with the edges ``result`` dropped set to 0."""
    return graph.adjacency * result.edge_mask
