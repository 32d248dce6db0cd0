"""Explain-then-score over many latents, saving after every latent so a long run keeps its results.

Per latent, the explainer sees the first ``n_explain`` top examples. Scoring uses held-out examples in
an explicit mix (EleutherAI delphi's detection/fuzzing sets; Bills et al. 2023 score simulation on top
+ random contexts, of which this keeps the random half as the silent contexts):

- ``n_activating`` activating contexts spread over ``n_quantiles`` quantile bins of the latent's
  activation distribution: the feature data's quantile groups (equal-count groups of a uniform
  sample of its firings, strongest first, ``FeatureDataConfig.n_quantiles``/``per_quantile``) are
  merged into ``n_quantiles`` contiguous bins and bin ``b`` gets ``⌊(b+1)n/Q⌋ − ⌊bn/Q⌋`` examples
  drawn at random (seeded), so weak firings weigh as much as strong ones; examples shown to the
  explainer are never scored. A short bin gives what it has (the result records each bin's count).
- ``n_non_activating`` random contexts where the latent is silent (``FeatureDataConfig.n_random``).

Detection: activating vs non-activating; fuzzing: the activating ones; simulation: the Pearson
correlation over all of them (``saelab.interp.scoring``). Scoring only top examples and silent
contexts lets an explanation of the rare strongest firings ("fires on X", silent elsewhere) score
near 1 on a latent that mostly fires on other things; the quantile mix exposes it.

``AutointerpConfig.scorers`` picks the scores (default: those three). Beyond them (Paulo et al. 2024,
arXiv 2410.13928): ``intruder`` (name the silent one among k activating + 1 silent examples,
``saelab.interp.intruder``), ``surprisal`` (AUC of the LM-loss reduction the explanation brings,
``saelab.interp.surprisal``; needs ``surprisal_lm``) and ``embedding`` (AUC of explanation–example
cosine, ``saelab.interp.embedding``; ``embedder``, default TF-IDF). ``negatives="hard"`` scores
against the silent contexts most similar to the activating ones instead of random ones
(``saelab.interp.negatives``; gather a larger pool of random contexts for it). A latent too short of
examples for one scorer (fewer held-out activating examples than intruder's k) gets None there and a
reason in ``skipped``. The summary gives each score's mean over latents and its mean weighted by
the latents' firing frequency (density), beside each other.

A reply in the wrong format is recorded as that latent's ``error`` and the run goes on; an endpoint
failure (``LLMError``) stops the run after saving what was scored, and ``run_autointerp(...,
out_path)`` resumes from the saved file (the mix is part of the recorded setup: another mix is
another run; so are the scorers and their settings, under ``setup["scoring"]``, which the default
scoring leaves out so that results saved before these scorers existed still resume). LLM calls are
cached by ``LLMClient``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from saelab.errors import ConfigError, CorruptFileError, check_choice, check_range
from saelab.fileio import atomic_write_json
from saelab.interp.embedding import Embedder, TfidfEmbedder, embedding_score
from saelab.interp.gather import Example, FeatureData, FeatureRecord
from saelab.interp.intruder import intruder_score
from saelab.interp.llm import LLMError
from saelab.interp.negatives import NEGATIVES, hard_negatives
from saelab.interp.prompts import ReplyFormatError
from saelab.interp.scoring import detection_score, fuzzing_score, simulation_score
from saelab.interp.surprisal import GENERIC, TEMPLATE, SurprisalLM, check_template, surprisal_score

SCORES = ("detection", "fuzzing", "simulation")          # always in a result (None when not chosen)
SCORERS = (*SCORES, "intruder", "surprisal", "embedding")
MIX_FIELDS = ("n_explain", "n_activating", "n_quantiles", "n_non_activating", "seed")


@dataclass
class AutointerpConfig:
    """The explain/score split and the scorers (see the module docstring). Defaults: 20 held-out contexts
    per latent, as many LLM simulation calls as before; activating and non-activating in equal numbers
    (delphi's 1:1); 10 bins, one example per decile of the firings (delphi's ``n_quantiles``).

    ``scorers``: names from ``SCORERS`` (a tuple, or a comma-separated string). ``negatives``: random
    or hard. ``intruder_k`` activating examples per intruder trial, ``intruder_trials`` trials (at most
    one per non-activating example). ``surprisal_template`` (with ``{explanation}``) and
    ``surprisal_generic``: the two prefixes of the surprisal score."""

    n_explain: int = 10
    n_activating: int = 10
    n_quantiles: int = 10
    n_non_activating: int = 10
    seed: int = 0
    progress: bool = True
    scorers: tuple[str, ...] = SCORES
    negatives: str = "random"
    intruder_k: int = 4
    intruder_trials: int = 10
    surprisal_template: str = TEMPLATE
    surprisal_generic: str = GENERIC

    def gather_sizes(self) -> dict[str, int]:
        """The feature-data sizes this split needs (``FeatureDataConfig`` fields). Random contexts are
        shared by all latents and a dense latent fires in many: 4x the silent ones needed (hard
        negatives: a pool of 10x to choose the most similar from). Quantile groups: one per bin, with
        room for the examples the explainer sees."""
        n_random = (max(100, 10 * self.n_non_activating) if self.negatives == "hard"
                    else max(20, 4 * self.n_non_activating))
        return {"n_random": n_random, "n_quantiles": self.n_quantiles,
                "per_quantile": -(-self.n_activating // self.n_quantiles) + 2, "n_top": max(20, self.n_explain)}

    def __post_init__(self) -> None:
        for name in ("n_explain", "n_quantiles"):
            check_range(name, getattr(self, name), 1, None, integer=True)
        for name in ("n_activating", "n_non_activating", "seed"):
            check_range(name, getattr(self, name), 0, None, integer=True)
        if isinstance(self.scorers, str):
            self.scorers = tuple(s.strip() for s in self.scorers.split(",") if s.strip())
        self.scorers = tuple(self.scorers)
        for name in self.scorers:
            check_choice("scorer", name, SCORERS)
        if not self.scorers or len(set(self.scorers)) != len(self.scorers):
            raise ConfigError(f"scorers={','.join(self.scorers)!r} is not accepted; name each scorer once, "
                              f"from: {', '.join(SCORERS)}")
        check_choice("negatives", self.negatives, NEGATIVES)
        check_range("intruder_k", self.intruder_k, 1, None, integer=True)
        check_range("intruder_trials", self.intruder_trials, 1, None, integer=True)
        if "intruder" in self.scorers and self.intruder_k > self.n_activating:
            raise ConfigError(f"intruder_k={self.intruder_k} needs n_activating >= {self.intruder_k} (each trial "
                              f"shows k activating examples) and n_activating={self.n_activating}; lower intruder_k "
                              "or raise n_activating")
        for name in ("intruder", "surprisal", "embedding"):
            if name in self.scorers and (not self.n_activating or not self.n_non_activating):
                raise ConfigError(f"scorer {name!r} compares activating with non-activating examples and "
                                  f"n_activating={self.n_activating}, n_non_activating={self.n_non_activating}; "
                                  "both must be >= 1")
        if "surprisal" in self.scorers:
            check_template(self.surprisal_template)
            if not self.surprisal_generic.strip():
                raise ConfigError("surprisal_generic='' is not accepted; give the generic explanation the real "
                                  f"one is compared with, e.g. {GENERIC!r}")

    def scoring_setup(self) -> dict[str, Any]:
        """The scoring settings that change results: scorers, negatives, and the settings of the chosen
        scorers only."""
        out: dict[str, Any] = {"scorers": list(self.scorers), "negatives": self.negatives}
        if "intruder" in self.scorers:
            out |= {"intruder_k": self.intruder_k, "intruder_trials": self.intruder_trials}
        if "surprisal" in self.scorers:
            out |= {"surprisal_template": self.surprisal_template, "surprisal_generic": self.surprisal_generic}
        return out


DEFAULT_SCORING = {"scorers": list(SCORES), "negatives": "random"}


@dataclass
class ScoringSet:
    """One latent's examples: ``explain`` (top), held-out ``activating`` and ``non_activating``,
    ``bins``: per quantile bin ``{"bin", "hi", "lo", "n"}`` (activation range, examples scored), and
    for hard negatives ``negatives``: ``{"mean_similarity", "share_firing_token"}`` of those chosen."""

    explain: list[Example]
    activating: list[Example]
    non_activating: list[Example]
    bins: list[dict[str, Any]] = field(default_factory=list)
    negatives: dict[str, Any] | None = None


def bin_counts(n: int, n_bins: int) -> list[int]:
    """``n`` spread over ``n_bins`` as evenly as possible: bin b gets ⌊(b+1)n/Q⌋ − ⌊bn/Q⌋."""
    return [(b + 1) * n // n_bins - b * n // n_bins for b in range(n_bins)]


def split_examples(record: FeatureRecord, cfg: AutointerpConfig, embedder: Embedder | None = None) -> ScoringSet:
    """The explain examples and the held-out scoring mix of ``record`` (module docstring); hard negatives
    are ranked with ``embedder`` (default TF-IDF) against the explained and held-out activating ones."""
    explain = record.top_examples[:cfg.n_explain]
    shown = {(ex.window, ex.pos) for ex in explain}
    groups = [g for g in record.quantile_groups if g["examples"]]
    n_bins = min(cfg.n_quantiles, len(groups))
    activating: list[Example] = []
    bins = []
    if n_bins:
        members = np.array_split(np.arange(len(groups)), n_bins)
        for b, (idx, count) in enumerate(zip(members, bin_counts(cfg.n_activating, n_bins), strict=True)):
            pool = [ex for i in idx for ex in groups[i]["examples"] if (ex.window, ex.pos) not in shown]
            rng = np.random.default_rng([cfg.seed, record.index, b])
            picks = sorted(rng.choice(len(pool), size=min(count, len(pool)), replace=False).tolist())
            activating += [pool[i] for i in picks]
            bins.append({"bin": b, "hi": groups[idx[0]]["hi"], "lo": groups[idx[-1]]["lo"], "n": len(picks)})
    silent = [ex for ex in record.random_examples if not ex.fires]
    if cfg.negatives == "hard" and explain:
        non_activating, stats = hard_negatives(explain + activating, silent, cfg.n_non_activating, embedder)
        return ScoringSet(explain, activating, non_activating, bins, stats)
    return ScoringSet(explain, activating, silent[:cfg.n_non_activating], bins)


def explain_and_score(record: FeatureRecord, explainer, judge, cfg: AutointerpConfig,
                      surprisal_lm: SurprisalLM | None = None, embedder: Embedder | None = None) -> dict[str, Any]:
    """One latent's ``{"feature", "density", "explanation", <each score>, "n_activating",
    "n_non_activating", "activating_bins", "skipped", "error"}``; detection, fuzzing and simulation are
    always there (None when not chosen), the other scores when chosen (intruder: ``intruder_trials``
    run too; surprisal: the mean reduction per class too; hard negatives: ``negatives``)."""
    split = split_examples(record, cfg, embedder)
    chosen = [s for s in cfg.scorers if s not in SCORES]
    result: dict[str, Any] = {"feature": record.index, "density": record.density, "explanation": None,
                              **{s: None for s in (*SCORES, *chosen)}, "n_activating": len(split.activating),
                              "n_non_activating": len(split.non_activating), "activating_bins": split.bins,
                              "skipped": {}, "error": None}
    if "intruder" in chosen:
        result["intruder_trials"] = 0
    if "surprisal" in chosen:
        result |= {"surprisal_reduction_activating": None, "surprisal_reduction_non_activating": None}
    if split.negatives is not None:
        result["negatives"] = split.negatives
    if not split.explain:
        result["error"] = "the latent never fired on the token budget; nothing to explain"
        return result
    if not split.activating and cfg.n_activating:
        result["error"] = (f"no held-out activating example (the latent fired {record.n_fires} times, and the "
                           "feature data's quantile groups hold none beyond the explained ones); gather more "
                           "tokens or a larger FeatureDataConfig.per_quantile")
        return result
    try:
        result["explanation"] = expl = explainer.explain(split.explain)
        if not isinstance(expl, str) or not expl.strip():
            result["error"] = f"the explainer gave an empty explanation ({expl!r}); nothing to score"
            return result
        seed = cfg.seed + record.index
        pos, neg = split.activating, split.non_activating
        if "detection" in cfg.scorers:
            result["detection"] = detection_score(judge, expl, pos, neg, seed)
        if "fuzzing" in cfg.scorers:
            result["fuzzing"] = fuzzing_score(judge, expl, pos, seed)
        if "simulation" in cfg.scorers:
            result["simulation"] = simulation_score(judge, expl, pos + neg)
        if "intruder" in chosen:
            if len(pos) < cfg.intruder_k or not neg:
                result["skipped"]["intruder"] = (f"{len(pos)} held-out activating and {len(neg)} non-activating "
                                                 f"examples; each trial needs {cfg.intruder_k} and 1")
            else:
                result["intruder"] = intruder_score(judge, expl, pos, neg, cfg.intruder_k, cfg.intruder_trials, seed)
                result["intruder_trials"] = min(cfg.intruder_trials, len(neg))
        for name in ("surprisal", "embedding"):
            if name in chosen and not neg:
                result["skipped"][name] = "no non-activating example to compare the activating ones with"
        if "surprisal" in chosen and neg:
            told = surprisal_score(surprisal_lm, expl, pos, neg, cfg.surprisal_template, cfg.surprisal_generic)
            result |= {"surprisal": told.auc, "surprisal_reduction_activating": told.reduction_activating,
                       "surprisal_reduction_non_activating": told.reduction_non_activating}
        if "embedding" in chosen and neg:
            result["embedding"] = embedding_score(embedder or TfidfEmbedder(), expl, pos, neg)
    except ReplyFormatError as exc:
        result["error"] = f"malformed reply: {exc}"
    return result


def frequency_weighted_mean(values: list[float | None], densities: list[float]) -> float | None:
    """``Σ density·value / Σ density`` over the latents that have a value (None without weight)."""
    pairs = [(v, d) for v, d in zip(values, densities, strict=True) if v is not None]
    total = sum(d for _, d in pairs)
    return sum(v * d for v, d in pairs) / total if total > 0 else None


def summarise(results: list[dict[str, Any]], cfg: AutointerpConfig | None = None) -> dict[str, Any]:
    """Per score ``mean_<score>`` (over latents that have it), ``n_<score>`` and
    ``freq_weighted_mean_<score>`` (weighted by each latent's density); the mix actually scored; with
    intruder chosen, its chance level ``intruder_chance`` = 1/(k+1)."""
    out: dict[str, Any] = {"n_features": len(results), "n_errors": sum(r["error"] is not None for r in results)}
    for s in [s for s in SCORERS if s in SCORES or any(s in r for r in results)]:
        values = [r.get(s) for r in results]
        present = [v for v in values if v is not None]
        out[f"mean_{s}"] = sum(present) / len(present) if present else None
        out[f"n_{s}"] = len(present)
        out[f"freq_weighted_mean_{s}"] = frequency_weighted_mean(values, [r["density"] for r in results])
    for kind in ("activating", "non_activating"):  # the mix actually scored, per latent on average
        counts = [r[f"n_{kind}"] for r in results]
        out[f"mean_n_{kind}"] = sum(counts) / len(counts) if counts else None
    if cfg is not None and "intruder" in cfg.scorers:
        out["intruder_chance"] = 1 / (cfg.intruder_k + 1)
    return out


def check_feature_data(data: FeatureData, cfg: AutointerpConfig) -> None:
    """Refuse feature data that cannot give the mix: no quantile examples or no random contexts."""
    if not any(f.n_fires for f in data.features):
        return
    if cfg.n_activating and not any(g["examples"] for f in data.features for g in f.quantile_groups):
        raise ConfigError(f"n_activating={cfg.n_activating} needs activating examples across quantiles, and the "
                          "feature data holds none; gather it with FeatureDataConfig(per_quantile >= 1)")
    if cfg.n_non_activating and not any(f.random_examples for f in data.features):
        raise ConfigError(f"n_non_activating={cfg.n_non_activating} needs random contexts, and the feature data "
                          "holds none; gather it with FeatureDataConfig(n_random >= n_non_activating), or set "
                          "n_non_activating=0")


def recorded_setup(explainer, judge, cfg: AutointerpConfig, surprisal_lm: SurprisalLM | None,
                   embedder: Embedder | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a saved result file must match to be resumed: explainer, judge, the mix (``config``) and,
    unless it is the default, the scoring (``scoring``: ``cfg.scoring_setup()`` plus the names of the
    scorer LM and of the embedder where they are used)."""
    config = asdict(cfg)
    setup: dict[str, Any] = {"explainer": explainer.name, "judge": judge.name,
                             "config": {k: config[k] for k in MIX_FIELDS}}
    scoring = cfg.scoring_setup()
    if "surprisal" in cfg.scorers:
        scoring["surprisal_lm"] = surprisal_lm.name
    if "embedding" in cfg.scorers or cfg.negatives == "hard":
        scoring["embedder"] = (embedder or TfidfEmbedder()).name
    if scoring != DEFAULT_SCORING:
        setup["scoring"] = scoring
    return {**setup, **(extra or {})}


def run_autointerp(data: FeatureData, explainer, judge, cfg: AutointerpConfig | None = None,
                   out_path: str | Path | None = None, setup: dict[str, Any] | None = None,
                   surprisal_lm: SurprisalLM | None = None, embedder: Embedder | None = None) -> dict[str, Any]:
    """Explain and score every latent of ``data``; returns ``{"setup", "results": [...], "summary"}``.

    With ``out_path`` the file is rewritten atomically after every latent and, if it exists, latents
    already in it are not redone (its ``setup`` must match). ``setup`` describes explainer and judge.
    ``surprisal_lm`` (``saelab.interp.surprisal.CausalLMScorer``): needed by the surprisal scorer;
    ``embedder`` (``saelab.interp.embedding``): the embedding scorer's and the hard negatives' (default
    TF-IDF).
    """
    cfg = cfg or AutointerpConfig()
    if "surprisal" in cfg.scorers and surprisal_lm is None:
        raise ConfigError("scorer 'surprisal' needs a causal LM to score with and none was given; pass "
                          "surprisal_lm=CausalLMScorer(load_model(...)) (saelab.interp.surprisal), or drop "
                          "'surprisal' from scorers")
    check_feature_data(data, cfg)
    setup = recorded_setup(explainer, judge, cfg, surprisal_lm, embedder, setup)
    done: dict[int, dict] = {}
    path = Path(out_path) if out_path is not None else None
    if path is not None and path.exists():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{path}: saved autointerp results are not valid JSON ({exc}); remove the file "
                                   "to start again") from exc
        if saved.get("setup") != setup:
            raise ConfigError(f"{path} holds results of another setup ({saved.get('setup')}); use another output "
                              f"path or remove it to rerun with {setup}")
        done = {r["feature"]: r for r in saved.get("results", [])}

    def save() -> dict[str, Any]:
        results = [done[f.index] for f in data.features if f.index in done]
        report = {"setup": setup, "results": results, "summary": summarise(results, cfg)}
        if path is not None:
            atomic_write_json(path, report)
        return report

    started = time.perf_counter()
    todo = [f for f in data.features if f.index not in done]
    for record in tqdm(todo, desc="autointerp", unit="feature", disable=not cfg.progress):
        try:
            done[record.index] = explain_and_score(record, explainer, judge, cfg, surprisal_lm, embedder)
        except LLMError as exc:
            save()
            kept = f"; the {len(done)} latents scored so far are saved in {path}" if path else ""
            raise LLMError(f"{exc}{kept}") from None
        save()
    report = save()
    report["summary"]["seconds"] = round(time.perf_counter() - started, 2)
    return report
