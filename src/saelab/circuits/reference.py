"""The toy model's reference circuits: per-head mean ablation, extended by path mean-ablation.

For each task, ``n`` clean/corrupted pairs (seed ``REFERENCE_SEED``, disjoint from the seeds the
comparison uses). A head's *mean* output is its output ``z_h · W_O,h`` averaged, position by position,
over the real tokens of all clean and corrupted prompts (the task distribution). Effects are the drop of
the mean task metric on the clean prompts, as a fraction of the clean - corrupted gap ``G``:

1. node step: a head is in the circuit when replacing its ``hook_z`` by the mean moves the metric by
   at least ``threshold * |G|`` (this counts every route to the logits, MLPs included, and catches heads
   the task needs even when clean and corrupted runs agree on them, which activation patching misses);
2. path step, repeated until nothing is added: a head ``u`` joins when replacing only its contribution
   to the queries, keys and values of one circuit head ``v`` by its mean (the edge ``u -> v`` of
   ``saelab.circuits.graph``) moves the metric by at least ``threshold * |G|`` (heads that matter only
   through a circuit head, e.g. the previous-token heads an induction head reads).

Models without the head graph (grouped-query attention, a norm after the attention output, e.g. Gemma 3:
``graph.edge_graph_refusal``) get the node step only; the file's ``method`` (a ground truth's ``source``)
and each circuit's ``path_step`` say that the path step was skipped and why. Per-head runs start at the
ablated head's block from the cached clean run and unembed only the last tokens
(``saelab.circuits.acdc_nodes.ZPatchRunner``).

Regenerate with ``saelab circuits reference --model toy --out src/saelab/circuits/data/toy_reference.json``;
for another model, ``--truth-dir DIR`` also writes one ground-truth file per task (``DIR/TASK.json``, for
``saelab circuits compare --ground-truth TASK=DIR/TASK.json``).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.circuits.acdc_nodes import ZPatchRunner, end_metric
from saelab.circuits.graph import HeadGraph, edge_graph_refusal
from saelab.circuits.heads import all_heads, cache_z, head_outputs_from_z, output_weights
from saelab.circuits.patching import head_patching_effects
from saelab.circuits.tasks import TASKS, TaskBatch, default_templates, task_batch
from saelab.errors import check_choice, check_range

REFERENCE_SEED = 424_242
REFERENCE_PAIRS = 200
REFERENCE_THRESHOLD = 0.05
COMMAND = "saelab circuits reference --model toy --out src/saelab/circuits/data/toy_reference.json"
METHOD_NAME = "mean ablation (per head, then per path into circuit heads)"
NODE_ONLY_METHOD_NAME = "mean ablation (per head only)"


@torch.no_grad()
def mean_head_z(lm, batch: TaskBatch) -> list[torch.Tensor]:
    """Per block, the per-position mean ``hook_z`` over the real tokens of the clean and corrupted prompts:
    a list of ``[pos, n_heads, d_head]``."""
    mask = batch.mask.float()[:, :, None, None]
    count = (2 * mask.sum(0)).clamp_min(1)
    return [((clean * mask).sum(0) + (corrupted * mask).sum(0)) / count
            for clean, corrupted in zip(cache_z(lm, batch.clean_ids), cache_z(lm, batch.corrupted_ids), strict=True)]


@torch.no_grad()
def mean_ablation_effects(lm, batch: TaskBatch, mean_z: list[torch.Tensor], progress: bool = False) -> np.ndarray:
    """``[n_heads_total]``: clean metric minus the metric with one head's ``hook_z`` at its mean."""
    runner = ZPatchRunner(lm, batch.clean_ids, batch.end)
    clean = end_metric(batch, runner.clean_end).mean()
    means, n = [z[None] for z in mean_z], lm.n_layers * lm.n_heads
    effects = []
    for i, _ in enumerate(tqdm(all_heads(lm), desc="mean-ablating heads", disable=not progress, leave=False)):
        last = runner.end_logits(torch.nn.functional.one_hot(torch.tensor(i), n), means)[0]
        effects.append(float(clean - end_metric(batch, last).mean()))
    return np.array(effects)


@torch.no_grad()
def mean_metric(lm, batch: TaskBatch, ids: torch.Tensor) -> float:
    """The mean task metric of ``ids`` (the clean or corrupted prompts of ``batch``), last tokens unembedded."""
    final, _ = lm.run_to_unembed(ids)
    rows = torch.arange(len(batch), device=final.device)
    return float(end_metric(batch, lm.unembed(final[rows, batch.end.to(final.device)]).float()).mean())


@torch.no_grad()
def path_effects(graph: HeadGraph, batch: TaskBatch, means: torch.Tensor, receiver: int) -> dict[int, float]:
    """Sender index -> clean metric minus the metric with the edge ``sender -> receiver`` at its mean."""
    clean = batch.metric(graph.lm.run_with_hooks(batch.clean_ids, {})).mean()
    ablated = means[None].expand(len(batch), -1, -1, -1)
    out = {}
    for sender in range(graph.n_nodes):
        if graph.valid_edges[receiver, sender] > 0:
            mask = graph.empty_mask()
            mask[receiver, sender] = 1.0
            out[sender] = float(clean - batch.metric(graph.run(batch.clean_ids, mask, ablated)).mean())
    return out


def task_reference(lm, batch: TaskBatch, threshold: float, progress: bool = False) -> dict:
    """The reference circuit of one task (see module docstring), with every effect it was built from."""
    gap = mean_metric(lm, batch, batch.clean_ids) - mean_metric(lm, batch, batch.corrupted_ids)
    heads = all_heads(lm)
    mean_z = mean_head_z(lm, batch)
    node = mean_ablation_effects(lm, batch, mean_z, progress)
    members = {i for i, e in enumerate(node) if abs(e) >= threshold * abs(gap)}
    refusal, paths = edge_graph_refusal(lm), {}
    if refusal is None:
        means = head_outputs_from_z([z[None] for z in mean_z], output_weights(lm))[0]  # [pos, n_heads_total, d_model]
        graph, todo = HeadGraph(lm), sorted(members)
        while todo:
            receiver = todo.pop()
            effects = path_effects(graph, batch, means, receiver)
            paths[str(heads[receiver])] = {str(heads[s]): round(e / gap, 5) for s, e in effects.items()}
            for sender, effect in effects.items():
                if abs(effect) >= threshold * abs(gap) and sender not in members:
                    members.add(sender)
                    todo.append(sender)
    patching = head_patching_effects(lm, batch)
    return {"heads": [str(heads[i]) for i in sorted(members)], "metric": batch.metric_name,
            "clean_minus_corrupted": round(gap, 5),
            "node_heads": [str(heads[i]) for i, e in enumerate(node) if abs(e) >= threshold * abs(gap)],
            "path_step": "done" if refusal is None else path_step_skipped(refusal),
            "effects": {str(h): round(float(e), 5) for h, e in zip(heads, node, strict=True)},
            "path_effects_fraction_of_gap": paths,
            "patching_effects": {str(h): round(float(e), 5) for h, e in zip(heads, patching, strict=True)}}


def path_step_skipped(refusal: str) -> str:
    return f"skipped: the path step patches head -> head edges of the head graph, which needs {refusal}"


def reference_circuits(lm, n: int = REFERENCE_PAIRS, threshold: float = REFERENCE_THRESHOLD,
                       tasks: tuple[str, ...] = TASKS, seed: int = REFERENCE_SEED, progress: bool = True,
                       command: str = COMMAND, templates: str | None = None) -> dict:
    """The reference-circuit file's content (JSON-able) for ``lm`` on ``tasks``; ``command``: how it was
    made, recorded in the file; ``templates``: the prompt family (default ``tasks.default_templates``)."""
    check_range("threshold", threshold, 0, 1, lo_open=True)
    check_range("n", n, 2, None, integer=True)
    for task in tasks:
        check_choice("task", task, TASKS)
    templates = default_templates(lm) if templates is None else templates
    circuits = {task: task_reference(lm, task_batch(lm, task, n, seed, templates), threshold, progress)
                for task in tqdm(tasks, desc="reference circuits", disable=not progress)}
    refusal = edge_graph_refusal(lm)
    node_rule = (f"on {n} pairs (seed {seed}): a head is in the circuit when replacing its output by its "
                 f"per-position mean over the task's clean and corrupted prompts moves the mean task metric on the "
                 f"clean prompts by >= {threshold} x |clean - corrupted metric|")
    if refusal is None:
        method = (f"{METHOD_NAME} {node_rule}, or, recursively, when mean-ablating only its path into the "
                  f"queries/keys/values of a circuit head does")
    else:
        method = f"{NODE_ONLY_METHOD_NAME} {node_rule}; path step {path_step_skipped(refusal)}"
    return {"model": lm.name, "model_fingerprint": lm.fingerprint(), "method": method,
            "threshold": threshold, "n_pairs": n, "seed": seed, "templates": templates, "command": command,
            "path_step": "done" if refusal is None else path_step_skipped(refusal),
            "fields": {"effects": "per-head mean-ablation effect (metric units)",
                       "node_heads": "heads passing the node step alone",
                       "path_step": "whether the path step ran (skipped, with why, on models without the head graph)",
                       "path_effects_fraction_of_gap": "receiver -> sender -> path mean-ablation effect / gap",
                       "patching_effects": "per-head activation patching effect (clean -> corrupted hook_z), for "
                                           "comparison; not used for membership"},
            "circuits": circuits}


def ground_truth_entries(reference: dict) -> dict[str, dict]:
    """Per task, a ground-truth file's content (``saelab.circuits.ground_truth``: ``task``, ``classes``,
    ``source``, ``model``) from ``reference_circuits``' output, with the effects kept beside."""
    return {task: {"task": task, "classes": {"reference": circuit["heads"]}, "model": reference["model"],
                   "source": reference["method"], "model_fingerprint": reference["model_fingerprint"],
                   "command": reference["command"], "path_step": circuit["path_step"],
                   "clean_minus_corrupted": circuit["clean_minus_corrupted"], "effects": circuit["effects"],
                   "patching_effects": circuit["patching_effects"]}
            for task, circuit in reference["circuits"].items()}
