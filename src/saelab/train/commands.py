"""``saelab train``: train one or many SAEs on a model's activations, from one forward pass per batch.

::

    saelab train --model toy --hook blocks.1.attn.hook_z --arch jumprelu --d-sae 2048 \\
        --tokens 2000000 --seed 0 --out DIR
    saelab train --model toy --hook blocks.1.attn.hook_z --hook blocks.2.hook_resid_pre \\
        --arch topk,jumprelu --k 16 --tokens 1000000 --out DIR      # 4 SAEs, one model pass per batch
    saelab train --sweep sweep.json --tokens 1000000 --out DIR         # SAE configs from a file
    saelab train --cache CACHE_DIR --arch topk --out DIR               # from an activation cache
    saelab train --resume --out DIR                                    # continue an interrupted run
    saelab train --device cuda --model-dtype bfloat16 --autocast bf16 --compile ...   # the GPU fast path
    torchrun --nproc-per-node 4 -m saelab train --device cuda ... --out DIR           # 4 GPUs, data parallel
    torchrun --nproc-per-node 4 -m saelab train --parallel sae --sweep s.json --out DIR  # SAEs split over ranks

The run's settings are written to ``DIR/run.json`` when it starts; ``--resume`` reads them back (the
command line may only lengthen the run with ``--tokens``/``--steps``), so the resumed run sees the
same batches and ends with the same weights as an uninterrupted one.

Under ``torchrun`` every process joins the process group (NCCL for ``--device cuda``, each process on
``cuda:LOCAL_RANK``; gloo on CPUs); rank 0 writes run.json, metrics, checkpoints and prints the
summary. A run may be resumed with a different number of processes. See docs/SCALING.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from saelab.cli_args import (
    add_model_arguments,
    add_source_arguments,
    add_threads_argument,
    apply_threads,
    emit,
    model_from_args,
    packing_from_args,
    source_from_args,
)
from saelab.errors import ConfigError, SaelabError
from saelab.fileio import atomic_write_json, check_output_folder

RUN_FILE = "run.json"
# Command-line keys that a resumed run may change; everything else comes from run.json.
RESUMABLE_ARGS = ("tokens", "steps", "progress", "threads", "json", "parallel")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train SAEs on model activations (many SAEs from one pass)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, required=False)
    add_source_arguments(p)
    p.add_argument("--hook", action="append", default=None,
                   help="hook to train on (repeat, or comma-separate, for several)")
    p.add_argument("--arch", default="jumprelu",
                   help="architecture(s), comma-separated: relu, tied, gated, topk, batchtopk, jumprelu")
    p.add_argument("--d-sae", type=int, default=None, help="latents per SAE (default 8 x d_in)")
    p.add_argument("--k", type=int, default=None, help="active latents per token for topk/batchtopk")
    p.add_argument("--l1", type=float, default=None, help="L1 coefficient of relu/tied/gated")
    p.add_argument("--l0", type=float, default=None, help="L0 coefficient (lambda) of jumprelu")
    p.add_argument("--sweep", default=None,
                   help="JSON file: a list of SAE configs ({architecture, hook_name, d_sae, k, ...}) to train together")
    p.add_argument("--cache", default=None, help="read activations from this cache folder instead of the model")
    p.add_argument("--tokens", type=int, default=None, help="training tokens (default 2,000,000)")
    p.add_argument("--steps", type=int, default=None, help="training steps (instead of --tokens)")
    p.add_argument("--batch-size", type=int, default=4096, help="tokens per training step")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-4)")
    p.add_argument("--lr-warmup-steps", type=int, default=None, help="lr warm-up steps (default 5%% of the run)")
    p.add_argument("--lr-decay-steps", type=int, default=None, help="lr decay steps at the end (default 20%%)")
    p.add_argument("--sparsity-warmup-steps", type=int, default=None,
                   help="sparsity-coefficient warm-up steps (default 10%% of the run)")
    p.add_argument("--seed", type=int, default=0, help="seed of SAE init and of the data order")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (0: at the end)")
    p.add_argument("--log-every", type=int, default=50, help="steps between metrics lines")
    p.add_argument("--buffer-windows", type=int, default=256, help="context windows mixed in one shuffle buffer")
    p.add_argument("--log-to", default="", help="also log to wandb and/or tensorboard (comma-separated)")
    p.add_argument("--out", required=True, help="run folder: metrics, checkpoints, and the SAEs under saes/")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--parallel", choices=("data", "sae"), default=None,
                   help="under torchrun: 'data' (default: every rank trains every SAE on its share of each "
                        "batch) or 'sae' (each rank trains some of the SAEs on whole batches)")
    p.add_argument("--autocast", choices=("none", "bf16"), default="none",
                   help="bf16: run the SAEs' training passes in bfloat16 with float32 master weights and Adam "
                        "(see docs/SCALING.md for the measured effect on FVU and speed)")
    p.add_argument("--compile", action="store_true", help="run the SAEs' training passes through torch.compile")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend for --compile (default inductor; aot_eager needs no C compiler)")
    p.add_argument("--skip-bad-batches", action="store_true",
                   help="skip batches with NaN/inf activations (and non-finite updates) instead of stopping; "
                        "the counts are reported")
    p.add_argument("--max-skipped-batches", type=int, default=1000,
                   help="with --skip-bad-batches: stop once more batches than this were skipped")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    add_threads_argument(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    for key, value in vars(args).items():  # argparse turns "--option=--" into an empty list
        if isinstance(value, list) and key != "hook":
            raise ConfigError(f"--{key.replace('_', '-')} needs a value; got {value!r}")
    apply_threads(args)
    out = Path(args.out)
    check_output_folder(out, what="--out")  # before any model loading or training
    from saelab.train.distributed import DistributedRun, init_from_env, launched_by_torchrun

    local_device = init_from_env(args.device) if launched_by_torchrun() else args.device
    run = DistributedRun.current("data")
    if run is None or run.is_main:
        settings = _resume_settings(args, out) if args.resume else _fresh_settings(args, out)
    if run is not None:
        run.barrier()  # rank 0 has written run.json
        if not run.is_main:
            settings = json.loads((out / RUN_FILE).read_text())
    settings["device"] = settings["train"]["device"] = local_device  # cuda:LOCAL_RANK under torchrun
    started = time.perf_counter()
    result = train_from_settings(settings, out, resume=args.resume, progress=args.progress)
    result["seconds"] = round(time.perf_counter() - started, 2)
    if run is not None:
        result["ranks"] = run.world_size
    if run is None or run.is_main:
        from saelab.train.curves import plot_training_curves

        result["training_curves"] = str(plot_training_curves(out))
        emit(result, args.json)
    return 0


def train_from_settings(settings: dict[str, Any], out: Path, *, resume: bool = False,
                        progress: bool = True) -> dict[str, Any]:
    """Train the SAEs a ``run.json`` settings dict describes; returns a summary with the SAE folders."""
    from saelab.sae import SAEConfig
    from saelab.train import TrainConfig, train_saes

    source, meta, d_in = _batch_source(settings)
    sae_cfgs = [SAEConfig.from_dict({**c, "d_in": d_in[c["hook_name"]],
                                     "d_sae": c.get("d_sae") or 8 * d_in[c["hook_name"]]})
                for c in settings["saes"]]
    if "normalization_factors" not in settings:
        from saelab.train.distributed import active_world

        settings["normalization_factors"] = dict(source.normalization_factors)
        if active_world()[0] == 0:
            atomic_write_json(out / RUN_FILE, settings)
    train_cfg = TrainConfig.from_dict(settings["train"])
    train_saes(sae_cfgs, source, train_cfg, out, resume=resume, progress=progress, extra_meta=meta)
    saes = [c.name for c in sae_cfgs]  # under torchrun with parallel="sae" each rank returns only its own
    return {"out": str(out), "saes": {name: str(out / "saes" / name) for name in saes},
            "steps": train_cfg.total_steps, "tokens": train_cfg.total_steps * train_cfg.batch_size,
            **_skip_counts(out, list(saes))}


def _skip_counts(out: Path, names: list[str]) -> dict[str, Any]:
    """Skipped batches (NaN/inf activations) and per-SAE skipped updates, as the saved folders record them."""
    training = {name: json.loads((out / "saes" / name / "cfg.json").read_text())["saelab"]["training"]
                for name in names}
    batches = max((t["skipped_batches"] for t in training.values()), default=0)
    return {"skipped_batches": batches, "skipped_updates": {n: t["skipped_updates"] for n, t in training.items()}}


def _fresh_settings(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    if (out / RUN_FILE).exists():
        raise SaelabError(f"{out} already holds a training run; pass --resume to continue it, or choose "
                          "another --out")
    if args.tokens is None and args.steps is None:
        args.tokens = 2_000_000
    if args.cache and args.hook is None:
        from saelab.data.cache import ActivationCache

        args.hook = ActivationCache(args.cache).hooks
    hooks = _split(args.hook or ["blocks.1.attn.hook_z"])
    saes = _sae_entries(args, hooks)
    total_steps = args.steps if args.steps is not None else -(-args.tokens // max(args.batch_size, 1))
    train = {
        "batch_size": args.batch_size, "seed": args.seed, "checkpoint_every": args.checkpoint_every,
        "log_every": min(args.log_every, total_steps),
        "lr_warmup_steps": _default_steps(args.lr_warmup_steps, total_steps, 0.05),
        "lr_decay_steps": _default_steps(args.lr_decay_steps, total_steps, 0.2),
        "sparsity_warmup_steps": _default_steps(args.sparsity_warmup_steps, total_steps, 0.1),
        "log_to": _split([args.log_to]) if args.log_to else [],
        "device": args.device, "parallel": args.parallel or "data",
        "skip_bad_batches": args.skip_bad_batches, "max_skipped_batches": args.max_skipped_batches,
        "autocast": args.autocast, "compile": args.compile, "compile_backend": args.compile_backend,
        **({"steps": args.steps} if args.steps is not None else {"tokens": args.tokens}),
        **({"lr": args.lr} if args.lr is not None else {}),
    }
    settings = {
        "model": args.model, "model_dtype": args.model_dtype, "device": args.device, "cache": args.cache,
        "source": {k: getattr(args, k) for k in ("source", "source_seed", "text_column", "split", "txt_split",
                                                 "context_size", "no_prepend_bos", "separator",
                                                 "include_special_tokens", "model_batch_size")},
        "buffer_windows": args.buffer_windows, "seed": args.seed, "hooks": hooks, "saes": saes, "train": train,
    }
    from saelab.train import TrainConfig

    TrainConfig.from_dict(train)  # refuse bad values before any work
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RUN_FILE, settings)
    return settings


def _resume_settings(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    try:
        settings = json.loads((out / RUN_FILE).read_text())
    except FileNotFoundError:
        raise SaelabError(f"--resume: {out} holds no training run ({RUN_FILE} missing); start one without "
                          "--resume") from None
    except json.JSONDecodeError as exc:
        raise SaelabError(f"--resume: {out / RUN_FILE} is not valid JSON ({exc})") from exc
    train = settings["train"]
    if args.parallel is not None and args.parallel != train.get("parallel", "data"):
        train["parallel"] = args.parallel
        atomic_write_json(out / RUN_FILE, settings)
    if args.tokens is not None or args.steps is not None:
        train.pop("tokens", None)
        train.pop("steps", None)
        train.update({"steps": args.steps} if args.steps else {"tokens": args.tokens})
        atomic_write_json(out / RUN_FILE, settings)
    return settings


def _sae_entries(args: argparse.Namespace, hooks: list[str]) -> list[dict[str, Any]]:
    if args.sweep:
        try:
            entries = json.loads(Path(args.sweep).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"--sweep {args.sweep!r} could not be read as JSON ({exc})") from exc
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries) or not entries:
            raise ConfigError(f"--sweep {args.sweep!r} must hold a non-empty JSON list of SAE config objects")
        for entry in entries:
            entry.setdefault("hook_name", hooks[0])
            entry.setdefault("d_sae", args.d_sae)
        return entries
    if not _split([args.arch]):
        raise ConfigError(f"--arch {args.arch!r} names no architecture; accepted: a comma-separated list of "
                          "relu, tied, gated, topk, batchtopk, jumprelu")
    entries = []
    for hook in hooks:
        for arch in _split([args.arch]):
            entry: dict[str, Any] = {"architecture": arch, "hook_name": hook, "d_sae": args.d_sae}
            if args.k is not None and arch in ("topk", "batchtopk"):
                entry["k"] = args.k
            if args.l1 is not None and arch in ("relu", "tied", "gated"):
                entry["l1_coefficient"] = args.l1
            if args.l0 is not None and arch == "jumprelu":
                entry["l0_coefficient"] = args.l0
            entries.append(entry)
    return entries


def _batch_source(settings: dict[str, Any]):
    """(batch source, metadata for the SAE folders, {hook: d_in}) for a run's settings."""
    hooks = sorted({c["hook_name"] for c in settings["saes"]})
    factors = settings.get("normalization_factors")
    if settings.get("cache"):
        from saelab.data.cache import ActivationCache

        cache = ActivationCache(settings["cache"], batch_size=settings["train"]["batch_size"],
                                seed=settings["seed"])
        missing = sorted(set(hooks) - set(cache.hooks))
        if missing:
            raise ConfigError(f"the cache {settings['cache']!r} has no hook(s) {', '.join(missing)}; it holds "
                              f"{', '.join(cache.hooks)}")
        meta = {"model_name": cache.metadata.get("model"), "model": {"spec": cache.metadata.get("model")},
                "activation_cache": str(settings["cache"])}
        return cache, meta, {h: cache.d_in[h] for h in hooks}
    from saelab.data.store import ActivationStore, StoreConfig

    ns = argparse.Namespace(model=settings["model"], model_dtype=settings["model_dtype"],
                            device=settings["device"], **settings["source"])
    lm = model_from_args(ns)
    store = ActivationStore(lm, source_from_args(ns), hooks, StoreConfig(
        packing=packing_from_args(ns), batch_size=settings["train"]["batch_size"],
        model_batch_size=ns.model_batch_size, buffer_windows=_buffer_windows(settings, ns.model_batch_size),
        seed=settings["seed"], exclude_special_tokens=not ns.include_special_tokens,
        normalization_factors=factors, repeat=True))
    meta = folder_meta(settings["model"], ns.source, ns.context_size, not ns.no_prepend_bos, lm.fingerprint())
    return store, meta, {h: lm.hook_d_in(h) for h in hooks}


def folder_meta(model_spec: str, source: str, context_size: int, prepend_bos: bool,
                fingerprint: str | None = None) -> dict[str, Any]:
    """What an SAE folder records of where its activations came from (cfg.json ``saelab``/``metadata``);
    ``fingerprint`` (``LoadedModel.fingerprint()``) lets ``saelab eval`` warn about a model with other weights."""
    meta = {"model_name": model_spec, "model": {"spec": model_spec}, "context_size": context_size,
            "prepend_bos": prepend_bos, "dataset_path": source}
    if fingerprint:
        meta["model_fingerprint"] = fingerprint
    return meta


def _buffer_windows(settings: dict[str, Any], model_batch_size: int) -> int:
    windows = int(settings["buffer_windows"])
    return max(model_batch_size, windows - windows % model_batch_size)


def _default_steps(value: int | None, total: int, fraction: float) -> int:
    return int(value) if value is not None else int(total * fraction)


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]
