"""The evaluation panel: several metrics on several SAE folders, one table, resumable.

    report = run_panel(lm, ["runs/a", "runs/b"], "out/panel", PanelConfig(metrics=("core", "meta_sae")))
    report["rows"][0]["core.delta_loss"], report["winners"]["core.delta_loss"]["sae"]

A metric is a ``PanelMetric`` in the registry ``METRICS`` (``register_metric`` adds one): a function
``compute(sae, context) -> MetricOutput`` (or a plain dict of figures), the settings its result
depends on, and the figures the table shows with the direction that wins (``"higher"``, ``"lower"``,
or ``""``: shown, not ranked). Registered here:

- ``core``: ``saelab.eval.evaluate`` spliced into the model (L0, FVU, CE/KL recovered, delta loss,
  dead and dense fractions); SAEBench's core result JSON (``saelab.eval.saebench``).
- ``meta_sae``: ``saelab.eval.meta_sae`` (share of decoder variance a meta-SAE explains; lower ranks
  first: decoder directions that compress less into shared parts, i.e. more atomic latents); written
  in SAEBench's ``meta_sae_decoder_variance`` shape.
- ``autointerp``: ``saelab.interp.autointerp`` with the token-statistics explainer and judge (no LLM)
  on ``n_latents`` latents drawn (seeded) from the live ones; mean detection, fuzzing, simulation.
- ``sparse_probing``: ``saelab.eval.probing`` on ``panel_concepts`` (the toy world's planted
  variables for the toy vocabulary, else code vs prose, token properties and, for a .jsonl source
  with a ``collection`` field, the collection of the ``eval_source`` texts), activations read once per hook; mean test accuracy and AUC per k, the dense probe's for reference; SAEBench's
  ``sparse_probing`` shape (concept groups as its data sets).
- ``absorption``: ``saelab.eval.absorption`` (first-letter task, words of the ``eval_source``
  texts, tokenized once per panel); mean absorption fraction and
  full-absorption rate (lower wins); SAEBench's ``absorption_first_letter`` shape.

Both are imported when first used (a missing module is a clear error).

Before anything runs, every folder is loaded and placed in the model (a missing folder, an unknown
metric or an SAE at a hook the model lacks stops the panel with the reason). Under ``out_dir``::

    panel.json  panel.csv  panel.md          the table (one row per SAE), the winners, the settings
    panel_seeds.md, plots/seeds.png          where SAEs repeat at several seeds: mean ± std per
                                             configuration, and whether each winner clears seed noise
                                             (``saelab.bench.spread``; also ``seed_spread`` in panel.json)
    plots/<metric>.png                       one bar chart per figure of each metric, across SAEs
    cache/<sae>/<metric>.json                one (SAE, metric) result with the key it was computed for
    saebench/<eval_type_id>/<sae>_eval_results.json   SAEBench result JSON where the metric has one
    work/<sae>/<metric>/                     a metric's own files (autointerp's resumable results)

A cached result is reused when its key matches: the metric's settings, the SAE's weights (sha256)
and the model (name and fingerprint); each is written atomically as soon as it is computed, so a
stopped panel resumes where it was. A metric that refuses an SAE (a ``SaelabError``, e.g. too few
decoder rows for the meta-SAE) leaves that cell empty, is listed under ``errors`` and is not cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saelab.bench.spread import format_spread, plot_spread, seed_spread
from saelab.errors import ConfigError, SaelabError, check_choice, check_range
from saelab.eval.evaluate import DEFAULT_EVAL_SOURCE, EvalConfig, model_context
from saelab.eval.meta_sae import MetaSAEConfig
from saelab.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from saelab.models import LoadedModel
from saelab.sae.base import SAE
from saelab.sae.folder import WEIGHTS_FILENAME, FolderInfo

BETTER = ("higher", "lower", "")
DEAD_LOG10_DENSITY = -9.99  # sparsity.safetensors holds log10(density + 1e-10): a dead latent reads -10
PANEL_FILES = ("panel.json", "panel.csv", "panel.md")


# ----------------------------------------------------------------------------------- settings
@dataclass
class AutointerpPanelConfig:
    """The autointerp metric: ``n_latents`` latents (seeded draw from the live ones, all if fewer) of
    feature data over ``tokens`` tokens in windows of ``context_size``; explain/score split as
    ``saelab.interp.autointerp.AutointerpConfig``."""

    n_latents: int = 16
    tokens: int = 20_000
    context_size: int = 64
    n_explain: int = 10
    n_activating: int = 10
    n_quantiles: int = 5
    n_non_activating: int = 10

    def __post_init__(self) -> None:
        for name in ("n_latents", "tokens", "n_explain", "n_quantiles"):
            check_range(name, getattr(self, name), 1, integer=True)
        check_range("context_size", self.context_size, 2, integer=True)
        for name in ("n_activating", "n_non_activating"):
            check_range(name, getattr(self, name), 0, integer=True)


@dataclass
class PanelConfig:
    """What the panel runs and how.

    metrics: registered metric names, in table order. eval_source: held-out text every metric reads
    (a ``saelab.data`` source spec). core: the splice evaluation's settings (the error-term check is
    off by default: it tests the splice, it does not compare SAEs). meta_sae, autointerp: those
    metrics' settings. probing, absorption: keyword arguments passed to ``sparse_probing`` and
    ``absorption``. seed: sampling in every metric. force: recompute cached results.
    """

    metrics: tuple[str, ...] = ("core", "meta_sae", "autointerp")
    eval_source: str = DEFAULT_EVAL_SOURCE
    core: EvalConfig = field(default_factory=lambda: EvalConfig(tokens=16_384, check_error_term=False))
    meta_sae: MetaSAEConfig = field(default_factory=MetaSAEConfig)
    autointerp: AutointerpPanelConfig = field(default_factory=AutointerpPanelConfig)
    probing: dict[str, Any] = field(default_factory=dict)
    absorption: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    progress: bool = True
    force: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.metrics, str):
            self.metrics = tuple(m.strip() for m in self.metrics.split(",") if m.strip())
        self.metrics = tuple(self.metrics)
        if not self.metrics:
            raise ConfigError(f"metrics is empty; choose one or more of: {', '.join(METRICS)}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"unknown metric{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                              f"choose from: {', '.join(METRICS)}")
        if len(set(self.metrics)) != len(self.metrics):
            raise ConfigError(f"metrics={','.join(self.metrics)} names a metric twice; name each once")
        check_range("seed", self.seed, 0, integer=True)
        for name in self.metrics:  # settings are refused now, not after the metrics before them ran
            METRICS[name].settings(self)


# ----------------------------------------------------------------------------------- registry
@dataclass
class MetricOutput:
    """What a metric gives for one SAE: ``figures`` (the table's numbers, None where undefined),
    ``result`` (its full JSON-able result) and ``saebench`` (SAEBench's result JSON, or None)."""

    figures: dict[str, float | int | None]
    result: dict[str, Any] = field(default_factory=dict)
    saebench: dict[str, Any] | None = None


@dataclass(frozen=True)
class PanelMetric:
    """A registered metric. columns: figure -> ``"higher"``/``"lower"`` (which wins) or ``""`` (not
    ranked; a function of the ``PanelConfig`` when they depend on it). settings: the part of the
    panel's settings its results depend on (the cache key). compute_many: see the field."""

    name: str
    compute: Callable[[SAE, PanelContext], MetricOutput | dict]
    settings: Callable[[PanelConfig], dict[str, Any]]
    columns: dict[str, str] | Callable[[PanelConfig], dict[str, str]]
    description: str = ""
    #: optional: the outputs for several SAEs at once (in order), when one pass can serve them all;
    #: the panel calls it for the SAEs whose results are not cached and stores each as ``compute`` would
    compute_many: Callable[[list[PanelContext]], list[MetricOutput]] | None = None

    def columns_for(self, config: PanelConfig) -> dict[str, str]:
        """The figures shown for ``config`` (``columns`` itself, or what it returns when callable)."""
        columns = self.columns(config) if callable(self.columns) else self.columns
        bad = {k: v for k, v in columns.items() if v not in BETTER}
        if bad:
            raise ConfigError(f"metric {self.name!r}: columns {bad} must map to 'higher', 'lower' or ''")
        return columns


METRICS: dict[str, PanelMetric] = {}


def register_metric(metric: PanelMetric) -> PanelMetric:
    """Add ``metric`` to the registry (a name already there is replaced) and return it."""
    METRICS[metric.name] = metric
    return metric


@dataclass
class PanelEntry:
    """One SAE of the panel: its row ``label`` (unique; names its cache folder), folder and weights hash."""

    label: str
    path: str
    sae: SAE
    info: FolderInfo
    weights_sha256: str


@dataclass
class PanelContext:
    """What a metric function may use: the model, the settings, this SAE's entry and its work folder.
    model_id: the model's name and fingerprint (part of every cache key). shared: one dict for the
    whole panel, where a metric may keep what several SAEs reuse (e.g. probe activations per hook)."""

    lm: LoadedModel
    config: PanelConfig
    entry: PanelEntry
    out_dir: Path
    model_id: dict[str, str] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)

    def work_dir(self, metric: str) -> Path:
        return self.out_dir / "work" / self.entry.label / metric


# ----------------------------------------------------------------------------------- SAEBench shape
def saebench_output(eval_type_id: str, eval_config: dict[str, Any], metrics: dict[str, dict[str, Any]],
                    sae: SAE, details: list[dict[str, Any]] | None = None,
                    unstructured: dict[str, Any] | None = None) -> dict[str, Any]:
    """SAEBench's ``BaseEvalOutput`` fields (``saelab.eval.saebench.OUTPUT_FIELDS``) for one eval
    type: ``eval_result_metrics`` its metric categories, ``eval_result_details`` its per-item rows."""
    import time
    import uuid

    from saelab.sae.saelens_format import to_saelens

    return {"eval_type_id": eval_type_id, "eval_config": eval_config, "eval_id": str(uuid.uuid4()),
            "datetime_epoch_millis": int(time.time() * 1000), "eval_result_metrics": metrics,
            "eval_result_details": details or [], "sae_bench_commit_hash": None, "sae_lens_id": None,
            "sae_lens_release_id": None, "sae_lens_version": None, "sae_cfg_dict": to_saelens(sae)[0],
            "eval_result_unstructured": {"producer": "saelab panel", **(unstructured or {})}}


# ----------------------------------------------------------------------------------- metrics
def _core_many(contexts: list[PanelContext]) -> list[MetricOutput]:
    """``core`` for several SAEs from one evaluation pass (``evaluate_saes``: the clean and ablated
    runs are shared, one spliced run per SAE); each result equals the SAE's own ``evaluate_sae``."""
    from saelab.eval.evaluate import evaluate_saes
    from saelab.eval.saebench import core_eval_output

    config = contexts[0].config
    cfg = dataclasses.replace(config.core, progress=config.progress)
    results = evaluate_saes(contexts[0].lm, [ctx.entry.sae for ctx in contexts], config.eval_source, cfg)
    columns = METRICS["core"].columns_for(config)
    outputs = []
    for ctx, result in zip(contexts, results, strict=True):
        m = result.metrics
        saebench = core_eval_output(m, result.latent_frequency, ctx.entry.sae, batch_size=cfg.batch_size,
                                    llm_dtype=str(ctx.lm.dtype).removeprefix("torch."))
        outputs.append(MetricOutput({key: m.get(key) for key in columns}, m, saebench))
    return outputs


def _core(sae: SAE, ctx: PanelContext) -> MetricOutput:
    return _core_many([ctx])[0]


def _core_settings(config: PanelConfig) -> dict[str, Any]:
    settings = config.core.to_dict()
    settings.pop("progress")
    return {"eval_source": config.eval_source, **settings}


register_metric(PanelMetric(
    "core", _core, _core_settings,
    {"l0": "", "fvu": "lower", "ce_loss_recovered": "higher", "kl_recovered": "higher", "delta_loss": "lower",
     "dead_fraction": "lower", "dense_fraction": "lower"},
    "fidelity and sparsity spliced into the model (saelab.eval.evaluate)", compute_many=_core_many))


def _meta_sae(sae: SAE, ctx: PanelContext) -> MetricOutput:
    from saelab.eval.meta_sae import meta_sae_structure

    cfg = dataclasses.replace(ctx.config.meta_sae, progress=ctx.config.progress)
    result = meta_sae_structure(sae, cfg=cfg)
    out = result.to_dict()
    figures = {"variance_explained": result.variance_explained, "l0": result.l0, "n_used": result.n_used,
               "rows_per_meta_latent": result.rows_per_meta_latent}
    eval_config = {"random_seed": cfg.seed, "width_ratio": result.d_meta / result.n_rows, "k": cfg.k,
                   "train_steps": cfg.steps, "train_batch_size": result.config["batch_size"],
                   "learning_rate": cfg.lr, "weight_decay": 0.0, "autocast": False,
                   "eval_batch_size": result.n_rows, "dtype": "float32"}
    metrics = {"meta_sae": {"decoder_fraction_variance_explained": result.variance_explained,
                            "train_time_seconds": result.train_seconds, "final_reconstruction_mse": result.mse}}
    notes = {"saelab_result": out, "not_measured": ["eval_config.dead_feature_window",
                                                    "eval_config.feature_sampling_window"],
             "definitions": {"decoder_fraction_variance_explained": "1 - FVU over the unit-normalised decoder "
                                                                     "rows (zero rows left out), variance about "
                                                                     "the mean row; meta-SAE decoder bias fixed at 0"}}
    return MetricOutput(figures, out, saebench_output("meta_sae_decoder_variance", eval_config, metrics, sae,
                                                      unstructured=notes))


register_metric(PanelMetric(
    "meta_sae", _meta_sae, lambda config: config.meta_sae.to_dict(),
    {"variance_explained": "lower", "l0": "", "n_used": "", "rows_per_meta_latent": ""},
    "share of decoder variance a BatchTopK meta-SAE explains (saelab.eval.meta_sae)"))


def autointerp_latents(entry: PanelEntry, n_latents: int, seed: int) -> list[int]:
    """``n_latents`` latent indices drawn (seeded) from those alive in the folder's
    sparsity.safetensors (all latents when it has none), sorted; all of them when fewer."""
    d_sae = entry.sae.cfg.d_sae
    pool = list(range(d_sae))
    if entry.info.sparsity is not None:
        pool = [i for i, v in enumerate(entry.info.sparsity.tolist()) if v > DEAD_LOG10_DENSITY] or pool
    if len(pool) <= n_latents:
        return pool
    return sorted(random.Random(seed).sample(pool, n_latents))


def autointerp_results_path(ctx: PanelContext) -> Path:
    """Where the autointerp metric keeps ``run_autointerp``'s resumable file for these settings."""
    settings = json.dumps(autointerp_settings(ctx.config), sort_keys=True)
    return ctx.work_dir("autointerp") / f"results-{hashlib.sha256(settings.encode()).hexdigest()[:12]}.json"


def autointerp_settings(config: PanelConfig) -> dict[str, Any]:
    return {"eval_source": config.eval_source, "seed": config.seed, **asdict(config.autointerp),
            "explainer": "tokens", "judge": "tokens"}


AUTOINTERP_COLUMNS = {"mean_detection": "higher", "mean_fuzzing": "higher", "mean_simulation": "higher",
                      "n_scored": ""}


def compute_autointerp(sae: SAE, ctx: PanelContext) -> MetricOutput:
    """The panel's ``autointerp`` metric: explain and score ``ctx.config.autointerp.n_latents`` latents
    with the token-statistics explainer and judge (``saelab.interp.autointerp``), resumably."""
    from saelab.eval.evaluate import resolve_source
    from saelab.interp.autointerp import AutointerpConfig, run_autointerp
    from saelab.interp.explainers import TokenExplainer
    from saelab.interp.gather import FeatureDataConfig, build_feature_data
    from saelab.interp.judges import TokenJudge

    a = ctx.config.autointerp
    cfg = AutointerpConfig(n_explain=a.n_explain, n_activating=a.n_activating, n_quantiles=a.n_quantiles,
                           n_non_activating=a.n_non_activating, seed=ctx.config.seed, progress=ctx.config.progress)
    features = autointerp_latents(ctx.entry, a.n_latents, ctx.config.seed)
    # the feature data ``saelab autointerp`` gathers for this split
    gather = FeatureDataConfig(n_tokens=a.tokens, context_size=a.context_size, **cfg.gather_sizes(),
                               correlation=False, seed=ctx.config.seed, progress=ctx.config.progress)
    data = build_feature_data(ctx.lm, sae, sae.cfg.hook_name, resolve_source(ctx.config.eval_source), features, gather)
    path = autointerp_results_path(ctx)
    report = run_autointerp(data, TokenExplainer(), TokenJudge(), cfg, out_path=path,
                            setup={"sae": ctx.entry.label, "weights_sha256": ctx.entry.weights_sha256,
                                   "features": features, "tokens": a.tokens})
    s = report["summary"]
    figures = {"mean_detection": s["mean_detection"], "mean_fuzzing": s["mean_fuzzing"],
               "mean_simulation": s["mean_simulation"], "n_scored": s["n_detection"]}
    return MetricOutput(figures, {**report, "results_file": str(path)})


register_metric(PanelMetric(
    "autointerp", compute_autointerp, autointerp_settings, AUTOINTERP_COLUMNS,
    "explain-then-score with the token-statistics explainer and judge (saelab.interp.autointerp)"))


def _missing_module(metric: str, module: str, exc: ImportError) -> ConfigError:
    return ConfigError(f"metric {metric!r} needs {module}, which this installation does not have ({exc}); "
                       "leave it out of --metrics")


PROBING_CONCEPT_KEYS = ("concepts", "n_documents", "n_per_class", "label_column")
CONCEPT_SETS = ("auto", "toy", "text")


def _split_probing(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``PanelConfig.probing`` -> (concept-set settings, ``ProbingConfig`` fields)."""
    concepts = {"concepts": "auto", "n_documents": 512, "n_per_class": 256, "label_column": "collection"}
    concepts.update({k: v for k, v in settings.items() if k in PROBING_CONCEPT_KEYS})
    check_choice("probing concepts", concepts["concepts"], CONCEPT_SETS)
    check_range("probing n_documents", concepts["n_documents"], 1, integer=True)
    check_range("probing n_per_class", concepts["n_per_class"], 1, integer=True)
    return concepts, {k: v for k, v in settings.items() if k not in PROBING_CONCEPT_KEYS}


def probing_config(config: PanelConfig):
    """The ``saelab.eval.probing.ProbingConfig`` of the panel's ``probing`` settings (seed: the panel's)."""
    try:
        from saelab.eval.probing import ProbingConfig
    except ImportError as exc:
        raise _missing_module("sparse_probing", "saelab.eval.probing", exc) from None

    fields = {"seed": config.seed, **_split_probing(config.probing)[1], "progress": config.progress}
    try:
        return ProbingConfig(**fields)
    except TypeError as exc:
        raise ConfigError(f"probing settings {config.probing}: {exc}; accepted keys: "
                          f"{', '.join(PROBING_CONCEPT_KEYS)} and ProbingConfig's fields") from None


def concept_texts(config: PanelConfig, n_texts: int) -> list[str]:
    """``n_texts`` texts of ``config.eval_source`` (``saelab.data.sources.read_texts``: spread over
    the source's start): what the text concepts of sparse probing and the first-letter words of
    absorption are read from (the toy source: its documents' words)."""
    from saelab.data.sources import read_texts

    return read_texts(config.eval_source, n_texts, what="panel source")


def panel_concepts(lm: LoadedModel, config: PanelConfig) -> list:
    """The concepts sparse probing reads: ``concepts="toy"`` the toy world's planted variables
    (``toy_concepts``), ``"text"`` code vs prose and token properties of ``concept_texts`` (saelab's
    own modules as the code; any tokenizer), plus one concept per value of the ``label_column`` field
    (default ``collection``) when the source is a .jsonl whose records hold it (the real corpus's
    ``heldout.jsonl``); ``"auto"`` toy for a model with the toy vocabulary, else text."""
    from saelab.data.sources import has_column, read_labeled_texts
    from saelab.eval.concepts import code_vs_prose_concept, default_context, label_concepts, toy_concepts
    from saelab.eval.concepts import token_property_concepts as properties
    from saelab.eval.recovery import NotToyModelError, check_toy_vocabulary

    settings = _split_probing(config.probing)[0]
    kind = settings["concepts"]
    if kind == "auto":
        try:
            check_toy_vocabulary(lm)
            kind = "toy"
        except NotToyModelError:
            kind = "text"
    n_docs, n_per_class = settings["n_documents"], settings["n_per_class"]
    context = default_context(lm)
    min_per_class = probing_config(config).min_per_class
    if kind == "toy":
        return toy_concepts(lm, n_documents=n_docs, n_per_class=n_per_class, context_size=context,
                            min_per_class=min_per_class, sample_seed=config.seed)
    column = settings["label_column"]
    labelled = bool(column) and has_column(config.eval_source, column)
    if labelled:
        texts, labels = read_labeled_texts(config.eval_source, n_docs, column, what="panel source")
    else:
        texts = concept_texts(config, n_docs)
    concepts = [code_vs_prose_concept(lm, prose_texts=texts, n_per_class=n_per_class, min_per_class=min_per_class,
                                      context_size=context, seed=config.seed),
                *properties(lm, texts, context_size=context, n_per_class=n_per_class,
                            min_per_class=min_per_class, seed=config.seed)]
    if labelled:
        concepts += label_concepts(lm, texts, labels, group=column, context_size=context, n_per_class=n_per_class,
                                   min_per_class=min_per_class, seed=config.seed)
    return concepts


def _ks(config: PanelConfig) -> tuple[int, ...]:
    return tuple(config.probing.get("ks", (1, 2, 5, 20)))


def _probing_columns(config: PanelConfig) -> dict[str, str]:
    return {**{f"sae_top_{k}_{m}": "higher" for m in ("accuracy", "auc") for k in _ks(config)},
            "dense_accuracy": "", "dense_auc": ""}


def _undefined(value: Any) -> Any:
    """SAEBench's stand-in for an undefined float (``saelab.eval.saebench.UNDEFINED``)."""
    from saelab.eval.saebench import UNDEFINED

    return UNDEFINED if value is None else value


def _sparse_probing(sae: SAE, ctx: PanelContext) -> MetricOutput:
    from saelab.eval.probing import collect_probe_activations, probe_hook, sparse_probing

    cfg = probing_config(ctx.config)
    if "probing_concepts" not in ctx.shared:
        ctx.shared["probing_concepts"] = panel_concepts(ctx.lm, ctx.config)
    concepts = ctx.shared["probing_concepts"]
    hook = probe_hook(ctx.lm, sae)
    key = f"probing_activations:{hook}"
    if key not in ctx.shared:  # one forward pass per hook, shared by the SAEs that read it
        ctx.shared[key] = collect_probe_activations(ctx.lm, hook, concepts, batch_size=cfg.batch_size,
                                                    progress=cfg.progress)
    result = sparse_probing(sae, ctx.lm, concepts, config=cfg, activations=ctx.shared[key])
    out = result.to_dict()
    summary = out["summary"]
    figures: dict[str, Any] = {f"dense_{m}": (summary["dense"] or {}).get(m) for m in ("accuracy", "auc")}
    for k, scores in summary["sae_top_k"].items():
        for m in ("accuracy", "auc"):
            figures[f"sae_top_{k}_{m}"] = (scores or {}).get(m)
    details = []
    for group, agg in summary["by_group"].items():
        row = {"dataset_name": group, "llm_test_accuracy": _undefined((agg["dense"] or {}).get("accuracy"))}
        row.update({f"llm_top_{k}_test_accuracy": s["accuracy"] for k, s in agg["raw_top_k"].items() if s})
        row["sae_test_accuracy"] = _undefined((agg["sae_all_latents"] or {}).get("accuracy"))
        row.update({f"sae_top_{k}_test_accuracy": _undefined((s or {}).get("accuracy"))
                    for k, s in agg["sae_top_k"].items()})
        details.append(row)
    metrics = {group: {k: v for k, v in values.items() if v is not None} for group, values in out["saebench"].items()}
    eval_config = {"random_seed": cfg.seed, "dataset_names": list(summary["by_group"]),
                   "probe_train_set_size": sum(r["n_train"] for r in out["concepts"]),
                   "probe_test_set_size": sum(r["n_test"] for r in out["concepts"]),
                   "context_length": int(concepts[0].input_ids.shape[1]), "llm_batch_size": cfg.batch_size,
                   "llm_dtype": str(ctx.lm.dtype).removeprefix("torch."), "model_name": ctx.lm.name,
                   "k_values": list(cfg.ks), "lower_vram_usage": False}
    notes = {"saelab_result": out, "definitions": {
        "dataset_names": "concept groups; each class is one saelab concept read at single tokens, not a "
                         "mean-pooled document", "probe_train_set_size, probe_test_set_size": "examples over all concepts"}}
    return MetricOutput(figures, out, saebench_output("sparse_probing", eval_config, metrics, sae, details, notes))


def _probing_settings(config: PanelConfig) -> dict[str, Any]:
    settings = probing_config(config).to_dict()
    settings.pop("progress")
    concepts = _split_probing(config.probing)[0]
    if concepts["concepts"] != "toy":  # text concepts (and "auto" on a real model) read eval_source
        concepts = {**concepts, "text_source": config.eval_source}
    return {"concepts": concepts, **settings}


register_metric(PanelMetric(
    "sparse_probing", _sparse_probing, _probing_settings, _probing_columns, "k-sparse probing of binary concepts, latents by mean difference (saelab.eval.probing)"))


def absorption_config(config: PanelConfig):
    """The ``saelab.eval.absorption.AbsorptionConfig`` of the panel's ``absorption`` settings."""
    try:
        from saelab.eval.absorption import AbsorptionConfig
    except ImportError as exc:
        raise _missing_module("absorption", "saelab.eval.absorption", exc) from None

    try:
        return AbsorptionConfig(**{"seed": config.seed, **config.absorption, "progress": config.progress})
    except TypeError as exc:
        raise ConfigError(f"absorption settings {config.absorption}: {exc}; accepted: AbsorptionConfig's "
                          "fields") from None


def _absorption(sae: SAE, ctx: PanelContext) -> MetricOutput:
    from saelab.eval.absorption import absorption
    from saelab.eval.concepts import default_context, first_letter_data
    from saelab.eval.probing import example_activations, probe_hook

    cfg = absorption_config(ctx.config)
    if "absorption_words" not in ctx.shared:  # tokenized once, shared by every SAE of the panel
        texts = concept_texts(ctx.config, cfg.n_documents)
        ctx.shared["absorption_words"] = first_letter_data(ctx.lm, texts, context_size=default_context(ctx.lm),
                                                           seed=cfg.seed)
    data = ctx.shared["absorption_words"]
    hook = probe_hook(ctx.lm, sae)
    key = f"absorption_activations:{hook}"
    if key not in ctx.shared:  # one forward pass per hook, shared by the SAEs that read it
        ctx.shared[key] = example_activations(ctx.lm, hook, data.input_ids, data.context, data.positions,
                                              batch_size=cfg.batch_size, progress=cfg.progress)
    result = absorption(sae, ctx.lm, data, config=cfg, activations=ctx.shared[key])
    result.notes.append(f"words from {cfg.n_documents} texts of {ctx.config.eval_source} (read_texts)")
    out = result.to_dict()
    summary = out["summary"]
    figures = {"mean_absorption_fraction": summary["mean_absorption_fraction_score"],
               "mean_full_absorption": summary["mean_full_absorption_score"],
               "mean_num_split_features": summary["mean_num_split_features"],
               "n_letters_scored": summary["n_letters_scored"]}
    means = ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features",
             "std_dev_absorption_fraction_score", "std_dev_full_absorption_score", "std_dev_num_split_features")
    metrics = {"mean": {key: _undefined(summary[key]) for key in means}}
    eval_config = {"model_name": ctx.lm.name, "random_seed": cfg.seed, "f1_jump_threshold": cfg.f1_jump_threshold,
                   "max_k_value": cfg.max_k, "llm_batch_size": cfg.batch_size,
                   "llm_dtype": str(ctx.lm.dtype).removeprefix("torch."), "k_sparse_probe_l1_decay": cfg.l1_decay,
                   "min_GT_probe_f1": cfg.min_probe_f1, "min_feats_for_eval": cfg.min_letters}
    notes = {"saelab_result": out, "notes": out["notes"],
             "not_measured": ["eval_config.prompt_template", "eval_config.prompt_token_pos",
                              "eval_config.k_sparse_probe_batch_size", "eval_config.k_sparse_probe_num_epochs"],
             "definitions": {"words": "single-token words read in running text, not in SAEBench's prompt",
                             "undefined": "a mean over no scored letter (or a deviation over one) is -1"}}
    return MetricOutput(figures, out, saebench_output("absorption_first_letter", eval_config, metrics, sae,
                                                      out["saebench_details"], notes))


def _absorption_settings(config: PanelConfig) -> dict[str, Any]:
    settings = absorption_config(config).to_dict()
    settings.pop("progress")
    return {**settings, "text_source": config.eval_source}


register_metric(PanelMetric(
    "absorption", _absorption, _absorption_settings,
    {"mean_absorption_fraction": "lower", "mean_full_absorption": "lower", "mean_num_split_features": "",
     "n_letters_scored": ""},
    "feature absorption on the first-letter task (saelab.eval.absorption)"))


# ----------------------------------------------------------------------------------- the panel
def load_entries(lm: LoadedModel, paths: Sequence[str], device: str | None = None) -> list[PanelEntry]:
    """Load every SAE folder and check it fits ``lm`` (its hook exists there, with its width) before
    any metric runs; rows are labelled by SAE name (``-2``, ``-3``... for repeats)."""
    from saelab.sae.folder import load_sae_with_info
    from saelab.splicing import check_sae_fits

    if not paths:
        raise ConfigError("give at least one SAE folder (--sae DIR [DIR ...])")
    loaded = []
    for path in paths:
        sae, info = load_sae_with_info(path, device=device or str(lm.device))
        check_sae_fits(lm, sae)
        loaded.append((str(path), sae, info))
    labels = row_labels([(sae.cfg.name, info.path) for _, sae, info in loaded])
    entries = []
    for label, (path, sae, info) in zip(labels, loaded, strict=True):
        recorded = info.saelab.get("checksums", {}).get(WEIGHTS_FILENAME)
        entries.append(PanelEntry(label, path, sae, info, recorded or sha256_file(info.path / WEIGHTS_FILENAME)))
    return entries


def row_labels(saes: Sequence[tuple[str, Path]]) -> list[str]:
    """One label per ``(SAE name, folder)``: the name, or where names repeat, the nearest parent
    folder name that tells them apart and the name (``run_a.sae``); ``-2``, ``-3``... when even the
    folders repeat. Labels use letters, digits and ``. _ + = -`` (they name cache folders)."""
    import re

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._+=-]", "_", text)

    labels = [safe(name) for name, _ in saes]
    for name in set(labels):
        group = [i for i, label in enumerate(labels) if label == name]
        if len(group) < 2:
            continue
        parents = [Path(saes[i][1]).resolve().parts[:-1] for i in group]
        for depth in range(1, max(len(p) for p in parents) + 1):
            tags = [safe(p[-depth]) if len(p) >= depth else "" for p in parents]
            if len(set(zip(tags, parents, strict=True))) == len(set(tags)) == len(set(parents)):
                for i, tag in zip(group, tags, strict=True):
                    labels[i] = f"{tag}.{name}"
                break
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label}-{seen[label]}"
    return labels


def _json_normal(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists), for comparing a cache key."""
    return json.loads(json.dumps(obj, default=str))


def cache_key(metric: PanelMetric, ctx: PanelContext) -> dict[str, Any]:
    """What a cached result must match to be reused: settings, SAE weights, model."""
    return _json_normal({"metric": metric.name, "settings": metric.settings(ctx.config),
                         "sae_weights_sha256": ctx.entry.weights_sha256,
                         "model": ctx.model_id or model_identity(ctx.lm)})


def model_identity(lm: LoadedModel) -> dict[str, str]:
    return {"name": lm.name, "fingerprint": lm.fingerprint()}


def cache_path(out_dir: Path, label: str, metric: str) -> Path:
    return out_dir / "cache" / label / f"{metric}.json"


def _read_cache(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached record at ``path`` if it exists, parses and was computed for ``key``; else None."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        print(f"saelab panel: warning: {path} is unreadable; computing it again", file=sys.stderr)
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


def _cached(metric: PanelMetric, ctx: PanelContext) -> dict[str, Any] | None:
    if ctx.config.force:
        return None
    return _read_cache(cache_path(ctx.out_dir, ctx.entry.label, metric.name), cache_key(metric, ctx))


def _store(metric: PanelMetric, ctx: PanelContext, output: MetricOutput | dict) -> dict[str, Any]:
    """Write the record of ``output`` atomically to the cache and return it (``"cached": False``)."""
    if isinstance(output, dict):
        output = MetricOutput(output, {})
    figures = {name: output.figures.get(name) for name in metric.columns_for(ctx.config)}
    record = _json_normal({"key": cache_key(metric, ctx), "figures": figures, "result": output.result,
                           "saebench": output.saebench})
    atomic_write_json(cache_path(ctx.out_dir, ctx.entry.label, metric.name), record)
    return {**record, "cached": False}


def _prefetch(metric: PanelMetric, contexts: list[PanelContext]) -> None:
    """For a metric with ``compute_many``: compute the SAEs whose results are not cached in one call
    and store each (``run_metric`` then returns it). A refusal leaves them to ``compute``, one SAE at
    a time, so that only the SAE at fault gets the error."""
    todo = [ctx for ctx in contexts if _cached(metric, ctx) is None]
    if metric.compute_many is None or len(todo) < 2:
        return
    try:
        outputs = metric.compute_many(todo)
    except SaelabError as exc:
        print(f"saelab panel: {metric.name} for {len(todo)} SAEs at once failed ({exc}); one at a time",
              file=sys.stderr)
        return
    for ctx, output in zip(todo, outputs, strict=True):
        ctx.shared[("computed", metric.name, ctx.entry.label)] = _store(metric, ctx, output)


def run_metric(metric: PanelMetric, ctx: PanelContext) -> dict[str, Any]:
    """The cached record of ``metric`` on this SAE, computed (and cached atomically) when missing or stale:
    ``{"key", "figures", "result", "saebench", "cached"}``."""
    computed = ctx.shared.pop(("computed", metric.name, ctx.entry.label), None)  # by _prefetch, this run
    if computed is not None:
        return computed
    record = _cached(metric, ctx)
    if record is not None:
        return {**record, "cached": True}
    return _store(metric, ctx, metric.compute(ctx.entry.sae, ctx))


def columns_of(config: PanelConfig) -> list[tuple[str, str]]:
    """``(column "metric.figure", better)`` in table order."""
    return [(f"{name}.{figure}", better) for name in config.metrics
            for figure, better in METRICS[name].columns_for(config).items()]


def winners(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Per ranked column, the SAE with the best finite value (ties: the first row)."""
    out = {}
    for column, better in columns:
        values = [(r[column], r["sae"]) for r in rows
                  if isinstance(r.get(column), (int, float)) and math.isfinite(r[column])]
        if not better or not values:
            continue
        value, sae = (max if better == "higher" else min)(values, key=lambda v: v[0])
        out[column] = {"sae": sae, "value": value, "better": better}
    return out


def format_panel(report: dict[str, Any]) -> str:
    """The Markdown of ``panel.md``: one row per SAE, then which SAE wins each ranked figure."""
    from saelab.eval.report import markdown_table

    arrows = {"higher": " ↑", "lower": " ↓", "": ""}
    columns = [(c["name"], c["better"]) for c in report["columns"]]
    header = ["sae", "architecture", "d_sae"] + [name + arrows[better] for name, better in columns]
    table = markdown_table(header, [[r["sae"], r["architecture"], r["d_sae"]] + [r.get(c) for c, _ in columns]
                                    for r in report["rows"]])
    parts = [f"SAE panel on {report['model']} ({len(report['rows'])} SAEs; ↑/↓: higher/lower wins)", "", table]
    if report["winners"]:
        parts += ["", "winners", "", markdown_table(
            ["figure", "best SAE", "value"], [[c, w["sae"], w["value"]] for c, w in report["winners"].items()])]
    if report["errors"]:
        parts += ["", "not computed", ""] + [f"- {e['sae']} / {e['metric']}: {e['error']}" for e in report["errors"]]
    return "\n".join(parts) + "\n"


def plot_panel(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """``plots/<metric>.png``: a bar per SAE for each figure of the metric; returns {metric: path}."""
    from saelab.plotting import pyplot, save_png

    plt = pyplot()
    paths = {}
    labels = [r["sae"] for r in report["rows"]]
    for metric in report["metrics"]:
        columns = [c for c in report["columns"] if c["name"].startswith(metric + ".")]
        if not columns:
            continue
        n_cols = min(4, len(columns))
        n_rows = math.ceil(len(columns) / n_cols)
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(1 + 2.8 * n_cols, 0.6 + 2.9 * n_rows), squeeze=False)
        for ax in axes.flat[len(columns):]:
            ax.set_visible(False)
        for ax, column in zip(axes.flat, columns, strict=False):
            values = [r.get(column["name"]) for r in report["rows"]]
            ax.bar(range(len(labels)), [v if isinstance(v, (int, float)) else 0 for v in values],
                   color=["#4c72b0" if v is not None else "#cccccc" for v in values])
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
            arrow = {"higher": " (higher wins)", "lower": " (lower wins)"}.get(column["better"], "")
            ax.set_title(column["name"].split(".", 1)[1] + arrow, fontsize=8)
        fig.suptitle(f"{metric}: {METRICS[metric].description}", fontsize=8)
        fig.subplots_adjust(hspace=0.9, wspace=0.35)
        paths[metric] = str(save_png(fig, out_dir / "plots" / f"{metric}.png"))
    return paths


def _write_saebench(out_dir: Path, label: str, output: dict[str, Any]) -> str:
    path = out_dir / "saebench" / output["eval_type_id"] / f"{label}_eval_results.json"
    atomic_write_bytes(path, (json.dumps(output, indent=2, allow_nan=False, default=str) + "\n").encode())
    return str(path)


def run_panel(lm: LoadedModel, sae_paths: Sequence[str], out_dir: str | Path,
              config: PanelConfig | None = None) -> dict[str, Any]:
    """Run ``config.metrics`` on every SAE folder of ``sae_paths`` with ``lm`` and write the table,
    plots, SAEBench files and cache under ``out_dir`` (module docstring); returns panel.json's object."""
    from saelab.eval.sweep import table_csv
    from saelab.fileio import check_output_folder

    config = config or PanelConfig()
    limit = model_context(lm)
    if limit is not None and config.core.context_size > limit:
        config = dataclasses.replace(config, core=dataclasses.replace(config.core, context_size=limit))
    out = check_output_folder(out_dir, what="panel output folder")
    entries = load_entries(lm, sae_paths)
    records: dict[str, dict[str, dict]] = {e.label: {} for e in entries}
    errors, saebench_files = [], {}
    model_id, shared = model_identity(lm), {}
    contexts = [PanelContext(lm, config, entry, out, model_id, shared) for entry in entries]
    for name in config.metrics:
        _prefetch(METRICS[name], contexts)
    for entry, ctx in zip(entries, contexts, strict=True):
        for name in config.metrics:
            try:
                record = run_metric(METRICS[name], ctx)
            except SaelabError as exc:
                errors.append({"sae": entry.label, "metric": name, "error": str(exc)})
                print(f"saelab panel: {entry.label} / {name} not computed: {exc}", file=sys.stderr)
                continue
            records[entry.label][name] = record
            if record.get("saebench"):
                saebench_files.setdefault(entry.label, {})[name] = _write_saebench(out, entry.label, record["saebench"])
    columns = columns_of(config)
    rows = []
    for entry in entries:
        cfg = entry.sae.cfg
        row: dict[str, Any] = {"sae": entry.label, "path": entry.path, "architecture": cfg.architecture,
                               "d_sae": cfg.d_sae, "hook": cfg.hook_name}
        for column, _ in columns:
            metric, figure = column.split(".", 1)
            row[column] = records[entry.label].get(metric, {}).get("figures", {}).get(figure)
        rows.append(row)
    report: dict[str, Any] = {
        "model": lm.name, "metrics": list(config.metrics),
        "columns": [{"name": c, "better": b} for c, b in columns], "rows": rows,
        "winners": winners(rows, columns), "errors": errors,
        "cached": {e.label: [m for m, r in records[e.label].items() if r["cached"]] for e in entries},
        "settings": {m: METRICS[m].settings(config) for m in config.metrics},
    }
    spread = seed_spread(rows, columns)
    report["files"] = {"json": str(out / "panel.json"), "csv": str(out / "panel.csv"), "md": str(out / "panel.md"),
                       "plots": plot_panel(report, out), "saebench": saebench_files,
                       "cache": str(out / "cache")}
    if spread is not None:
        report["seed_spread"] = spread
        report["files"]["seeds_md"] = str(out / "panel_seeds.md")
        report["files"]["seeds_plot"] = str(plot_spread(spread, columns, out / "plots" / "seeds.png"))
        atomic_write_bytes(out / "panel_seeds.md", format_spread(spread, columns).encode())
    atomic_write_bytes(out / "panel.csv", table_csv(rows, ("sae", "architecture", "d_sae", "hook", "path",
                                                           *(c for c, _ in columns))).encode())
    atomic_write_bytes(out / "panel.md", format_panel(report).encode())
    atomic_write_json(out / "panel.json", _json_normal(report))
    return report
