"""All methods on several tasks, scored against the same ground truths: the comparison table
(JSON, CSV, Markdown), ROC plots, and the demo stage.

Row fields: ``task``, ``method``, ``auc``, ``f1`` / ``precision`` / ``recall`` at the best-F1 threshold,
``f1_at_truth_size``, ``runtime_s`` (ACDC: one run at its threshold; ``sweep_runtime_s`` is the ROC
sweep; a method whose first run takes under ``QUICK_S`` seconds is run ``REPEATS`` times with the same
prompts and seeds, giving the same scores, and its runtime is the median: single sub-second timings on a
shared CPU are noisy), ``note``. Each task starts with an untimed forward pass (``warm_up``). When a ground truth was computed by per-head activation patching (its source says
so), the patching row is marked: it scores against its own definition. The toy reference circuits are
computed by mean ablation (``saelab.circuits.reference``), so no row of theirs is. A method the model
cannot run (edge-level ``acdc`` and ``eap_edges`` on models without the head graph, e.g. grouped-query
attention or a norm after the attention output: ``discover.method_refusal``) gets a row with empty
figures and a ``note`` saying why (``skipped: ...``) instead of stopping the comparison. ``speedups``:
per task, one ACDC run's runtime over dsae's, beside both AUCs (``line``: the sentence the CLI prints);
edge-level ACDC when it ran, else head-level ACDC (``acdc_nodes``), named in the line.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.circuits.acdc import ACDCConfig
from saelab.circuits.discover import METHODS, DiscoveryConfig, discover, method_refusal, task_batches
from saelab.circuits.dsae import POSITION_RULES, DSAEConfig
from saelab.circuits.ground_truth import ground_truth_for
from saelab.circuits.heads import POSITION_RULE_HELP
from saelab.circuits.plots import plot_roc
from saelab.circuits.tasks import TASKS
from saelab.errors import ConfigError, check_choice
from saelab.fileio import atomic_write_bytes, atomic_write_json

TABLE_COLUMNS = ("task", "method", "auc", "f1", "precision", "recall", "f1_at_truth_size", "runtime_s",
                 "sweep_runtime_s", "note")
QUICK_S = 1.0
REPEATS = 3
SELF_REFERENCE_NOTE = "reference computed by this method (scores against its own definition)"
EXTRA_DSAE_POSITIONS = ("mean",)  # the paper's position rule, shown next to the default one


@dataclass(frozen=True)
class CompareConfig:
    """Tasks and methods to compare, with the shared discovery settings; ``ground_truths`` maps a
    task to a ground-truth name (default: ``default_ground_truth_name``). ``extra_dsae_positions``:
    position rules besides ``discovery.dsae.position`` whose dsae rows are added (``dsae@mean``...;
    default: the paper's rule, ``EXTRA_DSAE_POSITIONS``)."""

    tasks: tuple[str, ...] = TASKS
    methods: tuple[str, ...] = METHODS
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    ground_truths: dict[str, str] = field(default_factory=dict)
    extra_dsae_positions: tuple[str, ...] = EXTRA_DSAE_POSITIONS

    def __post_init__(self):
        for position in self.extra_dsae_positions:
            check_choice("extra dsae position", position, POSITION_RULES)
        if not self.tasks or not self.methods:
            raise ConfigError("compare needs at least one task and one method")
        for task in self.tasks:
            check_choice("task", task, TASKS)
        for method in self.methods:
            check_choice("method", method, METHODS)


def table_row(summary: dict, truth_source: str) -> dict:
    """One table row from a scored ``MethodResult.summary``."""
    best = summary["best_f1"]
    note = SELF_REFERENCE_NOTE if summary["method"] == "patching" and "activation patching" in truth_source else ""
    return {"task": summary["task"], "method": summary["method"], "auc": round(summary["auc"], 4),
            "f1": round(best["f1"], 4), "precision": round(best["precision"], 4), "recall": round(best["recall"], 4),
            "f1_at_truth_size": round(summary["at_truth_size"]["f1"], 4), "runtime_s": summary["runtime_s"],
            "sweep_runtime_s": summary.get("sweep_runtime_s", ""), "note": note}


def markdown_table(rows: list[dict], columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict], columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def skipped_row(task: str, method: str, reason: str) -> dict:
    """The row of a method the model cannot run: empty figures, ``note`` = ``skipped: reason``."""
    return {**{c: "" for c in TABLE_COLUMNS}, "task": task, "method": method, "note": f"skipped: {reason}"}


ACDC_LABELS = {"acdc": "ACDC", "acdc_nodes": "head-level ACDC (acdc_nodes)"}


def speedups(rows: list[dict], results: dict | None = None) -> dict:
    """Per task with a dsae row and an ACDC row that ran (edge-level ``acdc`` when there is one, else
    ``acdc_nodes``; ``acdc_method`` says which): one ACDC run's runtime over the discrete SAE's
    (``acdc_over_dsae``; the sweep's: ``acdc_sweep_over_dsae``), both AUCs beside it (ACDC's from its
    sweep when it has one) and ``line``, the sentence the CLI prints. ``results``: ``compare``'s
    per-task summaries, for ACDC's threshold, metric and number of prompt pairs."""
    out = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        by = {r["method"]: r for r in rows if r["task"] == task and r["runtime_s"] != ""}
        method = next((m for m in ACDC_LABELS if m in by), None)
        if "dsae" not in by or method is None or by["dsae"]["runtime_s"] <= 0:
            continue
        dsae, acdc = by["dsae"], by[method]
        info = (results or {}).get(task, {}).get(method, {})
        sweep = acdc["sweep_runtime_s"]
        entry = {"acdc_method": method, "acdc_over_dsae": round(acdc["runtime_s"] / dsae["runtime_s"], 2),
                 "acdc_sweep_over_dsae": round(sweep / dsae["runtime_s"], 2) if sweep != "" else None,
                 "dsae_runtime_s": dsae["runtime_s"], "acdc_runtime_s": acdc["runtime_s"],
                 "dsae_auc": dsae["auc"], "acdc_auc": acdc["auc"], "acdc_threshold": info.get("threshold"),
                 "acdc_metric": info.get("metric"), "acdc_engine": info.get("engine"),
                 "acdc_sweep_thresholds": len(info.get("sweep_thresholds") or []), "n_prompts": info.get("n_prompts")}
        entry["line"] = speed_line(task, entry)
        out[task] = entry
    return out


def speed_line(task: str, entry: dict) -> str:
    """``speedups``' sentence: how many times faster dsae is than one ACDC run (edge-level or head-level,
    said which), at which threshold, on which prompts, with both AUCs."""
    method = entry.get("acdc_method", "acdc")
    label, short = ACDC_LABELS[method], "ACDC" if method == "acdc" else method
    ratio = entry["acdc_over_dsae"]
    faster = (f"dsae is {ratio:.3g}x faster than one {label} run" if ratio >= 1
              else f"one {label} run is {1 / ratio:.3g}x faster than dsae")
    setting = ", ".join(part for part in (
        f"tau={entry['acdc_threshold']:g}" if entry["acdc_threshold"] is not None else "",
        f"metric {entry['acdc_metric']}" if entry["acdc_metric"] else "",
        f"{entry['acdc_engine']} engine" if entry["acdc_engine"] else "") if part)
    prompts = f"same {entry['n_prompts']} prompt pairs" if entry["n_prompts"] else "same prompt pairs"
    n_sweep = entry["acdc_sweep_thresholds"]
    source = (f"{short}'s from its {n_sweep}-threshold sweep, which took {entry['acdc_sweep_over_dsae']:.3g}x dsae's "
              f"runtime" if n_sweep and entry["acdc_sweep_over_dsae"] is not None else f"{short}'s from its one run")
    gap = entry["acdc_auc"] - entry["dsae_auc"]
    quality = (f"dsae's AUC is at least {short}'s" if gap <= 0
               else f"dsae's AUC is {gap:.3f} lower: not at equal quality")
    return (f"{task}: {faster} (dsae {entry['dsae_runtime_s']:.3g} s, {short} {entry['acdc_runtime_s']:.3g} s at "
            f"{setting or 'its settings'}; {prompts}); AUC dsae {entry['dsae_auc']:.3f} vs {short} "
            f"{entry['acdc_auc']:.3f} ({source}); {quality}")


@torch.no_grad()
def warm_up(lm, batch) -> None:
    """One untimed forward pass over a task's clean and corrupted prompts together (the largest batch
    any method runs), so that no method's runtime includes the process's first-call costs for tensors
    of that size (allocator growth, kernel selection): without it the first method timed paid ~0.25 s
    that the others did not. It stops before the unembedding (the methods unembed only the last tokens;
    Gemma 3's 262k-token vocabulary at every position would take gigabytes)."""
    lm.run_to_unembed(torch.cat([batch.clean_ids, batch.corrupted_ids]))


def compare(lm, cfg: CompareConfig, out_dir: Path | None = None, progress: bool = True) -> dict:
    """Run every method of ``cfg`` on every task; write the table and plots under ``out_dir`` if given.
    Returns ``{"rows", "speedups", "results", "ground_truths", "files"}``."""
    truths = {task: ground_truth_for(lm, task, cfg.ground_truths.get(task)) for task in cfg.tasks}
    rows, results = [], {}
    extra = [p for p in dict.fromkeys(cfg.extra_dsae_positions) if p != cfg.discovery.dsae.position]
    jobs = [(task, method, None) for task in cfg.tasks for method in cfg.methods]
    jobs += [(task, method, p) for task in cfg.tasks for p in extra for method in cfg.methods if method.startswith("dsae")]
    jobs.sort(key=lambda job: cfg.tasks.index(job[0]))
    batches = {}
    refusals = {method: method_refusal(lm, method) for method in cfg.methods}
    for task, method, position in tqdm(jobs, desc="circuits compare", disable=not progress):
        if refusals[method] is not None:
            rows.append(skipped_row(task, method if position is None else f"{method}@{position}", refusals[method]))
            continue
        if task not in batches:
            batches[task] = task_batches(lm, task, cfg.discovery)
            warm_up(lm, batches[task][0])
        discovery = cfg.discovery if position is None else replace(
            cfg.discovery, dsae=replace(cfg.discovery.dsae, position=position))
        result = discover(lm, task, method, discovery, batches=batches[task])
        if result.runtime_s < QUICK_S:  # a sub-second timing on a shared CPU: median of REPEATS runs
            times = [result.runtime_s] + [discover(lm, task, method, discovery, batches=batches[task]).runtime_s
                                          for _ in range(REPEATS - 1)]
            result.runtime_s = float(np.median(times))
            result.details["runtime_repeats_s"] = [round(t, 4) for t in times]
        if position is not None:
            result.method = f"{method}@{position}"
        summary = result.summary(truths[task].heads)
        results.setdefault(task, {})[result.method] = summary
        rows.append(table_row(summary, truths[task].source))
    output = {"model": lm.name, "rows": rows, "speedups": speedups(rows, results), "results": results,
              "ground_truths": {t: g.to_json() for t, g in truths.items()}, "files": {}}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "comparison.json", {k: v for k, v in output.items() if k != "files"})
        atomic_write_bytes(out_dir / "comparison.csv", csv_table(rows).encode())
        atomic_write_bytes(out_dir / "comparison.md", markdown_table(rows).encode())
        output["files"] = {"json": str(out_dir / "comparison.json"), "csv": str(out_dir / "comparison.csv"),
                           "markdown": str(out_dir / "comparison.md")}
        for task in cfg.tasks:
            if task not in results:  # every method was skipped
                continue
            plot = plot_roc(list(results[task].values()), out_dir / f"roc_{task}.png", f"{lm.name}: {task}")
            output["files"][f"roc_{task}"] = str(plot)
    return output


def circuits_demo_stage(lm, sae, out_dir: Path, section, small: bool) -> dict:
    """The demo's circuit stage: every method on the toy IOI task against the toy reference circuit, with
    the discrete SAE under its default position rule (``dsae``) and the paper's (``dsae@mean``).
    ``sae`` is unused (the discrete SAE is trained here on per-head outputs). ``small``: a tiny variant
    (8 pairs, one ACDC threshold and no sweep, 6 SAE training prompts) for tests; the normal one (30
    pairs, 3 ACDC sweep thresholds) takes about 20-30 s on 2 busy CPU cores. Writes ``out_dir/circuits/``
    and adds the table and ROC plot to ``section``."""
    del sae
    discovery = DiscoveryConfig(
        n_pairs=8 if small else 30,
        dsae=DSAEConfig(n_train=6 if small else 10),
        acdc=ACDCConfig(threshold=0.01, sweep=() if small else (0.003, 0.03, 0.3)))
    start = time.perf_counter()
    result = compare(lm, CompareConfig(tasks=("ioi",), discovery=discovery, extra_dsae_positions=EXTRA_DSAE_POSITIONS),
                     Path(out_dir) / "circuits", progress=False)
    truth = result["ground_truths"]["ioi"]
    rule = discovery.dsae.position
    rules = (f"dsae: position rule {rule} ({POSITION_RULE_HELP[rule]}); dsae@mean: {POSITION_RULE_HELP['mean']}; "
             f"both with the {discovery.dsae.loss_norm} loss normalisation, l1 {discovery.dsae.l1:g}")
    section.paragraph(f"Circuit discovery on the toy IOI task ({discovery.n_pairs} clean/corrupted pairs) against "
                      f"the reference circuit {', '.join(truth['heads'])} ({truth['source']}). A discrete SAE "
                      f"on per-head outputs from {discovery.dsae.n_train} prompts (O'Neill & Bui 2024). {rules}.")
    section.table(result["rows"], list(TABLE_COLUMNS))
    section.image(Path(result["files"]["roc_ioi"]), alt="ROC curves of the circuit-discovery methods on IOI")
    return {"rows": result["rows"], "speedups": result["speedups"], "reference": truth["heads"], "dsae_rules": rules,
            "runtime_s": round(time.perf_counter() - start, 2),
            "files": {k: str(Path(v).relative_to(out_dir)) for k, v in result["files"].items()}}
