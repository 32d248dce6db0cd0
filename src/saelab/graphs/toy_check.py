"""Attribution graphs on the toy model against its known circuits: one IOI, one induction and one
greater-than prompt.

Per prompt: the graph's scores and size, whether its top logit is the answer, each head's share of the
pruned graph's edges (``saelab.graphs.heads``) ranked against the reference heads (AUC and precision at
the reference's size, ``saelab.circuits.scoring``), and where the graph's influence sits: the share of the
non-logit nodes' influence at each labelled position of the prompt.

Reference heads: IOI and greater-than from the toy model's reference circuits (``toy:ioi``,
``toy:greater_than``: mean ablation, ``saelab.circuits.reference``); induction: the heads whose induction
score (``saelab.attention.induction``) is at least ``INDUCTION_SCORE``. The graph sees heads only through
their value/output paths, so heads that matter through where attention looks (queries and keys) can be
in a reference and absent from the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.attention.induction import content_token_ids, induction_scores
from saelab.circuits.ground_truth import load_ground_truth
from saelab.circuits.heads import Head, all_heads
from saelab.circuits.scoring import score_heads
from saelab.errors import SaelabError
from saelab.graphs.attribution import GraphConfig
from saelab.graphs.heads import head_scores
from saelab.graphs.prune import PruneConfig
from saelab.graphs.trace import TraceResult, trace_prompt
from saelab.models import LoadedModel
from saelab.sae.base import SAE
from saelab.toy.tasks import generate_pairs

TASKS = ("ioi", "induction", "greater_than")
INDUCTION_SCORE = 0.5
INDUCTION_LENGTH, INDUCTION_REPEAT = 8, 5


@dataclass
class ToyPrompt:
    """A prompt's ``ids [pos]`` (BOS first), its labelled positions, the answer tokens and its text."""

    task: str
    ids: Tensor
    positions: dict[str, int]
    answers: list[int]
    text: str


def toy_prompt(lm: LoadedModel, task: str, seed: int = 0) -> ToyPrompt:
    """One prompt of ``task`` (``TASKS``) for the toy model, deterministic for ``seed``."""
    if task == "induction":
        rng = np.random.default_rng(seed)
        seq = [int(t) for t in rng.choice(content_token_ids(lm), INDUCTION_LENGTH, replace=False)]
        bos = [lm.bos_token_id] if lm.bos_token_id is not None else []
        ids = bos + seq + seq[:INDUCTION_REPEAT]
        n = len(bos)
        positions = {"first_current": n + INDUCTION_REPEAT - 1, "first_next": n + INDUCTION_REPEAT,
                     "END": len(ids) - 1}
        return ToyPrompt(task, torch.tensor(ids), positions, [seq[INDUCTION_REPEAT]],
                         lm.tokenizer.decode(ids) if lm.tokenizer is not None else "")
    pair = generate_pairs(task, 1, seed)[0]
    ids, _ = lm.tokenize(pair.clean.text)
    offset = ids.shape[1] - len(pair.clean.words)
    if offset not in (0, 1):
        raise SaelabError(f"the {task} prompt {pair.clean.text!r} tokenises into {ids.shape[1]} tokens for "
                          f"{len(pair.clean.words)} words; the toy check needs the toy model's word-level tokenizer")
    positions = {name: p + offset for name, p in pair.clean.positions.items()}
    positions["END"] = ids.shape[1] - 1
    answers = [int(lm.tokenizer.convert_tokens_to_ids(a)) for a in pair.answers]
    return ToyPrompt(task, ids[0], positions, answers, pair.clean.text)


def reference_heads(lm: LoadedModel, task: str) -> list[Head]:
    """The reference heads of ``task`` (see the module docstring)."""
    if task == "induction":
        scores = induction_scores(lm)
        return [Head(layer, head) for layer, head in (scores >= INDUCTION_SCORE).nonzero().tolist()]
    return load_ground_truth(f"toy:{task}").heads


def position_shares(result: TraceResult, positions: dict[str, int]) -> dict[str, float]:
    """The share of the pruned graph's non-logit influence at each labelled position (and ``other``)."""
    layout, pruned = result.graph.layout, result.pruned
    influence = torch.zeros(layout.n_pos)
    for i in pruned.node_mask.nonzero().squeeze(1).tolist():
        if layout.kind(i) != "logit":
            influence[layout.layer_position(i)[1]] += float(pruned.node_influence[i])
    total = float(influence.sum()) or 1.0
    shares = {name: float(influence[pos]) / total for name, pos in positions.items()}
    labelled = set(positions.values())
    shares["other"] = float(sum(influence[p] for p in range(layout.n_pos) if p not in labelled)) / total
    return shares


def check_task(lm: LoadedModel, transcoders: list[SAE], task: str, graph_config: GraphConfig | None = None,
               prune_config: PruneConfig | None = None, seed: int = 0) -> tuple[dict[str, Any], TraceResult]:
    """The alignment report of one task's prompt (module docstring), and its trace."""
    prompt = toy_prompt(lm, task, seed)
    result = trace_prompt(lm, transcoders, prompt.ids, graph_config, prune_config)
    result.prompt = prompt.text
    scores = head_scores(result.replacement, result.graph, result.pruned)
    heads = all_heads(lm)
    reference = reference_heads(lm, task)
    flat = scores.flatten().tolist()
    truth = [h in reference for h in heads]
    ranked = sorted(zip(heads, flat, strict=True), key=lambda item: -item[1])
    top_logit = int(result.graph.layout.logit_tokens[0])
    report = {
        "task": task, "prompt": prompt.text, "n_tokens": int(prompt.ids.shape[0]),
        "top_logit_is_answer": top_logit in prompt.answers,
        "answer_probability": float(result.replacement.real_logits[-1].double().softmax(-1)[prompt.answers].sum()),
        "scores": {**result.scores.to_dict(), "pruned_replacement": result.pruned_scores.replacement,
                   "pruned_completeness": result.pruned_scores.completeness, "node_share": result.pruned.node_share},
        "nodes": {"active_features": result.graph.n_active_features, "pruned_nodes": result.pruned.n_nodes,
                  "pruned_edges": result.pruned.n_edges},
        "reference_heads": [str(h) for h in reference],
        "top_heads": [{"head": str(h), "share": round(s, 4)} for h, s in ranked[:6]],
        "heads_vs_reference": {k: v for k, v in score_heads(flat, truth).items() if k != "roc"},
        "position_shares": position_shares(result, prompt.positions),
        "timings": result.timings,
    }
    return report, result


def toy_alignment(lm: LoadedModel, transcoders: list[SAE], tasks: tuple[str, ...] = TASKS, seed: int = 0,
                  graph_config: GraphConfig | None = None, prune_config: PruneConfig | None = None
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, TraceResult]]:
    """``check_task`` for every task: (reports, traces) by task."""
    reports, traces = {}, {}
    for task in tasks:
        if task not in TASKS:
            raise SaelabError(f"task {task!r} has no toy check; choose from {', '.join(TASKS)}")
        reports[task], traces[task] = check_task(lm, transcoders, task, graph_config, prune_config, seed)
    return reports, traces
