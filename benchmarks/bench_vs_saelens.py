"""saelab vs SAELens: the same SAE architecture trained on the same activations, side by side in one run.

For each architecture (ReLU = SAELens "standard", TopK, JumpReLU) both libraries train an SAE of the
same width on the same batches in the same order, with the same batch size, number of steps, learning
rate, Adam betas, gradient clipping (1.0: SAELens hard-codes it), dtype (float32), dead-latent window
and torch thread count, each in a fresh process. Only the training steps are timed (the batches are
views of a tensor loaded before the loop); a few warm-up steps are not counted. At the end each side
reports FVU and L0 on held-out activations.

- saelab: ``saelab.train.SAEUpdater.step`` (what ``train_saes`` runs per SAE and batch: the fused
  forward/backward of ``saelab.sae.dense`` or TopK's sparse decoder, decoder-norm handling, clipping,
  fused Adam, dead-latent counters), with the glibc allocator tuned as the trainer does by default.
- SAELens: ``SAETrainer.step`` as ``SAETrainer.fit`` calls it (``benchmarks/_saelens_worker.py``), run
  with the python of a separate venv that holds SAELens (``sae-lens`` from PyPI; never a saelab
  dependency). The venv is created on first use (``python -m venv`` + ``pip install -c constraints.txt
  sae-lens``, so torch stays the pinned CPU build) and reused afterwards.

Activations: ``blocks.2.hook_resid_pre`` (d_in 128) of the bundled toy model, gathered once through
``saelab.data.ActivationStore`` (shuffled, divided by the RMS norm so that E‖x‖² = 1: saelab's
convention; SAELens gets the same tensors with ``normalize_activations="none"``), or a synthetic
planted-dictionary set (``--data planted``), saved to a .safetensors file in a temporary folder that
both sides read. The decoder bias of both starts at the geometric median of the first batch (saelab's
default; SAELens starts it at zero), so that the two runs start from the same reconstruction.

    python benchmarks/bench_vs_saelens.py                      # relu, topk, jumprelu; 1 thread, CPU-time clock
    python benchmarks/bench_vs_saelens.py --threads 2          # both cores, wall clock
    python benchmarks/bench_vs_saelens.py --archs topk topk-sparse --steps 100 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_saelens_worker.py"
DEFAULT_VENV = REPO / ".bench" / "saelens-venv"
TOY_HOOK = "blocks.2.hook_resid_pre"

# name -> (architecture, SAELens options beyond the shared ones, target ratio saelab/SAELens)
ARCHS = {
    "relu": ("relu", {}, 1.25),
    "topk": ("topk", {}, 2.0),
    "jumprelu": ("jumprelu", {}, 1.25),
    # TopK with SAELens' optional sparse COO activations and torch.sparse.mm decoder (default off). Its
    # backward fails on CPU together with SAELens' default rescale_acts_by_decoder_norm=True (autograd of
    # the sparse activations times 1/‖W_dec‖ needs aten::view on SparseCPU), so that is turned off here.
    "topk-sparse": ("topk", {"sparse_activations": True, "rescale_acts_by_decoder_norm": False}, None),
}
SAELENS_NAMES = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}


# ----------------------------------------------------------------------------- the SAELens venv
def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_saelens_venv(venv: Path, spec: str, constraints: Path, quiet: bool) -> Path:
    """The venv's python, after creating the venv and installing ``spec`` into it when needed."""
    python = venv_python(venv)
    if python.exists() and _saelens_version(python) is not None:
        return python
    log = None if not quiet else subprocess.DEVNULL
    if not python.exists():
        print(f"creating the SAELens venv at {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"installing {spec} into {venv} (torch pinned by {constraints.name})", file=sys.stderr)
    subprocess.run([str(python), "-m", "pip", "install", "-c", str(constraints), spec], check=True, stdout=log)
    if _saelens_version(python) is None:
        raise SystemExit(f"sae_lens does not import in {venv}; remove the folder and run again")
    return python


def _saelens_version(python: Path) -> str | None:
    probe = "import importlib.metadata as m; print(m.version('sae-lens'), m.version('torch'))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


# ----------------------------------------------------------------------------- activations
def gather_activations(args, path: Path) -> dict:
    """Write train [n_train, d_in], heldout [n_heldout, d_in] and b_dec_init [d_in] to ``path``."""
    import torch
    from safetensors.torch import save_file

    from saelab.train import geometric_median

    n_train = args.train_tokens or args.steps * args.batch
    n_train = max(args.batch, n_train // args.batch * args.batch)
    n_heldout = args.heldout_tokens
    start = time.perf_counter()
    if args.data == "toy":
        from saelab.data import ActivationStore, StoreConfig, ToySource
        from saelab.models import load_model

        lm = load_model("toy")
        store = ActivationStore(lm, ToySource(seed=args.seed), [TOY_HOOK],
                                StoreConfig(batch_size=args.batch, seed=args.seed, repeat=True))
        factor = store.normalization_factors[TOY_HOOK]
        hook, rows, need = TOY_HOOK, [], n_train + n_heldout
        for batch in store.iter_batches():
            rows.append(batch[TOY_HOOK])
            if sum(r.shape[0] for r in rows) >= need:
                break
        x = torch.cat(rows)[:need].contiguous()
        description = f"toy model {TOY_HOOK}, divided by its RMS norm {factor:.4g} (E||x||^2 = 1)"
    else:
        from saelab.train import PlantedDictionary, PlantedDictionarySource

        spec = PlantedDictionary(d_in=args.planted_d_in, n_features=args.planted_features,
                                 active_per_sample=args.planted_active, seed=args.seed)
        source = PlantedDictionarySource(spec, args.batch, hook_name="planted")
        hook, rows, need = "planted", [], n_train + n_heldout
        for batch in source.iter_batches():
            rows.append(batch["planted"])
            if sum(r.shape[0] for r in rows) >= need:
                break
        x = torch.cat(rows)[:need].contiguous()
        description = (f"planted dictionary (d_in {spec.d_in}, {spec.n_features} features, {spec.active_per_sample} "
                       f"active), divided by a fixed factor (E||x||^2 = 1)")
    train, heldout = x[:n_train].contiguous(), x[n_train:].contiguous()
    b_dec = geometric_median(train[:args.batch]).float()
    save_file({"train": train, "heldout": heldout, "b_dec_init": b_dec}, str(path))
    return {"description": description, "hook": hook, "d_in": int(x.shape[1]), "train_tokens": n_train,
            "heldout_tokens": int(heldout.shape[0]), "mean_squared_norm": float(train.pow(2).sum(1).mean()),
            "gather_s": time.perf_counter() - start}


# ----------------------------------------------------------------------------- the saelab side
def saelab_worker(cfg: dict) -> dict:
    """Train saelab's SAE with ``SAEUpdater.step`` on the saved batches (run in a fresh process)."""
    import torch
    from safetensors.torch import load_file

    import saelab
    from saelab.sae import SAEConfig, make_sae
    from saelab.train import SAEUpdater, TrainConfig, tune_cpu_allocator

    tuned = tune_cpu_allocator()  # TrainConfig.tune_cpu_allocator defaults to True: the trainer does this
    torch.set_num_threads(cfg["threads"])
    clock = time.thread_time if cfg["clock"] == "cpu" else time.perf_counter
    tensors = load_file(cfg["activations"])
    train, heldout = tensors["train"], tensors["heldout"]
    arch, batch, steps = cfg["arch"], cfg["batch"], cfg["steps"]
    options = {"relu": {"l1_coefficient": cfg["l1_coefficient"]},
               "topk": {"k": cfg["k"], "aux_coefficient": cfg["aux_coefficient"]},
               "jumprelu": {"l0_coefficient": cfg["l0_coefficient"], "jumprelu_bandwidth": cfg["bandwidth"],
                            "jumprelu_init_threshold": cfg["init_threshold"]}}[arch]
    sae = make_sae(SAEConfig(arch, cfg["d_in"], cfg["d_sae"], hook_name=cfg["hook"], dtype="float32", **options),
                   seed=cfg["seed"])
    with torch.no_grad():
        sae.b_dec.copy_(tensors["b_dec_init"])
    train_cfg = TrainConfig(steps=steps, batch_size=batch, lr=cfg["lr"], adam_betas=tuple(cfg["adam_betas"]),
                            grad_clip_norm=1.0, dead_window_tokens=cfg["dead_window_steps"] * batch, seed=cfg["seed"])
    updater = SAEUpdater(sae, train_cfg)
    n_batches = train.shape[0] // batch
    times, dead = [], []
    for i in range(steps):
        start_row = (i % n_batches) * batch
        x = train[start_row:start_row + batch]
        start = clock()
        updater.step(x, cfg["lr"], sparsity_scale=1.0)
        elapsed = clock() - start
        if i >= cfg["warmup"]:
            times.append(elapsed)
        if (i + 1) % max(1, steps // 4) == 0 or i + 1 == steps:
            dead.append([i + 1, int(updater.tracker.dead_mask(train_cfg.dead_window_tokens).sum())])
    sae.eval()
    with torch.no_grad():
        sq_err, l0 = 0.0, 0.0
        for start_row in range(0, heldout.shape[0], batch):
            x = heldout[start_row:start_row + batch]
            acts = sae.encode(x)
            sq_err += float((sae.decode(acts) - x).double().pow(2).sum())
            l0 += float((acts != 0).sum())
        fvu = sq_err / float((heldout.double() - heldout.double().mean(0)).pow(2).sum())
    return {"library": "saelab", "version": getattr(saelab, "__version__", ""), "torch": torch.__version__,
            "arch": arch, "variant": cfg["variant"], "threads": torch.get_num_threads(), "allocator_tuned": tuned,
            "timed_steps": len(times), "seconds": sum(times), "median_step_s": statistics.median(times),
            "tokens_per_s": batch * len(times) / sum(times), "fvu": fvu, "l0": l0 / heldout.shape[0],
            "dead_latents": dead}


# ----------------------------------------------------------------------------- orchestration
def run_json_process(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        # torch's dispatcher errors list every backend, one line each: leave those out
        noise = ("registered at", "fallthrough registered")
        lines = [line for line in (done.stdout + done.stderr).splitlines() if not any(n in line for n in noise)]
        sys.stderr.write("\n".join(lines[-60:]) + "\n")
        raise SystemExit(f"worker failed (exit {done.returncode}): {' '.join(command[:3])} ...")
    return json.loads(lines[-1])


def worker_config(args, name: str, data: dict, path: Path, library: str) -> dict:
    arch, saelens_options, _ = ARCHS[name]
    cfg = {"activations": str(path), "arch": arch, "variant": name, "hook": data["hook"], "d_in": data["d_in"],
           "d_sae": args.d_sae, "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "lr": args.lr,
           "adam_betas": [args.beta1, args.beta2], "dead_window_steps": args.dead_window_steps,
           "threads": args.threads, "clock": args.clock_name, "seed": args.seed, "k": args.k,
           "aux_coefficient": args.aux_coefficient, "bandwidth": args.bandwidth,
           "init_threshold": args.init_threshold}
    if library == "saelab":
        cfg.update(l1_coefficient=args.l1_saelab, l0_coefficient=args.l0_saelab)
    else:
        cfg.update(l1_coefficient=args.l1_saelens, l0_coefficient=args.l0_saelens,
                   tune_allocator=args.saelens_allocator == "tuned", **saelens_options)
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["relu", "topk", "jumprelu"], choices=list(ARCHS))
    parser.add_argument("--steps", type=int, default=60, help="training steps per SAE (warm-up included)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps not timed")
    parser.add_argument("--batch", type=int, default=4096, help="tokens per step")
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto",
                        help="cpu: the thread's CPU time (1 thread only; robust on a shared machine); "
                             "wall: elapsed time; auto: cpu with --threads 1, else wall")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta1", type=float, default=0.9)
    parser.add_argument("--beta2", type=float, default=0.999)
    parser.add_argument("--k", type=int, default=32, help="TopK k")
    parser.add_argument("--aux-coefficient", type=float, default=1 / 32,
                        help="TopK AuxK coefficient on both sides (Gao et al.; saelab's default, SAELens' is 1)")
    parser.add_argument("--l1-saelab", type=float, default=0.3, help="ReLU L1 coefficient (saelab)")
    parser.add_argument("--l1-saelens", type=float, default=0.3, help="ReLU L1 coefficient (SAELens)")
    parser.add_argument("--l0-saelab", type=float, default=1.5e-4, help="JumpReLU L0 coefficient (saelab)")
    parser.add_argument("--l0-saelens", type=float, default=1e-2,
                        help="JumpReLU L0 coefficient (SAELens; the defaults of the two land at a similar L0)")
    parser.add_argument("--bandwidth", type=float, default=1e-3, help="JumpReLU STE bandwidth on both sides")
    parser.add_argument("--init-threshold", type=float, default=1e-3, help="JumpReLU initial threshold, both sides")
    parser.add_argument("--dead-window-steps", type=int, default=1000,
                        help="a latent is dead after this many steps without firing (SAELens' default 1000; "
                             "TopK's AuxK loss runs only once latents are dead, so with fewer steps than this it "
                             "runs on neither side)")
    parser.add_argument("--data", choices=["toy", "planted"], default="toy")
    parser.add_argument("--train-tokens", type=int, default=0,
                        help="distinct training tokens, cycled in the same order on both sides (0: steps x batch, "
                             "every batch new)")
    parser.add_argument("--heldout-tokens", type=int, default=16384)
    parser.add_argument("--planted-d-in", type=int, default=128)
    parser.add_argument("--planted-features", type=int, default=2048)
    parser.add_argument("--planted-active", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the SAELens venv (created if missing)")
    parser.add_argument("--saelens-spec", default="sae-lens", help="what pip installs into a new venv")
    parser.add_argument("--saelens-allocator", choices=["default", "tuned"], default="default",
                        help="tuned: give the SAELens process saelab's glibc allocator settings too")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--saelab-worker", help=argparse.SUPPRESS)  # internal: run the saelab side
    args = parser.parse_args(argv)
    if args.saelab_worker:
        print(json.dumps(saelab_worker(json.loads(args.saelab_worker))))
        return 0
    if args.warmup >= args.steps:
        parser.error(f"--warmup {args.warmup} must be below --steps {args.steps}")
    args.clock_name = args.clock if args.clock != "auto" else ("cpu" if args.threads == 1 else "wall")
    if args.clock_name == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread; use it with --threads 1")

    constraints = REPO / "constraints.txt"
    python = ensure_saelens_venv(args.venv.resolve(), args.saelens_spec, constraints, quiet=args.json)
    saelens_version, saelens_torch = _saelens_version(python).split()

    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_vs_saelens_") as tmp:
        path = Path(tmp) / "activations.safetensors"
        data = gather_activations(args, path)
        print(f"  activations: {data['train_tokens']} train + {data['heldout_tokens']} held-out tokens, "
              f"d_in {data['d_in']} ({data['gather_s']:.0f} s)", file=sys.stderr)
        for name in args.archs:
            saelab_cfg = worker_config(args, name, data, path, "saelab")
            saelens_cfg = worker_config(args, name, data, path, "saelens")
            if ARCHS[name][0] != name and any(r["arch"] == ARCHS[name][0] and r["library"] == "saelab"
                                              for r in results):
                mine = next(r for r in results if r["arch"] == ARCHS[name][0] and r["library"] == "saelab")
            else:
                mine = run_json_process([sys.executable, str(Path(__file__).resolve()),
                                         "--saelab-worker", json.dumps(saelab_cfg)])
                mine["variant"] = name
                results.append(mine)
            theirs = run_json_process([str(python), str(WORKER), "--config", json.dumps(saelens_cfg)])
            results.append(theirs)
            ratio = mine["tokens_per_s"] / theirs["tokens_per_s"]
            print(f"  {name}: saelab {mine['tokens_per_s']:.0f} tok/s, SAELens {theirs['tokens_per_s']:.0f} tok/s, "
                  f"ratio {ratio:.2f}", file=sys.stderr)
    rows = []
    for name in args.archs:
        arch, _, target = ARCHS[name]
        mine = next(r for r in results if r["library"] == "saelab" and r["arch"] == arch)
        theirs = next(r for r in results if r["library"] == "saelens" and r["variant"] == name)
        ratio = mine["tokens_per_s"] / theirs["tokens_per_s"]
        rows.append({"variant": name, "architecture": arch, "saelens_architecture": SAELENS_NAMES[arch],
                     "saelab": mine, "saelens": theirs, "ratio": ratio, "target": target,
                     "meets_target": None if target is None else ratio >= target})
    report = {
        "benchmark": "bench_vs_saelens",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": results[0]["torch"], "saelens_torch": saelens_torch, "sae_lens": saelens_version,
                    "threads": args.threads, "clock": args.clock_name},
        "config": {"data": data, "d_sae": args.d_sae, "batch": args.batch, "steps": args.steps,
                   "warmup": args.warmup, "lr": args.lr, "adam_betas": [args.beta1, args.beta2], "k": args.k,
                   "aux_coefficient": args.aux_coefficient, "l1": [args.l1_saelab, args.l1_saelens],
                   "l0": [args.l0_saelab, args.l0_saelens], "bandwidth": args.bandwidth,
                   "init_threshold": args.init_threshold, "dead_window_steps": args.dead_window_steps,
                   "saelens_allocator": args.saelens_allocator},
        "wall_s": time.perf_counter() - started,
        "results": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"saelab vs SAELens {saelens_version}: {data['description']}; d_in {data['d_in']}, d_sae {args.d_sae}, "
          f"batch {args.batch}, {args.steps} steps ({args.warmup} warm-up not timed), lr {args.lr:g}, float32, "
          f"{args.threads} thread(s), {args.clock_name} clock, torch {results[0]['torch']}")
    print(f"{'architecture':24s} {'library':8s} {'tokens/s':>9s} {'ratio':>6s} {'FVU':>7s} {'L0':>7s}  target")
    for row in rows:
        label = f"{row['variant']} ({row['saelens_architecture']})" if row["variant"] == row["architecture"] \
            else f"{row['architecture']} (SAELens sparse)"
        for lib in ("saelab", "saelens"):
            r = row[lib]
            ratio = f"{row['ratio']:6.2f}" if lib == "saelab" else f"{'1':>6s}"
            target = ""
            if lib == "saelab" and row["target"] is not None:
                target = f">= {row['target']:.2f} {'met' if row['meets_target'] else 'MISSED'}"
            print(f"{label if lib == 'saelab' else '':24s} {lib:8s} {r['tokens_per_s']:9.0f} {ratio} "
                  f"{r['fvu']:7.3f} {r['l0']:7.1f}  {target}")
    print(f"wall time {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
