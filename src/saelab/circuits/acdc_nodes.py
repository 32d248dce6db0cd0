"""Head-level ACDC (``acdc_nodes``), and the layer-skipping ``hook_z`` patch runs it is built on.

ACDC's greedy rule (Conmy et al. 2023) applied to head nodes instead of edges: visit the heads in
reverse topological order (the last block first; within a block the last head first) and patch the
head's ``hook_z`` to its value on the corrupted prompts, at every position; if the metric (``kl`` or
``task``, as for edge ACDC, ``saelab.circuits.acdc``) grows by less than ``threshold`` the head stays
patched (removed), else it is restored. The circuit is the heads left unpatched. The sweep and scores
are edge ACDC's: a head's score is the largest swept threshold at which it stays in the circuit.

Only ``hook_z`` is swapped and the model computes everything else, so any model with ``hook_z`` works,
including grouped-query attention (one key/value head shared by several query heads) and norms after
the attention output (Gemma 2 and 3), which edge ACDC's head graph cannot express.

Engines (``ACDCConfig.engine``):

- ``fast`` (``ZPatchRunner``): heads are visited last block first, so a trial at a head of block ``L``
  has patched only heads of blocks ``L`` and later, and blocks ``0..L-1`` compute what the clean run
  computed: the clean residual stream entering every block is cached once and the blocks before ``L``
  hand it on without computing (``models.partial_forward.handing_on``). The last block's MLP runs only at each
  prompt's last token, and only that token is unembedded. Up to ``candidates`` heads of one block are
  tried in one pass, speculatively, keeping the sequential loop's decisions (``acdc.greedy_prune``).
- ``plain``: one full forward pass per trial, every position unembedded (the textbook loop).

The same runner serves per-head activation patching (``saelab.circuits.patching``) and the reference
circuits' mean ablation (``saelab.circuits.reference``).
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from saelab.circuits.acdc import (
    ACDC_ENGINES,
    ACDCConfig,
    MaskObjective,
    acdc_result,
    check_pairs,
    greedy_prune,
)
from saelab.circuits.heads import Head, all_heads, cache_z
from saelab.circuits.result import MethodResult
from saelab.circuits.tasks import TaskBatch
from saelab.errors import SaelabError, check_choice
from saelab.models.partial_forward import handing_on


def end_metric(batch: TaskBatch, last: torch.Tensor) -> torch.Tensor:
    """The task metric per prompt ``[n]`` from end logits ``last [n, d_vocab]`` (``TaskBatch.metric``
    reads them from ``[n, pos, d_vocab]``)."""
    return replace(batch, end=torch.zeros_like(batch.end)).metric(last[:, None])


def z_edits(lm, masks: torch.Tensor, values: list[torch.Tensor], start: int = 0) -> dict:
    """``hook_z`` edits of blocks ``start..`` for a run of the prompts stacked once per mask: in copy
    ``k`` the heads set in ``masks [K, n_layers * n_heads]`` (bool, on the model's device) take
    ``values[L] [batch | 1, pos, n_heads, d_head]``."""
    K, nh = masks.shape[0], lm.n_heads
    edits = {}
    for layer in range(start, lm.n_layers):
        chosen = masks[:, layer * nh:(layer + 1) * nh]
        if not chosen.any():
            continue

        def edit(z, chosen=chosen, value=values[layer]):
            stacked = z.view(K, -1, *z.shape[1:])  # [K, batch, pos, n_heads, d_head]
            new = value.to(device=z.device, dtype=z.dtype)[None]
            return torch.where(chosen[:, None, None, :, None], new, stacked).view_as(z)

        edits[f"blocks.{layer}.attn.hook_z"] = edit
    return edits


def check_masks(lm, masks: torch.Tensor) -> torch.Tensor:
    """One head mask ``[n_layers * n_heads]`` or a stack ``[K, n_layers * n_heads]`` -> the stack, bool,
    on the model's device."""
    masks = masks[None] if masks.ndim == 1 else masks
    n = lm.n_layers * lm.n_heads
    if masks.ndim != 2 or masks.shape[1] != n:
        raise SaelabError(f"head masks must have shape [n_layers * n_heads] = [{n}] or a stack [K, {n}], got "
                          f"{tuple(masks.shape)}")
    return masks.bool().to(lm.device)


@torch.no_grad()
def plain_end_logits(lm, ids: torch.Tensor, end: torch.Tensor, masks: torch.Tensor,
                     values: list[torch.Tensor]) -> torch.Tensor:
    """``[K, batch, d_vocab]``: one full forward pass of ``ids [batch, pos]`` per mask of ``masks`` (heads
    set take ``values``, as in ``z_edits``), every position unembedded, read at ``end [batch]``."""
    masks = check_masks(lm, masks)
    rows = torch.arange(len(ids), device=lm.device)
    return torch.stack([lm.run_with_hooks(ids, z_edits(lm, mask[None], values))[rows, end.to(lm.device)].float()
                        for mask in masks])


class ZPatchRunner:
    """Runs of the clean prompts ``ids [batch, pos]`` of ``lm`` in which chosen heads' ``hook_z`` take
    given values, read at each prompt's last token ``end [batch]`` (the ``fast`` engine of the module
    docstring). ``clean_end [batch, d_vocab]``: the unpatched run's end logits, computed the same way
    (so that a patch that changes nothing gives exactly the same logits)."""

    def __init__(self, lm, ids: torch.Tensor, end: torch.Tensor):
        self.lm, self.ids, self.end = lm, lm.as_input_ids(ids), end.to(lm.device)
        returns: list[bool] = []
        handle = lm.adapter.blocks()[0].register_forward_hook(lambda module, args, out: returns.append(
            isinstance(out, tuple)))
        try:
            with torch.no_grad():
                _, cache = lm.run_to_unembed(self.ids, capture=[f"blocks.{L}.hook_resid_pre" for L in range(lm.n_layers)])
        finally:
            handle.remove()
        self.resid = [cache[f"blocks.{L}.hook_resid_pre"] for L in range(lm.n_layers)]  # [batch, pos, d_model]
        self.tuple_blocks = bool(returns[0])
        no_patch = torch.zeros(1, lm.n_layers * lm.n_heads, dtype=torch.bool, device=lm.device)
        self.clean_end = self._run(no_patch, [], lm.n_layers - 1)[0]

    def start_layer(self, masks: torch.Tensor) -> int:
        """The lowest block with a head set in ``masks [K, n_layers * n_heads]`` (``n_layers`` if none)."""
        patched = masks.bool().any(0).view(self.lm.n_layers, self.lm.n_heads).any(1).nonzero()
        return int(patched[0, 0]) if len(patched) else self.lm.n_layers

    @torch.no_grad()
    def _run(self, masks: torch.Tensor, values: list[torch.Tensor], start: int) -> torch.Tensor:
        """Blocks ``start..`` on the prompts stacked once per mask, the blocks before ``start`` handing on
        the cached clean stream: end logits ``[K, batch, d_vocab]`` (float32)."""
        lm, K, b = self.lm, masks.shape[0], len(self.ids)
        rows, ends = torch.arange(K * b, device=lm.device), self.end.repeat(K)
        resid = self.resid[start].repeat(K, 1, 1) if K > 1 else self.resid[start]
        with handing_on(lm, resid, start, self.tuple_blocks, (rows, ends)):  # last MLP: at the last tokens only
            final, _ = lm.run_to_unembed(self.ids.repeat(K, 1) if K > 1 else self.ids, z_edits(lm, masks, values, start))
        return lm.unembed(final[rows, ends]).float().view(K, b, -1)

    def end_logits(self, masks: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
        """``[K, batch, d_vocab]``: for each mask of ``masks`` (``[K, n_layers * n_heads]`` or one mask),
        the end logits with the heads it sets taking ``values[L] [batch | 1, pos, n_heads, d_head]``; one
        forward pass for all masks, from ``start_layer(masks)`` on (none when no head is set)."""
        masks = check_masks(self.lm, masks)
        start = self.start_layer(masks)
        if start == self.lm.n_layers:
            return self.clean_end[None].expand(len(masks), -1, -1)
        return self._run(masks, values, start)


class NodeObjective(MaskObjective):
    """``MaskObjective`` over head masks ``[K, n_layers * n_heads]`` (1 = ``hook_z`` from the corrupted
    prompts), by the ``fast`` (``ZPatchRunner``) or ``plain`` (``plain_end_logits``) engine."""

    def __init__(self, lm, batch: TaskBatch, metric: str, engine: str = "fast"):
        check_choice("engine", engine, ACDC_ENGINES)
        self.lm, self.engine, self.n_layers = lm, engine, lm.n_layers
        if tuple(batch.clean_ids.shape) != tuple(batch.corrupted_ids.shape):
            raise SaelabError(f"clean and corrupted prompts must have the same shape, got "
                              f"{tuple(batch.clean_ids.shape)} and {tuple(batch.corrupted_ids.shape)}")
        self.corrupted = cache_z(lm, batch.corrupted_ids)  # per block [batch, pos, n_heads, d_head]
        if engine == "fast":
            self.runner = ZPatchRunner(lm, batch.clean_ids, batch.end)
            clean_end = self.runner.clean_end
        else:
            with torch.no_grad():
                clean_end = batch.end_logits(lm.run_with_hooks(batch.clean_ids, {}))
        super().__init__(batch, metric, clean_end)

    def evaluate(self, masks: torch.Tensor):
        if self.engine == "plain":
            return plain_end_logits(self.lm, self.batch.clean_ids, self.batch.end, masks, self.corrupted), 0, len(masks)
        start = self.runner.start_layer(masks)
        return self.runner.end_logits(masks, self.corrupted), start, int(start < self.n_layers)


def node_prune(objective: NodeObjective, threshold: float, candidates: int = 1, progress: bool = False) -> torch.Tensor:
    """One head-level ACDC pass at ``threshold`` (``acdc.greedy_prune`` over the heads, last first): the
    heads kept, bool ``[n_layers * n_heads]``."""
    lm = objective.lm
    order = list(range(lm.n_layers * lm.n_heads - 1, -1, -1))
    patched = greedy_prune(objective, order, [i // lm.n_heads for i in order], torch.zeros(len(order)), threshold,
                           candidates, progress)
    return patched == 0


def kept_heads(heads: list[Head], kept: torch.Tensor) -> list[Head]:
    return [h for h, k in zip(heads, kept.tolist(), strict=True) if k]


def run_acdc_nodes(lm, batch: TaskBatch, cfg: ACDCConfig | None = None, progress: bool = False) -> MethodResult:
    """Head-level ACDC at ``cfg.threshold`` (timed: ``runtime_s``) and over ``cfg.sweep``
    (``sweep_runtime_s``); ``cfg.candidates``/``batch_tokens``/``engine`` as for edge ACDC."""
    cfg = cfg or ACDCConfig()
    check_pairs(batch)
    candidates = cfg.candidates_per_pass(batch, lm.device)
    heads = all_heads(lm)
    start = time.perf_counter()
    objective = NodeObjective(lm, batch, cfg.metric, cfg.engine)
    kept = node_prune(objective, cfg.threshold, candidates, progress)
    runtime = time.perf_counter() - start
    details = {"heads_kept": int(kept.sum()), "heads_total": len(heads), "engine": cfg.engine,
               "candidates": candidates,
               # a sequential head-level ACDC's trials: the unpatched run, then one per head
               "trials": len(heads) + 1, **objective.counts}
    return acdc_result("acdc_nodes", batch, cfg, heads, kept_heads(heads, kept), runtime=runtime, details=details,
                       circuit_at=lambda tau: kept_heads(heads, node_prune(objective, tau, candidates, progress)))
