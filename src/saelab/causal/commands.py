"""``saelab causal patching|attribution`` and ``saelab steer``."""

from __future__ import annotations

import argparse
from pathlib import Path

from saelab.cli_args import add_model_arguments, add_threads_argument, apply_threads, emit, model_from_args


def register(subparsers) -> None:
    causal = subparsers.add_parser("causal", help="causal interventions with SAE latents (patching, attribution)")
    sub = causal.add_subparsers(dest="causal_command", metavar="SUBCOMMAND")
    causal.set_defaults(func=lambda args: causal.print_help() or 2)

    patching = sub.add_parser("patching", help="feature-patching experiment: KL against components patched, SAE "
                                               "latents vs PCA/ICA/neuron/random bases")
    _add_common(patching)
    patching.add_argument("--hook", default=None,
                          help="hook to patch (default: the SAE's hook, or blocks.2.hook_resid_post without --sae)")
    patching.add_argument("--bases", default="sae,pca,ica,neuron,random_rotation",
                          help="comma-separated bases (sae, pca, ica, neuron, random_rotation)")
    patching.add_argument("--thresholds", type=int, default=50, help="number of greedy thresholds (default 50)")
    patching.add_argument("--search", choices=("greedy", "attribution"), default="greedy",
                          help="greedy: the paper's search (default); attribution: ranks removals by gradient and "
                               "measures a ladder of prefixes, far fewer forward passes (large models on CPUs)")
    patching.add_argument("--chunk", type=int, default=32, help="candidate sets per forward pass (default 32)")
    patching.add_argument("--min-threshold", type=float, default=1e-5, help="smallest threshold (default 1e-5)")
    patching.add_argument("--max-threshold", type=float, default=1.0, help="largest threshold (default 1)")
    patching.add_argument("--fit-source", default="toy", help="text source the bases are fitted on (default toy)")
    patching.add_argument("--fit-windows", type=int, default=256, help="windows of 64 tokens to fit on (default 256)")
    patching.add_argument("--sae-arch", choices=("topk", "batchtopk"), default="topk",
                          help="architecture of the SAE trained without --sae (default topk)")
    patching.add_argument("--d-sae", type=int, default=1024, help="latents of the SAE trained without --sae "
                                                                  "(default 1024)")
    patching.add_argument("--sae-k", type=int, default=32, help="active latents per token of the SAE trained "
                                                                "without --sae (default 32)")
    patching.add_argument("--sae-tokens", type=int, default=2_000_000,
                          help="training tokens of the SAE trained without --sae (default 2,000,000; the run is "
                               "kept under --out/sae/ and reused by a later run with the same settings)")
    patching.add_argument("--out", default="causal_patching", help="folder for patching.json and patching.png")
    patching.set_defaults(func=run_patching)

    attribution = sub.add_parser("attribution", help="attribution patching of every latent at every position, "
                                                     "checked against real patching on a sample")
    _add_common(attribution)
    attribution.add_argument("--hook", default=None, help="hook the SAE is spliced at (default: its own)")
    attribution.add_argument("--top", type=int, default=10, help="latents listed (default 10)")
    attribution.add_argument("--check", type=int, default=24,
                             help="cells (prompt, position, latent) with the largest |attribution| also really "
                                  "patched, for the Spearman check (default 24)")
    attribution.set_defaults(func=run_attribution)

    steer = subparsers.add_parser("steer", help="generate with an SAE decoder direction added at its hook")
    add_model_arguments(steer, required=False)
    add_threads_argument(steer)
    steer.add_argument("--sae", required=True, help="SAE folder (saelab or SAELens) or hub id")
    steer.add_argument("--feature", type=int, required=True, help="latent whose decoder direction is added")
    steer.add_argument("--scale", type=float, required=True, help="multiple of the decoder direction")
    steer.add_argument("--prompt", required=True, help="text to continue")
    steer.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated (greedy; default 16)")
    steer.add_argument("--json", action="store_true", help="print JSON")
    steer.set_defaults(func=run_steer)


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, required=False)
    add_threads_argument(parser)
    parser.add_argument("--task", default="ioi", help="toy-world task: ioi, greater_than or docstring (default ioi)")
    parser.add_argument("--pairs", default=None,
                        help="JSON-lines file of {clean, counterfactual} prompts (instead of --task)")
    parser.add_argument("--n-prompts", type=int, default=8, help="prompt pairs of --task (default 8)")
    parser.add_argument("--templates", choices=("toy", "natural"), default=None,
                        help="prompts of --task: 'toy' (the toy world's) or 'natural' (the published templates, "
                             "names and years checked to be single tokens of the model's tokenizer); default: toy "
                             "for the toy model, natural otherwise")
    parser.add_argument("--counterfactual", choices=("task", "io"), default=None,
                        help="counterfactual prompts: 'task' (the task's corruption; IOI: ABC) or 'io' (IOI: the "
                             "indirect object becomes a third name, as in Cunningham et al.); default: 'io' for "
                             "patching on IOI, else 'task'")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task prompts and the fits")
    parser.add_argument("--sae", default=None, help="SAE folder (saelab or SAELens) or hub id")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _prompts(args, lm, ioi_default: str = "task"):
    from saelab.causal.prompts import pair_prompts, read_pairs_file, task_prompts
    from saelab.errors import check_choice
    from saelab.toy.tasks import TASK_NAMES

    if args.pairs:
        return pair_prompts(lm, read_pairs_file(args.pairs))
    check_choice("--task", args.task, TASK_NAMES)
    counterfactual = args.counterfactual or (ioi_default if args.task == "ioi" else "task")
    return task_prompts(lm, args.task, args.n_prompts, args.seed, counterfactual=counterfactual,
                        templates=args.templates)


def _sae(args, lm):
    from saelab.sae import load_sae

    return None if args.sae is None else load_sae(args.sae, device=lm.device)


def run_patching(args: argparse.Namespace) -> int:
    from saelab.causal.feature_patching import (
        DEFAULT_IOI_HOOK,
        FitConfig,
        describe_sae_line,
        feature_patching,
        fewest_components_table,
    )
    from saelab.causal.patching_experiment import PatchingConfig
    from saelab.causal.quick_sae import SAETrainSpec

    apply_threads(args)
    lm = model_from_args(args)
    sae = _sae(args, lm)
    hook = args.hook or (sae.cfg.hook_name if sae is not None else DEFAULT_IOI_HOOK)
    lm.parse_hooks([hook])
    cfg = PatchingConfig(n_thresholds=args.thresholds, min_threshold=args.min_threshold,
                         max_threshold=args.max_threshold, search=args.search, chunk=args.chunk)
    train = SAETrainSpec(architecture=args.sae_arch, d_sae=args.d_sae, k=args.sae_k, tokens=args.sae_tokens,
                         source=args.fit_source, seed=args.seed)
    fit = FitConfig(source=args.fit_source, n_windows=args.fit_windows, seed=args.seed, sae=train)
    bases = tuple(b.strip() for b in args.bases.split(",") if b.strip())
    result = feature_patching(lm, hook, _prompts(args, lm, ioi_default="io"), Path(args.out), sae, bases, cfg, fit,
                              progress=not args.no_progress, sae_source=args.sae)
    if args.json:
        emit(result, True)
        return 0
    print(f"hook {hook}; {result['n_prompts']} prompt pairs; KL(counterfactual ‖ clean) = {result['kl_unpatched']:.4g}")
    if "sae" in result:
        print(describe_sae_line(result["sae"]))
    print("fewest components patched to reach each KL level:")
    for row in fewest_components_table(result):
        emit(row, False)
        print()
    print(f"wrote {Path(args.out) / 'patching.json'} and {result['plot']}")
    return 0


def run_attribution(args: argparse.Namespace) -> int:
    from saelab.causal.attribution_report import attribution_report
    from saelab.errors import SaelabError

    apply_threads(args)
    lm = model_from_args(args)
    sae = _sae(args, lm)
    if sae is None:
        raise SaelabError("saelab causal attribution needs --sae (an SAE folder or hub id)")
    report = attribution_report(lm, sae, _prompts(args, lm), hook=args.hook, top=args.top, check=args.check)
    emit(report, args.json)
    return 0


def run_steer(args: argparse.Namespace) -> int:
    from saelab.causal.steering import steer_generate
    from saelab.sae import load_sae

    apply_threads(args)
    lm = model_from_args(args)
    sae = load_sae(args.sae, device=lm.device)
    result = steer_generate(lm, sae, args.feature, args.scale, args.prompt, args.max_new_tokens)
    emit({k: v for k, v in result.to_json().items() if args.json or not k.endswith("_ids")}, args.json)
    return 0
