"""Gemma 3 270M on the CPU: forward speed and peak memory of activation generation and of spliced
CE evaluation, each variant side by side in one run (needs scripts/get_real_model.sh and
scripts/get_real_corpus.sh).

Speed (same windows, interleaved rounds, median): tokens/s of

1. a pass stopped after block 6 for ``blocks.6.hook_resid_post`` (``stop_at_layer="auto"``),
2. the transformer body without the unembedding (``run_to_unembed``),
3. the full forward with ``[batch, pos, 262144]`` logits.

Memory (each variant in a fresh subprocess; peak RSS above the loaded model's): one batch of
activations for ``blocks.6.hook_resid_post``, and one evaluation batch scored (a) the chunked way saelab uses (``score_runs``: logits formed a chunk of predictions
at a time, clean run + zero/mean ablations + spliced + error-term runs) and (b) the naive way
(full float32 logits and log-probs of each run held as ``[batch, pos, d_vocab]``).

    python benchmarks/bench_real_model.py [--model real/gemma-3-270m] [--batch 8] [--context 128] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

HOOK = "blocks.6.hook_resid_post"


def windows(lm, corpus: str, n: int, context: int) -> torch.Tensor:
    from saelab.data.packing import PackingConfig, iter_windows
    from saelab.data.sources import open_source

    packed = iter_windows(open_source(corpus), lm.tokenizer, PackingConfig(context), lm.bos_token_id, lm.eos_token_id)
    return torch.from_numpy(np.stack(list(itertools.islice(packed, n))))


def speed(args) -> dict:
    from saelab.models import load_model

    lm = load_model(args.model)
    ids = windows(lm, args.corpus, args.batch, args.context)
    variants = {
        "stop after block 6 (activations)": lambda: lm.run_with_cache(ids, [HOOK], stop_at_layer="auto"),
        "body without unembedding": lambda: lm.run_to_unembed(ids),
        "full forward with logits": lambda: lm.run_with_cache(ids, [HOOK]),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for round_index in range(args.reps + 1):
        for name, fn in variants.items():
            start = time.perf_counter()
            with torch.no_grad():
                fn()
            if round_index:
                times[name].append(time.perf_counter() - start)
    n = ids.numel()
    full = float(np.median(times["full forward with logits"]))
    return {name: {"tokens_per_s": n / float(np.median(t)), "speedup_vs_full": full / float(np.median(t))}
            for name, t in times.items()}


def memory_child(args) -> None:
    """One scored evaluation batch, chunked or naive; prints peak RSS before and after in MB."""
    import torch.nn.functional as F

    from saelab.eval.downstream import LossSums, ScoredRun, score_runs, scored_predictions
    from saelab.models import load_model
    from saelab.sae import SAEConfig, make_sae
    from saelab.splicing import (
        mean_replacement,
        ordinary_token_mask,
        sae_replacement,
        sae_with_error_replacement,
        splice_edit,
        zero_replacement,
    )

    lm = load_model(args.model)
    sae = make_sae(SAEConfig("topk", lm.d_model, 4096, hook_name=HOOK, k=32), seed=0).eval()
    ids = windows(lm, args.corpus, args.batch, args.context)
    ordinary = ordinary_token_mask(ids, lm.special_token_ids)
    scored = scored_predictions(ordinary)
    mean = torch.zeros(lm.d_model)
    replacements = [zero_replacement(), mean_replacement(mean), sae_replacement(sae), sae_with_error_replacement(sae)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with torch.no_grad():
        if args.mode == "activations":
            lm.run_with_cache(ids, [HOOK], stop_at_layer="auto")
        elif args.mode == "chunked":
            clean_resid, _ = lm.run_to_unembed(ids)
            runs = [ScoredRun(lm.run_to_unembed(ids, {HOOK: splice_edit(r, ordinary)})[0], LossSums())
                    for r in replacements]
            score_runs(lm.unembed, lm.d_vocab, ids, scored, clean_resid, LossSums(), runs)
        else:
            clean_lp = F.log_softmax(lm.run_with_hooks(ids, {})[:, :-1].float(), -1)
            for r in replacements:
                lp = F.log_softmax(lm.run_with_hooks(ids, {HOOK: splice_edit(r, ordinary)})[:, :-1].float(), -1)
                (clean_lp.exp() * (clean_lp - lp)).sum(-1)
                del lp
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"base_mb": base, "peak_mb": peak, "seconds": seconds, "tokens": ids.numel()}))


def memory(args) -> dict:
    out = {}
    for mode in ("activations", "chunked", "naive"):
        cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--corpus", args.corpus,
               "--batch", str(args.batch), "--context", str(args.context)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(line)
        out[mode] = {"extra_peak_mb": r["peak_mb"] - r["base_mb"], "model_loaded_mb": r["base_mb"],
                     "seconds": r["seconds"], "tokens_per_s": r["tokens"] / r["seconds"]}
    out["naive_over_chunked_extra_memory"] = out["naive"]["extra_peak_mb"] / max(out["chunked"]["extra_peak_mb"], 1.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="real/gemma-3-270m")
    parser.add_argument("--corpus", default="real/corpus/heldout.txt")
    parser.add_argument("--batch", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--context", type=int, default=128, help="tokens per window")
    parser.add_argument("--reps", type=int, default=3, help="interleaved speed rounds")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", dest="mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode:
        memory_child(args)
        return
    result = {"batch": args.batch, "context": args.context, "threads": torch.get_num_threads(),
              "speed": speed(args), "memory": memory(args)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"Gemma 3 270M, batch {args.batch} x {args.context} tokens, {result['threads']} threads")
    for name, r in result["speed"].items():
        print(f"  {name:<36} {r['tokens_per_s']:8.0f} tokens/s  {r['speedup_vs_full']:.2f}x the full forward")
    r = result["memory"]["activations"]
    print(f"  activations (block 6)   extra peak {r['extra_peak_mb']:7.0f} MB  {r['tokens_per_s']:6.0f} tokens/s")
    for mode in ("chunked", "naive"):
        r = result["memory"][mode]
        print(f"  eval batch, {mode:<8} extra peak {r['extra_peak_mb']:7.0f} MB  {r['tokens_per_s']:6.0f} tokens/s "
              f"(5 runs scored; model loaded: {r['model_loaded_mb']:.0f} MB)")
    print(f"  naive / chunked extra memory: {result['memory']['naive_over_chunked_extra_memory']:.1f}x")


if __name__ == "__main__":
    main()
