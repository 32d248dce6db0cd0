"""``saelab models convert FILE.gguf --out DIR`` and ``saelab models info MODEL``."""

from __future__ import annotations

import argparse
import time

from saelab.cli_args import add_threads_argument, apply_threads, emit


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="model files: convert a GGUF file, describe a model")
    sub = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    convert = sub.add_parser("convert", help="dequantise a .gguf file into a Hugging Face model folder")
    convert.add_argument("path", metavar="FILE.gguf", help="the GGUF file")
    convert.add_argument("--out", required=True, help="the new model folder (config.json, model.safetensors, tokenizer)")
    convert.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                         help="dtype of the saved weights (default float32)")
    add_threads_argument(convert)
    convert.add_argument("--json", action="store_true", help="print the summary as JSON")
    convert.set_defaults(func=run_convert)

    info = sub.add_parser("info", help="family, sizes and hook names of a model (toy, folder, .gguf or hub id)")
    info.add_argument("model", help="'toy', a local Hugging Face folder, a .gguf file or a hub id")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=run_info)


def run_convert(args: argparse.Namespace) -> int:
    from saelab.models.gguf import convert_gguf, inspect_gguf
    from saelab.models.loading import resolve_dtype

    apply_threads(args)
    start = time.perf_counter()
    header = inspect_gguf(args.path)
    out = convert_gguf(args.path, args.out, resolve_dtype(args.dtype))
    emit({"gguf": str(header.path), "architecture": header.architecture, "model_type": header.model_type,
          "name": header.name, "tensors": header.n_tensors, "out": str(out), "dtype": args.dtype,
          "seconds": round(time.perf_counter() - start, 1)}, args.json)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from saelab.models import load_model

    lm = load_model(args.model)
    emit({"model": lm.name, "family": lm.adapter.family, "n_layers": lm.n_layers, "d_model": lm.d_model,
          "n_heads": lm.n_heads, "n_kv_heads": lm.n_kv_heads, "d_head": lm.d_head, "d_mlp": lm.d_mlp,
          "d_vocab": lm.d_vocab, "parameters": sum(p.numel() for p in lm.model.parameters()),
          "hooks_per_layer": [n.split(".", 2)[2] for n in lm.hook_names()[: len(lm.hook_names()) // lm.n_layers]]},
         args.json)
    return 0
