"""``saelab dashboard`` and ``saelab autointerp``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from saelab.cli_args import (
    add_source_arguments,
    add_threads_argument,
    apply_threads,
    print_table,
    source_from_args,
)
from saelab.errors import ConfigError, check_choice


def _add_common(p: argparse.ArgumentParser, tokens: int, features: str | None = None) -> None:
    """The options every feature-data command shares; ``features``: a default for ``--features``
    (else it is required)."""
    p.add_argument("sae_dir", metavar="SAE_DIR", help="SAE folder (cfg.json + sae_weights.safetensors) or Hub id")
    p.add_argument("--features", required=features is None, default=features,
                   help="latent indices, e.g. '0-99' or '3,17,40-45'" + (f" (default {features})" if features else ""))
    p.add_argument("--tokens", type=int, default=tokens, help=f"token budget (default {tokens})")
    p.add_argument("--device", default="cpu", help="device for model and SAE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_source_arguments(p)
    add_threads_argument(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("dashboard", help="write a self-contained HTML dashboard of SAE latents",
                              description="Gather examples, logit effects and neighbours of latents and write "
                                          "one self-contained HTML file (no network needed to view it).")
    _add_common(p, 100_000)
    p.add_argument("--out", required=True, help="output folder (dashboard.html, feature_data.json)")
    p.add_argument("--model", default=None, help="model spec (default: the one recorded in the SAE folder)")
    p.add_argument("--n-top", type=int, default=20, help="top examples per latent (default 20)")
    p.add_argument("--no-correlation", action="store_true", help="skip activation-correlation neighbours")
    p.set_defaults(func=run_dashboard)

    p = subparsers.add_parser("autointerp", help="explain latents and score the explanations",
                              description="Explain latents from their top examples (token baseline or an "
                                          "OpenAI-compatible LLM) and score detection, fuzzing and simulation, "
                                          "and on request intruder detection, surprisal and embedding scores.")
    _add_common(p, 50_000)
    p.add_argument("--explainer", default="tokens", help="tokens (no LLM) or llm")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default=None, help="the LLM's model name (with --explainer llm)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per LLM request")
    p.add_argument("--lm", default=None, help="language-model spec (default: the one recorded in the SAE folder)")
    p.add_argument("--n-explain", type=int, default=10, help="top examples shown to the explainer (default 10)")
    p.add_argument("--n-activating", type=int, default=10,
                   help="held-out activating contexts scored, spread over --n-quantiles bins (default 10)")
    p.add_argument("--n-quantiles", type=int, default=10,
                   help="activation-quantile bins the activating contexts are drawn from (default 10)")
    p.add_argument("--n-non-activating", type=int, default=10,
                   help="held-out random contexts where the latent is silent (default 10)")
    p.add_argument("--scorers", default="detection,fuzzing,simulation",
                   help="comma-separated scores: detection, fuzzing, simulation, intruder, surprisal, embedding "
                        "(default detection,fuzzing,simulation)")
    p.add_argument("--negatives", default="random", choices=("random", "hard"),
                   help="non-activating contexts: random ones, or the silent ones most similar to the activating "
                        "ones (hard; drawn from 10x --n-non-activating random contexts, at least 100)")
    p.add_argument("--intruder-k", type=int, default=4, help="activating examples per intruder trial (default 4)")
    p.add_argument("--intruder-trials", type=int, default=10,
                   help="intruder trials per latent, one per non-activating context at most (default 10)")
    p.add_argument("--surprisal-lm", default=None,
                   help="causal LM that scores surprisal: toy|FOLDER|HUB_ID (default: the model the SAE reads)")
    p.add_argument("--embedder", default="tfidf", choices=("tfidf", "wordllama"),
                   help="embedding scorer's and hard negatives' embedder: tfidf (offline bag of words, default) or "
                        "wordllama (static neural embeddings shipped in the wordllama package)")
    p.add_argument("--out", default=None,
                   help="folder for results.json and the LLM call cache (default autointerp_results, or "
                        "autointerp_results_BASELINE with --baseline)")
    p.add_argument("--baseline", default=None, choices=("neurons", "random", "pca"),
                   help="score baseline units at the SAE's hook instead of its latents: the site's coordinates, "
                        "seeded random directions or principal components (saelab.interp.baselines)")
    p.add_argument("--baseline-signs", default=None, choices=("positive", "both"),
                   help="positive part only, or each direction's positive and negative part as units 2i, 2i+1 "
                        "(default: both for neurons and pca, positive for random)")
    p.add_argument("--baseline-units", type=int, default=None, help="number of random directions (default d_in)")
    p.add_argument("--baseline-density", default=None,
                   help="threshold each unit to fire on this fraction of the fit tokens, or 'sae' for the SAE's "
                        "mean latent density (default: fire wherever the projection is positive)")
    p.add_argument("--baseline-fit-tokens", type=int, default=20_000,
                   help="tokens of the source the PCA and thresholds are fitted on (default 20000)")
    p.set_defaults(func=run_autointerp_command)


def _load(args: argparse.Namespace, model_spec: str | None):
    from saelab.models import load_model
    from saelab.sae import load_sae_with_info

    sae, info = load_sae_with_info(args.sae_dir, device=args.device)
    hook = sae.cfg.hook_name or info.metadata.get("hook_name")
    if not hook:
        raise ConfigError(f"{args.sae_dir}: cfg.json records no hook_name; this SAE cannot be placed in a model")
    spec = model_spec or info.metadata.get("model_name") or info.saelab.get("model_name")
    if not spec:
        raise ConfigError(f"{args.sae_dir}: cfg.json records no model; pass the model spec "
                          f"({'--lm' if args.command == 'autointerp' else '--model'} toy|FOLDER|HUB_ID)")
    return load_model(spec, device=args.device), sae, hook


def feature_config(args: argparse.Namespace, **extra):
    """The ``FeatureDataConfig`` that ``_add_common``'s options name (``extra``: more fields)."""
    from saelab.interp.gather import FeatureDataConfig

    return FeatureDataConfig(n_tokens=args.tokens, context_size=args.context_size, prepend_bos=not args.no_prepend_bos,
                             model_batch_size=args.model_batch_size, seed=args.seed,
                             exclude_special_tokens=not args.include_special_tokens,
                             progress=not args.no_progress, **extra)


def _gather(args: argparse.Namespace, lm, sae, hook, **extra):
    from saelab.interp.gather import build_feature_data

    return build_feature_data(lm, sae, hook, source_from_args(args), args.features, feature_config(args, **extra))


def _emit(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table({k: v for k, v in summary.items() if not isinstance(v, list) or len(v) <= 10})


def run_dashboard(args: argparse.Namespace) -> int:
    from saelab.interp.dashboard import write_dashboard

    apply_threads(args)
    lm, sae, hook = _load(args, args.model)
    data = _gather(args, lm, sae, hook, n_top=args.n_top, correlation=not args.no_correlation)
    paths = write_dashboard(data, args.out)
    densities = [f.density for f in data.features]
    _emit(args, {"dashboard": str(paths["dashboard"]), "data": str(paths["data"]), "hook": hook,
                 "n_features": len(data.features), "n_tokens": data.meta["n_tokens"],
                 "dead_features": sum(d == 0 for d in densities),
                 "mean_density": sum(densities) / len(densities), "seconds": data.meta["seconds"],
                 "html_bytes": Path(paths["dashboard"]).stat().st_size})
    return 0


def run_autointerp_command(args: argparse.Namespace) -> int:
    from saelab.interp.autointerp import AutointerpConfig, run_autointerp
    from saelab.interp.embedding import make_embedder
    from saelab.interp.explainers import LLMExplainer, TokenExplainer
    from saelab.interp.judges import LLMJudge, TokenJudge
    from saelab.interp.llm import LLMClient, LLMConfig
    from saelab.interp.surprisal import CausalLMScorer
    from saelab.models import load_model

    check_choice("--explainer", args.explainer, ("tokens", "llm"))
    baseline_cfg = _baseline_config(args)
    out = Path(args.out or ("autointerp_results" + (f"_{args.baseline}" if args.baseline else "")))
    setup: dict[str, Any] = {"sae": str(args.sae_dir), "features": args.features, "tokens": args.tokens}
    if args.explainer == "llm":
        if not args.base_url or not args.model:
            raise ConfigError("--explainer llm needs --base-url URL and --model NAME of an OpenAI-compatible endpoint")
        client = LLMClient(LLMConfig(base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                                     concurrency=args.concurrency, max_retries=args.retries, timeout_s=args.timeout,
                                     cache_dir=str(out / "llm_cache")))
        explainer, judge = LLMExplainer(client), LLMJudge(client)
        setup.update(base_url=args.base_url, model=args.model)
    else:
        explainer, judge = TokenExplainer(), TokenJudge()
    cfg = AutointerpConfig(n_explain=args.n_explain, n_activating=args.n_activating, n_quantiles=args.n_quantiles,
                           n_non_activating=args.n_non_activating, seed=args.seed, progress=not args.no_progress,
                           scorers=args.scorers, negatives=args.negatives, intruder_k=args.intruder_k,
                           intruder_trials=args.intruder_trials)
    embedder = make_embedder(args.embedder) if "embedding" in cfg.scorers or cfg.negatives == "hard" else None
    apply_threads(args)
    lm, sae, hook = _load(args, args.lm)
    surprisal_lm = None
    if "surprisal" in cfg.scorers:
        scorer_lm = lm if args.surprisal_lm is None else load_model(args.surprisal_lm, device=args.device)
        surprisal_lm = CausalLMScorer(scorer_lm, batch_size=args.model_batch_size)
    if baseline_cfg is not None:
        sae, setup["baseline"] = _baseline(args, baseline_cfg, lm, sae, hook)
    data = _gather(args, lm, sae, hook, **cfg.gather_sizes(), correlation=False)
    report = run_autointerp(data, explainer, judge, cfg, out_path=out / "results.json", setup=setup,
                            surprisal_lm=surprisal_lm, embedder=embedder)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    shown = list(cfg.scorers)
    for r in report["results"]:
        scores = "  ".join(f"{s[:3]}={r[s]:.2f}" if r.get(s) is not None else f"{s[:3]}=–" for s in shown)
        print(f"#{r['feature']:<6} {scores}  {r['explanation'] or r['error']}")
    print_table({**report["summary"], "results": str(out / "results.json")})
    return 0


def _baseline_config(args: argparse.Namespace):
    """The ``BaselineConfig`` of the ``--baseline*`` options, or None without ``--baseline``."""
    from saelab.interp.baselines import BaselineConfig

    if args.baseline is None:
        given = [flag for flag, value in (("--baseline-signs", args.baseline_signs),
                                          ("--baseline-units", args.baseline_units),
                                          ("--baseline-density", args.baseline_density)) if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} need --baseline neurons|random|pca")
        return None
    density = args.baseline_density
    if density is not None and density != "sae":
        try:
            density = float(density)
        except ValueError:
            raise ConfigError(f"--baseline-density={density!r} is not accepted; accepted: a fraction in (0, 1] "
                              "or 'sae'") from None
    return BaselineConfig(args.baseline, signs=args.baseline_signs, n_units=args.baseline_units, density=density,
                          fit_tokens=args.baseline_fit_tokens, seed=args.seed)


def _baseline(args: argparse.Namespace, cfg, lm, sae, hook):
    """(the baseline coder at ``hook``, what its units are for the recorded setup)."""
    from saelab.interp.baselines import build_baseline, fit_activations
    from saelab.interp.selection import FeatureIndexError, parse_features

    x_fit = None
    if cfg.needs_fit:
        x_fit = fit_activations(lm, hook, source_from_args(args), cfg.fit_tokens, args.context_size,
                                not args.no_prepend_bos, args.model_batch_size, not args.include_special_tokens)
    baseline = build_baseline(sae, cfg, x_fit)
    try:
        features = parse_features(args.features, baseline.sae.cfg.d_sae)
    except FeatureIndexError as exc:
        raise ConfigError(f"--baseline {cfg.kind} has {baseline.sae.cfg.d_sae} units ({cfg.signs} signs); "
                          f"--features: {exc}") from None
    return baseline.sae, baseline.describe(features)
