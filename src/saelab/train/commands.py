"""``saelab train``: train one or many SAEs on a model's activations, from one forward pass per batch.

::

    saelab train --model toy --hook blocks.1.attn.hook_z --arch jumprelu --d-sae 2048 \\
        --tokens 2000000 --seed 0 --out DIR
    saelab train --model toy --hook blocks.1.attn.hook_z --hook blocks.2.hook_resid_pre \\
        --arch topk,jumprelu --k 16 --tokens 1000000 --out DIR      # 4 SAEs, one model pass per batch
    saelab train --model toy --hook blocks.1.hook_resid_mid --target-hook blocks.1.hook_mlp_out \\
        --arch topk --skip --out DIR                                   # a skip transcoder of MLP 1
    saelab train --sweep sweep.json --tokens 1000000 --out DIR         # SAE configs from a file
    saelab train --cache CACHE_DIR --arch topk --out DIR               # from an activation cache
    saelab train --resume --out DIR                                    # continue an interrupted run
    saelab train --device cuda --model-dtype bfloat16 --autocast bf16 --compile ...   # the GPU fast path
    torchrun --nproc-per-node 4 -m saelab train --device cuda ... --out DIR           # 4 GPUs, data parallel
    torchrun --nproc-per-node 4 -m saelab train --parallel sae --sweep s.json --out DIR  # SAEs split over ranks

The command line becomes a ``RunSpec`` (``saelab.train.run_spec``: model, data, resolved SAE configs,
train settings, normalisation factors), saved once to ``DIR/run.json`` when the run starts;
``--resume`` loads it back (the command line may only lengthen the run with ``--tokens``/``--steps``
or change ``--parallel``), so the resumed run sees the same batches and ends with the same weights as
an uninterrupted one.

Under ``torchrun`` every process joins the process group (NCCL for ``--device cuda``, each process on
``cuda:LOCAL_RANK``; gloo on CPUs); rank 0 builds and writes run.json, the other ranks load it; rank 0
writes metrics and checkpoints and prints the summary. A run may be resumed with a different number of processes. See docs/SCALING.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saelab.cli_args import (
    add_model_arguments,
    add_source_arguments,
    add_threads_argument,
    apply_threads,
    emit,
    text_spec_from_args,
)
from saelab.errors import ConfigError, SaelabError
from saelab.fileio import check_output_folder

if TYPE_CHECKING:
    from saelab.models import LoadedModel
    from saelab.train.config import TrainConfig
    from saelab.train.run_spec import RunSpec

DEFAULT_HOOK = "blocks.1.attn.hook_z"
DEFAULT_TOKENS = 2_000_000
# --flag -> (the architecture option it sets, its type, what it is); which architectures take it comes
# from the registry (``option_names``), so this table names no architecture.
OPTION_FLAGS: dict[str, tuple[str, type, str]] = {
    "k": ("k", int, "active latents per token"),
    "l1": ("l1_coefficient", float, "L1 coefficient"),
    "l0": ("l0_coefficient", float, "L0 coefficient (lambda)"),
}


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train SAEs on model activations (many SAEs from one pass)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, required=False)
    add_source_arguments(p)
    p.add_argument("--hook", action="append", default=None,
                   help=f"hook to train on (repeat, or comma-separate, for several; default {DEFAULT_HOOK})")
    p.add_argument("--target-hook", action="append", default=None, metavar="HOOK",
                   help="train transcoders: the hook each --hook's coders predict (one per --hook, in order), "
                        "e.g. --hook blocks.1.hook_resid_mid --target-hook blocks.1.hook_mlp_out")
    p.add_argument("--skip", action="store_true",
                   help="with --target-hook: skip transcoders (a linear skip term x @ W_skip)")
    p.add_argument("--arch", default="jumprelu", help=_arch_help())
    p.add_argument("--d-sae", type=int, default=None, help="latents per SAE (default 8 x d_in)")
    for flag, (option, kind, what) in OPTION_FLAGS.items():
        p.add_argument(f"--{flag}", type=kind, default=None,
                       help=f"{what} ({option}) of {', '.join(_option_users(option)) or 'no architecture'}")
    p.add_argument("--sweep", default=None,
                   help="JSON file: a list of SAE configs ({architecture, hook_name, d_sae, k, ...}) to train together")
    p.add_argument("--cache", default=None, help="read activations from this cache folder instead of the model")
    p.add_argument("--tokens", type=int, default=None, help=f"training tokens (default {DEFAULT_TOKENS:,})")
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
    from saelab.parallel import init_from_env, launched_by_torchrun
    from saelab.train.distributed import DistributedRun
    from saelab.train.run_spec import RunSpec, run_summary, train_run

    for key, value in vars(args).items():  # argparse turns "--option=--" into an empty list
        if isinstance(value, list) and key not in ("hook", "target_hook"):
            raise ConfigError(f"--{key.replace('_', '-')} needs a value; got {value!r}")
    apply_threads(args)
    out = Path(args.out)
    check_output_folder(out, what="--out")  # before any model loading or training
    device = init_from_env(args.device) if launched_by_torchrun() else args.device
    run = DistributedRun.current("data")
    lm = None
    if run is None or run.is_main:
        if args.resume:
            spec = _resumed_spec(args, out)
        else:
            spec, lm = _new_spec(args, out, device)
    if run is not None:
        run.barrier()  # rank 0 has written run.json
        if not run.is_main:
            spec = RunSpec.load(out)
    spec = spec.on_device(device)  # cuda:LOCAL_RANK under torchrun
    started = time.perf_counter()
    saes = train_run(spec, resume=args.resume, progress=args.progress, lm=lm)
    result = run_summary(spec, list(saes))  # under torchrun with parallel="sae" each rank has only its own
    result["seconds"] = round(time.perf_counter() - started, 2)
    if run is not None:
        result["ranks"] = run.world_size
    if run is None or run.is_main:
        from saelab.train.curves import plot_training_curves

        result["training_curves"] = str(plot_training_curves(out))
        emit(result, args.json)
    return 0


def _resumed_spec(args: argparse.Namespace, out: Path) -> RunSpec:
    """The saved spec of the run in ``out``, with the length and parallel mode the command line may change."""
    from saelab.train.run_spec import resume_spec

    try:
        return resume_spec(out, steps=args.steps, tokens=args.tokens, parallel=args.parallel)
    except SaelabError as exc:
        raise SaelabError(f"--resume: {exc}") from exc


def _new_spec(args: argparse.Namespace, out: Path, device: str) -> tuple[RunSpec, LoadedModel | None]:
    """The ``RunSpec`` the command line describes, saved to run.json, and the model it loaded (or None)."""
    from saelab.train.run_spec import DataSpec, ModelSpec, RunSpec, refuse_existing_run

    refuse_existing_run(out)
    train = _train_config(args)  # refuse bad values before any work
    model = ModelSpec(args.model, args.model_dtype, args.device)
    data = DataSpec(text_spec_from_args(args), cache=args.cache, include_special_tokens=args.include_special_tokens,
                    model_batch_size=args.model_batch_size, buffer_windows=args.buffer_windows, seed=args.seed)
    entries = _sae_entries(args, _hooks(args))
    lm = None if args.cache else model.load(device)
    spec = RunSpec.create(entries, train, out, model=model, data=data, lm=lm)
    spec.save()
    return spec, lm


def _train_config(args: argparse.Namespace) -> TrainConfig:
    from saelab.train.config import TrainConfig

    tokens = DEFAULT_TOKENS if args.tokens is None and args.steps is None else args.tokens
    total_steps = args.steps if args.steps is not None else -(-tokens // max(args.batch_size, 1))
    return TrainConfig(
        steps=args.steps, tokens=tokens, batch_size=args.batch_size, seed=args.seed,
        checkpoint_every=args.checkpoint_every, log_every=min(args.log_every, total_steps),
        lr_warmup_steps=_default_steps(args.lr_warmup_steps, total_steps, 0.05),
        lr_decay_steps=_default_steps(args.lr_decay_steps, total_steps, 0.2),
        sparsity_warmup_steps=_default_steps(args.sparsity_warmup_steps, total_steps, 0.1),
        log_to=tuple(_split([args.log_to])), device=args.device, parallel=args.parallel or "data",
        skip_bad_batches=args.skip_bad_batches, max_skipped_batches=args.max_skipped_batches,
        autocast=args.autocast, compile=args.compile, compile_backend=args.compile_backend,
        **({"lr": args.lr} if args.lr is not None else {}))


def _hooks(args: argparse.Namespace) -> list[str]:
    if args.hook is None and args.cache:
        from saelab.data.cache import ActivationCache

        return ActivationCache(args.cache).hooks
    return _split(args.hook or [DEFAULT_HOOK])


def _targets(args: argparse.Namespace, hooks: list[str]) -> dict[str, str]:
    """``{hook: the hook its transcoders predict}`` from --target-hook (empty without it)."""
    targets = _split(args.target_hook or [])
    if args.skip and not targets:
        raise ConfigError("--skip trains skip transcoders, which need --target-hook HOOK: the site they predict "
                          "(e.g. --hook blocks.1.hook_resid_mid --target-hook blocks.1.hook_mlp_out)")
    if targets and len(targets) != len(hooks):
        raise ConfigError(f"--target-hook: give one target per --hook, in order; got {len(hooks)} hook(s) "
                          f"({', '.join(hooks)}) and {len(targets)} target(s) ({', '.join(targets)})")
    return dict(zip(hooks, targets, strict=True)) if targets else {}


def _sae_entries(args: argparse.Namespace, hooks: list[str]) -> list[dict[str, Any]]:
    """Partial SAE configs (widths resolved by ``RunSpec.create``) from --sweep or --arch and its options."""
    targets = _targets(args, hooks)
    if args.sweep:
        entries = _sweep_entries(args.sweep)
        for entry in entries:
            entry.setdefault("hook_name", hooks[0])
            entry.setdefault("d_sae", args.d_sae)
            if entry["hook_name"] in targets:
                entry.setdefault("hook_name_out", targets[entry["hook_name"]])
                entry.setdefault("skip_connection", args.skip)
        return entries
    from saelab.sae.registry import architectures, sae_class

    archs = _split([args.arch])
    if not archs:
        raise ConfigError(f"--arch {args.arch!r} names no architecture; accepted: a comma-separated list of "
                          f"{', '.join(architectures())}")
    accepted = {arch: sae_class(arch).option_names() for arch in archs}  # an unknown name is refused here
    options = _option_values(args, accepted)
    entries = []
    for hook in hooks:
        for arch in archs:
            entry: dict[str, Any] = {"architecture": arch, "hook_name": hook, "d_sae": args.d_sae}
            if hook in targets:
                entry.update(hook_name_out=targets[hook], skip_connection=args.skip)
            entry.update({key: value for key, value in options.items() if key in accepted[arch]})
            entries.append(entry)
    return entries


def _option_values(args: argparse.Namespace, accepted: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """``{option: value}`` of the option flags given; one that no chosen architecture takes is refused.
    ``accepted``: the option names of each chosen architecture."""
    values = {}
    for flag, (option, _kind, _what) in OPTION_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if not any(option in names for names in accepted.values()):
            raise ConfigError(f"--{flag} sets {option}, which --arch {args.arch} does not use; it applies to: "
                              f"{', '.join(_option_users(option))}")
        values[option] = value
    return values


def _sweep_entries(path: str) -> list[dict[str, Any]]:
    import json

    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--sweep {path!r} could not be read as JSON ({exc})") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries) or not entries:
        raise ConfigError(f"--sweep {path!r} must hold a non-empty JSON list of SAE config objects")
    return entries


def _arch_help() -> str:
    from saelab.sae.registry import architectures, sae_class

    flags = {option: flag for flag, (option, _kind, _what) in OPTION_FLAGS.items()}
    names = [f"{arch} (--{flags[sae_class(arch).sparsity_option]})" if sae_class(arch).sparsity_option in flags
             else arch for arch in architectures()]
    return f"architecture(s), comma-separated, with the flag of each one's sparsity knob: {', '.join(names)}"


def _option_users(option: str) -> list[str]:
    from saelab.sae.registry import architectures, sae_class

    return [arch for arch in architectures() if option in sae_class(arch).option_names()]


def _default_steps(value: int | None, total: int, fraction: float) -> int:
    return int(value) if value is not None else int(total * fraction)


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]
