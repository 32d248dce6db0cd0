"""k-sparse probing (Gao et al. 2024; SAEBench's sparse-probing eval): how well do k SAE latents,
chosen by mean difference, predict a binary concept, against a dense probe on the raw activations?

    result = sparse_probing(sae, lm, toy_concepts(lm), ks=(1, 2, 5, 20), seed=0)
    result.summary()["sae_top_k"]["1"]["accuracy"]; result.to_dict(); result.saebench_metrics()
    acts = collect_probe_activations(lm, hook, concepts)        # once per hook, for several SAEs
    results = sparse_probing_saes([sae_a, sae_b], lm, concepts)

Per concept (``saelab.eval.concepts``; balanced classes):

1. ``x [n, d_in]``: the activations at the SAE's hook (a transcoder's source hook) at each example's
   token, one forward pass per distinct context; ``z = sae.encode(x)`` ``[n, d_sae]``.
2. Split (seeded by ``seed`` and the concept's name): by context (``split="context"``, the
   default: ``train_fraction`` of the concept's contexts train, the rest test, so no text is on both
   sides, as SAEBench splits documents; contexts with and without a positive example are split
   separately), or stratified by example (``"example"``: ``train_fraction`` of each class).
3. Latent choice on the training split only: the k latents with the largest |mean over positives −
   mean over negatives| (SAEBench's ``get_top_k_mean_diff_mask``; ties to the lower index).
4. Probes: scikit-learn ``LogisticRegression`` (L2, ``C``, lbfgs, ``max_iter``) on the chosen
   latents, for every k; on all of ``x`` (the dense probe, SAEBench's ``llm_test_accuracy``); on the
   top-k raw dimensions by the same mean difference (``llm_top_{k}``); and on all latents
   (``sae_test_accuracy``). Inputs are standardised with the training split's mean and standard
   deviation (SAEBench fits unscaled inputs; scaling makes one ``C`` fit residual streams of any norm).
5. Test accuracy (threshold 0 on the decision function) and ROC AUC.

Aggregates: the mean over concepts, per group, and ``saebench_metrics()``: the mean over groups of the
per-group means (SAEBench averages classes within a data set, then data sets).
"""

from __future__ import annotations

import itertools
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.errors import ConfigError, SaelabError, check_choice, check_range
from saelab.eval.concepts import DEFAULT_MIN_PER_CLASS, ConceptData, ConceptError, vocabulary_id
from saelab.models import LoadedModel
from saelab.sae.base import SAE
from saelab.splicing import check_sae_fits, flat_per_token

DEFAULT_KS = (1, 2, 5, 20)
SPLITS = ("context", "example")


class ProbeDataError(SaelabError):
    """Probe activations that do not belong to the SAE's hook, model or concepts."""


@dataclass
class ProbingConfig:
    """ks: latent counts probed. seed: train/test split. split: "context" (texts wholly on one
    side) or "example" (stratified). train_fraction: of the contexts, or per class. min_per_class:
    concepts with fewer examples of a class are refused. C, max_iter: of the logistic regressions.
    raw_top_k / all_latents: also fit SAEBench's top-k raw-dimension and all-latent probes.
    batch_size: contexts per forward pass."""

    ks: tuple[int, ...] = DEFAULT_KS
    seed: int = 0
    split: str = "context"
    train_fraction: float = 0.8
    min_per_class: int = DEFAULT_MIN_PER_CLASS
    C: float = 1.0
    max_iter: int = 1000
    raw_top_k: bool = True
    all_latents: bool = True
    batch_size: int = 32
    progress: bool = True

    def __post_init__(self) -> None:
        self.ks = tuple(self.ks)
        if not self.ks:
            raise ConfigError("ks=() is not accepted; give at least one k, e.g. 1,2,5,20")
        for k in self.ks:
            check_range("ks[]", k, 1, None, integer=True)
        if len(set(self.ks)) != len(self.ks):
            raise ConfigError(f"ks={self.ks!r} repeats a value; give each k once")
        check_range("seed", self.seed, 0, None, integer=True)
        check_choice("split", self.split, SPLITS)
        check_range("train_fraction", self.train_fraction, 0, 1, lo_open=True)
        if self.train_fraction >= 1:
            raise ConfigError(f"train_fraction={self.train_fraction!r} leaves no test examples; accepted: (0, 1)")
        check_range("min_per_class", self.min_per_class, 2, None, integer=True)
        check_range("C", self.C, 0, None, lo_open=True)
        check_range("max_iter", self.max_iter, 1, None, integer=True)
        check_range("batch_size", self.batch_size, 1, None, integer=True)

    def to_dict(self) -> dict:
        return {**asdict(self), "ks": list(self.ks)}


# ----------------------------------------------------------------------------------- activations
@torch.no_grad()
def example_activations(lm: LoadedModel, hook: str, input_ids: Tensor, context: Tensor, positions: Tensor, *,
                        batch_size: int = 32, progress: bool = False) -> Tensor:
    """``[n, d_in]`` float32 (CPU): the value of ``hook`` (flattened per token) at ``(context[i],
    positions[i])`` of ``input_ids [n_contexts, context]``; each needed context runs once, up to the
    last position read from it."""
    lm.parse_hooks([hook])
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= lm.d_vocab):
        raise ConceptError(f"token ids must lie in 0..{lm.d_vocab - 1} for {lm.name!r}; got values in "
                           f"{int(input_ids.min())}..{int(input_ids.max())} (tokenized for another model?)")
    rows = context.unique()
    out = torch.empty(len(context), lm.hook_d_in(hook))
    bar = tqdm(total=len(rows), unit="ctx", desc=f"activations {hook}", disable=not progress)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        local = torch.full((input_ids.shape[0],), -1, dtype=torch.long)
        local[chunk] = torch.arange(len(chunk))
        where = (local[context] >= 0).nonzero().squeeze(1)
        width = int(positions[where].max()) + 1                         # causal: later tokens change nothing
        _, cache = lm.run_with_cache(input_ids[chunk, :width].to(lm.device), [hook], stop_at_layer="auto")
        value = flat_per_token(cache[hook]).float().cpu()               # [chunk, width, d_in]
        out[where] = value[local[context[where]], positions[where]]
        bar.update(len(chunk))
    bar.close()
    return out


@dataclass
class ProbeActivations:
    """The activations of ``concepts`` at ``hook`` of ``model`` (``xs[i]``: ``[n_i, d_in]``), reusable
    by every SAE that reads that hook."""

    hook: str
    model: str
    concepts: list[ConceptData]
    xs: list[Tensor]


def collect_probe_activations(lm: LoadedModel, hook: str, concepts: Sequence[ConceptData], *, batch_size: int = 32,
                              progress: bool = True) -> ProbeActivations:
    """Activations at ``hook`` for every example of ``concepts``; concepts that share one
    ``input_ids`` tensor share its forward passes."""
    concepts = list(concepts)
    if not concepts:
        raise ConceptError("no concept to probe; give at least one (e.g. toy_concepts(lm))")
    _check_vocabulary(lm, concepts)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(concepts):
        groups.setdefault(id(c.input_ids), []).append(i)
    xs: list[Tensor | None] = [None] * len(concepts)
    for members in groups.values():
        ids = concepts[members[0]].input_ids
        context = torch.cat([concepts[i].context for i in members])
        positions = torch.cat([concepts[i].positions for i in members])
        x = example_activations(lm, hook, ids, context, positions, batch_size=batch_size, progress=progress)
        start = 0
        for i in members:
            n = len(concepts[i].context)
            xs[i] = x[start:start + n]
            start += n
    return ProbeActivations(hook, lm.name, concepts, xs)  # type: ignore[arg-type]


def _check_vocabulary(lm: LoadedModel, concepts: Sequence[ConceptData]) -> None:
    if not any(c.vocabulary for c in concepts):
        return
    have = vocabulary_id(lm)
    wrong = [c.name for c in concepts if c.vocabulary and c.vocabulary != have]
    if wrong:
        raise ConceptError(f"concepts {wrong[:5]} were tokenized for another tokenizer than {lm.name!r}'s; build "
                           "them with this model (e.g. toy_concepts(lm) needs the toy model, first_letter_data(lm, "
                           "texts) any model)")


# ----------------------------------------------------------------------------------- probes
def stratified_split(labels: Tensor, train_fraction: float, seed: int, name: str = "") -> Tensor:
    """``[n]`` bool: True for training examples, ``round(train_fraction · n_c)`` of each class c
    (at least one and at most n_c − 1 when n_c ≥ 2), drawn by ``seed`` and ``name``."""
    train = torch.zeros(len(labels), dtype=torch.bool)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    for value in (True, False):
        idx = (labels == value).nonzero().squeeze(1)
        if not len(idx):
            continue
        n_train = min(max(round(train_fraction * len(idx)), 1), max(len(idx) - 1, 1))
        train[idx[torch.randperm(len(idx), generator=gen)[:n_train]]] = True
    return train


def context_split(context: Tensor, labels: Tensor, train_fraction: float, seed: int, name: str = "") -> Tensor:
    """``[n]`` bool: True for examples whose context is a training context. The distinct ``context
    [n]`` rows holding a positive example and those holding none are split separately (so a
    document-level concept keeps positives on both sides): ``round(train_fraction · n_rows)`` of each
    (at least one, and one left to test), drawn by ``seed`` and ``name``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"context:{name}".encode()))
    with_positive = context[labels].unique()
    train = torch.zeros(len(context), dtype=torch.bool)
    for rows in (with_positive, context[~torch.isin(context, with_positive)].unique()):
        if not len(rows):
            continue
        n_train = min(max(round(train_fraction * len(rows)), 1), max(len(rows) - 1, 1))
        train |= torch.isin(context, rows[torch.randperm(len(rows), generator=gen)[:n_train]])
    return train


def split_concept(concept: ConceptData, config: ProbingConfig) -> Tensor:
    """The ``[n]`` bool training mask of ``concept`` under ``config.split``."""
    if config.split == "context":
        return context_split(concept.context, concept.labels, config.train_fraction, config.seed, concept.name)
    return stratified_split(concept.labels, config.train_fraction, config.seed, concept.name)


def mean_difference(values: Tensor, labels: Tensor) -> Tensor:
    """``[d]``: |mean of ``values [n, d]`` over positives − mean over negatives| per column."""
    v = values.double()
    return (v[labels].mean(0) - v[~labels].mean(0)).abs()


def top_mean_difference(values: Tensor, labels: Tensor, k: int) -> Tensor:
    """The ``k`` columns with the largest ``mean_difference`` (ties to the lower index), ``[k]`` long."""
    if k > values.shape[1]:
        raise ConfigError(f"k={k} exceeds the {values.shape[1]} columns there are to choose from; use smaller ks")
    return torch.sort(mean_difference(values, labels), descending=True, stable=True).indices[:k]


@dataclass
class ProbeScore:
    """Test accuracy (decision > 0) and ROC AUC of one probe."""

    accuracy: float
    auc: float


def fit_probe(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, C: float = 1.0,
              max_iter: int = 1000) -> tuple[ProbeScore, bool]:
    """Fit a standardised L2 logistic regression on ``x_train [n, d]`` and score it on ``x_test``;
    returns (score, converged)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    a, b = x_train.double().numpy(), x_test.double().numpy()
    mean, std = a.mean(0), a.std(0)
    std[std == 0] = 1.0
    a, b = (a - mean) / std, (b - mean) / std
    yt, ye = y_train.numpy(), y_test.numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe = LogisticRegression(C=C, max_iter=max_iter).fit(a, yt)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    scores = probe.decision_function(b)
    return ProbeScore(float(((scores > 0) == ye).mean()), float(roc_auc_score(ye, scores))), converged


@dataclass
class ConceptProbe:
    """The probes of one concept: ``dense`` (all raw dimensions), ``sae[k]`` with its ``latents[k]``,
    ``raw[k]`` (top-k raw dimensions), ``sae_all`` (all latents)."""

    concept: str
    group: str
    n_train: int
    n_test: int
    dense: ProbeScore
    sae: dict[int, ProbeScore]
    latents: dict[int, list[int]]
    raw: dict[int, ProbeScore] = field(default_factory=dict)
    sae_all: ProbeScore | None = None
    not_converged: int = 0

    def to_dict(self) -> dict:
        return {"concept": self.concept, "group": self.group, "n_train": self.n_train, "n_test": self.n_test,
                "dense": asdict(self.dense), "sae_top_k": {str(k): asdict(s) for k, s in self.sae.items()},
                "latents": {str(k): v for k, v in self.latents.items()},
                "raw_top_k": {str(k): asdict(s) for k, s in self.raw.items()},
                "sae_all_latents": asdict(self.sae_all) if self.sae_all else None,
                "not_converged": self.not_converged}


def check_ks(ks: Sequence[int], d_sae: int) -> None:
    """Refuse a k larger than the number of latents ``d_sae``."""
    too_many = [k for k in ks if k > d_sae]
    if too_many:
        raise ConfigError(f"ks contains {too_many}, but the SAE has only {d_sae} latents; use ks of at most {d_sae}")


def probe_concept(x: Tensor, z: Tensor, labels: Tensor, train: Tensor, config: ProbingConfig, *, name: str = "",
                  group: str = "") -> ConceptProbe:
    """All probes of one concept from ``x [n, d_in]`` (raw), ``z [n, d_sae]`` (latents), ``labels [n]``
    bool and the ``train [n]`` bool split (see the module docstring)."""
    check_ks(config.ks, z.shape[1])
    test = ~train
    y_tr, y_te = labels[train], labels[test]
    if y_tr.all() or not y_tr.any() or y_te.all() or not y_te.any():
        raise ConceptError(f"concept {name!r}: the split leaves one class out of training or testing "
                           f"({int(y_tr.sum())}/{len(y_tr)} positive in train, {int(y_te.sum())}/{len(y_te)} in "
                           "test); give more texts, or split by example (ProbingConfig(split='example'))")
    failed = 0

    def fit(a: Tensor, b: Tensor) -> ProbeScore:
        nonlocal failed
        score, ok = fit_probe(a, y_tr, b, y_te, C=config.C, max_iter=config.max_iter)
        failed += not ok
        return score

    dense = fit(x[train], x[test])
    sae, latents, raw = {}, {}, {}
    for k in config.ks:
        chosen = top_mean_difference(z[train], y_tr, k)
        latents[k] = chosen.tolist()
        sae[k] = fit(z[train][:, chosen], z[test][:, chosen])
        if config.raw_top_k and k <= x.shape[1]:
            dims = top_mean_difference(x[train], y_tr, k)
            raw[k] = fit(x[train][:, dims], x[test][:, dims])
    sae_all = fit(z[train], z[test]) if config.all_latents else None
    return ConceptProbe(name, group, int(train.sum()), int(test.sum()), dense, sae, latents, raw, sae_all, failed)


# ----------------------------------------------------------------------------------- results
def _mean_scores(scores: list[ProbeScore]) -> dict[str, float] | None:
    if not scores:
        return None
    return {"accuracy": float(np.mean([s.accuracy for s in scores])), "auc": float(np.mean([s.auc for s in scores]))}


def _aggregate(rows: list[ConceptProbe], ks: Sequence[int]) -> dict:
    return {
        "n_concepts": len(rows),
        "dense": _mean_scores([r.dense for r in rows]),
        "sae_top_k": {str(k): _mean_scores([r.sae[k] for r in rows]) for k in ks},
        "raw_top_k": {str(k): _mean_scores([r.raw[k] for r in rows if k in r.raw]) for k in ks
                      if any(k in r.raw for r in rows)},
        "sae_all_latents": _mean_scores([r.sae_all for r in rows if r.sae_all is not None]),
    }


@dataclass
class ProbingResult:
    """k-sparse probing of one SAE: per-concept ``rows``, their aggregates (``summary``) and notes."""

    sae: str
    architecture: str
    hook: str
    model: str
    d_sae: int
    config: ProbingConfig
    rows: list[ConceptProbe]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """Means over concepts (``dense``, ``sae_top_k[k]``, ``raw_top_k[k]``, ``sae_all_latents``) and
        the same per group (``by_group``)."""
        out = _aggregate(self.rows, self.config.ks)
        groups = dict.fromkeys(r.group for r in self.rows)
        out["by_group"] = {g: _aggregate([r for r in self.rows if r.group == g], self.config.ks) for g in groups}
        return out

    def saebench_metrics(self) -> dict[str, dict[str, float]]:
        """SAEBench's ``eval_result_metrics`` of sparse probing: ``llm`` (``llm_test_accuracy``,
        ``llm_top_{k}_test_accuracy``) and ``sae`` (``sae_test_accuracy``, ``sae_top_{k}_test_accuracy``),
        each the mean over groups of the per-group mean accuracy."""
        groups = list(dict.fromkeys(r.group for r in self.rows))

        def over_groups(pick) -> float | None:
            means = []
            for g in groups:
                values = [v for v in (pick(r) for r in self.rows if r.group == g) if v is not None]
                if values:
                    means.append(float(np.mean(values)))
            return float(np.mean(means)) if means else None

        llm: dict[str, float] = {"llm_test_accuracy": over_groups(lambda r: r.dense.accuracy)}
        sae: dict[str, float] = {}
        if self.config.all_latents:
            sae["sae_test_accuracy"] = over_groups(lambda r: r.sae_all.accuracy if r.sae_all else None)
        for k in self.config.ks:
            raw = over_groups(lambda r, k=k: r.raw[k].accuracy if k in r.raw else None)
            if raw is not None:
                llm[f"llm_top_{k}_test_accuracy"] = raw
            sae[f"sae_top_{k}_test_accuracy"] = over_groups(lambda r, k=k: r.sae[k].accuracy)
        return {"llm": llm, "sae": sae}

    def to_dict(self) -> dict:
        return {"sae": self.sae, "architecture": self.architecture, "hook": self.hook, "model": self.model,
                "d_sae": self.d_sae, "ks": list(self.config.ks), "seed": self.config.seed,
                "config": self.config.to_dict(), "summary": self.summary(), "saebench": self.saebench_metrics(),
                "concepts": [r.to_dict() for r in self.rows], "notes": list(self.notes)}


# ----------------------------------------------------------------------------------- entry points
def probe_hook(lm: LoadedModel, sae: SAE) -> str:
    """The hook whose activations ``sae``'s latents read (a transcoder's source), checked against ``lm``."""
    return check_sae_fits(lm, sae).source


def _check_activations(sae: SAE, hook: str, concepts: Sequence[ConceptData], acts: ProbeActivations,
                       lm: LoadedModel) -> None:
    if acts.hook != hook:
        raise ProbeDataError(f"SAE {sae.cfg.name!r} reads hook {hook!r}, but the probe activations were collected at "
                             f"{acts.hook!r}; collect them at {hook!r} (collect_probe_activations(lm, {hook!r}, ...))")
    if acts.model != lm.name:
        raise ProbeDataError(f"the probe activations come from model {acts.model!r}, not {lm.name!r}; collect them "
                             "with the model the SAE is evaluated on")
    if [c.name for c in acts.concepts] != [c.name for c in concepts]:
        raise ProbeDataError("the probe activations were collected for other concepts; collect them for these")


@torch.no_grad()
def encode_latents(sae: SAE, x: Tensor, chunk: int = 4096) -> Tensor:
    """``[n, d_sae]`` float32 (CPU): ``sae.encode`` of ``x [n, d_in]`` in chunks of ``chunk`` rows."""
    dev, dtype = sae.W_dec.device, sae.W_dec.dtype
    return torch.cat([sae.encode(x[i:i + chunk].to(dev, dtype)).float().cpu() for i in range(0, len(x), chunk)])


def sparse_probing(sae: SAE, lm: LoadedModel, concepts: Sequence[ConceptData], ks: Sequence[int] | None = None,
                   seed: int | None = None, config: ProbingConfig | None = None,
                   activations: ProbeActivations | None = None) -> ProbingResult:
    """k-sparse probing of ``sae`` on ``concepts`` (see the module docstring). ``ks`` and ``seed``
    override ``config``'s; ``activations`` (from ``collect_probe_activations`` at the SAE's hook)
    skip the forward passes."""
    config = config or ProbingConfig()
    if ks is not None or seed is not None:
        config = ProbingConfig(**{**config.to_dict(), **({"ks": tuple(ks)} if ks is not None else {}),
                                  **({"seed": seed} if seed is not None else {})})
    concepts = list(concepts)
    hook = probe_hook(lm, sae)
    check_ks(config.ks, sae.cfg.d_sae)
    if not concepts:
        raise ConceptError("no concept to probe; give at least one (e.g. toy_concepts(lm))")
    for c in concepts:
        c.check(config.min_per_class)
    if activations is None:
        activations = collect_probe_activations(lm, hook, concepts, batch_size=config.batch_size,
                                                progress=config.progress)
    _check_activations(sae, hook, concepts, activations, lm)
    sae.eval()
    rows = []
    for concept, x in tqdm(list(zip(concepts, activations.xs, strict=True)), desc=f"probing {sae.cfg.name}",
                           unit="concept", disable=not config.progress):
        train = split_concept(concept, config)
        rows.append(probe_concept(x, encode_latents(sae, x), concept.labels, train, config, name=concept.name,
                                  group=concept.group))
    notes = []
    failed = sum(r.not_converged for r in rows)
    if failed:
        notes.append(f"{failed} logistic regressions stopped at max_iter={config.max_iter} before converging")
    return ProbingResult(sae.cfg.name, sae.cfg.architecture, hook, lm.name, sae.cfg.d_sae, config, rows, notes)


def sparse_probing_saes(saes: Sequence[SAE], lm: LoadedModel, concepts: Sequence[ConceptData],
                        ks: Sequence[int] | None = None, seed: int | None = None,
                        config: ProbingConfig | None = None) -> list[ProbingResult]:
    """``sparse_probing`` of several SAEs; activations are collected once per hook."""
    cache: dict[str, ProbeActivations] = {}
    config = config or ProbingConfig()
    out = []
    for sae in saes:
        probe_hook(lm, sae)
        check_ks(config.ks if ks is None else ks, sae.cfg.d_sae)
    for sae in saes:
        hook = probe_hook(lm, sae)
        if hook not in cache:
            cache[hook] = collect_probe_activations(lm, hook, concepts, batch_size=config.batch_size,
                                                    progress=config.progress)
        out.append(sparse_probing(sae, lm, concepts, ks, seed, config, activations=cache[hook]))
    return out


def plot_accuracy_vs_k(results: Sequence[ProbingResult], path, metric: str = "accuracy"):
    """Mean test ``metric`` (accuracy or auc) of the k-sparse probes against k, one line per SAE, with
    the dense-probe level of each hook as a grey line; returns the PNG path."""
    from matplotlib.ticker import ScalarFormatter

    from saelab.plotting import pyplot, save_png

    if metric not in ("accuracy", "auc"):
        raise ConfigError(f"metric={metric!r} is not accepted; choose accuracy or auc")
    if not results:
        raise SaelabError("no probing result to plot")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    dense: dict[str, float] = {}
    for result in results:
        summary = result.summary()
        ks = list(result.config.ks)
        ax.plot(ks, [summary["sae_top_k"][str(k)][metric] for k in ks], marker="o",
                label=f"{result.sae} ({result.architecture})")
        dense.setdefault(result.hook, summary["dense"][metric])
    for (hook, level), style in zip(dense.items(), itertools.cycle(("--", ":", "-.")), strict=False):
        ax.axhline(level, color="grey", linestyle=style, linewidth=1, label=f"dense probe, {hook}")
    ax.set_xscale("log")
    ax.set_xticks(sorted({k for r in results for k in r.config.ks}))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("k (latents per probe)")
    ax.set_ylabel(f"mean test {metric}")
    n = results[0].summary()["n_concepts"]
    ax.set_title(f"k-sparse probing, {n} concepts", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, path)
