"""Per-head activation patching: each head's ``hook_z`` on the clean prompts replaced by its value on
the corrupted prompts, one head at a time; score = clean metric - patched metric (mean over prompts),
ranked by its absolute value (heads that hurt the task, like negative name movers, count too)."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.circuits.acdc_nodes import ZPatchRunner, end_metric
from saelab.circuits.heads import all_heads, cache_z
from saelab.circuits.result import MethodResult
from saelab.circuits.tasks import TaskBatch


@torch.no_grad()
def head_patching_effects(lm, batch: TaskBatch, progress: bool = False) -> np.ndarray:
    """``[n_layers * n_heads]`` mean metric drop when each head alone takes its corrupted ``z`` (one run
    per head from that head's block on, the clean run's earlier blocks reused and only the last tokens
    unembedded: ``saelab.circuits.acdc_nodes.ZPatchRunner``)."""
    corrupted_z = cache_z(lm, batch.corrupted_ids)
    runner = ZPatchRunner(lm, batch.clean_ids, batch.end)
    clean = end_metric(batch, runner.clean_end).mean()
    effects = []
    for i, _ in enumerate(tqdm(all_heads(lm), desc="patching heads", disable=not progress, leave=False)):
        last = runner.end_logits(torch.nn.functional.one_hot(torch.tensor(i), lm.n_layers * lm.n_heads), corrupted_z)
        effects.append(float(clean - end_metric(batch, last[0]).mean()))
    return np.array(effects)


def run_patching(lm, batch: TaskBatch, progress: bool = False) -> MethodResult:
    """Activation patching per head on ``batch``; scores ``|effect|``, signed effects in details."""
    start = time.perf_counter()
    effects = head_patching_effects(lm, batch, progress)
    runtime = time.perf_counter() - start
    return MethodResult("patching", batch.task, all_heads(lm), np.abs(effects), runtime,
                        details={"n_prompts": len(batch), "signed_effects": effects.round(5).tolist()})
