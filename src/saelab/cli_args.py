"""Argument groups shared by sub-commands: the model, the text source and packing, threads, output.

Commands that read a model and a text stream (``activations cache``, ``train``, ``eval``, ...) add the
same options through these helpers, so they are spelled and validated the same way everywhere.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from saelab.errors import check_range


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--model", required=required, default=None if required else "toy",
                        help="'toy', a local Hugging Face folder, a .gguf file or a hub id")
    parser.add_argument("--model-dtype", default="float32", help="dtype the model runs in")
    parser.add_argument("--device", default="cpu", help="device the model runs on (cpu, cuda, cuda:1, ...)")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default="toy",
                        help="'toy', 'toy:SEED', 'hf:NAME[:CONFIG]', or a .txt/.jsonl/.parquet/.npy/.safetensors path")
    add_text_alias(parser)
    parser.add_argument("--source-seed", type=int, default=0, help="seed of the toy source (default 0)")
    parser.add_argument("--text-column", default="text", help="text column of .jsonl/.parquet/hf sources")
    parser.add_argument("--split", default="train", help="split of an hf: source")
    parser.add_argument("--txt-split", default="paragraph", choices=("paragraph", "line", "file"),
                        help="what one document of a .txt source is")
    parser.add_argument("--context-size", type=int, default=128, help="tokens per window (default 128)")
    parser.add_argument("--no-prepend-bos", action="store_true", help="do not start every window with BOS")
    parser.add_argument("--separator", default="bos", choices=("bos", "eos", "none"),
                        help="token between documents (default bos)")
    parser.add_argument("--include-special-tokens", action="store_true",
                        help="keep activations at BOS/EOS/PAD (excluded by default)")
    parser.add_argument("--model-batch-size", type=int, default=16, help="windows per forward pass")


def add_text_alias(parser: argparse.ArgumentParser) -> None:
    """``--text PATH``: the same as ``--source PATH`` for a .txt/.jsonl file or folder of text."""
    parser.add_argument("--text", dest="source", default=argparse.SUPPRESS, metavar="PATH",
                        help="a .txt/.jsonl file or folder of text (the same as --source PATH)")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is often fastest on a busy machine)")


def apply_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None:
        import torch

        check_range("--threads", args.threads, 1, None, integer=True)
        torch.set_num_threads(args.threads)


def text_spec_from_args(args: argparse.Namespace):
    """The ``TextSpec`` that ``add_source_arguments``' options name."""
    from saelab.data.store import TextSpec

    return TextSpec(source=args.source, source_seed=args.source_seed, text_column=args.text_column, split=args.split,
                    txt_split=args.txt_split, context_size=args.context_size, prepend_bos=not args.no_prepend_bos,
                    separator=args.separator)


def source_from_args(args: argparse.Namespace):
    return text_spec_from_args(args).open_source()


def packing_from_args(args: argparse.Namespace):
    return text_spec_from_args(args).packing()


def model_from_args(args: argparse.Namespace):
    from saelab.models import load_model

    return load_model(args.model, device=args.device, dtype=args.model_dtype)


def print_table(summary: dict[str, Any]) -> None:
    """A two-column table of a flat summary (dicts and lists shown inline)."""
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        elif isinstance(value, float):
            value = f"{value:.6g}"
        print(f"{key:<{width}}  {value}")


def emit(summary: dict[str, Any], as_json: bool) -> None:
    """Print ``summary`` as JSON or as a table."""
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
