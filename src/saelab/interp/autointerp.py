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

A reply in the wrong format is recorded as that latent's ``error`` and the run goes on; an endpoint
failure (``LLMError``) stops the run after saving what was scored, and ``run_autointerp(...,
out_path)`` resumes from the saved file (the mix is part of the recorded setup: another mix is
another run). LLM calls are cached by ``LLMClient``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from saelab.errors import ConfigError, CorruptFileError, check_range
from saelab.fileio import atomic_write_json
from saelab.interp.gather import Example, FeatureData, FeatureRecord
from saelab.interp.llm import LLMError
from saelab.interp.prompts import ReplyFormatError
from saelab.interp.scoring import detection_score, fuzzing_score, simulation_score

SCORES = ("detection", "fuzzing", "simulation")


@dataclass
class AutointerpConfig:
    """The explain/score split (see the module docstring). Defaults: 20 held-out contexts per latent, as
    many LLM simulation calls as before; activating and non-activating in equal numbers (delphi's 1:1);
    10 bins, one example per decile of the firings (delphi's ``n_quantiles``)."""

    n_explain: int = 10
    n_activating: int = 10
    n_quantiles: int = 10
    n_non_activating: int = 10
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("n_explain", "n_quantiles"):
            check_range(name, getattr(self, name), 1, None, integer=True)
        for name in ("n_activating", "n_non_activating", "seed"):
            check_range(name, getattr(self, name), 0, None, integer=True)


@dataclass
class ScoringSet:
    """One latent's examples: ``explain`` (top), held-out ``activating`` and ``non_activating``, and
    ``bins``: per quantile bin ``{"bin", "hi", "lo", "n"}`` (activation range, examples scored)."""

    explain: list[Example]
    activating: list[Example]
    non_activating: list[Example]
    bins: list[dict[str, Any]] = field(default_factory=list)


def bin_counts(n: int, n_bins: int) -> list[int]:
    """``n`` spread over ``n_bins`` as evenly as possible: bin b gets ⌊(b+1)n/Q⌋ − ⌊bn/Q⌋."""
    return [(b + 1) * n // n_bins - b * n // n_bins for b in range(n_bins)]


def split_examples(record: FeatureRecord, cfg: AutointerpConfig) -> ScoringSet:
    """The explain examples and the held-out scoring mix of ``record`` (module docstring)."""
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
    non_activating = [ex for ex in record.random_examples if not ex.fires][:cfg.n_non_activating]
    return ScoringSet(explain, activating, non_activating, bins)


def explain_and_score(record: FeatureRecord, explainer, judge, cfg: AutointerpConfig) -> dict[str, Any]:
    """One latent's ``{"feature", "explanation", "detection", "fuzzing", "simulation", "n_activating",
    "n_non_activating", "activating_bins", "error"}``."""
    split = split_examples(record, cfg)
    result: dict[str, Any] = {"feature": record.index, "density": record.density, "explanation": None,
                              **{s: None for s in SCORES}, "n_activating": len(split.activating),
                              "n_non_activating": len(split.non_activating), "activating_bins": split.bins,
                              "error": None}
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
        seed = cfg.seed + record.index
        result["detection"] = detection_score(judge, expl, split.activating, split.non_activating, seed)
        result["fuzzing"] = fuzzing_score(judge, expl, split.activating, seed)
        result["simulation"] = simulation_score(judge, expl, split.activating + split.non_activating)
    except ReplyFormatError as exc:
        result["error"] = f"malformed reply: {exc}"
    return result


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_features": len(results), "n_errors": sum(r["error"] is not None for r in results)}
    for s in SCORES:
        values = [r[s] for r in results if r[s] is not None]
        out[f"mean_{s}"] = sum(values) / len(values) if values else None
        out[f"n_{s}"] = len(values)
    for kind in ("activating", "non_activating"):  # the mix actually scored, per latent on average
        counts = [r[f"n_{kind}"] for r in results]
        out[f"mean_n_{kind}"] = sum(counts) / len(counts) if counts else None
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


def run_autointerp(data: FeatureData, explainer, judge, cfg: AutointerpConfig | None = None,
                   out_path: str | Path | None = None, setup: dict[str, Any] | None = None) -> dict[str, Any]:
    """Explain and score every latent of ``data``; returns ``{"setup", "results": [...], "summary"}``.

    With ``out_path`` the file is rewritten atomically after every latent and, if it exists, latents
    already in it are not redone (its ``setup`` must match). ``setup`` describes explainer and judge.
    """
    cfg = cfg or AutointerpConfig()
    check_feature_data(data, cfg)
    setup = {"explainer": explainer.name, "judge": judge.name, "config": asdict(cfg), **(setup or {})}
    setup["config"].pop("progress", None)
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
        report = {"setup": setup, "results": results, "summary": summarise(results)}
        if path is not None:
            atomic_write_json(path, report)
        return report

    started = time.perf_counter()
    todo = [f for f in data.features if f.index not in done]
    for record in tqdm(todo, desc="autointerp", unit="feature", disable=not cfg.progress):
        try:
            done[record.index] = explain_and_score(record, explainer, judge, cfg)
        except LLMError as exc:
            save()
            kept = f"; the {len(done)} latents scored so far are saved in {path}" if path else ""
            raise LLMError(f"{exc}{kept}") from None
        save()
    report = save()
    report["summary"]["seconds"] = round(time.perf_counter() - started, 2)
    return report
