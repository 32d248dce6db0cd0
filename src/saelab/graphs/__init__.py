"""Attribution graphs (Ameisen et al. 2025, "Circuit Tracing"): replace every MLP by its transcoder,
freeze attention patterns and norm scales, and trace a prompt's computation as a graph of direct
effects between token embeddings, transcoder features, error nodes and the top logits; prune it by
influence; score it (replacement, completeness); check it by intervening in the real model.

    from saelab.graphs import trace_prompt, load_transcoders
    transcoders, folders = load_transcoders(lm, ["runs/graphs/toy_transcoders"])
    result = trace_prompt(lm, transcoders, "When Mary and John went to the store , John gave a book to")
    result.scores, result.pruned_scores, result.paths
    write_graph_json("out/graph.json", result.document(transcoder_paths=folders))
    intervene(result.replacement, result.graph, ["feature:3:14:101"], scale=0.0).summary()

Modules: ``transcoders`` (which coders replace which MLP; loading; training entries), ``replacement``
(the frozen local replacement model), ``attribution`` (nodes and the adjacency matrix), ``prune``
(influence, pruning, scores), ``paths`` (strongest paths), ``trace`` (one prompt end to end),
``graph_json`` (the file format), ``plot``, ``labels``, ``interventions``, ``heads`` (which attention heads
carry the edges) and ``toy_check`` (the toy model's circuits).
"""

from saelab.graphs.attribution import AttributionGraph, GraphConfig, NodeLayout, build_graph
from saelab.graphs.graph_json import load_graph_json, validate_graph_document, write_graph_json
from saelab.graphs.interventions import InterventionResult, intervene
from saelab.graphs.paths import GraphPath, top_paths
from saelab.graphs.prune import GraphScores, PruneConfig, PruneResult, graph_scores, prune_graph
from saelab.graphs.replacement import PromptError, ReplacementModel
from saelab.graphs.trace import TraceResult, trace_prompt
from saelab.graphs.transcoders import TranscoderSetError, check_transcoders, load_transcoders

__all__ = [
    "AttributionGraph", "GraphConfig", "GraphPath", "GraphScores", "InterventionResult", "NodeLayout", "PromptError",
    "PruneConfig", "PruneResult", "ReplacementModel", "TraceResult", "TranscoderSetError", "build_graph",
    "check_transcoders", "graph_scores", "intervene", "load_graph_json", "load_transcoders", "prune_graph",
    "top_paths", "trace_prompt", "validate_graph_document", "write_graph_json",
]
