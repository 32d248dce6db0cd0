"""``saelab circuits discover|compare|reference``.

- ``discover --model toy --task ioi --method dsae --json``: ranked heads, scores, AUC,
  precision/recall/F1 and ``runtime_s`` of one method against the task's ground truth;
- ``compare --model toy --tasks ioi,greater_than,docstring --out DIR``: every method, the table as
  JSON/CSV/Markdown and ROC plots, and per task how many times faster dsae is than one ACDC run, with
  both AUCs;
- ``reference --model toy --out FILE``: recompute the toy model's reference circuits (``--truth-dir DIR``:
  also one ground-truth file per task, for ``compare --ground-truth TASK=DIR/TASK.json``);
- ``dsae-sweep --model toy --json``: the discrete SAE's AUC over position rules, loss normalisations,
  L1 coefficients, codebook sizes and numbers of training examples (mean and spread over SAE seeds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from saelab.cli_args import add_model_arguments, add_threads_argument, apply_threads, emit, model_from_args


def _add_discovery_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, default=100, help="clean/corrupted pairs every method sees (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts (default 0)")
    parser.add_argument("--templates", choices=("toy", "natural", "gpt2"), default=None,
                        help="prompt templates: toy, or natural (the published ones, checked against the model's "
                             "tokenizer; gpt2 is its former name); default: toy for the toy model, natural otherwise")
    from saelab.circuits.discrete_sae import LOSS_NORMS
    from saelab.circuits.dsae import DSAEConfig
    from saelab.circuits.heads import POSITION_RULE_HELP, POSITION_RULES

    dsae = DSAEConfig()
    parser.add_argument("--dsae-examples", type=int, default=dsae.n_train,
                        help=f"discrete SAE training prompts (default {dsae.n_train})")
    parser.add_argument("--dsae-codebook", type=int, default=dsae.codebook,
                        help=f"discrete SAE latents (default {dsae.codebook})")
    parser.add_argument("--dsae-l1", type=float, default=dsae.l1,
                        help=f"discrete SAE L1 coefficient (default {dsae.l1}; the paper: 0.02)")
    parser.add_argument("--dsae-epochs", type=int, default=dsae.epochs,
                        help=f"discrete SAE full-batch epochs, at most (default {dsae.epochs}; the paper: 500 at lr 1e-3)")
    parser.add_argument("--dsae-lr", type=float, default=dsae.lr, help=f"discrete SAE Adam learning rate (default {dsae.lr})")
    parser.add_argument("--dsae-position", choices=POSITION_RULES, default=dsae.position,
                        help=f"position rule of the per-head outputs (default {dsae.position}): "
                             + "; ".join(f"{k}: {v}" for k, v in POSITION_RULE_HELP.items()))
    parser.add_argument("--dsae-loss-norm", choices=LOSS_NORMS, default=dsae.loss_norm,
                        help=f"discrete SAE loss normalisation (default {dsae.loss_norm}): paper = squared error "
                             "averaged over elements on raw activations, as the authors' code; sum_rescaled = summed "
                             "over dimensions on inputs rescaled to unit mean squared norm")
    parser.add_argument("--acdc-metric", choices=("kl", "task"), default="kl", help="ACDC metric, edge- and head-level (default kl)")
    parser.add_argument("--acdc-threshold", type=float, default=0.01, help="ACDC threshold tau, edge- and head-level (default 0.01)")
    parser.add_argument("--acdc-sweep", default="1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1,3e-1,1",
                        help="comma-separated thresholds of the ACDC ROC sweep ('' for none)")
    add_model_arguments(parser, required=False)
    add_threads_argument(parser)


def _floats(text: str, what: str) -> tuple[float, ...]:
    from saelab.errors import ConfigError

    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise ConfigError(f"{what}={text!r} must be comma-separated numbers, e.g. 1e-3,1e-2") from exc


def discovery_from_args(args: argparse.Namespace):
    from saelab.circuits.acdc import ACDCConfig
    from saelab.circuits.discover import DiscoveryConfig
    from saelab.circuits.dsae import DSAEConfig

    return DiscoveryConfig(
        n_pairs=args.pairs, seed=args.seed, templates=args.templates,
        dsae=DSAEConfig(n_train=args.dsae_examples, codebook=args.dsae_codebook, l1=args.dsae_l1,
                        epochs=args.dsae_epochs, lr=args.dsae_lr, position=args.dsae_position,
                        loss_norm=args.dsae_loss_norm),
        acdc=ACDCConfig(metric=args.acdc_metric, threshold=args.acdc_threshold,
                        sweep=_floats(args.acdc_sweep, "--acdc-sweep")))


def run_discover(args: argparse.Namespace) -> int:
    from saelab.circuits.discover import METHODS, discover
    from saelab.circuits.ground_truth import ground_truth_for
    from saelab.circuits.tasks import TASKS
    from saelab.errors import check_choice

    check_choice("--task", args.task, TASKS)
    check_choice("--method", args.method, METHODS)
    apply_threads(args)
    cfg = discovery_from_args(args)
    lm = model_from_args(args)
    truth = ground_truth_for(lm, args.task, args.ground_truth)
    result = discover(lm, args.task, args.method, cfg, progress=not args.json)
    summary = result.summary(truth.heads, top=args.top)
    summary["ground_truth_name"] = truth.name
    summary.pop("roc")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        summary["ranked_heads"] = [f"{r['head']}:{r['score']:.4g}" for r in summary["ranked_heads"]]
        emit({k: v for k, v in summary.items() if not isinstance(v, dict)}
             | {k: ", ".join(f"{a}={b:.4g}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items())
                for k, v in summary.items() if isinstance(v, dict)}, False)
    return 0


def _task_files(items: list[str] | None) -> dict[str, str]:
    """``["ioi=FILE", ...]`` (``--ground-truth``) -> ``{"ioi": "FILE"}``."""
    from saelab.circuits.tasks import TASKS
    from saelab.errors import ConfigError, check_choice

    out: dict[str, str] = {}
    for item in items or []:
        task, sep, name = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--ground-truth {item!r} must be TASK=NAME_OR_FILE, e.g. ioi=runs/gt/ioi.json")
        check_choice("--ground-truth task", task.strip(), TASKS)
        if task.strip() in out:
            raise ConfigError(f"--ground-truth names task {task.strip()!r} twice")
        out[task.strip()] = name.strip()
    return out


def run_compare(args: argparse.Namespace) -> int:
    from saelab.circuits.compare import CompareConfig, compare, markdown_table

    apply_threads(args)
    cfg = CompareConfig(tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
                        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                        discovery=discovery_from_args(args), ground_truths=_task_files(args.ground_truth),
                        extra_dsae_positions=tuple(p.strip() for p in args.extra_dsae_positions.split(",") if p.strip()))
    lm = model_from_args(args)
    out = compare(lm, cfg, Path(args.out), progress=not args.json)
    if args.json:
        print(json.dumps({k: out[k] for k in ("model", "rows", "speedups", "files")}, indent=2))
    else:
        print(markdown_table(out["rows"]), end="")
        for entry in out["speedups"].values():
            print(entry["line"])
        print(f"wrote {', '.join(out['files'].values())}")
    return 0


def run_reference(args: argparse.Namespace) -> int:
    from saelab.circuits.reference import ground_truth_entries, reference_circuits
    from saelab.fileio import atomic_write_json

    apply_threads(args)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    lm = model_from_args(args)
    command = " ".join(["saelab circuits reference", "--model", args.model, "--pairs", str(args.pairs),
                        "--threshold", str(args.threshold), "--tasks", ",".join(tasks)]
                       + (["--templates", args.templates] if args.templates else [])
                       + (["--out", args.out] if args.out else []) + (["--truth-dir", args.truth_dir] if args.truth_dir else []))
    reference = reference_circuits(lm, n=args.pairs, threshold=args.threshold, tasks=tasks, progress=not args.json,
                                   command=command, templates=args.templates)
    if args.out:
        atomic_write_json(args.out, reference)
    summary = {f"{task}.heads": c["heads"] for task, c in reference["circuits"].items()}
    summary["method"] = reference["method"]
    if args.out:
        summary["written"] = args.out
    if args.truth_dir:
        for task, entry in ground_truth_entries(reference).items():
            path = Path(args.truth_dir) / f"{task}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, entry)
            summary[f"{task}.ground_truth"] = str(path)
    emit(summary, args.json)
    return 0


def _ints(text: str, what: str) -> tuple[int, ...]:
    values = _floats(text, what)
    from saelab.errors import ConfigError

    if not all(v.is_integer() for v in values):
        raise ConfigError(f"{what}={text!r} must be comma-separated whole numbers")
    return tuple(int(v) for v in values)


def run_dsae_sweep(args: argparse.Namespace) -> int:
    from saelab.circuits.compare import markdown_table
    from saelab.circuits.sweep import DSAESweepConfig, dsae_sweep

    apply_threads(args)
    cfg = DSAESweepConfig(tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
                          positions=tuple(p.strip() for p in args.positions.split(",") if p.strip()),
                          codebooks=_ints(args.codebooks, "--codebooks"), n_trains=_ints(args.examples, "--examples"),
                          seeds=args.seeds, discovery=discovery_from_args(args),
                          loss_norms=tuple(n.strip() for n in args.loss_norms.split(",") if n.strip()),
                          l1s=_floats(args.l1s, "--l1s"))
    lm = model_from_args(args)
    rows = dsae_sweep(lm, cfg, progress=not args.json)
    if args.out:
        from saelab.fileio import atomic_write_json

        atomic_write_json(args.out, rows)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(markdown_table(rows, tuple(rows[0])), end="")
    return 0


def register(subparsers) -> None:
    from saelab.circuits.compare import EXTRA_DSAE_POSITIONS
    from saelab.circuits.discover import METHODS
    from saelab.circuits.dsae import DSAEConfig
    from saelab.circuits.reference import REFERENCE_PAIRS, REFERENCE_THRESHOLD
    from saelab.circuits.tasks import TASKS

    parser = subparsers.add_parser("circuits", help="circuit discovery: discrete SAEs, patching, EAP, ACDC",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="circuits_command", metavar="SUBCOMMAND", required=True)

    discover = sub.add_parser("discover", help="one method on one task, scored against the ground truth")
    discover.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    discover.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    discover.add_argument("--ground-truth", default=None,
                          help="ground-truth name or JSON file (default: toy:TASK for the toy model, else the published one)")
    discover.add_argument("--top", type=int, default=10, help="ranked heads to print (default 10)")
    discover.add_argument("--json", action="store_true", help="print JSON")
    _add_discovery_arguments(discover)
    discover.set_defaults(func=run_discover)

    compare = sub.add_parser("compare", help="every method on several tasks: table, CSV, Markdown, ROC plots")
    compare.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks (default all)")
    compare.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (default all)")
    compare.add_argument("--out", required=True, help="output folder")
    compare.add_argument("--ground-truth", action="append", default=None, metavar="TASK=NAME_OR_FILE",
                         help="ground truth of one task, a shipped name or a JSON file (repeatable; default: "
                              "toy:TASK for the toy model, else the published one), e.g. ioi=runs/gt/ioi.json")
    compare.add_argument("--extra-dsae-positions", default=",".join(EXTRA_DSAE_POSITIONS),
                         help="position rules whose dsae rows are added besides --dsae-position (default "
                              f"{','.join(EXTRA_DSAE_POSITIONS)}: the paper's rule; '' for none)")
    compare.add_argument("--json", action="store_true", help="print JSON")
    _add_discovery_arguments(compare)
    compare.set_defaults(func=run_compare)

    reference = sub.add_parser("reference", help="reference circuits by mean ablation (per head, then per path where the "
                                                 "head graph exists)")
    reference.add_argument("--pairs", type=int, default=REFERENCE_PAIRS, help=f"pairs per task (default {REFERENCE_PAIRS})")
    reference.add_argument("--threshold", type=float, default=REFERENCE_THRESHOLD,
                           help=f"fraction of the clean - corrupted metric gap (default {REFERENCE_THRESHOLD})")
    reference.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks (default all)")
    reference.add_argument("--templates", choices=("toy", "natural", "gpt2"), default=None,
                           help="prompt templates (default: toy for the toy model, natural otherwise)")
    reference.add_argument("--out", default=None, help="write the reference JSON here")
    reference.add_argument("--truth-dir", default=None,
                           help="also write one ground-truth file per task here (DIR/TASK.json, for compare "
                                "--ground-truth TASK=DIR/TASK.json)")
    reference.add_argument("--json", action="store_true", help="print JSON")
    add_model_arguments(reference, required=False)
    add_threads_argument(reference)
    reference.set_defaults(func=run_reference)

    sweep = sub.add_parser("dsae-sweep", help="discrete-SAE AUC over position rule, codebook size and examples")
    sweep.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks (default all)")
    positions = ",".join(dict.fromkeys((DSAEConfig().position, "mean")))
    sweep.add_argument("--positions", default=positions, help=f"position rules (default {positions})")
    sweep.add_argument("--loss-norms", default="", help="loss normalisations, e.g. paper,sum_rescaled (default: --dsae-loss-norm)")
    sweep.add_argument("--l1s", default="", help="L1 coefficients, e.g. 1e-3,2e-2 (default: --dsae-l1)")
    sweep.add_argument("--codebooks", default="50,200,800", help="codebook sizes (default 50,200,800)")
    sweep.add_argument("--examples", default="6,10,25,50", help="training examples (default 6,10,25,50)")
    sweep.add_argument("--seeds", type=int, default=3, help="SAE seeds per cell (default 3)")
    sweep.add_argument("--out", default=None, help="also write the rows as JSON here")
    sweep.add_argument("--json", action="store_true", help="print JSON")
    _add_discovery_arguments(sweep)
    sweep.set_defaults(func=run_dsae_sweep)
