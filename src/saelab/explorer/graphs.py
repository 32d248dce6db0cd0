"""The explorer's attribution graphs: graph.json files of ``saelab graph`` read at start, served trimmed
to their strongest edges, and intervened on: feature nodes ablated or steered in the real model
(``saelab.graphs.interventions``), the graph's own prediction of each logit's change beside the real one.

    graph = read_explorer_graph("ioi", "runs/graphs/ioi")     # the file, checked; its transcoder folders
    store = GraphStore(lm, model_lock, limits, names, saes)    # saes: the explorer's SAEs, shared by folder
    store.attach(graph)
    store.view("ioi", max_edges=500)                            # nodes, strongest edges, scores
    store.intervene("ioi", ["feature:3:14:101"], "ablate")      # logits before/after, graph prediction

No request names a file: graphs are read from the paths given at start and chosen by name; the
transcoder folders come from the file (existing local folders only, never a hub id) or from the
command line. The file keeps the pruned graph only, so the first intervention on a graph rebuilds its
replacement model and full graph from the file's token ids and recorded config (checked against the
file's feature activations) and keeps them in a small LRU cache; each graph's transcoders are loaded
once, and an SAE folder the explorer already loaded is not loaded twice.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saelab.errors import ConfigError, SaelabError
from saelab.explorer.errors import RequestLimitError, UnknownGraphError
from saelab.graphs.attribution import AttributionGraph, build_graph, graph_config_of
from saelab.graphs.graph_json import GRAPH_FILE, load_graph_json, node_id
from saelab.graphs.interventions import intervene
from saelab.graphs.replacement import ReplacementModel
from saelab.graphs.transcoders import (
    TranscoderSetError,
    check_transcoders,
    transcoder_folders,
    transcoder_layer,
)
from saelab.interp.tokens import TokenNames
from saelab.models import LoadedModel
from saelab.sae import SAE, load_sae
from saelab.sae.folder import CFG_FILENAME

if TYPE_CHECKING:
    from saelab.explorer.service import ExplorerLimits, ExplorerSAE

GRAPH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MODES = ("ablate", "steer")


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON cannot carry them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def default_graph_name(path: str | Path) -> str:
    """``runs/graphs/ioi`` and ``runs/graphs/ioi/graph.json`` -> ``ioi``; ``x/ioi_v2.json`` -> ``ioi_v2``."""
    path = Path(path)
    if path.name == GRAPH_FILE:
        return path.parent.name or "graph"
    return path.stem if path.suffix == ".json" else path.name


@dataclass
class ExplorerGraph:
    """One graph file: its ``name`` in the API, the checked ``document`` (edges strongest first, non-finite
    numbers as None), the transcoder ``folders`` interventions use and ``note``: why interventions are
    refused (None: they run). ``sae_by_layer[L]``: the explorer SAE that is block ``L``'s transcoder (its
    dashboards) and ``prompt_tokens_match`` (the prompt text tokenises to the graph's tokens, so the prompt
    explorer can open it), set by ``GraphStore.attach``; ``transcoders``: loaded on the first intervention."""

    name: str
    path: Path
    document: dict[str, Any]
    folders: list[Path] | None
    note: str | None = None
    prompt_tokens_match: bool = False
    sae_by_layer: list[str | None] = field(default_factory=list)
    transcoders: list[SAE] | None = None
    kinds: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def metadata(self) -> dict[str, Any]:
        return self.document["metadata"]


def recorded_folders(document: dict[str, Any]) -> tuple[list[Path] | None, str | None]:
    """The transcoder folders ``document`` records, or (None, why they cannot be used)."""
    paths = [str(t.get("path") or "") for t in document["metadata"]["transcoders"]]
    if not paths or not all(paths):
        return None, ("the file records no transcoder folders; start the explorer with --graph-transcoders DIR "
                      "(the folders the graph was traced with) to intervene")
    for path in paths:
        if not (Path(path) / CFG_FILENAME).is_file():
            return None, (f"the transcoder folder {path!r} recorded in the file is not an SAE folder here; start the "
                          "explorer with --graph-transcoders DIR (the folders the graph was traced with) to intervene")
    return [Path(p) for p in paths], None


def read_explorer_graph(name: str | None, path: str | Path, transcoders: Sequence[str | Path] | None = None
                        ) -> ExplorerGraph:
    """The graph at ``path`` (a graph.json or its folder), named ``name`` (default: from the path), with the
    transcoder folders ``transcoders`` (SAE folders, a train-transcoders run or folders of SAE folders;
    default: those the file records)."""
    name = name or default_graph_name(path)
    if not GRAPH_NAME.fullmatch(name):
        raise ConfigError(f"graph name {name!r} is not accepted; use 1-64 letters, digits, '_', '.' or '-' "
                          f"(--graph NAME={path})")
    document = json_safe(load_graph_json(path))
    document["edges"] = sorted(document["edges"], key=lambda e: -abs(e["weight"]))
    if transcoders:
        folders, note = transcoder_folders(transcoders), None
    else:
        folders, note = recorded_folders(document)
    where = Path(path) / GRAPH_FILE if Path(path).is_dir() else Path(path)
    graph = ExplorerGraph(name, where, document, folders, note)
    graph.kinds = {n["id"]: n["kind"] for n in document["nodes"]}
    return graph


def same_folder(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def distinct_folders(graphs: Sequence[ExplorerGraph]) -> list[Path]:
    """Every transcoder folder of ``graphs`` (each once), in order."""
    out: list[Path] = []
    for graph in graphs:
        for folder in graph.folders or []:
            if not any(same_folder(folder, seen) for seen in out):
                out.append(folder)
    return out


class GraphStore:
    """The graphs of one explorer (by name) over its model ``lm``; forward passes hold ``model_lock``."""

    def __init__(self, lm: LoadedModel, model_lock: threading.Lock, limits: ExplorerLimits, names: TokenNames,
                 saes: dict[str, ExplorerSAE]):
        self.lm, self.model_lock, self.limits, self.token_names, self.saes = lm, model_lock, limits, names, saes
        self.graphs: dict[str, ExplorerGraph] = {}
        self.traces: OrderedDict[str, tuple[ReplacementModel, AttributionGraph]] = OrderedDict()
        self.cache_lock = threading.Lock()
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.lm.fingerprint()
        return self._fingerprint

    def names(self) -> list[str]:
        return list(self.graphs)

    # ------------------------------------------------------------------------------------- setup
    def attach(self, graph: ExplorerGraph) -> None:
        """Serve ``graph``: refuses a second graph of the same name; a graph traced on another model (or one
        with more blocks) is served for viewing only (its ``note`` says why)."""
        if graph.name in self.graphs:
            raise ConfigError(f"two graphs are named {graph.name!r}; name them with --graph NAME=PATH")
        meta = graph.metadata
        recorded = meta.get("model_fingerprint")
        if meta["n_layers"] != self.lm.n_layers or (recorded and recorded != self.fingerprint):
            graph.note = (f"the graph was traced on model {meta.get('model')!r} ({meta['n_layers']} blocks, weights "
                          f"{recorded or 'not recorded'}), not on the explorer's model {self.lm.name!r} "
                          f"({self.lm.n_layers} blocks, weights {self.fingerprint}); start the explorer with that "
                          "model (--model) to intervene")
        graph.prompt_tokens_match = bool(meta["prompt"]) and \
            self.lm.tokenize(meta["prompt"])[0][0].tolist() == list(meta["token_ids"])
        graph.sae_by_layer = [None] * int(meta["n_layers"])
        for entry in self.saes.values():
            if not entry.folder or not graph.folders or not any(same_folder(entry.folder, f) for f in graph.folders):
                continue
            try:
                layer = transcoder_layer(self.lm, entry.sae)
            except SaelabError:
                continue
            if layer < len(graph.sae_by_layer):
                graph.sae_by_layer[layer] = entry.name
        self.graphs[graph.name] = graph

    # ----------------------------------------------------------------------------------- checks
    def get(self, name: str) -> ExplorerGraph:
        if name not in self.graphs:
            raise UnknownGraphError(f"unknown graph {name!r}; this server loaded: {', '.join(self.graphs) or 'none'}")
        return self.graphs[name]

    def check_nodes(self, graph: ExplorerGraph, nodes: Sequence[str]) -> list[str]:
        """``nodes`` without repeats, each a feature node of ``graph`` and at most the server's limit of them."""
        unique = list(dict.fromkeys(nodes))
        if not unique:
            raise SaelabError("give at least one feature node to intervene on")
        if len(unique) > self.limits.max_intervention_nodes:
            raise RequestLimitError(f"{len(unique)} nodes given; this server intervenes on at most "
                                    f"{self.limits.max_intervention_nodes} at once")
        for node in unique:
            kind = graph.kinds.get(node)
            if kind is None:
                example = next((n for n, k in graph.kinds.items() if k == "feature"), "feature:LAYER:POS:INDEX")
                raise SaelabError(f"node {node[:120]!r} is not in graph {graph.name!r}; give ids of its feature "
                                  f"nodes (feature:LAYER:POS:INDEX, e.g. {example!r}; see /api/graph)")
            if kind != "feature":
                raise SaelabError(f"node {node!r} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} node; only "
                                  "feature nodes (feature:LAYER:POS:INDEX) can be ablated or steered")
        return unique

    # ---------------------------------------------------------------------------------- answers
    def summary(self, graph: ExplorerGraph) -> dict[str, Any]:
        meta = graph.metadata
        return {"name": graph.name, "prompt": meta["prompt"], "model": str(meta["model"]),
                "n_tokens": len(meta["tokens"]), "n_nodes": len(graph.document["nodes"]),
                "n_edges": len(graph.document["edges"]), "scores": meta["scores"],
                "can_intervene": graph.note is None, "intervene_note": graph.note}

    def listing(self) -> dict[str, Any]:
        return {"graphs": [self.summary(g) for g in self.graphs.values()]}

    def view(self, name: str, max_edges: int | None = None) -> dict[str, Any]:
        """The graph's document with its ``max_edges`` strongest edges (default and cap: the server's limit)."""
        graph = self.get(name)
        limit = self.limits.max_graph_edges
        if max_edges is None:
            max_edges = limit
        elif max_edges > limit:
            raise RequestLimitError(f"max_edges={max_edges} is above this server's limit; accepted: 1..{limit}")
        edges = graph.document["edges"]
        lim = self.limits
        return {**self.summary(graph), "metadata": graph.metadata, "nodes": graph.document["nodes"],
                "edges": edges[:max_edges], "edges_total": len(edges), "sae_by_layer": graph.sae_by_layer,
                "prompt_tokens_match": graph.prompt_tokens_match,
                "limits": {"max_graph_edges": limit, "max_intervention_nodes": lim.max_intervention_nodes,
                           "max_scale": lim.max_scale}}

    def intervene(self, name: str, nodes: Sequence[str], mode: str, scale: float | None = None,
                  k: int = 10) -> dict[str, Any]:
        """Ablate (``mode="ablate"``: activation × 0) or steer (``"steer"``: activation × ``scale``) the feature
        ``nodes`` of graph ``name`` in the real model; the logits of the graph's logit tokens before and after,
        the change of each demeaned logit against the graph's prediction, and the ``k`` tokens whose
        probability changed most."""
        graph = self.get(name)
        if mode not in MODES:
            raise SaelabError(f"mode={mode!r} is not accepted; choose one of: {', '.join(MODES)}")
        if mode == "steer":
            if scale is None:
                raise SaelabError("mode 'steer' needs a scale: the factor on the features' activations")
            if abs(scale) > self.limits.max_scale:
                raise RequestLimitError(f"scale={scale} is above this server's limit; accepted: "
                                        f"-{self.limits.max_scale}..{self.limits.max_scale}")
        if k > self.limits.max_top_k:
            raise RequestLimitError(f"k={k} is above this server's limit; accepted: 1..{self.limits.max_top_k}")
        if graph.note is not None:
            raise SaelabError(f"graph {name!r} cannot be intervened on: {graph.note}")
        nodes = self.check_nodes(graph, nodes)
        factor = 0.0 if mode == "ablate" else float(scale)
        replacement, attribution = self.traced(graph)
        with self.model_lock:
            result = intervene(replacement, attribution, nodes, factor)
        clean, after = replacement.real_logits[-1].float().cpu(), result.logits.float()
        logp_clean, logp_after = clean.double().log_softmax(-1), after.double().log_softmax(-1)
        p_clean, p_after = logp_clean.exp(), logp_after.exp()
        kl = float((p_clean * (logp_clean - logp_after)).sum())
        logits = []
        for j, token in enumerate(result.tokens.tolist()):
            logits.append({"token": self.token_names.name(token), "token_id": token, "logit_before": float(clean[token]),
                           "logit_after": float(after[token]), "prob_before": float(p_clean[token]),
                           "prob_after": float(p_after[token]), "real": float(result.real[j]),
                           "predicted": float(result.predicted[j]), "direct": float(result.direct[j])})
        delta = p_after - p_clean
        changed = delta.abs().topk(min(k, delta.shape[0])).indices.tolist()
        err = (result.predicted - result.real).abs()
        meta = graph.metadata
        position = int(meta["logit_position"])
        return json_safe({
            "graph": name, "nodes": result.nodes, "mode": mode, "scale": factor, "position": position,
            "token": meta["tokens"][position], "kl": max(kl, 0.0),
            "logits": logits,
            "top_changed": [{"token": self.token_names.name(t), "token_id": t, "logit_before": float(clean[t]),
                             "logit_after": float(after[t]), "prob_before": float(p_clean[t]),
                             "prob_after": float(p_after[t])} for t in changed],
            "max_abs_error": float(err.max()) if err.numel() else 0.0,
            "relative_error": float(err.max() / result.real.abs().max().clamp_min(1e-12)) if err.numel() else 0.0,
        })

    # ---------------------------------------------------------------------- replacement and graph
    def transcoders_of(self, graph: ExplorerGraph) -> list[SAE]:
        """Block-ordered transcoders of ``graph`` (loaded once; an SAE the explorer loaded is reused)."""
        if graph.transcoders is None:
            saes = []
            for folder in graph.folders or []:
                shared = next((e.sae for e in self.saes.values() if e.folder and same_folder(e.folder, folder)), None)
                saes.append(shared if shared is not None else load_sae(folder, device=str(self.lm.device)))
            try:
                graph.transcoders = check_transcoders(self.lm, saes)
            except TranscoderSetError as exc:
                graph.note = f"its transcoders do not replace the model's MLPs ({exc})"
                raise SaelabError(f"graph {graph.name!r} cannot be intervened on: {graph.note}") from None
        return graph.transcoders

    def traced(self, graph: ExplorerGraph) -> tuple[ReplacementModel, AttributionGraph]:
        """The replacement model and full attribution graph of ``graph``'s prompt (built once, LRU-cached)."""
        with graph.lock:
            with self.cache_lock:
                if graph.name in self.traces:
                    self.traces.move_to_end(graph.name)
                    return self.traces[graph.name]
            transcoders = self.transcoders_of(graph)
            meta = graph.metadata
            with self.model_lock:
                replacement = ReplacementModel(self.lm, transcoders, torch.tensor(meta["token_ids"]))
            attribution = build_graph(replacement, graph_config_of(meta))
            self.check_reproduced(graph, attribution)
            with self.cache_lock:
                self.traces[graph.name] = (replacement, attribution)
                while len(self.traces) > max(self.limits.graph_cache, 1):
                    self.traces.popitem(last=False)
            return replacement, attribution

    def check_reproduced(self, graph: ExplorerGraph, attribution: AttributionGraph) -> None:
        """Refuse (and remember) a graph whose feature nodes the transcoders do not reproduce: another set of
        transcoders than the one it was traced with."""
        layout = attribution.layout
        acts = {node_id(layout, i): float(layout.activations[i]) for i in range(layout.n_features)}
        for node in graph.document["nodes"]:
            if node["kind"] != "feature":
                continue
            now, then = acts.get(node["id"]), node["activation"]
            if now is None or then is None or abs(now - then) > 1e-3 * (1 + abs(then)):
                got = "not active" if now is None else f"{now:.4g}"
                graph.note = (f"its transcoders do not reproduce the graph (node {node['id']} has activation "
                              f"{then} in the file, {got} now); start the explorer with --graph-transcoders DIR "
                              "naming the transcoders it was traced with")
                raise SaelabError(f"graph {graph.name!r} cannot be intervened on: {graph.note}")
