"""``saelab explore``: start the explorer web app on a model and its SAEs and print the URL.

    saelab explore --model toy --sae runs/saes/attn_L3 [--sae L2=runs/saes/attn_L2] [--port 8000]
    saelab explore --model toy --graph runs/graphs/ioi [--graph ind=runs/graphs/induction/graph.json]

``--graph`` (repeatable) adds attribution graphs of ``saelab graph`` and their view (``/graph``): ablate or
steer feature nodes in the real model, with the transcoders the graph records (or ``--graph-transcoders``).
Without ``--sae``, the graphs' transcoders are the explorer's SAEs (their dashboards one click away).

It binds 127.0.0.1 unless ``--host`` says otherwise, and warns when it does: the explorer has no
authentication, and anyone who can reach the port can run the model.
"""

from __future__ import annotations

import argparse
import sys

from saelab.cli_args import add_threads_argument, apply_threads
from saelab.errors import ConfigError, check_range

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def exposure_warning(host: str) -> str | None:
    """The warning printed when the server listens beyond this machine (None for loopback)."""
    if host in LOCAL_HOSTS:
        return None
    return (f"warning: binding {host} makes the explorer reachable from other machines; it has no "
            "authentication and runs the model for anyone who can reach the port. Use --host 127.0.0.1 "
            "unless that is what you want.")


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def register(subparsers) -> None:
    from saelab.explorer.service import ExplorerLimits

    limits = ExplorerLimits()
    p = subparsers.add_parser("explore", help="a local web app to look at any prompt through SAEs",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy", help="'toy', a local Hugging Face folder, a .gguf file or a hub id (default toy)")
    p.add_argument("--model-dtype", default="float32", help="dtype the model runs in")
    p.add_argument("--device", default="cpu", help="device the model runs on (cpu, cuda, ...)")
    p.add_argument("--sae", action="append", default=[], metavar="[NAME=]DIR",
                   help="an SAE folder (repeat for several); NAME defaults to the folder's name (default with "
                        "--graph: the graphs' transcoders)")
    p.add_argument("--graph", action="append", default=[], metavar="[NAME=]PATH",
                   help="a graph.json from `saelab graph` (or its folder) to view and intervene on (repeat for "
                        "several); NAME defaults to the folder's name")
    p.add_argument("--graph-transcoders", nargs="+", default=None, metavar="DIR",
                   help="transcoder folders the --graph interventions use (default: those each graph records)")
    p.add_argument("--dashboard", action="append", default=[], metavar="[NAME=]PATH",
                   help="a feature_data.json from `saelab dashboard` (or its folder), matched to the SAE with "
                        "the same hook and width unless NAME= is given")
    p.add_argument("--source", default="toy:1", help="text source of on-demand dashboards (default toy:1)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-prompt-tokens", type=int, default=limits.max_prompt_tokens,
                   help=f"longest prompt accepted, in tokens (default {limits.max_prompt_tokens})")
    p.add_argument("--dashboard-tokens", type=int, default=limits.dashboard_tokens,
                   help=f"token budget of a dashboard computed on demand (default {limits.dashboard_tokens})")
    add_threads_argument(p)
    p.set_defaults(func=run_explore)


def run_explore(args: argparse.Namespace) -> int:
    import uvicorn

    from saelab.explorer.app import create_app
    from saelab.explorer.service import ExplorerLimits, ExplorerService

    apply_threads(args)
    check_range("--port", args.port, 1, 65535, integer=True)
    if not args.sae and not args.graph:
        raise ConfigError("saelab explore needs --sae DIR (an SAE folder) or --graph PATH (a graph.json of "
                          "`saelab graph`); see saelab explore --help")
    limits = ExplorerLimits(max_prompt_tokens=args.max_prompt_tokens, dashboard_tokens=args.dashboard_tokens)
    warning = exposure_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    service = ExplorerService.open(args.model, args.sae, args.dashboard, limits, source=args.source,
                                   device=args.device, dtype=args.model_dtype, graphs=args.graph,
                                   graph_transcoders=args.graph_transcoders)
    names = ", ".join(f"{e.name} ({e.hook}, {e.d_sae} latents)" for e in service.saes.values())
    print(f"saelab explorer: model {service.lm.name}; SAEs {names}", flush=True)
    for graph in service.graphs.graphs.values():
        print(f"saelab explorer: graph {graph.name} ({len(graph.document['nodes'])} nodes, "
              f"{len(graph.document['edges'])} edges)" + (f"; view only: {graph.note}" if graph.note else ""),
              flush=True)
    print(f"saelab explorer: open {url_for(args.host, args.port)}  (Ctrl-C stops it)", flush=True)
    if service.graphs.names():
        print(f"saelab explorer: graphs at {url_for(args.host, args.port)}graph", flush=True)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning")
    return 0
