"""ACDC (Conmy et al. 2023) over the head graph of ``saelab.circuits.graph``.

Start from the full graph. Visit receivers in reverse topological order (output, then heads from the
last block back) and, for each incoming edge (latest sender first), patch it to the corrupted run; if
the metric grows by less than ``threshold`` the edge stays removed, else it is restored. The metric is
``kl`` (mean KL of the clean model's next-token distribution to the current one at the last token) or
``task`` (absolute change of the mean task metric from the clean model's). The circuit's heads are those
on a path of kept edges to the output. A sweep over thresholds gives one head set per threshold (the
ROC points); a head's ranking score is the largest swept threshold at which it stays in the circuit.

Engines (``ACDCConfig.engine``), both giving the same kept edges:

- ``fast``: every trial starts at the block of its receiver from the cached clean run (the blocks
  before it compute what the clean run computed), unembeds only the last tokens, and up to
  ``candidates`` edges of the same receiver block (as many as fit in ``batch_tokens``) are tried in
  one forward pass. A mask already evaluated (a sweep's thresholds often share a path) is not run
  again. ACDC is sequential,
  so the block is speculative: trial ``k`` assumes a predicted decision for the edges before it in the
  block (removed, unless an earlier discarded trial measured its effect at ``>= threshold``).
  Decisions are taken in order; at the first one that differs from its prediction the later trials
  rest on a state that did not happen, so they are discarded and the next block starts from the
  true state. Each decision is therefore taken on exactly the sequential algorithm's state.
- ``plain``: one full forward pass per trial (the textbook loop; for checks and timings).

The greedy rule (``greedy_prune``), the memoised objective (``MaskObjective``) and the sweep
(``acdc_result``) are shared with head-level ACDC (``saelab.circuits.acdc_nodes``), which needs no
head graph.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.circuits.graph import HeadGraph, node_set
from saelab.circuits.heads import Head
from saelab.circuits.result import MethodResult
from saelab.circuits.tasks import TaskBatch, kl_from_clean
from saelab.errors import ConfigError, check_choice, check_range

ACDC_METRICS = ("kl", "task")
ACDC_ENGINES = ("fast", "plain")
DEFAULT_THRESHOLDS = tuple(float(t) for t in 10.0 ** np.linspace(-4, 0, 9))
#: default token budget of one stacked forward pass: on a CPU more rows per pass stop paying once the
#: activations leave the caches (toy IOI, 100 pairs of 17 tokens: 1, 2 and 4 candidates per pass took the
#: same time, 8 longer); accelerators gain from large batches
CPU_BATCH_TOKENS, ACCELERATOR_BATCH_TOKENS = 2048, 65536


@dataclass(frozen=True)
class ACDCConfig:
    """``threshold``: the single run's tau; ``sweep``: the thresholds of the ROC sweep (empty: none);
    ``engine``: ``fast`` or ``plain`` (same result, see module docstring); ``candidates``: at most this
    many edges tried per forward pass by the fast engine, the prompt batch stacked once per edge within
    ``batch_tokens`` tokens (default ``CPU_BATCH_TOKENS`` on a CPU, ``ACCELERATOR_BATCH_TOKENS`` else)."""

    metric: str = "kl"
    threshold: float = 0.01
    sweep: tuple[float, ...] = DEFAULT_THRESHOLDS
    engine: str = "fast"
    candidates: int = 8
    batch_tokens: int | None = None

    def __post_init__(self):
        check_choice("metric", self.metric, ACDC_METRICS)
        check_choice("engine", self.engine, ACDC_ENGINES)
        check_range("threshold", self.threshold, 0, None, lo_open=True)
        check_range("candidates", self.candidates, 1, 1024, integer=True)
        if self.batch_tokens is not None:
            check_range("batch_tokens", self.batch_tokens, 1, None, integer=True)
        for tau in self.sweep:
            check_range("sweep threshold", tau, 0, None, lo_open=True)

    def candidates_per_pass(self, batch: TaskBatch, device: torch.device) -> int:
        """Edges the fast engine tries per forward pass on ``batch`` (1 for the plain engine)."""
        if self.engine == "plain":
            return 1
        budget = self.batch_tokens or (CPU_BATCH_TOKENS if torch.device(device).type == "cpu"
                                       else ACCELERATOR_BATCH_TOKENS)
        return max(1, min(self.candidates, budget // batch.clean_ids.numel()))


class MaskObjective(ABC):
    """The ACDC metric of patched runs, lower is closer to the clean model; counts the work done. A mask
    evaluated before (another threshold of a sweep takes the same path) is not run again.

    Subclasses set ``n_layers`` and implement ``evaluate(masks) -> (end logits [K, n, d_vocab], first
    block run, forward passes)`` for a stack of masks (edges: ``ACDCObjective``; heads:
    ``saelab.circuits.acdc_nodes.NodeObjective``); ``clean_end [n, d_vocab]``: the clean run's end logits."""

    n_layers: int

    def __init__(self, batch: TaskBatch, metric: str, clean_end: torch.Tensor):
        check_choice("metric", metric, ACDC_METRICS)
        self.batch, self.metric, self.clean_end = batch, metric, clean_end
        # the same pairs with every end at position 0: its metrics read end logits given as [n, 1, d_vocab]
        self.at_end = replace(batch, end=torch.zeros_like(batch.end))
        self.clean_metric = self.at_end.metric(self.clean_end[:, None]).mean()
        self.seen: dict[bytes, float] = {}
        self.counts = {"forward_passes": 0, "masks_evaluated": 0, "block_evaluations": 0}

    def score(self, last: torch.Tensor) -> float:
        """The metric of one patched run from its end logits ``[n, d_vocab]``."""
        if self.metric == "kl":
            return float(kl_from_clean(self.at_end, self.clean_end[:, None], last[:, None]).mean())
        return float((self.at_end.metric(last[:, None]).mean() - self.clean_metric).abs())

    @abstractmethod
    def evaluate(self, masks: torch.Tensor) -> tuple[torch.Tensor | list[torch.Tensor], int, int]:
        """``(end logits of each mask, first block run, forward passes)`` for ``masks [K, ...]``:
        what a subclass's patched runs compute (edges: ``ACDCObjective``, heads: ``NodeObjective``)."""

    @torch.no_grad()
    def __call__(self, masks: torch.Tensor) -> list[float]:
        """The metric of each mask of the stack ``masks [K, ...]``."""
        keys = [m.bool().numpy().tobytes() for m in masks]
        todo = [k for k, key in enumerate(keys) if key not in self.seen]
        if todo:
            ends, start, calls = self.evaluate(masks[todo])
            self.counts["forward_passes"] += calls
            self.counts["masks_evaluated"] += len(todo)
            self.counts["block_evaluations"] += len(todo) * (self.n_layers - start)
            self.seen.update({keys[k]: self.score(last) for k, last in zip(todo, ends, strict=True)})
        return [self.seen[key] for key in keys]


class ACDCObjective(MaskObjective):
    """``MaskObjective`` over edge masks ``[K, n_nodes + 1, n_nodes]`` of ``graph`` (engine ``fast``:
    ``HeadGraph.end_logits``; ``plain``: one full ``HeadGraph.run`` per mask)."""

    def __init__(self, graph: HeadGraph, batch: TaskBatch, metric: str, engine: str = "fast"):
        check_choice("engine", engine, ACDC_ENGINES)
        self.graph, self.engine, self.n_layers = graph, engine, graph.lm.n_layers
        with torch.no_grad():
            if engine == "plain":
                self.corrupted = graph.corrupted_outputs(batch.corrupted_ids)
                clean_end = batch.end_logits(graph.lm.run_with_hooks(batch.clean_ids, {}))
            else:
                self.runs = graph.cache_runs(batch.clean_ids, batch.corrupted_ids)
                clean_end = graph.end_logits(self.runs, graph.empty_mask(), batch.end)[0]
        super().__init__(batch, metric, clean_end)

    def evaluate(self, masks: torch.Tensor):
        if self.engine == "plain":
            ends = [self.batch.end_logits(self.graph.run(self.batch.clean_ids, m, self.corrupted)) for m in masks]
            return ends, 0, len(masks)
        start = self.graph.start_layer(masks)
        return self.graph.end_logits(self.runs, masks, self.batch.end), start, int(start < self.n_layers)


def greedy_prune(objective: MaskObjective, items: list, layers: list[int], patched: torch.Tensor, threshold: float,
                 candidates: int = 1, progress: bool = False) -> torch.Tensor:
    """ACDC's greedy rule: visit ``items`` (indices into the mask ``patched``, all 0 at the start) in
    order; set each to 1 (patched) and keep it so when the metric grows by less than ``threshold``, else
    set it back. Returns the final mask (1 = patched, i.e. removed). ``layers[j]``: the block of item
    ``j``; ``candidates > 1`` tries up to that many consecutive items of one block per call of
    ``objective``, speculatively (module docstring); the decisions are those of ``candidates = 1``."""
    patched = patched.clone()
    current = objective(patched[None])[0]
    effects: dict[int, float] = {}  # item index -> its effect measured in a discarded speculative trial
    bar = tqdm(total=len(items), desc=f"acdc tau={threshold:.2g}", disable=not progress, leave=False)
    i = 0
    while i < len(items):
        block = [j for j in range(i, min(i + candidates, len(items))) if layers[j] == layers[i]]
        masks, guesses, state = [], [], patched
        for j in block:
            trial = state.clone()
            trial[items[j]] = 1.0
            masks.append(trial)
            guesses.append(effects.pop(j, 0.0) < threshold)  # predicted: removed
            state = trial if guesses[-1] else state
        values = objective(torch.stack(masks))
        base, seen = current, []  # each trial's effect over the state it was run on
        for value, guess in zip(values, guesses, strict=True):
            seen.append(value - base)
            base = value if guess else base
        done = 0
        for j, value, guess in zip(block, values, guesses, strict=True):
            done += 1
            removed = value - current < threshold
            if removed:
                patched[items[j]] = 1.0
                current = value
            if removed != guess:
                effects.update({block[k]: seen[k] for k in range(done, len(block))})
                break
        i += done
        bar.update(done)
    bar.close()
    return patched


def acdc_prune(objective: ACDCObjective, threshold: float, candidates: int = 1, progress: bool = False) -> torch.Tensor:
    """One ACDC pass at ``threshold`` over the edges of ``objective.graph`` (``greedy_prune``): the mask
    of kept edges (1 = kept)."""
    graph = objective.graph
    edges = graph.edges()
    layers = [int(graph.row_layers[row]) for row, _ in edges]
    patched = greedy_prune(objective, edges, layers, graph.empty_mask(), threshold, candidates, progress)
    return graph.valid_edges * (1 - patched)


def threshold_sweep(heads: list[Head], thresholds, circuit_at) -> tuple[list[np.ndarray], np.ndarray, float]:
    """``(sets, scores, runtime_s)`` of a sweep: ``circuit_at(tau)`` (the circuit's heads at ``tau``) for
    each threshold in increasing order, one boolean vector over ``heads`` per threshold, and each head's
    score, the largest threshold at which it is in the circuit (0 if none)."""
    sets, scores = [], np.zeros(len(heads))
    start = time.perf_counter()
    for tau in sorted(thresholds):
        members = set(circuit_at(tau))
        in_set = np.array([h in members for h in heads])
        sets.append(in_set)
        scores[in_set] = tau
    return sets, scores, time.perf_counter() - start


def acdc_result(method: str, batch: TaskBatch, cfg: ACDCConfig, heads: list[Head], circuit: list[Head],
                circuit_at, runtime: float, details: dict) -> MethodResult:
    """The ``MethodResult`` of an ACDC variant: its one run at ``cfg.threshold`` (``circuit``, timed as
    ``runtime``), the sweep over ``cfg.sweep`` (``threshold_sweep`` of ``circuit_at``; without one,
    scores are 1 for the circuit's heads) and ``details`` with the settings, sweep and runtime added."""
    sets, scores, sweep_runtime = threshold_sweep(heads, cfg.sweep, circuit_at)
    if not sets:
        scores = np.array([float(h in set(circuit)) for h in heads])
    details = {"n_prompts": len(batch), "metric": cfg.metric, "threshold": cfg.threshold,
               "circuit": [str(h) for h in circuit], **details,
               "sweep_thresholds": list(sorted(cfg.sweep)), "sweep_runtime_s": round(sweep_runtime, 3)}
    return MethodResult(method, batch.task, heads, scores, runtime, sets=sets or None,
                        thresholds=sorted(cfg.sweep) or None, details=details)


def check_pairs(batch: TaskBatch) -> None:
    if len(batch) < 2:
        raise ConfigError(f"ACDC needs at least 2 prompt pairs, got {len(batch)}")


def run_acdc(lm, batch: TaskBatch, cfg: ACDCConfig | None = None, progress: bool = False) -> MethodResult:
    """ACDC at ``cfg.threshold`` (timed: ``runtime_s``) and over ``cfg.sweep`` (``sweep_runtime_s``)."""
    cfg = cfg or ACDCConfig()
    check_pairs(batch)
    candidates = cfg.candidates_per_pass(batch, lm.device)
    start = time.perf_counter()
    graph = HeadGraph(lm)
    objective = ACDCObjective(graph, batch, cfg.metric, cfg.engine)
    kept = acdc_prune(objective, cfg.threshold, candidates, progress)
    runtime = time.perf_counter() - start
    counts = dict(objective.counts)
    details = {"edges_kept": int(kept.sum()), "edges_total": int(graph.valid_edges.sum()), "engine": cfg.engine,
               "candidates": candidates,
               # a sequential ACDC's trials: the unpatched run, then one per edge
               "trials": len(graph.edges()) + 1, **counts}
    return acdc_result("acdc", batch, cfg, graph.heads, node_set(graph, kept), runtime=runtime, details=details,
                       circuit_at=lambda tau: node_set(graph, acdc_prune(objective, tau, candidates, progress)))
