"""The ``saelab`` command: one entry point, one sub-command module per area.

Each module listed in ``COMMAND_MODULES`` defines ``register(subparsers)``, which adds its
sub-command(s) and sets ``func`` on the parser to a callable taking the parsed namespace and
returning an exit code (or None for 0).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from saelab import __version__
from saelab.errors import SaelabError

COMMAND_MODULES = [
    "saelab.toy.commands",
    "saelab.models.commands",
    "saelab.data.commands",
    "saelab.attention.commands",
    "saelab.eval.commands",
    "saelab.train.commands",
    "saelab.pretrained.commands",
    "saelab.cli_demo",
    "saelab.interp.commands",
    "saelab.interp.export_commands",
    "saelab.bench.commands",
    "saelab.eval.probe_commands",
    "saelab.causal.commands",
    "saelab.circuits.commands",
    "saelab.graphs.commands",
    "saelab.explorer.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saelab",
        description="Sparse-autoencoder interpretability for transformer language models.",
    )
    parser.add_argument("--version", action="version", version=f"saelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    try:
        code = args.func(args)
    except SaelabError as exc:
        print(f"saelab {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"saelab {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
