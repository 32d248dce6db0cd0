"""Attribution graphs: the direct effects between the nodes of a replacement model (Ameisen et al. 2025).

Nodes, in this order (``NodeLayout``): the active *features* (layer, position, feature; at most
``max_feature_nodes`` of them), one *error* node per (layer, position), one *embedding* node per
position, and the *logit* nodes: the most probable next tokens at the last position, as many as cover
``prob_mass`` of the probability (at most ``max_logits``).

Edges: ``A[target, source]`` is the direct effect of the source on the target in the replacement model,
every other node held fixed. A source writes a vector into the residual stream (a feature: ``a · W_dec[f]``
at the output of its MLP; an error node: its error vector there; an embedding: block 0's input); a target
reads one: a feature its encoder column ``W_enc[:, f]`` at its MLP's input (its pre-activation); a logit the
demeaned unembedding column ``W_U[:, t] − mean_v W_U[:, v]`` at the final-normed residual, so that the
logit is measured against the mean logit. Because the replacement model is affine in its sources,

    A[t, s] = source_vector_s · J_{s→t}ᵀ target_vector_t

with ``J`` the Jacobian of the frozen linear paths (attention with frozen patterns, frozen norms, skip
terms), the same at every input. One backward pass gives ``J``ᵀ·target for every source at once; a batch
of targets runs as a batch of independent copies of the prompt (``batch_size`` targets per pass), and the
frozen model's forward graph is built once and kept, so each batch costs one backward pass. The
direct effects into a target sum, with the biases' share, to its value: a feature's pre-activation, a
logit's difference from the mean logit.

When more features are active than ``max_feature_nodes``, logit rows are computed first and features
are then taken in order of their estimated influence on the logits (from the rows computed so far,
re-estimated every ``update_interval`` batches), as in circuit-tracer; features left out are not nodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.errors import check_range
from saelab.graphs.replacement import ReplacementModel

KINDS: tuple[str, ...] = ("feature", "error", "embedding", "logit")


@dataclass
class GraphConfig:
    """How a graph is built. max_logits, prob_mass: the logit nodes (published defaults 10 and 0.95).
    max_feature_nodes: at most this many feature nodes (None: every active feature). batch_size: targets
    per backward pass. update_interval: batches between re-rankings of the features (with a cap)."""

    max_logits: int = 10
    prob_mass: float = 0.95
    max_feature_nodes: int | None = 8192
    batch_size: int = 256
    update_interval: int = 4

    def __post_init__(self) -> None:
        check_range("max_logits", self.max_logits, 1, integer=True)
        check_range("prob_mass", self.prob_mass, 0, 1, lo_open=True)
        if self.max_feature_nodes is not None:
            check_range("max_feature_nodes", self.max_feature_nodes, 1, integer=True)
        check_range("batch_size", self.batch_size, 1, integer=True)
        check_range("update_interval", self.update_interval, 1, integer=True)


@dataclass
class NodeLayout:
    """Where each node sits in the adjacency matrix: features ``[0, n_features)`` (``features [n, 3]``:
    layer, position, feature index; ``activations [n]``), then errors (layer-major: ``layer * n_pos + pos``),
    embeddings (by position) and logits (``logit_tokens [n_logits]``, most probable first)."""

    features: Tensor
    activations: Tensor
    n_layers: int
    n_pos: int
    logit_tokens: Tensor

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.shape[0])

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def embedding_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.embedding_start + self.n_pos

    @property
    def n_sources(self) -> int:
        """Columns that can have outgoing edges: features, errors and embeddings."""
        return self.logit_start

    @property
    def n_nodes(self) -> int:
        return self.logit_start + self.n_logits

    def error_index(self, layer: int, pos: int) -> int:
        return self.error_start + layer * self.n_pos + pos

    def embedding_index(self, pos: int) -> int:
        return self.embedding_start + pos

    def kind(self, i: int) -> str:
        """``feature``, ``error``, ``embedding`` or ``logit``."""
        if not 0 <= i < self.n_nodes:
            raise IndexError(f"node {i} is out of range; the graph has {self.n_nodes} nodes")
        return KINDS[sum(i >= start for start in (self.error_start, self.embedding_start, self.logit_start))]

    def layer_position(self, i: int) -> tuple[int, int]:
        """(layer, position): embeddings at layer -1, logits at layer ``n_layers`` and the last position."""
        kind = self.kind(i)
        if kind == "feature":
            layer, pos, _ = self.features[i].tolist()
            return layer, pos
        if kind == "error":
            return divmod(i - self.error_start, self.n_pos)
        if kind == "embedding":
            return -1, i - self.embedding_start
        return self.n_layers, self.n_pos - 1

    def kind_masks(self) -> dict[str, Tensor]:
        """``{kind: [n_nodes] bool}``."""
        starts = (0, self.error_start, self.embedding_start, self.logit_start, self.n_nodes)
        masks = {}
        for kind, lo, hi in zip(KINDS, starts, starts[1:], strict=False):
            mask = torch.zeros(self.n_nodes, dtype=torch.bool)
            mask[lo:hi] = True
            masks[kind] = mask
        return masks

    def node_layers(self) -> Tensor:
        """``[n_nodes]`` layer of every node (embeddings -1, logits n_layers): edges go from lower to higher."""
        L, P = self.n_layers, self.n_pos  # noqa: N806
        return torch.cat([self.features[:, 0].cpu(), torch.arange(L).repeat_interleave(P), torch.full((P,), -1),
                          torch.full((self.n_logits,), L)])


@dataclass
class AttributionGraph:
    """A prompt's graph: ``adjacency [n_nodes, n_nodes]`` (target, source; float32, CPU) over ``layout``'s
    nodes, the logit nodes' probabilities, the prompt's ``input_ids [pos]``, how many features were active
    (``n_active_features``, before ``max_feature_nodes``) and the time each phase took (seconds)."""

    layout: NodeLayout
    adjacency: Tensor
    input_ids: Tensor
    logit_probabilities: Tensor
    n_active_features: int
    config: GraphConfig
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def logit_weights(self) -> Tensor:
        """``[n_nodes]``: each logit node's probability, 0 elsewhere (the weights influence starts from)."""
        weights = torch.zeros(self.layout.n_nodes, dtype=self.adjacency.dtype)
        weights[self.layout.logit_start:] = self.logit_probabilities.to(weights)
        return weights


@dataclass
class Targets:
    """Nodes whose incoming edges are computed: each reads ``vectors [n, d]`` at site ``layers [n]`` (a block's
    MLP input, or ``n_layers``: the final-normed residual) and position ``positions [n]``."""

    layers: Tensor
    positions: Tensor
    vectors: Tensor

    def __len__(self) -> int:
        return int(self.layers.shape[0])

    def __getitem__(self, index) -> Targets:
        return Targets(self.layers[index], self.positions[index], self.vectors[index])


def graph_config_of(metadata: dict) -> GraphConfig:
    """The ``GraphConfig`` a graph file was traced with (its ``metadata["config"]``), to trace it again."""
    cfg = metadata["config"]
    return GraphConfig(max_logits=cfg["max_logits"], prob_mass=cfg["prob_mass"],
                       max_feature_nodes=cfg["max_feature_nodes"], batch_size=cfg["batch_size"])


def salient_logits(logits: Tensor, max_logits: int = 10, prob_mass: float = 0.95) -> tuple[Tensor, Tensor]:
    """The fewest most probable tokens of ``logits [d_vocab]`` whose probabilities sum to ``prob_mass``
    (at most ``max_logits``): ``(token ids [n], probabilities [n])``."""
    probs = torch.softmax(logits.double(), dim=-1)
    top_p, top_ids = probs.topk(min(max_logits, probs.shape[-1]))
    n = int(torch.searchsorted(top_p.cumsum(0), torch.tensor(prob_mass, dtype=top_p.dtype))) + 1
    n = min(n, top_p.shape[0])
    return top_ids[:n], top_p[:n].float()


def logit_targets(model: ReplacementModel, tokens: Tensor, position: int | None = None) -> Targets:
    """Targets reading the demeaned unembedding columns of ``tokens [n]`` at ``position`` (default: last)."""
    position = model.n_pos - 1 if position is None else position
    W_U = model.W_U  # noqa: N806
    vectors = W_U[:, tokens.to(W_U.device)].T - W_U.mean(dim=1)
    n = tokens.shape[0]
    return Targets(torch.full((n,), model.n_layers), torch.full((n,), position), vectors)


def feature_targets(model: ReplacementModel, features: Tensor) -> Targets:
    """Targets reading each feature's encoder column at its MLP input; ``features [n, 3]`` (layer, pos, index)."""
    vectors = torch.empty(features.shape[0], model.d_model, dtype=model.dtype, device=model.device)
    for layer in features[:, 0].unique().tolist():
        rows = torch.nonzero(features[:, 0] == layer).squeeze(1)
        W, _ = model.encoder(layer)  # noqa: N806
        vectors[rows.to(vectors.device)] = W[:, features[rows, 2].to(W.device)].T
    return Targets(features[:, 0].cpu(), features[:, 1].cpu(), vectors)


class SourceColumns:
    """The source nodes' vectors, grouped for fast contraction: per layer, per position, the active
    features' ``a · W_dec[f]`` rows and their column indices; error and embedding vectors."""

    def __init__(self, model: ReplacementModel, layout: NodeLayout):
        self.model, self.layout = model, layout
        self._graph: tuple | None = None
        self.groups: list[list[tuple[int, Tensor, Tensor]]] = []
        for layer in range(model.n_layers):
            in_layer = torch.nonzero(layout.features[:, 0] == layer).squeeze(1)
            groups = []
            for pos in layout.features[in_layer, 1].unique().tolist():
                cols = in_layer[layout.features[in_layer, 1] == pos]
                rows = model.decoder_rows(layer, layout.features[cols, 2])
                groups.append((pos, cols, rows * layout.activations[cols].to(rows)[:, None]))
            self.groups.append(groups)

    def _frozen_graph(self, capacity: int, head_mask: Tensor | None) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Zero inputs ``[capacity, pos, d_model]`` (block-0 input and every block's MLP write) and the sites the
        frozen model computes from them, kept with their autograd graph so that every batch of targets needs
        only a backward pass. The map is affine, so its gradients are the same at every input."""
        key = (capacity, None if head_mask is None else head_mask.detach().cpu().numpy().tobytes())
        if self._graph is None or self._graph[0] != key:
            self._graph = None  # free the previous graph first
            model = self.model
            zeros = dict(dtype=model.dtype, device=model.device)
            shape = (capacity, model.n_pos, model.d_model)
            embed = torch.zeros(shape, **zeros, requires_grad=True)
            deltas = [torch.zeros(shape, **zeros, requires_grad=True) for _ in range(model.n_layers)]
            with torch.enable_grad():
                sites = model.run(embed, deltas, head_mask=head_mask)
            self._graph = (key, embed, deltas, sites)
        return self._graph[1:]

    def release(self) -> None:
        """Free the kept autograd graph."""
        self._graph = None

    def rows(self, targets: Targets, head_mask: Tensor | None = None, capacity: int | None = None) -> Tensor:
        """``[n_targets, n_sources]`` direct effects of every source on each target (one backward pass through
        the kept frozen graph of ``capacity`` >= ``len(targets)`` copies of the prompt)."""
        model, layout = self.model, self.layout
        B, P = len(targets), model.n_pos  # noqa: N806
        embed, deltas, sites = self._frozen_graph(max(B, capacity or B), head_mask)
        top = int(targets.layers.max())
        with torch.enable_grad():
            value = 0
            layers, positions = targets.layers.to(model.device), targets.positions.to(model.device)
            batch = torch.arange(B, device=model.device)
            vectors = targets.vectors.to(dtype=model.dtype, device=model.device)
            for layer in targets.layers.unique().tolist():
                sel = layers == layer
                value = value + (sites[layer][batch[sel], positions[sel]] * vectors[sel]).sum()
            inputs = [embed, *deltas[:top]]  # later blocks' writes cannot reach these targets
            grads = torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True, materialize_grads=True)
        out = torch.zeros(B, layout.n_sources, dtype=model.dtype, device=model.device)
        out[:, layout.embedding_start:layout.logit_start] = (grads[0][:B] * model.embeddings).sum(-1)
        for layer, grad in enumerate(grads[1:]):
            grad = grad[:B]
            start = layout.error_index(layer, 0)
            out[:, start:start + P] = (grad * model.errors[layer]).sum(-1)
            for pos, cols, vecs in self.groups[layer]:
                out[:, cols.to(out.device)] = grad[:, pos] @ vecs.T
        return out


def compute_rows(columns: SourceColumns, targets: Targets, batch_size: int = 256, head_mask: Tensor | None = None,
                 progress: bool = False, desc: str = "attribution") -> Tensor:
    """``[n_targets, n_sources]`` (float32, CPU): ``SourceColumns.rows`` over batches of ``batch_size`` targets."""
    chunks = []
    capacity = min(batch_size, len(targets))
    for start in tqdm(range(0, len(targets), batch_size), desc=desc, disable=not progress, leave=False):
        chunks.append(columns.rows(targets[start:start + batch_size], head_mask, capacity).float().cpu())
    if not chunks:
        return torch.zeros(0, columns.layout.n_sources)
    return torch.cat(chunks)


def partial_influence(rows: Tensor, row_nodes: Tensor, logit_probs: Tensor, n_logits: int,
                      max_iter: int = 1024) -> Tensor:
    """``[n_sources]`` estimated influence on the logits from the rows computed so far: ``rows [n, n_sources]``
    whose first ``n_logits`` are the logit rows and the others belong to features ``row_nodes [n]`` (a row's
    source column; -1 for logits)."""
    normalized = rows.abs()
    normalized = normalized / normalized.sum(1, keepdim=True).clamp_min(1e-10)
    weights = torch.zeros(rows.shape[0])
    weights[:n_logits] = logit_probs
    influence = torch.zeros(rows.shape[1])
    feature_rows = row_nodes >= 0
    for _ in range(max_iter):
        step = weights @ normalized
        if not step.any():
            return influence
        influence += step
        weights = torch.zeros_like(weights)
        weights[feature_rows] = step[row_nodes[feature_rows]]
    raise RuntimeError(f"influence did not converge in {max_iter} steps; the graph has a cycle")


def build_graph(model: ReplacementModel, cfg: GraphConfig | None = None, progress: bool = False) -> AttributionGraph:
    """The attribution graph of ``model``'s prompt (see the module docstring)."""
    cfg = cfg or GraphConfig()
    started = time.perf_counter()
    logit_tokens, logit_probs = salient_logits(model.real_logits[-1], cfg.max_logits, cfg.prob_mass)
    all_features, all_acts = model.active_features()
    n_active = int(all_features.shape[0])
    layout = NodeLayout(all_features.cpu(), all_acts.cpu(), model.n_layers, model.n_pos, logit_tokens.cpu())
    columns = SourceColumns(model, layout)
    logit_rows = compute_rows(columns, logit_targets(model, logit_tokens), cfg.batch_size)
    limit = n_active if cfg.max_feature_nodes is None else min(cfg.max_feature_nodes, n_active)
    if limit == n_active:
        order = torch.argsort(all_features[:, 0].cpu(), stable=True)  # by layer: early batches stop early
        feature_rows = torch.empty(n_active, layout.n_sources)
        feature_rows[order] = compute_rows(columns, feature_targets(model, all_features[order]), cfg.batch_size,
                                           progress=progress)
        selected = torch.arange(n_active)
    else:
        selected, feature_rows = _rank_and_compute(columns, model, logit_rows, logit_probs, limit, cfg, progress)
    adjacency = _square(layout, selected, feature_rows, logit_rows)
    layout = NodeLayout(all_features[selected].cpu(), all_acts[selected].cpu(), model.n_layers, model.n_pos,
                        logit_tokens.cpu())
    timings = {"attribution": time.perf_counter() - started}
    return AttributionGraph(layout, adjacency, model.input_ids.cpu(), logit_probs.cpu(), n_active, cfg, timings)


def _rank_and_compute(columns: SourceColumns, model: ReplacementModel, logit_rows: Tensor, logit_probs: Tensor,
                      limit: int, cfg: GraphConfig, progress: bool) -> tuple[Tensor, Tensor]:
    """Feature rows for the ``limit`` features of highest estimated influence, re-ranked every
    ``update_interval`` batches; returns (selected feature indices, sorted; their rows)."""
    features = columns.layout.features
    n_logits = logit_rows.shape[0]
    rows, row_nodes = [logit_rows], [torch.full((n_logits,), -1)]
    visited = torch.zeros(features.shape[0], dtype=torch.bool)
    bar = tqdm(total=limit, desc="attribution", disable=not progress, leave=False)
    while int(visited.sum()) < limit:
        influence = partial_influence(torch.cat(rows), torch.cat(row_nodes), logit_probs, n_logits)
        ranked = torch.argsort(influence[:features.shape[0]], descending=True)
        queue = ranked[~visited[ranked]][:min(cfg.update_interval * cfg.batch_size, limit - int(visited.sum()))]
        rows.append(compute_rows(columns, feature_targets(model, features[queue]), cfg.batch_size))
        row_nodes.append(queue)
        visited[queue] = True
        bar.update(len(queue))
    bar.close()
    chosen = torch.cat(row_nodes[1:])
    order = torch.argsort(chosen)
    return chosen[order], torch.cat(rows[1:])[order]


def _square(layout: NodeLayout, selected: Tensor, feature_rows: Tensor, logit_rows: Tensor) -> Tensor:
    """``[n, n]`` adjacency over the selected features, errors, embeddings and logits (rows: targets)."""
    keep_cols = torch.cat([selected, torch.arange(layout.n_features, layout.n_sources)])
    n_sel = selected.shape[0]
    n = keep_cols.shape[0] + layout.n_logits
    adjacency = torch.zeros(n, n)
    adjacency[:n_sel, :keep_cols.shape[0]] = feature_rows[:, keep_cols]
    adjacency[n - layout.n_logits:, :keep_cols.shape[0]] = logit_rows[:, keep_cols]
    return adjacency

