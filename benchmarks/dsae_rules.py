"""The discrete SAE's position rules x loss normalisations on every toy task: tune on one prompt split,
report on another, next to the baselines.

1. Tuning split (``--tune-seed``, default 100): scoring prompts drawn with that seed, SAE seed ``s``
   trains on prompts of seed ``tune_seed + 1 + s`` (``saelab.circuits.sweep``). Every rule x
   normalisation x L1 x (lr, epochs) cell is run on every task with ``--seeds`` seeds.
2. Selection: for each (rule, normalisation), the (l1, lr, epochs) with the highest node AUC averaged
   over all tasks and seeds of the tuning split (one global choice, never per task; ties: the first in
   grid order). The suggested default is the (rule, l1, lr, epochs) with the highest such mean under
   the ``paper`` normalisation.
3. Evaluation split (``--eval-seed``, default 0: the prompts ``saelab circuits compare`` scores on,
   training prompts of seeds 1 .. seeds): every (rule, normalisation) at its selected settings, node
   and edge AUC per task (mean and spread over seeds), and activation patching and EAP on the same
   scoring prompts (``--acdc`` adds ACDC's threshold sweep, minutes per task).

``--why`` prints instead where clean and corrupted prompts differ: per position class (BOS, the
prefix before the first changed token, changed tokens, positions between, the end), the mean relative
difference ``|out_clean - out_corrupted| / mean(|out_clean|, |out_corrupted|)`` of circuit and other
heads' outputs; per one-vector rule, the same of the reduced vectors and how often a head's code differs
between the two prompts of a pair (default SAE settings under that rule, SAE seeds 0 .. seeds - 1).

    python benchmarks/dsae_rules.py --rules changed_end,mean,last,changed   # 25 min on one busy core
    python benchmarks/dsae_rules.py --rules positions --schedules 1e-2:50,1e-2:200  # 24 min
    python benchmarks/dsae_rules.py --rules changed_end,mean --l1s 1e-3 --schedules 1e-2:50 --json
    python benchmarks/dsae_rules.py --why
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from saelab.circuits.acdc import ACDCConfig
from saelab.circuits.compare import markdown_table
from saelab.circuits.discover import DiscoveryConfig, discover, task_batches
from saelab.circuits.discrete_sae import LOSS_NORMS
from saelab.circuits.dsae import DSAEConfig, codes, head_vectors, prompt_head_vectors, train_discrete_sae
from saelab.circuits.ground_truth import ground_truth_for
from saelab.circuits.heads import POSITION_RULES, all_heads, head_outputs
from saelab.circuits.scoring import score_heads
from saelab.circuits.sweep import DSAESweepConfig, dsae_sweep
from saelab.circuits.tasks import TASKS, task_batch
from saelab.models import load_model

DEFAULT_L1S = "1e-4,3e-4,1e-3,3e-3,1e-2,2e-2"
DEFAULT_SCHEDULES = "1e-2:50,1e-2:200,1e-3:500"


def sweep(lm, args, seed: int, rules, norms, l1s, schedules, progress: bool) -> list[dict]:
    cfg = DSAESweepConfig(tasks=args.tasks, positions=tuple(rules), codebooks=(args.codebook,), n_trains=(args.n_train,),
                          seeds=args.seeds, discovery=DiscoveryConfig(n_pairs=args.pairs, seed=seed),
                          loss_norms=tuple(norms), l1s=tuple(l1s), schedules=tuple(schedules))
    return dsae_sweep(lm, cfg, progress=progress)


def settings_key(row: dict) -> tuple:
    return row["position"], row["loss_norm"], row["l1"], row["lr"], row["epochs"]


def select(tuning: list[dict]) -> dict:
    """Per (rule, normalisation): the settings with the best node AUC averaged over tasks and seeds."""
    means: dict[tuple, list[float]] = {}
    for row in tuning:
        if row["level"] == "node":
            means.setdefault(settings_key(row), []).append(row["auc_mean"])
    best: dict[tuple, tuple] = {}
    for key, values in means.items():  # dict order = grid order, so ties keep the first
        score = float(np.mean(values))
        if key[:2] not in best or score > best[key[:2]][1]:
            best[key[:2]] = (key, score)
    return {f"{rule}|{norm}": {"position": rule, "loss_norm": norm, "l1": key[2], "lr": key[3], "epochs": key[4],
                                "tuning_node_auc": round(score, 4)} for (rule, norm), (key, score) in best.items()}


def baselines(lm, args) -> list[dict]:
    rows = []
    cfg = DiscoveryConfig(n_pairs=args.pairs, seed=args.eval_seed, acdc=ACDCConfig())
    methods = ("patching", "eap", "acdc") if args.acdc else ("patching", "eap")
    for task in args.tasks:
        truth = ground_truth_for(lm, task).heads
        batches = task_batches(lm, task, cfg)
        for method in methods:
            result = discover(lm, task, method, cfg, batches=batches)
            rows.append({"task": task, "method": method, "auc": round(result.summary(truth)["auc"], 4),
                         "runtime_s": round(result.runtime_s, 3)})
    return rows


def evaluation_table(selected: dict, evaluation: list[dict], tasks: tuple[str, ...], base: list[dict]) -> list[dict]:
    best_base = {t: max(r["auc"] for r in base if r["task"] == t) for t in tasks}
    table = []
    for choice in selected.values():
        key = (choice["position"], choice["loss_norm"], choice["l1"], choice["lr"], choice["epochs"])
        row = {"rule": choice["position"], "loss_norm": choice["loss_norm"], "l1": choice["l1"], "lr": choice["lr"],
               "epochs": choice["epochs"], "tune_node": choice["tuning_node_auc"]}
        for level in ("node", "edge"):
            aucs = {r["task"]: r for r in evaluation if settings_key(r) == key and r["level"] == level}
            for task in tasks:
                row[f"{task}_{level}"] = f"{aucs[task]['auc_mean']:.3f}±{aucs[task]['auc_std']:.3f}"
            row[f"mean_{level}"] = round(float(np.mean([aucs[t]["auc_mean"] for t in tasks])), 3)
            row[f"within_0.05_{level}"] = sum(aucs[t]["auc_mean"] >= best_base[t] - 0.05 for t in tasks)
        table.append(row)
    return table


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|a - b| / mean(|a|, |b|)`` over the last axis."""
    return (a - b).norm(dim=-1) / ((a.norm(dim=-1) + b.norm(dim=-1)) / 2).clamp_min(1e-6)


def why(lm, args) -> list[dict]:
    """Rows of the ``--why`` study (module docstring) on the evaluation split's scoring prompts."""
    rows = []
    for task in args.tasks:
        truth = np.array([h in set(ground_truth_for(lm, task).heads) for h in all_heads(lm)])
        batch = task_batch(lm, task, args.pairs, args.eval_seed)
        rel = relative_difference(head_outputs(lm, batch.clean_ids), head_outputs(lm, batch.corrupted_ids))
        real = batch.mask.bool()
        pos = torch.arange(real.shape[1])[None].expand_as(real)
        changed = (batch.clean_ids != batch.corrupted_ids) & real
        first, end = changed.float().argmax(1)[:, None], batch.end[:, None]
        classes = {"BOS": pos == 0, "prefix": (pos > 0) & (pos < first), "changed": changed,
                   "between": (pos > first) & (pos < end) & ~changed, "end": pos == end}
        for name, where in classes.items():
            values = rel[where & real]  # [n_positions, heads]
            rows.append({"task": task, "what": f"position class {name}",
                         "per_prompt": round(float((where & real).sum()) / len(batch), 1),
                         "circuit": round(float(values[:, truth].mean()), 3),
                         "other": round(float(values[:, ~truth].mean()), 3), "auc": ""})
        for rule in ("mean", "last", "changed", "changed_end"):
            positive, negative = head_vectors(lm, batch, rule)
            diff = relative_difference(positive.rows(), negative.rows()).mean(0).numpy()
            rows.append({"task": task, "what": f"{rule}: reduced vectors", "per_prompt": 1,
                         "circuit": round(float(diff[truth].mean()), 3), "other": round(float(diff[~truth].mean()), 3),
                         "auc": round(score_heads(diff, truth)["auc"], 3)})
            rates = []
            for seed in range(args.seeds):
                cfg = DSAEConfig(position=rule, seed=seed)
                train = task_batch(lm, task, cfg.n_train, args.eval_seed + 1 + seed)
                n_pos = cfg.n_train - cfg.n_train // 2
                parts = prompt_head_vectors(lm, [(train.clean_ids, train, slice(0, n_pos)),
                                                 (train.corrupted_ids, train, slice(n_pos, cfg.n_train))], rule)
                sae, scale, _ = train_discrete_sae(torch.cat([parts[0].rows(), parts[1].rows()]).flatten(0, 1), cfg)
                rates.append((codes(sae, scale, positive) != codes(sae, scale, negative)).float().mean(0).numpy())
            rate = np.mean(rates, 0)
            rows.append({"task": task, "what": f"{rule}: code differs within a pair", "per_prompt": 1,
                         "circuit": round(float(rate[truth].mean()), 3), "other": round(float(rate[~truth].mean()), 3),
                         "auc": round(score_heads(rate, truth)["auc"], 3)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--rules", default=",".join(POSITION_RULES))
    parser.add_argument("--norms", default=",".join(LOSS_NORMS))
    parser.add_argument("--l1s", default=DEFAULT_L1S, help=f"L1 coefficients tried (default {DEFAULT_L1S})")
    parser.add_argument("--schedules", default=DEFAULT_SCHEDULES,
                        help=f"lr:epochs pairs tried (default {DEFAULT_SCHEDULES})")
    parser.add_argument("--seeds", type=int, default=5, help="SAE seeds (and training-prompt draws) per cell")
    parser.add_argument("--pairs", type=int, default=100, help="scoring pairs (default 100, as compare)")
    parser.add_argument("--n-train", type=int, default=DSAEConfig().n_train)
    parser.add_argument("--codebook", type=int, default=DSAEConfig().codebook)
    parser.add_argument("--tune-seed", type=int, default=100)
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--acdc", action="store_true", help="also run ACDC's ROC sweep (slow)")
    parser.add_argument("--why", action="store_true", help="the per-position study instead (module docstring)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.tasks = tuple(t for t in args.tasks.split(",") if t)
    torch.set_num_threads(1)
    lm = load_model("toy")
    if args.why:
        rows = why(lm, args)
        print(json.dumps(rows, indent=2) if args.json else markdown_table(rows, tuple(rows[0])), end="\n")
        return 0
    rules, norms = args.rules.split(","), args.norms.split(",")
    l1s = [float(x) for x in args.l1s.split(",")]
    schedules = [(float(s.split(":")[0]), int(s.split(":")[1])) for s in args.schedules.split(",")]
    start = time.perf_counter()
    tuning = sweep(lm, args, args.tune_seed, rules, norms, l1s, schedules, progress=not args.json)
    selected = select(tuning)
    tuning_s = time.perf_counter() - start
    evaluation = []
    for choice in selected.values():
        evaluation += sweep(lm, args, args.eval_seed, [choice["position"]], [choice["loss_norm"]], [choice["l1"]],
                            [(choice["lr"], choice["epochs"])], progress=False)
    base = baselines(lm, args)
    table = evaluation_table(selected, evaluation, args.tasks, base)
    paper = [c for c in selected.values() if c["loss_norm"] == "paper"] or list(selected.values())
    suggested = max(paper, key=lambda c: c["tuning_node_auc"])
    out = {"tasks": args.tasks, "seeds": args.seeds, "tune_seed": args.tune_seed, "eval_seed": args.eval_seed,
           "grid": {"rules": rules, "norms": norms, "l1s": l1s, "schedules": schedules}, "selected": selected,
           "suggested_default": suggested, "evaluation_table": table, "baselines": base, "tuning_rows": tuning,
           "evaluation_rows": evaluation, "seconds": round(time.perf_counter() - start, 1),
           "tuning_seconds": round(tuning_s, 1)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"evaluation split (seed {args.eval_seed}; settings chosen on split {args.tune_seed}), "
              f"{args.seeds} seeds, node and edge AUC mean±std:")
        print(markdown_table(table, tuple(table[0])), end="")
        print("baselines on the evaluation split:")
        print(markdown_table(base, ("task", "method", "auc", "runtime_s")), end="")
        print(f"suggested default (paper normalisation, best tuning mean): {suggested}")
        print(f"total {out['seconds']} s (tuning {out['tuning_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
