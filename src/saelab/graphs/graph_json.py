"""The graph JSON file (``graph.json``): a pruned attribution graph for viewers, and its checked loader.

Schema (``format: "saelab-attribution-graph"``, ``version: 1``)::

    {
      "format": "saelab-attribution-graph", "version": 1,
      "metadata": {
        "prompt": str,                     # the text traced ("" when token ids were given)
        "tokens": [str], "token_ids": [int],          # the input, one entry per position
        "model": str, "model_fingerprint": str, "n_layers": int, "n_heads": int,
        "logit_position": int,             # the position whose next token the logits predict (the last)
        "transcoders": [{"layer", "name", "path", "hook_name", "hook_name_out", "architecture", "d_sae",
                         "skip_connection"}],         # one per block, in block order ("path" may be "")
        "config": {"node_threshold", "edge_threshold", "max_logits", "prob_mass", "max_feature_nodes",
                   "batch_size"},
        "scores": {"replacement", "completeness",              # of the full graph (published definitions)
                   "pruned_replacement", "pruned_completeness", # of the pruned graph
                   "node_share"},                               # influence share the node step kept
        "counts": {"active_features", "feature_nodes", "nodes", "edges", "pruned_nodes", "pruned_edges"},
        "max_logit_error": float,          # max |replacement − real| logit: the error nodes' exactness
        "timings": {"forward", "attribution", "pruning"},        # seconds
        "top_paths": [{"nodes": [node id], "score": float}]     # source first, logit last
      },
      "nodes": [{                          # the pruned graph's nodes (every key present; null when n/a)
        "id": str,                         # "embedding:P", "feature:L:P:F", "error:L:P", "logit:T"
        "kind": "embedding" | "feature" | "error" | "logit",
        "layer": int,                      # embeddings -1, features/errors their block, logits n_layers
        "position": int,                   # logits: logit_position
        "token": str, "token_id": int,     # the input token at that position; logits: the predicted token
        "feature": int | null,             # the transcoder latent (features)
        "activation": float | null,        # the latent's activation (features); the vector norm (errors,
                                           # embeddings); the logit (logits)
        "probability": float | null,       # logits only
        "influence": float,                # influence on the logits (logits: their probability)
        "label": str | null                # from --labels (features), or a readable name
      }],
      "edges": [{"source": id, "target": id, "weight": float}]   # direct effects, strongest |weight| first
    }

Edges run from a node to one of a higher layer: ``weight`` is the source's direct effect on the target's
pre-activation (features) or demeaned logit (logits). ``load_graph_json`` checks all of this.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saelab.errors import CorruptFileError
from saelab.fileio import atomic_write_json
from saelab.interp.tokens import TokenNames

if TYPE_CHECKING:
    from saelab.graphs.trace import TraceResult

FORMAT = "saelab-attribution-graph"
VERSION = 1
GRAPH_FILE = "graph.json"
NODE_KEYS = ("id", "kind", "layer", "position", "token", "token_id", "feature", "activation", "probability",
             "influence", "label")
METADATA_KEYS = ("prompt", "tokens", "token_ids", "model", "n_layers", "logit_position", "transcoders", "config",
                 "scores", "counts", "top_paths")


def node_id(layout, i: int) -> str:
    """The id of node ``i`` of a ``NodeLayout`` (see the schema)."""
    kind = layout.kind(i)
    if kind == "feature":
        layer, pos, feat = layout.features[i].tolist()
        return f"feature:{layer}:{pos}:{feat}"
    if kind == "error":
        layer, pos = layout.layer_position(i)
        return f"error:{layer}:{pos}"
    if kind == "embedding":
        return f"embedding:{i - layout.embedding_start}"
    return f"logit:{int(layout.logit_tokens[i - layout.logit_start])}"


def _transcoder_entries(result: TraceResult, paths: list[str] | None) -> list[dict[str, Any]]:
    return [{"layer": layer, "name": sae.cfg.name, "path": (paths or [""] * len(result.replacement.transcoders))[layer],
             "hook_name": sae.cfg.hook_name, "hook_name_out": sae.cfg.hook_name_out,
             "architecture": sae.cfg.architecture, "d_sae": sae.cfg.d_sae, "skip_connection": sae.cfg.skip_connection}
            for layer, sae in enumerate(result.replacement.transcoders)]


def graph_document(result: TraceResult, *, model_name: str | None = None, transcoder_paths: list[str] | None = None,
                   labels: dict[int, dict[int, str]] | None = None) -> dict[str, Any]:
    """The JSON document of ``result``'s pruned graph (schema in the module docstring); ``labels``:
    ``{layer: {feature: label}}``."""
    model, graph, pruned = result.replacement, result.graph, result.pruned
    layout, labels = graph.layout, labels or {}
    names = TokenNames(model.lm)
    ids = graph.input_ids.tolist()
    tokens = names.names(ids)
    logit_position = model.n_pos - 1
    influence = pruned.node_influence
    last_logits = model.real_logits[-1]
    kept = pruned.node_mask.nonzero().squeeze(1).tolist()
    nodes = []
    for i in kept:
        kind = layout.kind(i)
        layer, pos = layout.layer_position(i)
        node = dict.fromkeys(NODE_KEYS)
        node.update(id=node_id(layout, i), kind=kind, layer=layer, position=pos, token=tokens[pos],
                    token_id=ids[pos], influence=float(influence[i]))
        if kind == "feature":
            feat = int(layout.features[i, 2])
            node.update(feature=feat, activation=float(layout.activations[i]),
                        label=labels.get(layer, {}).get(feat, f"L{layer} #{feat}"))
        elif kind == "error":
            node.update(activation=float(model.errors[layer, pos].norm()), label=f"error L{layer} @ {tokens[pos]}")
        elif kind == "embedding":
            node.update(activation=float(model.embeddings[pos].norm()), label=f"embedding {tokens[pos]}")
        else:
            k = i - layout.logit_start
            token = int(layout.logit_tokens[k])
            node.update(token=names.name(token), token_id=token, activation=float(last_logits[token]),
                        probability=float(graph.logit_probabilities[k]), influence=float(graph.logit_probabilities[k]),
                        label=f"logit {names.name(token)}")
        nodes.append(node)
    targets, sources = pruned.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[targets, sources]
    order = weights.abs().argsort(descending=True)
    edges = [{"source": node_id(layout, int(sources[j])), "target": node_id(layout, int(targets[j])),
              "weight": float(weights[j])} for j in order.tolist()]
    cfg = graph.config
    metadata = {
        "prompt": result.prompt, "tokens": tokens, "token_ids": ids, "model": model_name or model.lm.name,
        "model_fingerprint": model.lm.fingerprint(), "n_layers": model.n_layers, "n_heads": model.lm.n_heads,
        "logit_position": logit_position, "transcoders": _transcoder_entries(result, transcoder_paths),
        "config": {"node_threshold": result.prune_config.node_threshold,
                   "edge_threshold": result.prune_config.edge_threshold, "max_logits": cfg.max_logits,
                   "prob_mass": cfg.prob_mass, "max_feature_nodes": cfg.max_feature_nodes,
                   "batch_size": cfg.batch_size},
        "scores": {**result.scores.to_dict(), "pruned_replacement": result.pruned_scores.replacement,
                   "pruned_completeness": result.pruned_scores.completeness, "node_share": pruned.node_share},
        "counts": {"active_features": graph.n_active_features, "feature_nodes": layout.n_features,
                   "nodes": layout.n_nodes, "edges": int((graph.adjacency != 0).sum()),
                   "pruned_nodes": pruned.n_nodes, "pruned_edges": pruned.n_edges},
        "max_logit_error": model.max_logit_error,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "top_paths": [{"nodes": [node_id(layout, i) for i in path.nodes], "score": path.score}
                      for path in result.paths],
    }
    return {"format": FORMAT, "version": VERSION, "metadata": metadata, "nodes": nodes, "edges": edges}


def write_graph_json(path: str | Path, document: dict[str, Any]) -> Path:
    """Check ``document`` and write it atomically; returns the path."""
    validate_graph_document(document, str(path))
    path = Path(path)
    atomic_write_json(path, document)
    return path


def load_graph_json(path: str | Path) -> dict[str, Any]:
    """A graph document read from ``path`` (a ``graph.json`` or its folder) and checked against the schema."""
    path = Path(path)
    if path.is_dir():
        path = path / GRAPH_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptFileError(f"graph file {str(path)!r} does not exist; write one with `saelab graph`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"graph file {str(path)!r} is not valid JSON ({exc})") from exc
    validate_graph_document(document, str(path))
    return document


def _fail(where: str, what: str) -> None:
    raise CorruptFileError(f"graph file {where}: {what}; expected the graph JSON of `saelab graph` "
                           f"(format {FORMAT!r}, version {VERSION})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_graph_document(document: Any, where: str = "<document>") -> None:
    """Refuse a document that does not follow the schema (``CorruptFileError`` naming the first problem)."""
    if not isinstance(document, dict):
        _fail(where, f"holds {type(document).__name__}, not a JSON object")
    if document.get("format") != FORMAT or document.get("version") != VERSION:
        _fail(where, f"format={document.get('format')!r} version={document.get('version')!r}")
    meta = document.get("metadata")
    if not isinstance(meta, dict) or any(key not in meta for key in METADATA_KEYS):
        missing = [k for k in METADATA_KEYS if not isinstance(meta, dict) or k not in meta]
        _fail(where, f"metadata lacks {', '.join(missing)}")
    n_layers, n_pos = meta["n_layers"], len(meta["tokens"])
    if not _is_int(n_layers) or n_layers < 1 or len(meta["token_ids"]) != n_pos or n_pos < 1:
        _fail(where, f"metadata has n_layers={n_layers!r} and {n_pos} tokens / {len(meta['token_ids'])} token ids")
    nodes, edges = document.get("nodes"), document.get("edges")
    if not isinstance(nodes, list) or not isinstance(edges, list):
        _fail(where, "'nodes' and 'edges' must be lists")
    layer_of: dict[str, int] = {}
    kinds: dict[str, str] = {}
    for i, node in enumerate(nodes):
        if not isinstance(node, dict) or any(key not in node for key in NODE_KEYS):
            _fail(where, f"node {i} lacks one of {', '.join(NODE_KEYS)}")
        kind, layer, pos = node["kind"], node["layer"], node["position"]
        expected = {"embedding": (-1, -1), "logit": (n_layers, n_layers)}.get(kind, (0, n_layers - 1))
        if kind not in ("embedding", "feature", "error", "logit") or not _is_int(layer) or \
                not expected[0] <= layer <= expected[1] or not _is_int(pos) or not 0 <= pos < n_pos:
            _fail(where, f"node {node.get('id')!r} has kind={kind!r} layer={layer!r} position={pos!r}")
        if kind == "feature" and not _is_int(node["feature"]):
            _fail(where, f"feature node {node['id']!r} has feature={node['feature']!r}")
        if not _is_number(node["influence"]) or not (node["activation"] is None or _is_number(node["activation"])):
            _fail(where, f"node {node['id']!r} has a non-finite influence or activation")
        if node["id"] in layer_of:
            _fail(where, f"node id {node['id']!r} appears twice")
        layer_of[node["id"]], kinds[node["id"]] = layer, kind
    for i, edge in enumerate(edges):
        if not isinstance(edge, dict) or edge.get("source") not in layer_of or edge.get("target") not in layer_of:
            _fail(where, f"edge {i} ({edge!r}) does not join two of the file's nodes")
        if not _is_number(edge.get("weight")):
            _fail(where, f"edge {i} has weight {edge.get('weight')!r}")
        if layer_of[edge["source"]] >= layer_of[edge["target"]] or kinds[edge["source"]] == "logit" or \
                kinds[edge["target"]] in ("embedding", "error"):
            _fail(where, f"edge {edge['source']} -> {edge['target']} does not run from a source node to a target "
                         "node of a higher layer")
