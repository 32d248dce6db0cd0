"""One prompt end to end: replacement model, attribution graph, pruning, scores and top paths, timed.

    result = trace_prompt(lm, transcoders, "When Mary and John went to the store , John gave a book to")
    result.scores.replacement, result.pruned_scores.completeness, result.paths[0]
    document = result.document(model_name="toy")         # the graph JSON (saelab.graphs.graph_json)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saelab.graphs.attribution import AttributionGraph, GraphConfig, build_graph
from saelab.graphs.paths import GraphPath, top_paths
from saelab.graphs.prune import (
    GraphScores,
    PruneConfig,
    PruneResult,
    graph_scores,
    prune_graph,
    pruned_adjacency,
)
from saelab.graphs.replacement import ReplacementModel
from saelab.models import LoadedModel
from saelab.sae.base import SAE


@dataclass
class TraceResult:
    """Everything computed for one prompt; ``timings``: seconds of ``forward`` (the clean run and the
    replacement model), ``attribution`` and ``pruning`` (pruning, scores, paths)."""

    replacement: ReplacementModel
    graph: AttributionGraph
    pruned: PruneResult
    scores: GraphScores
    pruned_scores: GraphScores
    paths: list[GraphPath]
    prune_config: PruneConfig
    prompt: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def document(self, **kwargs: Any) -> dict[str, Any]:
        """The graph JSON document (``saelab.graphs.graph_json.graph_document``; ``kwargs`` go there)."""
        from saelab.graphs.graph_json import graph_document

        return graph_document(self, **kwargs)


def prompt_ids(lm: LoadedModel, prompt: str | Tensor | list[int]) -> Tensor:
    """``[pos]`` token ids: text tokenised with BOS first (when the tokenizer has one), or ids as given."""
    if isinstance(prompt, str):
        return lm.tokenize(prompt)[0][0]
    return lm.as_input_ids(prompt)[0]


def trace_prompt(lm: LoadedModel, transcoders: list[SAE], prompt: str | Tensor | list[int],
                 graph_config: GraphConfig | None = None, prune_config: PruneConfig | None = None,
                 dtype: torch.dtype = torch.float32, n_paths: int = 5, progress: bool = False) -> TraceResult:
    """Build, prune and score the attribution graph of ``prompt`` (see the module docstring)."""
    prune_config = prune_config or PruneConfig()
    started = time.perf_counter()
    replacement = ReplacementModel(lm, transcoders, prompt_ids(lm, prompt), dtype=dtype)
    forward = time.perf_counter() - started
    graph = build_graph(replacement, graph_config, progress=progress)
    started = time.perf_counter()
    pruned = prune_graph(graph, prune_config)
    scores = graph_scores(graph)
    pruned_scores = graph_scores(graph, pruned_adjacency(graph, pruned))
    paths = top_paths(graph, pruned, n_paths)
    timings = {"forward": forward, "attribution": graph.timings["attribution"],
               "pruning": time.perf_counter() - started}
    text = prompt if isinstance(prompt, str) else ""
    return TraceResult(replacement, graph, pruned, scores, pruned_scores, paths, prune_config, text, timings)
