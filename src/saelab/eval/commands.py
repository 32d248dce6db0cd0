"""``saelab eval``, ``saelab sweep`` and ``saelab recovery``.

::

    saelab eval SAE_DIR [--tokens N] [--source toy:1000003] [--json] [--out DIR]
    saelab sweep --model toy --hook blocks.2.hook_resid_pre --archs relu,gated,topk,batchtopk,jumprelu \\
        --points 5 --out DIR [--json]
    saelab recovery SAE_DIR [--tokens N] [--json]

The model defaults to the one recorded in the SAE folder (``metadata.model_name``), the context size
likewise (else 128, or the model's context if shorter). Warnings (a dead SAE, undefined ratios, evaluating on the training data) go to
stderr and, with ``--json``, into the object's ``warnings``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from saelab.errors import ConfigError, check_range


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="device of the model and SAE (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is often fastest on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def register(subparsers) -> None:
    from saelab.eval.evaluate import DEFAULT_EVAL_SEED, DEFAULT_EVAL_SOURCE

    ev = subparsers.add_parser("eval", help="fidelity and sparsity of an SAE spliced into its model")
    ev.add_argument("sae", metavar="SAE_DIR", help="SAE folder (cfg.json + sae_weights.safetensors) or Hub id")
    ev.add_argument("--model", default=None, help="model spec (default: the one recorded in the SAE folder)")
    ev.add_argument("--source", "--text", dest="source", default=None,
                    help="held-out evaluation data ('toy:SEED', a .txt/.jsonl file, 'hf:NAME'); default: the "
                         "heldout.* file beside the SAE's training text (saelab corpus build writes both), "
                         f"else {DEFAULT_EVAL_SOURCE}")
    ev.add_argument("--tokens", type=int, default=32_768, help="evaluation tokens (default 32768)")
    ev.add_argument("--context-size", type=int, default=None,
                    help="tokens per window (default: the SAE's, else 128 or the model's context if shorter)")
    ev.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default 16)")
    ev.add_argument("--dead-window-tokens", type=int, default=None,
                    help="count latent fires over this many tokens (default: the evaluation tokens; "
                         "more streams extra activations only, no unembedding)")
    ev.add_argument("--dense-threshold", type=float, default=0.1, help="dense = fires on more than this fraction")
    ev.add_argument("--no-error-check", action="store_true",
                    help="skip the run with the error term added back (saves one forward pass per batch)")
    ev.add_argument("--out", default=None, help="also write eval.json, latent_frequency.safetensors and "
                                                "density_histogram.png into this folder")
    ev.add_argument("--format", choices=("saelab", "saebench"), default="saelab",
                    help="saebench: print SAEBench's core-eval result JSON (and write OUT/NAME_eval_results.json)")
    _common(ev)
    ev.set_defaults(func=run_eval)

    sw = subparsers.add_parser("sweep", help="train architectures at several sparsities from one stream; "
                                             "frontier table and plots")
    sw.add_argument("--model", required=True, help="'toy', a local Hugging Face folder, a .gguf file or a hub id")
    sw.add_argument("--hook", required=True, help="hook name, e.g. blocks.2.hook_resid_pre")
    sw.add_argument("--archs", default="relu,topk,jumprelu", help="comma-separated architectures")
    sw.add_argument("--points", type=int, default=3, help="sparsity settings per architecture (default 3)")
    sw.add_argument("--out", required=True, help="output folder (train/, sweep.json, sweep.csv, two PNGs)")
    sw.add_argument("--d-sae", type=int, default=None, help="latents per SAE (default expansion x d_in)")
    sw.add_argument("--expansion", type=int, default=4, help="d_sae / d_in when --d-sae is not given (default 4)")
    sw.add_argument("--train-tokens", type=int, default=400_000, help="training tokens (default 400000)")
    sw.add_argument("--batch-size", type=int, default=2048, help="training batch in tokens (default 2048)")
    sw.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    sw.add_argument("--lr-for", action="append", default=[], metavar="ARCH=LR",
                    help="learning rate of one architecture (repeatable)")
    sw.add_argument("--range", action="append", default=[], metavar="ARCH=SPARSEST:DENSEST",
                    help="sparsity knob range of one architecture: k, l1 or l0 coefficient (repeatable)")
    sw.add_argument("--seed", type=int, default=0, help="data order and initialisation seed")
    sw.add_argument("--seeds", default=None, metavar="S1,S2,...",
                    help="run the sweep once per seed (OUT/seedS) and report mean and spread over seeds")
    sw.add_argument("--adam-betas", default="0.9,0.999", metavar="B1,B2",
                    help="Adam betas (default 0.9,0.999; Gemma Scope used 0,0.999)")
    sw.add_argument("--context-size", type=int, default=128, help="tokens per window (default 128)")
    sw.add_argument("--train-source", default="toy:0", help="training data (default toy:0)")
    sw.add_argument("--cache", default=None, help="train from this activation-cache folder instead")
    sw.add_argument("--eval-source", default=DEFAULT_EVAL_SOURCE, help=f"held-out data (default {DEFAULT_EVAL_SOURCE})")
    sw.add_argument("--eval-tokens", type=int, default=16_384, help="evaluation tokens (default 16384)")
    sw.add_argument("--check-error-term", action="store_true", help="also run each SAE with its error term")
    sw.add_argument("--resume", action="store_true", help="continue an interrupted training run in OUT/train")
    _common(sw)
    sw.set_defaults(func=run_sweep_command)

    rc = subparsers.add_parser("recovery", help="feature recovery against the toy world's planted variables")
    rc.add_argument("sae", metavar="SAE_DIR", help="SAE folder (of a toy-world model)")
    rc.add_argument("--model", default=None, help="model spec (default: the one recorded in the SAE folder)")
    rc.add_argument("--tokens", type=int, default=32_768, help="held-out tokens (default 32768)")
    rc.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED, help=f"toy document seed (default {DEFAULT_EVAL_SEED})")
    rc.add_argument("--f1", type=float, default=0.8, help="F1 at which a variable counts as recovered (default 0.8)")
    rc.add_argument("--no-baselines", action="store_true", help="skip the neuron and random-direction baselines")
    rc.add_argument("--neuron-hook", default=None, help="MLP hook of the neuron baseline (default: the relevant layer)")
    rc.add_argument("--random-seed", type=int, default=0, help="seed of the random directions")
    rc.add_argument("--summary-only", action="store_true", help="print only the summary table")
    _common(rc)
    rc.set_defaults(func=run_recovery_command)


# ----------------------------------------------------------------------------------- helpers
def _setup_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        check_range("--threads", args.threads, 1, None, integer=True)
        torch.set_num_threads(args.threads)


def _warn(command: str, warnings: list[str]) -> None:
    for message in warnings:
        print(f"saelab {command}: warning: {message}", file=sys.stderr)


def load_sae_and_model(sae_path: str, model: str | None, device: str):
    """(lm, sae, folder info) with the model from ``model`` or the folder's recorded ``model_name``."""
    from saelab.models import load_model
    from saelab.sae import load_sae_with_info

    sae, info = load_sae_with_info(sae_path, device=device)
    spec = model or info.metadata.get("model_name") or info.saelab.get("model_name")
    if not spec:
        raise ConfigError(f"SAE folder {sae_path!r} records no model (metadata.model_name); pass --model, e.g. "
                          "--model toy")
    return load_model(spec, device=device), sae, info


def default_eval_source(info) -> str:
    """The held-out split beside the SAE's training text (``.../train.txt`` -> ``.../heldout.txt``,
    as ``saelab corpus build`` writes them), else the held-out toy documents."""
    from saelab.eval.evaluate import DEFAULT_EVAL_SOURCE

    trained_on = info.metadata.get("dataset_path") or info.saelab.get("dataset_path")
    if trained_on:
        path = Path(str(trained_on))
        if path.is_file() and path.stem == "train":
            heldout = path.with_name("heldout" + path.suffix)
            if heldout.is_file():
                return str(heldout)
    return DEFAULT_EVAL_SOURCE


def _training_data_warning(info, source) -> list[str]:
    trained_on = info.metadata.get("dataset_path") or info.saelab.get("dataset_path")
    if trained_on and trained_on == source.dataset_path:
        return [f"the evaluation data {source.dataset_path!r} is the SAE's training data; pass --source with "
                "held-out data (e.g. another toy seed) for an unbiased evaluation"]
    return []


def _model_change_warning(info, lm) -> list[str]:
    """A warning when the folder records the fingerprint of the model it was trained on and it differs."""
    recorded = info.saelab.get("model_fingerprint") or info.metadata.get("model_fingerprint")
    if recorded and recorded != lm.fingerprint():
        return [f"the SAE was trained on a model with other weights than {lm.name!r} has now (fingerprint "
                f"{recorded[:12]}... vs {lm.fingerprint()[:12]}...); its figures describe a mismatched pair"]
    return []


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, indent=2, allow_nan=False))


# ----------------------------------------------------------------------------------- commands
def run_eval(args: argparse.Namespace) -> int:
    from saelab.eval.evaluate import EvalConfig, evaluate_sae, model_context, resolve_source
    from saelab.eval.report import format_eval

    _setup_threads(args)
    lm, sae, info = load_sae_and_model(args.sae, args.model, args.device)
    context = args.context_size or info.metadata.get("context_size") or min(128, model_context(lm) or 128)
    config = EvalConfig(tokens=args.tokens, context_size=context, batch_size=args.batch_size,
                        dense_threshold=args.dense_threshold, check_error_term=not args.no_error_check,
                        dead_window_tokens=args.dead_window_tokens, progress=not args.no_progress)
    source = resolve_source(args.source or default_eval_source(info))
    result = evaluate_sae(lm, sae, source, config)
    metrics = result.metrics
    metrics["warnings"] = _model_change_warning(info, lm) + _training_data_warning(info, source) + metrics["warnings"]
    if args.out:
        metrics["files"] = write_eval_outputs(result, args.out)
    _warn("eval", metrics["warnings"])
    if args.format == "saebench":
        from saelab.eval.saebench import saebench_result_json

        print(saebench_result_json(result, sae, config.batch_size, str(lm.dtype).removeprefix("torch."), args.out))
        return 0
    if args.json:
        _print_json(metrics)
    else:
        print(format_eval(metrics))
        for name, path in metrics.get("files", {}).items():
            print(f"{name}: {path}")
    return 0


def write_eval_outputs(result, out_dir: str) -> dict[str, str]:
    """eval.json, latent_frequency.safetensors and density_histogram.png in ``out_dir``; their paths."""
    from saelab.eval.plots import plot_density_histogram
    from saelab.fileio import atomic_save_safetensors, atomic_write_json

    out = Path(out_dir)
    files = {"json": str(out / "eval.json"), "latent_frequency": str(out / "latent_frequency.safetensors"),
             "density_histogram": str(out / "density_histogram.png")}
    plot_density_histogram(result.metrics, files["density_histogram"])
    atomic_save_safetensors(files["latent_frequency"], {"frequency": result.latent_frequency.float()})
    atomic_write_json(files["json"], {**result.metrics, "files": files})
    return files


def _pairs(items: list[str], what: str, parse) -> dict:
    out = {}
    for item in items:
        arch, sep, value = item.partition("=")
        if not sep or not arch:
            raise ConfigError(f"{what} {item!r} is not accepted; write ARCH=VALUE, e.g. topk=4:64 or jumprelu=3e-4")
        try:
            out[arch.strip()] = parse(value)
        except ValueError as exc:
            raise ConfigError(f"{what} {item!r}: {exc}") from None
    return out


def _floats(text: str, flag: str) -> tuple[float, ...]:
    """``"0.9,0.999"`` -> ``(0.9, 0.999)``, or a ``ConfigError`` naming ``flag``."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be comma-separated numbers, e.g. 0.9,0.999") from None


def _range(text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition(":")
    if not sep:
        raise ValueError("give SPARSEST:DENSEST, e.g. 4:64")
    return float(lo), float(hi)


def run_sweep_command(args: argparse.Namespace) -> int:
    from saelab.eval.evaluate import EvalConfig, resolve_source
    from saelab.eval.report import format_sweep
    from saelab.eval.sweep import SweepConfig, run_seeded_sweep, run_sweep
    from saelab.models import load_model

    _setup_threads(args)
    config = SweepConfig(
        hook=args.hook, archs=args.archs, points=args.points, d_sae=args.d_sae, expansion=args.expansion,
        ranges=_pairs(args.range, "--range", _range), lrs=_pairs(args.lr_for, "--lr-for", float),
        train_tokens=args.train_tokens, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        adam_betas=_floats(args.adam_betas, "--adam-betas"), context_size=args.context_size, train_source=args.train_source, eval_source=args.eval_source,
        eval=EvalConfig(tokens=args.eval_tokens, check_error_term=args.check_error_term),
        progress=not args.no_progress)
    if args.cache is None and resolve_source(config.train_source).dataset_path == \
            resolve_source(config.eval_source).dataset_path:
        raise ConfigError(f"--train-source and --eval-source are both {config.train_source!r}; evaluate on held-out "
                          "data (e.g. another toy seed)")
    seeds = None if args.seeds is None else [int(v) for v in _floats(args.seeds, "--seeds")]
    lm = load_model(args.model, device=args.device)
    if seeds is None:
        result = run_sweep(lm, config, args.out, cache=args.cache, resume=args.resume)
        for row in result["rows"]:
            _warn("sweep", [f"{row['name']}: {w}" for w in row["warnings"]])
    else:
        result = run_seeded_sweep(lm, config, seeds, args.out, cache=args.cache, resume=args.resume)
    if args.json:
        _print_json(result)
    else:
        print(format_sweep(result))
        for name, path in result["files"].items():
            print(f"{name}: {path}")
    return 0


def run_recovery_command(args: argparse.Namespace) -> int:
    from saelab.eval.recovery import RecoveryConfig, feature_recovery
    from saelab.eval.report import format_recovery

    _setup_threads(args)
    lm, sae, _ = load_sae_and_model(args.sae, args.model, args.device)
    config = RecoveryConfig(tokens=args.tokens, seed=args.seed, f1_threshold=args.f1, baselines=not args.no_baselines,
                            neuron_hook=args.neuron_hook, random_seed=args.random_seed, progress=not args.no_progress)
    report = feature_recovery(lm, sae, config)
    if args.json:
        _print_json(report)
    else:
        print(format_recovery(report, per_variable=not args.summary_only))
    return 0

