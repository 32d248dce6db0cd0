"""Which attention heads carry a pruned graph's edges.

An edge's weight is a sum over the frozen model's linear paths from its source to its target: straight
along the residual stream, or through one or more attention heads' value/output maps (and skip terms).
The part that goes through head ``h`` is ``A[t, s] − A_{−h}[t, s]``, with ``A_{−h}`` the same edge recomputed
with that head's output removed from the frozen model. A head's score is the influence-weighted share of
the pruned graph's edges it carries::

    score(h) = Σ_e s_e · min(1, |A_e − A_{−h},e| / |A_e|) / Σ_e s_e,      s_e = Â_e · (infl(t_e) + w(t_e))

(``s_e`` the edge score pruning used). Attribution graphs see attention only through these OV paths:
heads that act through queries and keys (where attention looks) leave no trace here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.graphs.attribution import (
    AttributionGraph,
    SourceColumns,
    Targets,
    compute_rows,
    feature_targets,
    logit_targets,
)
from saelab.graphs.prune import PruneResult, node_influence, normalize_matrix
from saelab.graphs.replacement import ReplacementModel


def _targets(model: ReplacementModel, graph: AttributionGraph, rows: Tensor) -> Targets:
    """Targets of the nodes ``rows`` (features and logits of ``graph``)."""
    layout = graph.layout
    feats = rows[rows < layout.n_features]
    logits = rows[rows >= layout.logit_start] - layout.logit_start
    parts = []
    if len(feats):
        parts.append(feature_targets(model, layout.features[feats]))
    if len(logits):
        parts.append(logit_targets(model, layout.logit_tokens[logits]))
    return Targets(torch.cat([p.layers for p in parts]), torch.cat([p.positions for p in parts]),
                   torch.cat([p.vectors for p in parts]))


def head_scores(model: ReplacementModel, graph: AttributionGraph, pruned: PruneResult,
                batch_size: int = 256) -> Tensor:
    """``[n_layers, n_heads]`` share of the pruned graph's edge score each head carries (module docstring)."""
    layout = graph.layout
    # the same selection of features as the graph, so that column i is node i
    columns = SourceColumns(model, layout)
    edge_targets = pruned.edge_mask.any(1).nonzero().squeeze(1)
    n_heads = model.lm.n_heads
    scores = torch.zeros(model.n_layers, n_heads)
    if len(edge_targets) == 0:
        return scores
    targets = _targets(model, graph, edge_targets)
    mask = pruned.edge_mask[edge_targets][:, :layout.n_sources]
    full = graph.adjacency[edge_targets][:, :layout.n_sources][mask]
    pruned_adjacency = graph.adjacency * pruned.node_mask[:, None] * pruned.node_mask[None, :]
    normalized = normalize_matrix(pruned_adjacency)
    weights = graph.logit_weights
    target_weight = (node_influence(normalized, weights) + weights)[edge_targets]
    edge_score = (normalized[edge_targets][:, :layout.n_sources] * target_weight[:, None])[mask]
    total = edge_score.sum().clamp_min(1e-30)
    for layer in range(model.n_layers):
        for head in range(n_heads):
            head_mask = torch.ones(model.n_layers, n_heads)
            head_mask[layer, head] = 0
            without = compute_rows(columns, targets, batch_size, head_mask=head_mask.to(model.device))[mask]
            share = ((full - without).abs() / full.abs().clamp_min(1e-30)).clamp_max(1.0)
            scores[layer, head] = (edge_score * share).sum() / total
    return scores
