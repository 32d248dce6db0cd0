"""The ``saelab demo`` sub-command: its options, and the short summary it prints (the stages: ``saelab.demo``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from saelab import demo
from saelab.cli_args import add_threads_argument, apply_threads


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the main job on the bundled toy world: train, evaluate, interpret",
                              description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = demo.DemoConfig()
    p.add_argument("--out", default=defaults.out, help="output folder (summary.json, index.html, ...)")
    p.add_argument("--tokens", type=int, default=defaults.tokens, help="SAE training tokens")
    p.add_argument("--d-sae", type=int, default=defaults.d_sae, help="SAE latents")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of data order and SAE init")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    add_threads_argument(p)
    p.add_argument("--json", action="store_true", help="print summary.json instead of the short summary")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    apply_threads(args)
    cfg = demo.DemoConfig(out=args.out, tokens=args.tokens, d_sae=args.d_sae, seed=args.seed)
    summary = demo.Demo(cfg, progress=args.progress).run()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, Path(cfg.out))
    return 0


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    train = summary["train"]
    print(f"\nsaelab demo finished in {summary['total_seconds']:.0f} s")
    print(f"  SAE:        {train['sae_dir']}")
    if "evaluate" in summary:
        m = summary["evaluate"]
        print(f"  held out:   L0 {m['l0']:.1f}, FVU {m['fvu']:.3f}, delta LM loss {m['delta_loss']:.4f}, "
              f"CE recovered {m['ce_loss_recovered']:.3f}, dead {m['dead_fraction']:.1%}")
    if "recovery" in summary:
        for name, r in summary["recovery"].items():
            print(f"  recovery:   {name}: {r['recovered']}/{r['n_variables']} variables at F1 >= 0.8, "
                  f"mean best F1 {r['mean_best_f1']:.3f}")
    if "dashboards" in summary:
        print(f"  dashboards: {summary['dashboards']['dashboard']}")
    if "causal" in summary:
        c = summary["causal"]
        print(f"  steering:   {c['steering']['steered_text']!r}")
        print(f"  patching:   {c['plot']}")
    if "circuits" in summary:
        aucs = ", ".join(f"{row['method']} {row['auc']:.2f}" for row in summary["circuits"]["rows"])
        print(f"  circuits:   toy IOI, AUC against the reference heads: {aucs}")
        if "dsae_rules" in summary["circuits"]:
            print(f"              {summary['circuits']['dsae_rules']}")
    if "explorer" in summary:
        print(f"  explore:    {summary['explorer']['command']}")
    print(f"  report:     {out / 'index.html'}")
    print(f"  summary:    {out / 'summary.json'}")
