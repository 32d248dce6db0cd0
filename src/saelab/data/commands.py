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
from pathlib import Path

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
from saelab.errors import SaelabError


def register(subparsers) -> None:
    parser = subparsers.add_parser("activations", help="activation caches: write and verify")
    sub = parser.add_subparsers(dest="activations_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    cache = sub.add_parser("cache", help="write model activations to sharded safetensors (resumable)")
    add_model_arguments(cache)
    cache.add_argument("--hooks", required=True, help="comma-separated hook names, e.g. blocks.1.attn.hook_z")
    cache.add_argument("--tokens", type=int, required=True, help="activation rows (tokens) to write per hook")
    cache.add_argument("--out", required=True, help="output folder (created; resumed if it holds a cache)")
    add_source_arguments(cache)
    cache.add_argument("--shard-tokens", type=int, default=65536, help="rows per shard")
    cache.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                       help="dtype of the stored activations")
    add_threads_argument(cache)
    cache.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cache.add_argument("--json", action="store_true", help="print the summary as JSON")
    cache.set_defaults(func=run_cache)

    verify = sub.add_parser("verify", help="check every shard of a cache against its manifest (size, sha256)")
    verify.add_argument("path", help="cache folder")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=run_verify)


    corpus = subparsers.add_parser("corpus", help="real English text: build a cleaned train/held-out corpus")
    csub = corpus.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND")
    corpus.set_defaults(func=lambda args: corpus.print_help() or 2)
    build = csub.add_parser("build", help="clean, deduplicate and split prose from unpacked Debian packages "
                                          "(python3.11-doc, jargon-text, fortunes; see scripts/get_real_corpus.sh)")
    build.add_argument("--from", dest="root", required=True, help="folder the .deb packages were unpacked into")
    build.add_argument("--out", required=True, help="output folder (train/heldout .txt and .jsonl, manifest.json)")
    build.add_argument("--heldout-fraction", type=float, default=0.05, help="share of documents held out")
    build.add_argument("--min-words", type=int, default=8, help="shortest paragraph kept, in words")
    build.add_argument("--json", action="store_true", help="print the manifest as JSON")
    build.set_defaults(func=run_corpus_build)


def run_corpus_build(args: argparse.Namespace) -> int:
    from saelab.data.english import find_documents, write_corpus

    manifest = write_corpus(find_documents(args.root), args.out, heldout_fraction=args.heldout_fraction,
                            min_words=args.min_words)
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        for split, stats in manifest["splits"].items():
            print(f"{split:<8} {stats['documents']:>7} documents {stats['paragraphs']:>7} paragraphs "
                  f"{stats['words']:>9} words  -> {Path(args.out) / (split + '.txt')}")
        print("paragraphs by source: " + ", ".join(f"{k} {v}" for k, v in manifest["paragraphs_by_source"].items()))
    return 0


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


def run_cache(args: argparse.Namespace) -> int:
    from saelab.data.cache import CacheConfig, write_activation_cache

    apply_threads(args)
    config = CacheConfig(
        n_tokens=args.tokens,
        packing=packing_from_args(args),
        model_batch_size=args.model_batch_size, shard_tokens=args.shard_tokens, dtype=args.dtype,
        exclude_special_tokens=not args.include_special_tokens,
    )
    source = source_from_args(args)
    lm = model_from_args(args)
    start = time.perf_counter()
    manifest = write_activation_cache(lm, source, args.hooks, args.out, config, progress=not args.no_progress)
    summary = _summary(manifest, time.perf_counter() - start)
    summary["out"] = args.out
    emit(summary, args.json)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from saelab.data.cache import ActivationCache

    cache = ActivationCache(args.path)
    cache.verify()
    summary = {**_summary(cache.manifest), "verified": True}
    emit(summary, args.json)
    if not cache.complete:
        raise SaelabError(f"cache {args.path!r} is incomplete ({cache.n_tokens} of "
                          f"{cache.manifest.get('n_tokens_requested')} tokens); rerun 'saelab activations cache' "
                          "with the same arguments to finish it")
    return 0
