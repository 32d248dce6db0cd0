"""``saelab attn census|dfa|induction|ioi``: attention-output SAE analyses as commands.

Every sub-command prints a readable summary (or the whole report with ``--json``) and, with
``--out DIR``, writes its PNG/HTML/JSON views there.
"""

from __future__ import annotations

import argparse
import json

from saelab.attention import reports, views
from saelab.attention.census import CensusConfig
from saelab.cli_args import add_threads_argument, apply_threads


def _common(parser: argparse.ArgumentParser, with_sae: bool = True) -> None:
    if with_sae:
        parser.add_argument("sae_dir", metavar="SAE_DIR", help="folder of an SAE on blocks.L.attn.hook_z")
    parser.add_argument("--model", default=None, help="model spec (toy, a folder, a .gguf file or a hub id); default: the "
                        "model the SAE folder records" if with_sae else "model spec (toy, a folder, a .gguf file or a hub id)")
    parser.add_argument("--out", default=None, help="write PNG/HTML/JSON views to this folder")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_threads_argument(parser)


def register(subparsers) -> None:
    attn = subparsers.add_parser("attn", help="attention-output SAE analyses (census, DFA, induction, IOI)")
    sub = attn.add_subparsers(dest="attn_command", metavar="ANALYSIS")
    attn.set_defaults(func=lambda args: attn.print_help() or 2)

    census = sub.add_parser("census", help="per-head top latents, examples, logit effects, families")
    _common(census)
    census.add_argument("--source", default="toy", help="text source for examples (default toy: labelled)")
    census.add_argument("--n-windows", type=int, default=64)
    defaults = CensusConfig()
    census.add_argument("--top", type=int, default=defaults.top_latents,
                        help=f"latents per head (default {defaults.top_latents})")
    census.add_argument("--role-threshold", type=float, default=defaults.role_threshold,
                        help="Jaccard overlap of top-context tokens at which two latents share a role "
                             f"(default {defaults.role_threshold})")
    census.add_argument("--role-examples", type=int, default=defaults.role_examples,
                        help=f"top activations whose contexts make a latent's role vocabulary (default "
                             f"{defaults.role_examples})")
    census.add_argument("--role-context", type=int, default=defaults.role_context,
                        help=f"tokens each side of them (default {defaults.role_context})")
    census.set_defaults(func=run_census)

    dfa = sub.add_parser("dfa", help="direct feature attribution by head and by source position")
    _common(dfa)
    dfa.add_argument("--prompt", required=True)
    dfa.add_argument("--feature", type=int, required=True)
    dfa.add_argument("--position", type=int, default=-1, help="destination position (default: last token)")
    dfa.add_argument("--upstream", default=None, help="SAE folder on the layer's input residual stream (or an "
                     "earlier hook_z) for recursive DFA")
    dfa.add_argument("--src", type=int, default=None, help="source position for recursive DFA (default: top)")
    dfa.set_defaults(func=run_dfa)

    induction = sub.add_parser("induction", help="induction scores, long/short-prefix induction, head ablation")
    _common(induction, with_sae=False)
    induction.add_argument("--n-seqs", type=int, default=32)
    induction.add_argument("--length", type=int, default=20)
    induction.add_argument("--max-prefix", type=int, default=9)
    induction.add_argument("--no-ablate", action="store_true", help="skip the per-head ablation")
    induction.set_defaults(func=run_induction)

    ioi = sub.add_parser("ioi", help="zero-ablate latents active at S2 on IOI prompts (toy world; an SAE on a "
                         "layer before the last, e.g. blocks.2.attn.hook_z of the toy model)")
    _common(ioi)
    ioi.add_argument("--n-prompts", type=int, default=64)
    ioi.add_argument("--seed", type=int, default=0)
    ioi.add_argument("--min-effect", type=float, default=0.1)
    ioi.set_defaults(func=run_ioi)


def _emit(args, report: dict, lines: list[str], write) -> int:
    if args.out:
        paths = write(report, args.out)
        lines.append("wrote: " + ", ".join(str(p) for p in paths))
    print(json.dumps(report, indent=2) if args.json else "\n".join(lines))
    return 0


def run_census(args) -> int:
    apply_threads(args)
    asae = reports.open_attention_sae(args.sae_dir, args.model)
    config = CensusConfig(top_latents=args.top, role_threshold=args.role_threshold, role_examples=args.role_examples,
                          role_context=args.role_context)
    report = reports.build_census_report(asae, args.source, args.n_windows, config=config, progress=not args.json)
    summary = {k: v for k, v in report["summary"].items() if k != "polysemantic"}
    lines = [f"census of {report['hook']}: {json.dumps(summary)}"]
    for name, poly in report["summary"]["polysemantic"].items():
        judged = (f"{poly['n_polysemantic']} of {poly['n_heads_judged']} judged heads ({poly['share']:.0%}, "
                  f"{poly['confidence']:.0%} interval {poly['interval'][0]:.2f}-{poly['interval'][1]:.2f}): "
                  f"{', '.join(poly['heads']) or 'none'}" if poly["n_heads_judged"] else "no head judged")
        lines.append(f"polysemantic by {name}: {judged}  [{poly['criterion']}]")
    for head in report["heads"]:
        latents = ", ".join(f"{e['latent']}(role {'-' if e['role'] is None else e['role']}"
                            + (f", {e['family']})" if "family" in e else ")") for e in head["latents"])
        lines.append(f"  head {head['head']}: {latents}")
    return _emit(args, report, lines, views.write_census)


def run_dfa(args) -> int:
    apply_threads(args)
    upstream = None
    asae = reports.open_attention_sae(args.sae_dir, args.model)
    if args.upstream:
        from saelab.sae import load_sae

        upstream = load_sae(args.upstream)
    report = reports.build_dfa_report(asae, args.prompt, args.feature, args.position, upstream, args.src)
    lines = [f"latent {report['feature']} at position {report['position']} ({report['token']!r}): pre-activation "
             f"{report['preactivation']:.4g}, activation {report['activation']:.4g}",
             "  by head: " + ", ".join(f"{k}={v:.4g}" for k, v in report["by_head"].items()),
             f"  bias {report['bias']:.4g}, b_dec term {report['b_dec_term']:.4g}",
             "  top sources: " + ", ".join(f"{s['src']}:{s['token']}={s['dfa']:.4g}" for s in report["top_sources"])]
    if "recursive" in report:
        rec = report["recursive"]
        lines.append(f"  recursive ({rec['approximation']}): " + ", ".join(
            f"{e['latent']}={e['score']:.4g}" for e in rec["top_upstream_latents"]))
    return _emit(args, report, lines, views.write_dfa)


def run_induction(args) -> int:
    apply_threads(args)
    from saelab.models import load_model

    lm = load_model(args.model or "toy")
    report = reports.build_induction_report(lm, args.n_seqs, args.length, args.max_prefix, not args.no_ablate,
                                            progress=not args.json)
    lines = [f"induction heads (score >= {report['induction_threshold']}): "
             + (", ".join(f"{h['head']}={h['score']}" for h in report["induction_heads"]) or "none"),
             f"long-prefix heads: {report['prefix']['long_prefix'] or 'none'}; "
             f"short-prefix heads: {report['prefix']['short_prefix'] or 'none'}"]
    if "loss_ratio" in report:
        lines.append(f"loss ratio {report['loss_ratio']}; most harmful ablations: {report['most_harmful_ablations']}")
    return _emit(args, report, lines, views.write_induction)


def run_ioi(args) -> int:
    apply_threads(args)
    asae = reports.open_attention_sae(args.sae_dir, args.model)
    report = reports.build_ioi_report(asae, args.n_prompts, args.seed, args.min_effect, progress=not args.json)
    lines = [f"IOI at S2 of {report['hook']}: clean logit diff {report['clean_logit_diff']}",
             f"  {report['n_latents_active_at_s2']} latents active; relevant: {report['relevant_latents']}; "
             f"positional among them: {report['positional_relevant_latents']}",
             "  most positional (ABBA-vs-BABA AUC at S2): " + ", ".join(
                 f"{e['latent']} (AUC {e['abba_auc']}, |effect| {e['mean_abs_effect']:.3g})"
                 for e in report["most_positional_latents"])]
    return _emit(args, report, lines, views.write_ioi)
