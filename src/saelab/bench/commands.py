"""``saelab panel``: the evaluation panel (``saelab.bench.panel``) on several SAE folders.

::

    saelab panel --model toy --sae runs/a runs/b --metrics core,meta_sae,autointerp --out out/panel [--json]

Prints the Markdown table (``OUT/panel.md``) and which SAE wins each ranked figure; ``--json`` prints
``OUT/panel.json`` instead. Rerunning with the same settings reuses every cached result.

"""

from __future__ import annotations

import argparse
import json

from saelab.bench.panel import METRICS


def register(subparsers) -> None:
    from saelab.eval.evaluate import DEFAULT_EVAL_SOURCE

    p = subparsers.add_parser("panel", help="run a panel of metrics on several SAEs; table, plots, SAEBench JSON",
                              description="Run metrics (" + ", ".join(METRICS) + ") on each SAE folder and write "
                                          "panel.json/.csv/.md, plots and SAEBench result files under --out; "
                                          "results are cached there and reused on rerun.")
    p.add_argument("--model", default=None,
                   help="'toy', a local Hugging Face folder, a .gguf file or a hub id (default: the model recorded "
                        "in the first SAE folder)")
    p.add_argument("--sae", nargs="+", required=True, metavar="DIR", help="SAE folders (or Hub ids)")
    p.add_argument("--metrics", default="core,meta_sae,autointerp",
                   help=f"comma-separated, from: {', '.join(METRICS)} (default core,meta_sae,autointerp)")
    p.add_argument("--out", required=True, help="output folder (table, plots, saebench/, cache/)")
    p.add_argument("--source", "--text", dest="source", default=DEFAULT_EVAL_SOURCE,
                   help=f"held-out text every metric reads (default {DEFAULT_EVAL_SOURCE})")
    p.add_argument("--tokens", type=int, default=16_384, help="core: evaluation tokens (default 16384)")
    p.add_argument("--context-size", type=int, default=128,
                   help="core: tokens per window (default 128, or the model's context if shorter)")
    p.add_argument("--batch-size", type=int, default=16, help="core: windows per forward pass (default 16)")
    p.add_argument("--meta-k", type=int, default=4, help="meta_sae: mean active meta-latents per row (default 4)")
    p.add_argument("--meta-width-ratio", type=float, default=0.25,
                   help="meta_sae: meta-latents per decoder row (default 0.25, SAEBench's)")
    p.add_argument("--meta-d", type=int, default=None, help="meta_sae: number of meta-latents (overrides the ratio)")
    p.add_argument("--meta-steps", type=int, default=1500, help="meta_sae: training steps (default 1500)")
    p.add_argument("--meta-batch-size", type=int, default=1024, help="meta_sae: rows per step (default 1024)")
    p.add_argument("--meta-lr", type=float, default=1e-3, help="meta_sae: learning rate (default 1e-3)")
    p.add_argument("--autointerp-latents", type=int, default=16, help="autointerp: latents scored per SAE (default 16)")
    p.add_argument("--autointerp-tokens", type=int, default=20_000, help="autointerp: token budget (default 20000)")
    p.add_argument("--probe-concepts", default="auto", choices=("auto", "toy", "text"),
                   help="sparse_probing: the toy world's planted variables, or code/prose and token properties "
                        "(any tokenizer); auto: toy for the toy vocabulary (default)")
    p.add_argument("--probe-ks", default="1,2,5,20", help="sparse_probing: latents per probe (default 1,2,5,20)")
    p.add_argument("--probe-documents", type=int, default=512,
                   help="sparse_probing: texts of --source the text concepts are read from (default 512)")
    p.add_argument("--absorption-documents", type=int, default=512,
                   help="absorption: texts of --source the first-letter words are read from (default 512)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of every metric (default 0)")
    p.add_argument("--force", action="store_true", help="recompute results that are cached in --out")
    p.add_argument("--device", default="cpu", help="device of the model and SAEs (default cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is often fastest on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--json", action="store_true", help="print panel.json instead of the Markdown table")
    p.set_defaults(func=run_panel_command)


def panel_config(args: argparse.Namespace):
    """The ``PanelConfig`` the options name."""
    from saelab.bench.panel import AutointerpPanelConfig, PanelConfig
    from saelab.errors import ConfigError
    from saelab.eval.evaluate import EvalConfig
    from saelab.eval.meta_sae import MetaSAEConfig

    progress = not args.no_progress
    try:
        ks = tuple(int(k) for k in args.probe_ks.split(","))
    except ValueError:
        raise ConfigError(f"--probe-ks={args.probe_ks!r} is not accepted; give whole numbers, e.g. 1,2,5,20") from None
    return PanelConfig(
        metrics=args.metrics, eval_source=args.source, seed=args.seed, progress=progress, force=args.force,
        core=EvalConfig(tokens=args.tokens, context_size=args.context_size, batch_size=args.batch_size,
                        check_error_term=False, progress=progress),
        meta_sae=MetaSAEConfig(d_meta=args.meta_d, width_ratio=args.meta_width_ratio, k=args.meta_k,
                               steps=args.meta_steps, batch_size=args.meta_batch_size, lr=args.meta_lr, seed=args.seed),
        autointerp=AutointerpPanelConfig(n_latents=args.autointerp_latents, tokens=args.autointerp_tokens),
        probing={"concepts": args.probe_concepts, "n_documents": args.probe_documents, "ks": ks},
        absorption={"n_documents": args.absorption_documents})


def _model_spec(args: argparse.Namespace) -> str:
    from saelab.errors import ConfigError
    from saelab.sae.folder import load_sae_with_info

    if args.model:
        return args.model
    _, info = load_sae_with_info(args.sae[0])
    spec = info.metadata.get("model_name") or info.saelab.get("model_name")
    if not spec:
        raise ConfigError(f"SAE folder {args.sae[0]!r} records no model (metadata.model_name); pass --model, e.g. "
                          "--model toy")
    return spec


def run_panel_command(args: argparse.Namespace) -> int:
    from saelab.bench.panel import format_panel, run_panel
    from saelab.bench.spread import format_spread
    from saelab.cli_args import apply_threads
    from saelab.models import load_model

    config = panel_config(args)  # bad settings are refused before the model loads
    apply_threads(args)
    lm = load_model(_model_spec(args), device=args.device)
    report = run_panel(lm, args.sae, args.out, config)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(format_panel(report), end="")
    if "seed_spread" in report:
        columns = [(c["name"], c["better"]) for c in report["columns"]]
        print("\n" + format_spread(report["seed_spread"], columns), end="")
    return 0
