"""``saelab activations cache|verify``: write an on-disk activation cache, check one.

::

    saelab activations cache --model toy --hooks blocks.1.attn.hook_z,blocks.2.hook_resid_pre \\
        --tokens 2000000 --out DIR
    saelab activations verify DIR

Rerunning ``cache`` with the same arguments resumes an interrupted run; a larger ``--tokens``
extends a finished cache.
"""

from __future__ import annotations

import argparse
import json
import time

from saelab.errors import SaelabError, check_range


def register(subparsers) -> None:
    parser = subparsers.add_parser("activations", help="activation caches: write and verify")
    sub = parser.add_subparsers(dest="activations_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    cache = sub.add_parser("cache", help="write model activations to sharded safetensors (resumable)")
    cache.add_argument("--model", required=True, help="'toy', a local Hugging Face folder or a hub id")
    cache.add_argument("--hooks", required=True, help="comma-separated hook names, e.g. blocks.1.attn.hook_z")
    cache.add_argument("--tokens", type=int, required=True, help="activation rows (tokens) to write per hook")
    cache.add_argument("--out", required=True, help="output folder (created; resumed if it holds a cache)")
    cache.add_argument("--source", default="toy",
                       help="'toy', 'toy:SEED', 'hf:NAME[:CONFIG]', or a .txt/.jsonl/.parquet/.npy/.safetensors path")
    cache.add_argument("--source-seed", type=int, default=0, help="seed of the toy source (default 0)")
    cache.add_argument("--text-column", default="text", help="text column of .jsonl/.parquet/hf sources")
    cache.add_argument("--split", default="train", help="split of an hf: source")
    cache.add_argument("--txt-split", default="paragraph", choices=("paragraph", "line", "file"),
                       help="what one document of a .txt source is")
    cache.add_argument("--context-size", type=int, default=128, help="tokens per window (default 128)")
    cache.add_argument("--no-prepend-bos", action="store_true", help="do not start every window with BOS")
    cache.add_argument("--separator", default="bos", choices=("bos", "eos", "none"),
                       help="token between documents (default bos)")
    cache.add_argument("--include-special-tokens", action="store_true",
                       help="keep activations at BOS/EOS/PAD (excluded by default)")
    cache.add_argument("--model-batch-size", type=int, default=16, help="windows per forward pass")
    cache.add_argument("--shard-tokens", type=int, default=65536, help="rows per shard")
    cache.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                       help="dtype of the stored activations")
    cache.add_argument("--model-dtype", default="float32", help="dtype the model runs in")
    cache.add_argument("--device", default="cpu", help="device the model runs on")
    cache.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: torch's choice; 1 is often fastest on a busy machine)")
    cache.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cache.add_argument("--json", action="store_true", help="print the summary as JSON")
    cache.set_defaults(func=run_cache)

    verify = sub.add_parser("verify", help="check every shard of a cache against its manifest (size, sha256)")
    verify.add_argument("path", help="cache folder")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=run_verify)


def _summary(manifest: dict, elapsed: float | None = None) -> dict:
    summary = {
        "model": manifest["model"], "hooks": manifest["hooks"], "d_in": manifest["d_in"],
        "dtype": manifest["dtype"], "n_tokens": manifest["n_tokens"], "shards": len(manifest["shards"]),
        "bytes": sum(s["bytes"] for s in manifest["shards"]), "complete": manifest["complete"],
        "source_exhausted": manifest.get("source_exhausted", False),
    }
    if elapsed is not None:
        summary["seconds"] = round(elapsed, 3)
    return summary


def _print_table(summary: dict) -> None:
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        print(f"{key:<{width}}  {value}")


def run_cache(args: argparse.Namespace) -> int:
    from saelab.data.cache import CacheConfig, write_activation_cache
    from saelab.data.packing import PackingConfig
    from saelab.data.sources import open_source
    from saelab.models import load_model

    if args.threads is not None:
        import torch

        check_range("--threads", args.threads, 1, None, integer=True)
        torch.set_num_threads(args.threads)
    config = CacheConfig(
        n_tokens=args.tokens,
        packing=PackingConfig(args.context_size, prepend_bos=not args.no_prepend_bos, separator=args.separator),
        model_batch_size=args.model_batch_size, shard_tokens=args.shard_tokens, dtype=args.dtype,
        exclude_special_tokens=not args.include_special_tokens,
    )
    source = open_source(args.source, text_column=args.text_column, split=args.split, txt_split=args.txt_split,
                         seed=args.source_seed)
    lm = load_model(args.model, device=args.device, dtype=args.model_dtype)
    start = time.perf_counter()
    manifest = write_activation_cache(lm, source, args.hooks, args.out, config, progress=not args.no_progress)
    summary = _summary(manifest, time.perf_counter() - start)
    summary["out"] = args.out
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_table(summary)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from saelab.data.cache import ActivationCache

    cache = ActivationCache(args.path)
    cache.verify()
    summary = {**_summary(cache.manifest), "verified": True}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_table(summary)
    if not cache.complete:
        raise SaelabError(f"cache {args.path!r} is incomplete ({cache.n_tokens} of "
                          f"{cache.manifest.get('n_tokens_requested')} tokens); rerun 'saelab activations cache' "
                          "with the same arguments to finish it")
    return 0
