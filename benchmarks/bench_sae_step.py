"""Throughput of one full SAE training step per architecture, relative to the bare matmul roofline.

For each architecture, a full training step (``saelab.train.SAEUpdater.step``: forward, losses,
backward, decoder projection, gradient clipping, Adam, dead-latent bookkeeping) is timed side by
side with the bare roofline on the same batch and dtype: the five matmuls of a dense SAE step
(encoder forward, decoder forward, decoder input-gradient, decoder weight-gradient, encoder
weight-gradient) into preallocated outputs. Each round times the roofline and then the step; the
reported ratio is the median over rounds of roofline_time / step_time (= step tokens/s divided by
roofline tokens/s), so machine load that drifts between rounds cancels. On a shared machine run it
single-threaded: with ``--threads 1`` the default clock is the thread's CPU time, which does not
count the time other processes hold the core.

    python benchmarks/bench_sae_step.py                      # d_in 768, d_sae 24576, batch 4096, 1 thread
    python benchmarks/bench_sae_step.py --d-sae 4096 --batch 512 --rounds 2 --json
    python benchmarks/bench_sae_step.py --threads 2 --variants relu jumprelu topk-sparse
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from saelab.sae import SAEConfig, make_sae, sae_class
from saelab.train import SAEUpdater, TrainConfig, tune_cpu_allocator

# name -> (architecture, extra SAEConfig fields, target ratio or None)
VARIANTS = {
    "relu": ("relu", {}, 0.85),
    "relu-unit-norm": ("relu", {"unit_norm_decoder": True}, None),
    "tied": ("tied", {}, None),
    "gated": ("gated", {}, None),
    "topk-sparse": ("topk", {}, 1.0),
    "topk-dense": ("topk", {"sparse_decoding": False}, None),
    "batchtopk-sparse": ("batchtopk", {}, None),
    "jumprelu": ("jumprelu", {}, 0.85),
    "matryoshka-sparse": ("matryoshka_batchtopk", {}, None),
    # Transcoders: read x, predict another site's y of the same width (the roofline's five matmuls).
    "transcoder-relu": ("relu", {"hook_name_out": "bench_out"}, None),
    "transcoder-jumprelu": ("jumprelu", {"hook_name_out": "bench_out"}, None),
    "transcoder-topk-sparse": ("topk", {"hook_name_out": "bench_out"}, None),
    "skip-transcoder-topk-sparse": ("topk", {"hook_name_out": "bench_out", "skip_connection": True}, None),
}


def roofline_step(x, W_enc, W_dec, grad_out, bufs) -> None:  # noqa: N803
    """The five dense matmuls of an SAE training step, into preallocated outputs."""
    h, y, grad_h, grad_W_dec, grad_W_enc = bufs  # noqa: N806
    torch.mm(x, W_enc, out=h)
    torch.mm(h, W_dec, out=y)
    torch.mm(grad_out, W_dec.t(), out=grad_h)
    torch.mm(h.t(), grad_out, out=grad_W_dec)
    torch.mm(x.t(), grad_h, out=grad_W_enc)


def timed(fn, clock) -> float:
    start = clock()
    fn()
    return clock() - start


def bench_variant(name: str, args, x: torch.Tensor, dtype: torch.dtype, clock) -> dict:
    arch, extra, target = VARIANTS[name]
    fields = dict(extra)
    if "k" in sae_class(arch).option_names():
        fields["k"] = args.k
    cfg = SAEConfig(arch, args.d_in, args.d_sae, hook_name="bench", dtype=args.dtype, **fields)
    sae = make_sae(cfg, seed=0)
    # A transcoder's target: a fixed random linear map of x plus noise (same width, so the roofline is unchanged).
    y = None
    if cfg.is_transcoder:
        gen = torch.Generator().manual_seed(1)
        mix = torch.randn(args.d_in, args.d_in, generator=gen, dtype=torch.float32) / args.d_in ** 0.5
        y = (x.float() @ mix + 0.1 * torch.randn(x.shape, generator=gen)).to(dtype)
    with torch.no_grad():
        sae.b_dec.copy_((x if y is None else y).mean(0)) if sae.has_b_dec else None
    train_cfg = TrainConfig(steps=10**6, batch_size=args.batch, lr=1e-4, dead_window_tokens=args.batch * 4)
    updater = SAEUpdater(sae, train_cfg)

    W_enc = torch.randn(args.d_in, args.d_sae, dtype=dtype) * 0.01  # noqa: N806
    W_dec = torch.randn(args.d_sae, args.d_in, dtype=dtype) * 0.01  # noqa: N806
    grad_out = torch.randn(args.batch, args.d_in, dtype=dtype)
    bufs = (torch.empty(args.batch, args.d_sae, dtype=dtype), torch.empty(args.batch, args.d_in, dtype=dtype),
            torch.empty(args.batch, args.d_sae, dtype=dtype), torch.empty(args.d_sae, args.d_in, dtype=dtype),
            torch.empty(args.d_in, args.d_sae, dtype=dtype))

    def step() -> None:
        updater.step(x, lr=1e-4, sparsity_scale=1.0, y=y)

    def roof() -> None:
        roofline_step(x, W_enc, W_dec, grad_out, bufs)

    for _ in range(args.warmup):
        roof()
        step()
    roof_times, step_times, ratios = [], [], []
    for _ in range(args.rounds):
        t_roof = timed(roof, clock)
        t_step = timed(step, clock)
        roof_times.append(t_roof)
        step_times.append(t_step)
        ratios.append(t_roof / t_step)
    step_s, roof_s = statistics.median(step_times), statistics.median(roof_times)
    ratio = statistics.median(ratios)
    return {"variant": name, "architecture": arch, "k": fields.get("k"), "step_s": step_s, "roofline_s": roof_s,
            "tokens_per_s": args.batch / step_s, "roofline_tokens_per_s": args.batch / roof_s,
            "ratio": ratio, "ratios": ratios, "target": target,
            "meets_target": None if target is None else (ratio >= target if target < 1 else ratio > target)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--d-sae", type=int, default=24576)
    parser.add_argument("--batch", type=int, default=4096, help="tokens per step (Gemma Scope's 4096)")
    parser.add_argument("--k", type=int, default=None, help="topk/batchtopk k (default d_sae/64)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: stable on a shared machine; 0 = torch's choice)")
    parser.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto",
                        help="cpu: this thread's CPU time (robust on a shared machine; single-threaded runs "
                             "only); wall: elapsed time; auto: cpu with --threads 1, else wall")
    parser.add_argument("--no-tune-allocator", action="store_true",
                        help="leave glibc's allocator thresholds at their defaults")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.k is None:
        args.k = max(1, args.d_sae // 64)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock_name = args.clock if args.clock != "auto" else ("cpu" if torch.get_num_threads() == 1 else "wall")
    if clock_name == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu measures one thread; use it with --threads 1")
    clock = time.thread_time if clock_name == "cpu" else time.perf_counter
    tuned = False if args.no_tune_allocator else tune_cpu_allocator()
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.d_in, generator=gen, dtype=torch.float32)
    x = (x / x.pow(2).sum(1).mean().sqrt()).to(dtype)
    results = []
    for name in args.variants:
        results.append(bench_variant(name, args, x, dtype, clock))
        if not args.json:
            r = results[-1]
            print(f"  measured {name}: ratio {r['ratio']:.2f}", file=sys.stderr)
    report = {
        "benchmark": "bench_sae_step",
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "allocator_tuned": tuned},
        "config": {"d_in": args.d_in, "d_sae": args.d_sae, "batch": args.batch, "k": args.k, "dtype": args.dtype,
                   "rounds": args.rounds, "clock": clock_name},
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"SAE training step vs bare matmul roofline: d_in {args.d_in}, d_sae {args.d_sae}, batch {args.batch}, "
          f"k {args.k} (k/d_sae = 1/{args.d_sae / args.k:.0f}), {args.dtype}, {torch.get_num_threads()} threads, "
          f"{clock_name} clock, allocator tuned: {tuned}")
    print(f"{'variant':28s} {'step s':>8s} {'roof s':>8s} {'tok/s':>9s} {'roof tok/s':>10s} {'ratio':>6s}  target")
    for r in results:
        target = "" if r["target"] is None else (f"{'>' if r['target'] >= 1 else '>='}{r['target']:.2f} "
                                                 f"{'met' if r['meets_target'] else 'MISSED'}")
        print(f"{r['variant']:28s} {r['step_s']:8.3f} {r['roofline_s']:8.3f} {r['tokens_per_s']:9.0f} "
              f"{r['roofline_tokens_per_s']:10.0f} {r['ratio']:6.2f}  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
