"""Influence, pruning and graph scores: the series equals (I − Â)⁻¹ − I, pruning keeps the stated share of
influence (and no more nodes than it needs), and the scores match hand-computed values."""

from __future__ import annotations

import pytest
import torch

from saelab.graphs.attribution import AttributionGraph, GraphConfig, NodeLayout, build_graph
from saelab.graphs.paths import top_paths
from saelab.graphs.prune import (
    PruneConfig,
    graph_scores,
    influence_matrix,
    node_influence,
    normalize_matrix,
    prune_graph,
    threshold_for_share,
)
from saelab.graphs.replacement import ReplacementModel
from test_graphs_attribution import prompt_ids, random_transcoders, tiny


@pytest.fixture(scope="module")
def graph(one_torch_thread) -> AttributionGraph:
    lm = tiny("gpt2")
    model = ReplacementModel(lm, random_transcoders(lm, skip_layers=(1,)), prompt_ids(10, seed=3), dtype=torch.float64)
    return build_graph(model, GraphConfig())


def hand_graph() -> AttributionGraph:
    """One block, one position: embedding -> feature -> logit (weights 2 and 3), error -> logit (1)."""
    layout = NodeLayout(torch.tensor([[0, 0, 5]]), torch.tensor([1.5]), 1, 1, torch.tensor([7]))
    A = torch.zeros(4, 4)  # noqa: N806  nodes: feature 0, error 1, embedding 2, logit 3
    A[0, 2], A[3, 0], A[3, 1] = 2.0, 3.0, -1.0
    return AttributionGraph(layout, A, torch.tensor([0]), torch.tensor([1.0]), 1, GraphConfig())


def test_the_influence_series_is_the_matrix_inverse(graph):
    normalized = normalize_matrix(graph.adjacency)
    rows = normalized.sum(1)
    assert torch.allclose(rows[rows > 0], torch.ones_like(rows[rows > 0]), atol=1e-5)
    weights = graph.logit_weights
    assert torch.allclose(node_influence(normalized, weights), weights @ influence_matrix(normalized), atol=1e-5)


def test_hand_computed_influence_and_scores():
    g = hand_graph()
    influence = node_influence(normalize_matrix(g.adjacency), g.logit_weights)
    assert influence.tolist() == pytest.approx([0.75, 0.25, 0.75, 0.0])
    scores = graph_scores(g)
    assert scores.replacement == pytest.approx(0.75)  # embedding 0.75 vs error 0.25
    # inputs free of errors: logit 3/4, the others all; weighted by influence + probability (1, .75, .25, .75)
    assert scores.completeness == pytest.approx((0.75 * 1 + 0.75 + 0.25 + 0.75) / 2.75)


@pytest.mark.parametrize("share", [0.5, 0.8, 0.95])
def test_node_pruning_keeps_the_stated_share_and_no_more(graph, share):
    result = prune_graph(graph, PruneConfig(node_threshold=share, edge_threshold=1.0))
    influence = result.node_influence
    total = float(influence.sum())
    cut = threshold_for_share(influence, share)
    chosen = influence >= cut
    assert result.node_share >= share - 1e-6
    assert float(influence[chosen].sum()) / total == pytest.approx(result.node_share)
    # minimal: without the weakest chosen node the share falls short (unless ties at the cut)
    weakest = float(influence[chosen].min())
    assert (float(influence[chosen].sum()) - weakest) / total < share or (influence == weakest).sum() > 1


def test_pruned_graphs_are_consistent(graph):
    result = prune_graph(graph, PruneConfig())
    layout, masks = graph.layout, graph.layout.kind_masks()
    assert result.node_mask[masks["embedding"] | masks["logit"]].all()  # always kept
    assert result.n_nodes < layout.n_nodes and 0 < result.n_edges < int((graph.adjacency != 0).sum())
    kept_features = (result.node_mask & masks["feature"]).nonzero().squeeze(1)
    assert len(kept_features) > 0
    assert result.edge_mask[:, kept_features].any(0).all()  # every kept feature has an outgoing edge
    assert result.edge_mask[kept_features].any(1).all()  # and an incoming one
    assert not result.edge_mask[~result.node_mask].any() and not result.edge_mask[:, ~result.node_mask].any()
    assert not (result.edge_mask & (graph.adjacency == 0)).any()  # only real edges
    layers = layout.node_layers()
    targets, sources = result.edge_mask.nonzero(as_tuple=True)
    assert (layers[sources] < layers[targets]).all()
    # a stricter edge threshold keeps fewer edges
    assert prune_graph(graph, PruneConfig(edge_threshold=0.5)).n_edges < result.n_edges


def test_edge_pruning_keeps_the_stated_share_of_edge_score():
    g = hand_graph()
    result = prune_graph(g, PruneConfig(node_threshold=1.0, edge_threshold=0.7))
    # edge scores: emb->feature 1 * (0.75 + 0) = .75, feature->logit .75 * 1, error->logit .25 * 1
    assert result.edge_mask[0, 2] and result.edge_mask[3, 0] and not result.edge_mask[3, 1]
    assert not result.node_mask[1]  # the error lost its only edge
    everything = prune_graph(g, PruneConfig(node_threshold=1.0, edge_threshold=1.0))
    assert everything.n_edges == 3 and everything.n_nodes == 4


def test_top_paths_carry_the_influence(graph):
    result = prune_graph(graph, PruneConfig(node_threshold=1.0, edge_threshold=1.0))
    paths = top_paths(graph, result, k=50, starts=("embedding", "error"))
    scores = [p.score for p in paths]
    assert scores == sorted(scores, reverse=True)
    layout = graph.layout
    for path in paths[:5]:
        assert layout.kind(path.nodes[0]) in ("embedding", "error") and layout.kind(path.nodes[-1]) == "logit"
    # with every edge kept, the paths from one source add up to at most its influence (all paths: equal)
    source = paths[0].nodes[0]
    share = sum(p.score for p in paths if p.nodes[0] == source)
    assert share <= float(result.node_influence[source]) + 1e-6
    assert top_paths(hand_graph(), prune_graph(hand_graph(), PruneConfig(1.0, 1.0)), k=1)[0].nodes == (2, 0, 3)
