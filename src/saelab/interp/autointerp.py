"""Explain-then-score over many latents, saving after every latent so a long run keeps its results.

Per latent: the first ``n_explain`` top examples go to the explainer; held out for scoring are the next
``n_score_top`` top examples and ``n_score_quantile`` examples taken across the quantile groups
(positives) and up to ``n_score_random`` random contexts where the latent does not fire (negatives).
Scores: ``saelab.interp.scoring``. A reply in the wrong format is recorded as that latent's ``error``
and the run goes on; an endpoint failure (``LLMError``) stops the run after saving what was scored,
and ``run_autointerp(..., out_path)`` resumes from the saved file.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
    n_explain: int = 10
    n_score_top: int = 5
    n_score_quantile: int = 5
    n_score_random: int = 10
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check_range("n_explain", self.n_explain, 1, None, integer=True)
        for name in ("n_score_top", "n_score_quantile", "n_score_random", "seed"):
            check_range(name, getattr(self, name), 0, None, integer=True)


def split_examples(record: FeatureRecord, cfg: AutointerpConfig) -> tuple[list[Example], list[Example], list[Example]]:
    """(examples to explain from, held-out positives, negatives)."""
    explain = record.top_examples[:cfg.n_explain]
    positives = list(record.top_examples[cfg.n_explain:cfg.n_explain + cfg.n_score_top])
    groups = [list(g["examples"]) for g in record.quantile_groups]
    taken = 0
    while taken < cfg.n_score_quantile and any(groups):
        for group in groups:
            if group and taken < cfg.n_score_quantile:
                positives.append(group.pop(0))
                taken += 1
    negatives = [ex for ex in record.random_examples if not ex.fires][:cfg.n_score_random]
    return explain, positives, negatives


def explain_and_score(record: FeatureRecord, explainer, judge, cfg: AutointerpConfig) -> dict[str, Any]:
    """One latent's ``{"feature", "explanation", "detection", "fuzzing", "simulation", "n_*", "error"}``."""
    explain, positives, negatives = split_examples(record, cfg)
    result: dict[str, Any] = {"feature": record.index, "density": record.density, "explanation": None,
                              **{s: None for s in SCORES}, "n_positive": len(positives),
                              "n_negative": len(negatives), "error": None}
    if not explain:
        result["error"] = "the latent never fired on the token budget; nothing to explain"
        return result
    try:
        result["explanation"] = explainer.explain(explain)
        expl = result["explanation"]
        result["detection"] = detection_score(judge, expl, positives, negatives, cfg.seed + record.index)
        result["fuzzing"] = fuzzing_score(judge, expl, positives, cfg.seed + record.index)
        result["simulation"] = simulation_score(judge, expl, positives + negatives)
    except ReplyFormatError as exc:
        result["error"] = f"malformed reply: {exc}"
    return result


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_features": len(results), "n_errors": sum(r["error"] is not None for r in results)}
    for s in SCORES:
        values = [r[s] for r in results if r[s] is not None]
        out[f"mean_{s}"] = sum(values) / len(values) if values else None
        out[f"n_{s}"] = len(values)
    return out


def run_autointerp(data: FeatureData, explainer, judge, cfg: AutointerpConfig | None = None,
                   out_path: str | Path | None = None, setup: dict[str, Any] | None = None) -> dict[str, Any]:
    """Explain and score every latent of ``data``; returns ``{"setup", "results": [...], "summary"}``.

    With ``out_path`` the file is rewritten atomically after every latent and, if it exists, latents
    already in it are not redone (its ``setup`` must match). ``setup`` describes explainer and judge.
    """
    cfg = cfg or AutointerpConfig()
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
