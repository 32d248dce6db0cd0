"""Interventions on a graph's feature nodes in the real model, against what the graph predicts.

Scaling feature ``f`` of block ``L`` at position ``p`` by ``c`` (``c = 0`` ablates it, ``c > 1`` steers it up)
adds ``(c − 1) · a · W_dec[f]`` to ``blocks.L.hook_mlp_out`` at ``p`` in the *real* model: the rest of the MLP
output (other features, the error) is what the model computes, and everything downstream, attention
patterns, norms and later MLPs included, responds as the model does.

The graph predicts the change of each logit node's demeaned logit (the value its edges explain) by
propagating the change through the graph's edges: ``A[t, s] / a_s`` is the change of target ``t`` per unit of
source ``s``, and a feature node that is not intervened on changes by the change of its pre-activation
(active features stay active, to first order). ``direct`` keeps only the intervened nodes' own edges
into the logits. Both hold the frozen attention patterns and norm scales of the replacement model, so the
gap between them and the real effect measures what the linear graph misses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.errors import ConfigError, check_range
from saelab.graphs.attribution import AttributionGraph
from saelab.graphs.graph_json import node_id
from saelab.graphs.replacement import ReplacementModel
from saelab.models import hook_points as H


@dataclass
class InterventionResult:
    """Per logit node (``tokens [n]``): the real model's change of the demeaned logit (``real``), the graph's
    prediction (``predicted``, propagated; ``direct``, the intervened nodes' edges alone) and the
    probabilities before and after (``clean_probs``, ``probs``); ``logits [d_vocab]`` after, at the last position."""

    nodes: list[str]
    scale: float
    tokens: Tensor
    real: Tensor
    predicted: Tensor
    direct: Tensor
    clean_probs: Tensor
    probs: Tensor
    logits: Tensor

    def summary(self, names: Sequence[str] | None = None) -> dict:
        names = list(names) if names is not None else [str(int(t)) for t in self.tokens]
        err = (self.predicted - self.real).abs()
        scale = self.real.abs().max().clamp_min(1e-12)
        return {"nodes": self.nodes, "scale": self.scale,
                "logits": [{"token": name, "real": float(r), "predicted": float(p), "direct": float(d),
                            "probability_before": float(b), "probability_after": float(a)}
                           for name, r, p, d, b, a in zip(names, self.real, self.predicted, self.direct,
                                                          self.clean_probs, self.probs, strict=True)],
                "max_abs_error": float(err.max()), "relative_error": float(err.max() / scale)}


def feature_node_indices(graph: AttributionGraph, nodes: Sequence[str | int]) -> Tensor:
    """Node indices (into ``graph.layout``) of ``nodes``: node ids (``feature:L:P:F``) or indices, features only."""
    layout = graph.layout
    ids = {node_id(layout, i): i for i in range(layout.n_features)}
    out = []
    for node in nodes:
        if isinstance(node, int) and not isinstance(node, bool):
            index = node
        elif node in ids:
            index = ids[node]
        else:
            raise ConfigError(f"node {node!r} is not a feature node of this graph; interventions take feature ids "
                              "(feature:LAYER:POS:INDEX) of the graph's feature nodes")
        if not 0 <= index < layout.n_features:
            raise ConfigError(f"node index {index} is not a feature node (the graph has {layout.n_features} features)")
        out.append(index)
    if not out:
        raise ConfigError("give at least one feature node to intervene on")
    return torch.tensor(sorted(set(out)), dtype=torch.long)


def real_logits_with_features_scaled(model: ReplacementModel, features: Tensor, activations: Tensor,
                                     scale: float) -> Tensor:
    """The real model's logits ``[pos, d_vocab]`` with the features ``features [n, 3]`` (layer, pos, index;
    activations ``[n]``) scaled by ``scale`` at their MLP's output."""
    lm = model.lm
    edits = {}
    for layer in features[:, 0].unique().tolist():
        rows = features[:, 0] == layer
        delta = torch.zeros(model.n_pos, model.d_model, dtype=model.dtype, device=model.device)
        decoder = model.decoder_rows(layer, features[rows, 2]) * activations[rows].to(model.dtype)[:, None].to(model.device)
        delta.index_add_(0, features[rows, 1].to(model.device), (scale - 1) * decoder)

        def edit(value: Tensor, delta: Tensor = delta) -> Tensor:
            return value + delta.to(value)[None]

        edits[f"blocks.{layer}.{H.MLP_OUT}"] = edit
    with torch.no_grad():
        return lm.run_with_hooks(model.input_ids[None], edits)[0].to(model.dtype)


def predicted_logit_change(graph: AttributionGraph, indices: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """The graph's ``(propagated, direct)`` change of each logit node's demeaned logit ``[n_logits]`` when the
    feature nodes ``indices`` are scaled by ``scale`` (see the module docstring)."""
    layout, A = graph.layout, graph.adjacency.double()  # noqa: N806
    n_f = layout.n_features
    per_unit = A[:, :n_f] / layout.activations.double().clamp_min(1e-30)[None]
    change = torch.zeros(n_f, dtype=torch.float64)
    change[indices] = (scale - 1) * layout.activations[indices].double()
    fixed = torch.zeros(n_f, dtype=torch.bool)
    fixed[indices] = True
    layers = layout.features[:, 0]
    for layer in range(layout.n_layers):  # features only read earlier blocks: one pass in block order
        rows = (layers == layer) & ~fixed
        change[rows] = per_unit[:n_f][rows] @ change
    logit_rows = per_unit[layout.logit_start:]
    direct = logit_rows[:, indices] @ change[indices]
    return (logit_rows @ change).float(), direct.float()


def demeaned(logits: Tensor, tokens: Tensor) -> Tensor:
    """``logits[tokens] − mean(logits)`` for ``logits [d_vocab]``."""
    return logits[tokens.to(logits.device)] - logits.mean()


def intervene(model: ReplacementModel, graph: AttributionGraph, nodes: Sequence[str | int],
              scale: float = 0.0) -> InterventionResult:
    """Scale the feature ``nodes`` of ``graph`` by ``scale`` in the real model and compare the logit changes with
    the graph's prediction (see the module docstring)."""
    check_range("scale", scale, -1e6, 1e6)
    indices = feature_node_indices(graph, nodes)
    layout = graph.layout
    logits = real_logits_with_features_scaled(model, layout.features[indices], layout.activations[indices], scale)[-1]
    clean = model.real_logits[-1]
    tokens = layout.logit_tokens
    real = (demeaned(logits, tokens) - demeaned(clean, tokens)).float().cpu()
    predicted, direct = predicted_logit_change(graph, indices, scale)
    probs_before = clean.double().softmax(-1)[tokens.to(clean.device)].float().cpu()
    probs_after = logits.double().softmax(-1)[tokens.to(clean.device)].float().cpu()
    return InterventionResult([node_id(layout, int(i)) for i in indices], float(scale), tokens, real, predicted, direct,
                              probs_before, probs_after, logits.float().cpu())
