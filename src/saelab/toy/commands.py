"""``saelab toy build`` and ``saelab toy eval``."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from saelab.toy.training import ToyBuildConfig


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name`` option per ToyBuildConfig field, defaulting to the dataclass default."""
    for f in fields(ToyBuildConfig):
        default = f.default
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(default), default=default,
                            help=f"(default {default})")


def _run_build(args: argparse.Namespace) -> int:
    from saelab.toy.bundle import build_toy_model

    cfg = ToyBuildConfig(**{f.name: getattr(args, f.name) for f in fields(ToyBuildConfig)})
    info = build_toy_model(args.out, cfg, resume=not args.no_resume, stop_after=args.stop_after,
                           progress=not args.json, eval_prompts=args.eval_prompts,
                           keep_checkpoint=args.keep_checkpoint)
    if args.json:
        print(json.dumps(info))
    elif info["finished"]:
        print(f"toy model written to {args.out}: {info['n_params']:,} parameters, "
              f"{info['model_bytes'] / 1e6:.2f} MB, {info['train_seconds'] / 60:.1f} min of training")
        _print_scores(info["scores"])
    else:
        print(f"stopped after step {info['step']} of {cfg.steps}; run the same command again to resume")
    return 0


def _print_scores(scores: dict) -> None:
    print(f"{'metric':<26}{'value':>10}  {'gate':<10}passed")
    for name, gate in scores["gates"].items():
        print(f"{name:<26}{gate['value']:>10.4f}  {gate['op'] + ' ' + str(gate['threshold']):<10}"
              f"{'yes' if gate['passed'] else 'NO'}")


def _run_eval(args: argparse.Namespace) -> int:
    from saelab.toy.evaluation import evaluate_toy_model

    scores = evaluate_toy_model(args.model, n_prompts=args.n_prompts, seed=args.seed, threads=args.threads)
    if args.json:
        print(json.dumps(scores))
    else:
        print(f"model: {scores['model']}  ({scores['n_prompts']} prompts per task, seed {scores['seed']})")
        _print_scores(scores)
    return 1 if args.check and not scores["passed"] else 0


def register(subparsers) -> None:
    from saelab.toy.evaluation import EVAL_SEED

    toy = subparsers.add_parser("toy", help="the toy world: build or evaluate the bundled toy model")
    sub = toy.add_subparsers(dest="toy_command", metavar="TOY_COMMAND", required=True)

    build = sub.add_parser("build", help="train the toy model from scratch (resumable) into a model folder")
    build.add_argument("--out", required=True, help="output folder (checkpoints go to OUT/checkpoint)")
    _add_config_options(build)
    build.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    build.add_argument("--stop-after", type=int, default=None, help="stop after this step, leaving a checkpoint")
    build.add_argument("--eval-prompts", type=int, default=300, help="held-out prompts per task for the card")
    build.add_argument("--keep-checkpoint", action="store_true", help="keep OUT/checkpoint after finishing")
    build.add_argument("--json", action="store_true", help="print the build info as one JSON object")
    build.set_defaults(func=_run_build)

    evaluate = sub.add_parser("eval", help="held-out task scores of a toy model and its gates")
    evaluate.add_argument("--model", default=None, help="model folder (default: the bundled toy model)")
    evaluate.add_argument("--n-prompts", type=int, default=300, help="prompts per task (default 300)")
    evaluate.add_argument("--seed", type=int, default=EVAL_SEED, help=f"evaluation seed (default {EVAL_SEED})")
    evaluate.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    evaluate.add_argument("--check", action="store_true", help="exit with status 1 if any gate fails")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=_run_eval)
