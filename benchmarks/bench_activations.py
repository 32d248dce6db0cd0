"""Activation generation on the bundled toy model, measured side by side in one run.

1. one forward pass feeding 4 hooks  vs  4 separate passes (one hook each, each stopped early);
2. a pass stopped after the last needed block (``stop_at_layer="auto"``)  vs  a full pass;
3. capturing a hook (full pass)  vs  the plain Hugging Face forward (hooking overhead).

Each variant runs on the same token windows, repetitions interleaved (A B A B ...), and the median
time per variant is reported as activations per second (tokens x hooks / s) with the ratio.

    python benchmarks/bench_activations.py [--windows 64] [--context 128] [--reps 7] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from saelab.data.activations import ActivationExtractor
from saelab.data.packing import PackingConfig, iter_windows
from saelab.data.sources import ToySource
from saelab.models import load_model

FOUR_HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.2.hook_resid_pre", "blocks.3.hook_mlp_out"]
STOP_HOOK = "blocks.1.attn.hook_z"


def interleaved_medians(variants: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median wall time of each variant over ``reps`` interleaved rounds (after one warm-up round)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(reps + 1):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if round_index:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=64, help="windows per measurement")
    parser.add_argument("--context", type=int, default=128, help="tokens per window")
    parser.add_argument("--batch", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model("toy")
    packing = PackingConfig(context_size=args.context)
    windows = np.stack(list(itertools.islice(
        iter_windows(ToySource(0), lm.tokenizer, packing, lm.bos_token_id, lm.eos_token_id), args.windows)))
    ids = torch.from_numpy(windows)
    n_tokens = windows.size

    def extractor(hooks):
        return ActivationExtractor(lm, hooks, model_batch_size=args.batch, exclude_special_tokens=False)

    one_pass = extractor(FOUR_HOOKS)
    separate = [extractor([h]) for h in FOUR_HOOKS]

    def full_pass_with(hook):
        def run():
            for start in range(0, len(ids), args.batch):
                lm.run_with_cache(ids[start:start + args.batch], [hook])
        return run

    @torch.no_grad()
    def plain_forward():
        for start in range(0, len(ids), args.batch):
            lm.model(input_ids=ids[start:start + args.batch], use_cache=False)

    def stopped_pass():
        for start in range(0, len(ids), args.batch):
            lm.run_with_cache(ids[start:start + args.batch], [STOP_HOOK], stop_at_layer="auto")

    t = interleaved_medians({
        "one_pass_4_hooks": lambda: one_pass.run(windows),
        "separate_passes_4_hooks": lambda: [e.run(windows) for e in separate],
        "stop_at_layer": stopped_pass,
        "full_pass": full_pass_with(STOP_HOOK),
        "plain_hf_forward": plain_forward,
    }, args.reps)

    results = {
        "model": "toy", "n_layers": lm.n_layers, "d_model": lm.d_model, "tokens": n_tokens,
        "windows": args.windows, "context": args.context, "batch": args.batch, "reps": args.reps,
        "torch_threads": torch.get_num_threads(), "hooks": FOUR_HOOKS, "stop_hook": STOP_HOOK,
        "seconds": {k: round(v, 5) for k, v in t.items()},
        "activations_per_s": {
            "one_pass_4_hooks": round(4 * n_tokens / t["one_pass_4_hooks"]),
            "separate_passes_4_hooks": round(4 * n_tokens / t["separate_passes_4_hooks"]),
            "stop_at_layer": round(n_tokens / t["stop_at_layer"]),
            "full_pass": round(n_tokens / t["full_pass"]),
        },
        "ratios": {
            "one_pass_vs_separate": round(t["separate_passes_4_hooks"] / t["one_pass_4_hooks"], 2),
            "stop_at_layer_vs_full": round(t["full_pass"] / t["stop_at_layer"], 2),
            "hooked_full_vs_plain_forward": round(t["full_pass"] / t["plain_hf_forward"], 3),
        },
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    rate = results["activations_per_s"]
    ratio = results["ratios"]
    print(f"toy model ({lm.n_layers} layers, d_model {lm.d_model}), {n_tokens} tokens "
          f"({args.windows} x {args.context}), {args.batch} windows per pass, median of {args.reps}, "
          f"{results['torch_threads']} torch threads")
    print(f"{'variant':<44}{'activations/s':>14}{'seconds':>10}")
    rows = [
        ("one pass feeding 4 hooks", rate["one_pass_4_hooks"], t["one_pass_4_hooks"]),
        ("4 separate passes (1 hook each, stopped)", rate["separate_passes_4_hooks"], t["separate_passes_4_hooks"]),
        (f"stop_at_layer='auto' ({STOP_HOOK})", rate["stop_at_layer"], t["stop_at_layer"]),
        (f"full pass ({STOP_HOOK})", rate["full_pass"], t["full_pass"]),
        ("plain HF forward (no hooks)", round(n_tokens / t["plain_hf_forward"]), t["plain_hf_forward"]),
    ]
    for name, value, seconds in rows:
        print(f"{name:<44}{value:>14,}{seconds:>10.4f}")
    print(f"one pass vs 4 separate passes: {ratio['one_pass_vs_separate']}x faster")
    print(f"stop_at_layer vs full pass:    {ratio['stop_at_layer_vs_full']}x faster")
    print(f"hooked full pass / plain HF forward time: {ratio['hooked_full_vs_plain_forward']}")


if __name__ == "__main__":
    main()
