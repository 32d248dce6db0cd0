"""ACDC's runtime, plain (one full forward pass per trial) against fast (layers below the receiver
reused, last tokens only, several edges per forward pass), and the discrete SAE's, on one task with
``saelab circuits compare``'s settings (toy IOI, 100 pairs, KL, tau 0.01, the 9-threshold sweep).

Every ACDC variant must keep the same edges as the plain one (the script fails otherwise). Each row
gives the wall-clock time (median over ``--rounds``, variants interleaved so that drifting machine load
hits all of them) and, with one thread, the thread's CPU time, which does not count the time other
processes hold the core; dsae's runtime is the median of ``--dsae-repeats`` runs, as ``compare`` does.

    python benchmarks/bench_acdc.py                      # toy IOI, 1 thread
    python benchmarks/bench_acdc.py --pairs 30 --rounds 1 --candidates 1 4 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch

from saelab.circuits.acdc import ACDCConfig, ACDCObjective, acdc_prune, run_acdc
from saelab.circuits.compare import QUICK_S, REPEATS, speedups, table_row, warm_up
from saelab.circuits.discover import DiscoveryConfig, discover, task_batches
from saelab.circuits.graph import HeadGraph, node_set
from saelab.circuits.ground_truth import ground_truth_for
from saelab.models import load_model


def timed(fn):
    """``(result, wall seconds, thread CPU seconds)`` of ``fn()``."""
    wall, cpu = time.perf_counter(), time.thread_time()
    out = fn()
    return out, time.perf_counter() - wall, time.thread_time() - cpu


def one_acdc_run(lm, batch, metric: str, tau: float, engine: str, candidates: int) -> dict:
    """One ACDC run as ``run_acdc`` times it (graph, cached runs, pruning), with its kept edges."""
    def run():
        graph = HeadGraph(lm)
        objective = ACDCObjective(graph, batch, metric, engine)
        kept = acdc_prune(objective, tau, 1 if engine == "plain" else candidates)
        return graph, objective, kept
    (graph, objective, kept), wall, cpu = timed(run)
    return {"engine": engine, "candidates": 1 if engine == "plain" else candidates, "wall_s": wall, "cpu_s": cpu,
            "kept": kept, "edges_kept": int(kept.sum()), "circuit": [str(h) for h in node_set(graph, kept)],
            **objective.counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="ioi")
    parser.add_argument("--pairs", type=int, default=100, help="prompt pairs (compare's default 100)")
    parser.add_argument("--metric", default="kl", choices=("kl", "task"))
    parser.add_argument("--threshold", type=float, default=0.01, help="ACDC tau (compare's default 0.01)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="fast-engine edges per forward pass to time (default 1 2 4 8)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of every variant (default 3)")
    parser.add_argument("--plain-rounds", type=int, default=1, help="of those, rounds that time the plain engine")
    parser.add_argument("--dsae-repeats", type=int, default=REPEATS, help=f"dsae runs per round (default {REPEATS})")
    parser.add_argument("--plain-sweep", action="store_true",
                        help="also run the ROC sweep with the plain engine and check its head sets and scores")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    lm = load_model("toy")
    cfg = DiscoveryConfig(n_pairs=args.pairs, acdc=ACDCConfig(metric=args.metric, threshold=args.threshold))
    batch, train = task_batches(lm, args.task, cfg)
    warm_up(lm, batch)
    truth = ground_truth_for(lm, args.task)
    variants = [("plain", 1)] + [("fast", c) for c in args.candidates]
    runs: dict[tuple, list[dict]] = {v: [] for v in variants}
    dsae_times = []
    for round_index in range(args.rounds):
        for engine, candidates in variants:
            if engine == "plain" and round_index >= args.plain_rounds:
                continue
            runs[engine, candidates].append(one_acdc_run(lm, batch, args.metric, args.threshold, engine, candidates))
        dsae_times += [discover(lm, args.task, "dsae", cfg, batches=(batch, train)).runtime_s
                       for _ in range(args.dsae_repeats)]
    reference = runs["plain", 1][0]
    rows = []
    for (engine, candidates), done in runs.items():
        for run in done:
            if not torch.equal(run["kept"], reference["kept"]):
                print(f"FAIL: {engine} x{candidates} kept other edges than the plain engine", file=sys.stderr)
                return 1
        first = done[0]
        rows.append({"engine": engine, "candidates": candidates,
                     "wall_s": round(statistics.median(r["wall_s"] for r in done), 3),
                     "cpu_s": round(statistics.median(r["cpu_s"] for r in done), 3) if args.threads == 1 else None,
                     "rounds": len(done), **{k: first[k] for k in ("forward_passes", "masks_evaluated",
                                                                   "block_evaluations", "edges_kept", "circuit")}})
    plain_s = rows[0]["wall_s"]
    for row in rows:
        row["speedup_vs_plain"] = round(plain_s / row["wall_s"], 2)

    # compare's rows for dsae and ACDC (default engine, with its ROC sweep), for the ratio and both AUCs
    dsae = discover(lm, args.task, "dsae", cfg, batches=(batch, train))
    dsae.runtime_s = statistics.median(dsae_times) if dsae.runtime_s < QUICK_S else dsae.runtime_s
    acdc = run_acdc(lm, batch, cfg.acdc)
    summaries = {m.method: m.summary(truth.heads) for m in (dsae, acdc)}
    plain_sweep = None
    if args.plain_sweep:
        plain = run_acdc(lm, batch, ACDCConfig(metric=args.metric, threshold=args.threshold, engine="plain"))
        same = all(map(np.array_equal, plain.sets, acdc.sets)) and np.array_equal(plain.scores, acdc.scores)
        if not same:
            print("FAIL: the plain engine's sweep gave other head sets than the fast one", file=sys.stderr)
            return 1
        plain_sweep = {"runtime_s": round(plain.runtime_s, 3), "sweep_runtime_s": plain.details["sweep_runtime_s"],
                       "auc": round(plain.evaluate(truth.heads)["auc"], 4), "same_sets_and_scores": same}
    table = [table_row(summaries[m], truth.source) for m in ("dsae", "acdc")]
    speed = speedups(table, {args.task: summaries})[args.task]
    report = {"task": args.task, "pairs": args.pairs, "metric": args.metric, "threshold": args.threshold,
              "acdc": rows, "dsae_runtime_s": round(statistics.median(dsae_times), 4),
              "dsae_runtimes_s": [round(t, 4) for t in dsae_times], "compare_rows": table, "speedup": speed,
              "plain_sweep": plain_sweep,
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": torch.get_num_threads(), "python": sys.version.split()[0]}}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    columns = ("engine", "candidates", "wall_s", "cpu_s", "speedup_vs_plain", "forward_passes", "masks_evaluated",
               "block_evaluations", "edges_kept", "circuit", "rounds")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(", ".join(v) if isinstance(v, list) else str(v) for v in (row[c] for c in columns)) + " |")
    print(f"dsae runtime: median {report['dsae_runtime_s']} s of {report['dsae_runtimes_s']}")
    print(f"compare rows: dsae AUC {table[0]['auc']}, {table[0]['runtime_s']} s; ACDC ({cfg.acdc.engine}, "
          f"x{acdc.details['candidates']}) AUC {table[1]['auc']}, {table[1]['runtime_s']} s, sweep {table[1]['sweep_runtime_s']} s")
    if plain_sweep:
        print(f"plain engine with its sweep: one run {plain_sweep['runtime_s']} s, sweep {plain_sweep['sweep_runtime_s']} s, "
              f"AUC {plain_sweep['auc']}; same head sets and scores as the fast engine")
    print(speed["line"])
    print(f"plain ACDC / dsae: {plain_s / report['dsae_runtime_s']:.1f}x; {args.threads} thread(s), {platform.platform()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
