"""Feature recovery: do an SAE's latents find the variables planted in the toy world?

Every token of the toy corpus (``saelab.toy.corpus``) carries ground-truth labels. Each planted
binary variable (``planted_variables()``: each topic, each syntactic role, induction-predictable
tokens, the IOI roles IO/S1/S2/END/answer, the greater-than and docstring END and answer positions)
is a per-token yes/no. For a set of *units* (an SAE's latents, the model's MLP neurons, random
directions) and, per unit, candidate thresholds, the unit *predicts* the variable on a token when
its value exceeds the threshold. Over held-out tokens the best (unit, threshold) by F1 is reported
per variable with its precision and recall, and per unit set the number of variables recovered at
F1 ≥ ``f1_threshold`` (0.8) and the mean best F1.

Thresholds, stated per unit set in the report:

- SAE latents (a transcoder's too, computed from its source hook, where the baselines are measured):
  active (> 0). No tuning: the latent must fire exactly where the variable holds.
- MLP neurons (``mlp.hook_post`` of the layer whose MLP last wrote into the SAE's hook): twice,
  at > 0, and at the best of 0 and the per-neuron quantiles ``quantiles`` of its values.
- Random directions: as many as the SAE has latents, Gaussian in the hook's space (unit norm);
  the value is the projection x · r, thresholded at the best of its per-direction quantiles.

Quantiles are measured on the first batch of evaluation tokens. Data: documents of
``iter_documents(seed)`` (a held-out seed by default), each as ``<bos>`` + its first
``context_size - 1`` tokens, as the toy model was trained; ``<bos>`` is not scored.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.errors import ConfigError, SaelabError, check_range
from saelab.eval.evaluate import DEFAULT_EVAL_SEED, check_context, model_context
from saelab.models import LoadedModel
from saelab.models.hook_points import MLP_POST, RESID_PRE, parse_hook_name
from saelab.sae.base import SAE
from saelab.splicing import check_sae_fits, flat_per_token
from saelab.toy import vocabulary as V
from saelab.toy.corpus import iter_documents
from saelab.toy.spans import ROLES

IOI_ROLES = ("IO", "S1", "S2", "END", "answer")
ANSWER_POSITIONS = ("greater_than.END", "greater_than.answer", "docstring.END", "docstring.answer")
DEFAULT_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


class NotToyModelError(SaelabError):
    """Feature recovery needs a model that reads the toy world's vocabulary."""


@dataclass(frozen=True)
class PlantedVariable:
    """A per-token yes/no: ``labels[label] == value`` (``group``: topic, role, induction or task)."""

    name: str
    label: str
    value: object
    group: str


def planted_variables() -> list[PlantedVariable]:
    """Every planted binary variable of the toy world (see module docstring), in report order."""
    out = [PlantedVariable(f"topic={t}", "topic", t, "topic") for t in V.TOPIC_NAMES]
    out += [PlantedVariable(f"role={r}", "role", r, "role") for r in ROLES]
    out.append(PlantedVariable("induction", "induction", True, "induction"))
    out += [PlantedVariable(f"task={v}", "task_role", v, "task")
            for v in [f"ioi.{r}" for r in IOI_ROLES] + list(ANSWER_POSITIONS)]
    return out


@dataclass
class RecoveryConfig:
    """tokens: scored (non-BOS) tokens to read. seed: toy document seed (held out from training).
    context_size: tokens per window (default: 128, or the model's context if shorter).
    f1_threshold: a variable counts as recovered at best F1 ≥ this. min_positives: variables with
    fewer positive tokens are reported as skipped. baselines: also score MLP neurons and random
    directions. neuron_hook: the MLP hook of the neuron baseline (default: see module docstring).
    random_seed: of the random directions. quantiles: candidate thresholds of the baselines."""

    tokens: int = 32_768
    seed: int = DEFAULT_EVAL_SEED
    context_size: int | None = None
    batch_size: int = 16
    f1_threshold: float = 0.8
    min_positives: int = 5
    baselines: bool = True
    neuron_hook: str | None = None
    random_seed: int = 0
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    progress: bool = True

    def __post_init__(self) -> None:
        check_range("tokens", self.tokens, 1, None, integer=True)
        check_range("seed", self.seed, 0, None, integer=True)
        if self.context_size is not None:
            check_range("context_size", self.context_size, 2, 1 << 20, integer=True)
        check_range("batch_size", self.batch_size, 1, None, integer=True)
        check_range("f1_threshold", self.f1_threshold, 0, 1)
        check_range("min_positives", self.min_positives, 1, None, integer=True)
        check_range("random_seed", self.random_seed, 0, None, integer=True)
        self.quantiles = tuple(self.quantiles)
        if not self.quantiles:
            raise ConfigError("quantiles=() is not accepted; give at least one quantile in (0, 1)")
        for q in self.quantiles:
            check_range("quantiles[]", q, 0, 1, lo_open=True)
            if q >= 1:
                raise ConfigError(f"quantiles[]={q!r} is out of range; accepted: (0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------- data
def check_toy_vocabulary(lm: LoadedModel) -> None:
    """Refuse a model whose tokenizer does not map the toy words to the toy token ids."""
    tokenizer = lm.tokenizer
    expected = list(range(len(V.ALL_WORDS)))
    ids = tokenizer.convert_tokens_to_ids(list(V.ALL_WORDS)) if tokenizer is not None else None
    if ids != expected or lm.d_vocab < len(V.ALL_WORDS):
        raise NotToyModelError(f"feature recovery needs the toy world, but model {lm.name!r} does not use the toy "
                               f"tokenizer ({len(V.ALL_WORDS)} words, ids in saelab.toy.vocabulary order); use the "
                               "bundled model ('toy') or a model trained with 'saelab toy build'")


def labeled_batches(variables: Sequence[PlantedVariable], seed: int, n_tokens: int, context_size: int,
                    batch_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(input_ids [b, context], labels [b, context, n_vars] bool, scored [b, context] bool)`` of toy
    documents until ``n_tokens`` scored tokens; ``<bos>`` and padding are not scored."""
    documents = iter_documents(seed)
    pad = V.WORD_ID[V.PAD]
    seen = 0
    while seen < n_tokens:
        docs = list(itertools.islice(documents, batch_size))
        ids = np.full((len(docs), context_size), pad, dtype=np.int64)
        labels = np.zeros((len(docs), context_size, len(variables)), dtype=bool)
        scored = np.zeros((len(docs), context_size), dtype=bool)
        for row, doc in enumerate(docs):
            n = min(len(doc.words), context_size - 1)
            ids[row, 0] = V.WORD_ID[V.BOS]
            ids[row, 1:n + 1] = doc.token_ids[:n]
            scored[row, 1:n + 1] = True
            columns = {key: np.asarray(doc.labels[key][:n], dtype=object) for key in {v.label for v in variables}}
            for j, var in enumerate(variables):
                labels[row, 1:n + 1, j] = columns[var.label] == var.value
        seen += int(scored.sum())
        yield torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(scored)


# ----------------------------------------------------------------------------------- scoring
class BestF1Counter:
    """Counts for 'unit value > threshold' as a predictor of each variable.

    thresholds: ``[n_thresholds, n_units]``. Accumulates true positives ``[n_vars, n_thresholds,
    n_units]``, predicted positives ``[n_thresholds, n_units]`` and positives ``[n_vars]``."""

    def __init__(self, thresholds: Tensor, n_vars: int):
        self.thresholds = thresholds.float()
        n_thr, n_units = self.thresholds.shape
        self.true_pos = torch.zeros(n_vars, n_thr, n_units, dtype=torch.float64)
        self.pred_pos = torch.zeros(n_thr, n_units, dtype=torch.float64)
        self.positives = torch.zeros(n_vars, dtype=torch.float64)
        self.n = 0

    @torch.no_grad()
    def update(self, values: Tensor, labels: Tensor) -> None:
        """``values [n, n_units]``, ``labels [n, n_vars]`` bool, for the same n tokens."""
        y = labels.float()
        for t in range(self.thresholds.shape[0]):
            active = (values.float() > self.thresholds[t]).float()
            self.true_pos[:, t] += (y.T @ active).double()
            self.pred_pos[t] += active.sum(0).double()
        self.positives += y.sum(0).double()
        self.n += values.shape[0]

    def best(self) -> list[dict]:
        """Per variable: the best ``unit`` and ``threshold`` by F1, with precision, recall and F1."""
        f1 = 2 * self.true_pos / (self.positives[:, None, None] + self.pred_pos[None]).clamp_min(1)
        out = []
        for v in range(f1.shape[0]):
            flat = int(f1[v].reshape(-1).argmax())
            t, u = divmod(flat, f1.shape[2])
            tp, pp, p = float(self.true_pos[v, t, u]), float(self.pred_pos[t, u]), float(self.positives[v])
            out.append({"unit": u, "threshold": float(self.thresholds[t, u]),
                        "precision": tp / pp if pp else 0.0, "recall": tp / p if p else 0.0,
                        "f1": float(f1[v, t, u])})
        return out


@dataclass
class UnitSet:
    """One set of units scored against the variables: how to get their values from the cache."""

    name: str
    kind: str  # "sae", "neurons" or "random_directions"
    hook: str
    n_units: int
    threshold_rule: str
    values: object  # callable x [n, d_in] -> [n, n_units]
    thresholds: object  # callable first_values [n, n_units] -> [n_thresholds, n_units]
    counter: BestF1Counter | None = field(default=None)


def relevant_mlp_hook(lm: LoadedModel, hook: str) -> str:
    """The ``mlp.hook_post`` of the last MLP that wrote into ``hook``'s activations (layer L for
    every hook of block L except ``hook_resid_pre``, which reads block L−1's output; layer 0 there)."""
    point = parse_hook_name(hook, lm.n_layers, lm.name)
    layer = max(point.layer - 1, 0) if point.kind == RESID_PRE else point.layer
    return f"blocks.{layer}.{MLP_POST}"


def _quantile_thresholds(quantiles: Sequence[float], include_zero: bool):
    def make(first: Tensor) -> Tensor:
        ordered = first.float().sort(dim=0).values  # (torch.quantile refuses inputs over 2**24 values)
        index = torch.tensor([round(q * (len(ordered) - 1)) for q in quantiles])
        rows = ordered[index]  # [n_q, n_units], nearest-rank quantiles
        return torch.cat([torch.zeros_like(rows[:1]), rows]) if include_zero else rows

    return make


def _zero_threshold(first: Tensor) -> Tensor:
    return torch.zeros(1, first.shape[1])


def unit_sets(lm: LoadedModel, saes: Sequence[SAE], config: RecoveryConfig) -> list[UnitSet]:
    """The SAEs' latents and, with ``config.baselines``, the neuron and random-direction baselines."""
    sets: list[UnitSet] = []
    for sae in saes:
        hook = check_sae_fits(lm, sae).source  # latents read the source hook (a transcoder's input)
        sets.append(UnitSet(sae.cfg.name, "sae", hook, sae.cfg.d_sae, "latent > 0", _encoder(sae), _zero_threshold))
    if not config.baselines:
        return sets
    quantiles = ", ".join(f"{q:g}" for q in config.quantiles)
    neuron_hooks = [config.neuron_hook] if config.neuron_hook else sorted({relevant_mlp_hook(lm, s.hook) for s in sets})
    for hook in neuron_hooks:
        if parse_hook_name(hook, lm.n_layers, lm.name).kind != MLP_POST:
            raise ConfigError(f"neuron_hook={hook!r} is not accepted; give an MLP hook, blocks.L.{MLP_POST}")
        width = lm.hook_d_in(hook)
        sets.append(UnitSet(f"neurons {hook} (> 0)", "neurons", hook, width, "neuron > 0", _identity,
                            _zero_threshold))
        sets.append(UnitSet(f"neurons {hook} (best threshold)", "neurons", hook, width,
                            f"neuron > best of 0 and its quantiles {quantiles} (measured on the first batch)",
                            _identity, _quantile_thresholds(config.quantiles, include_zero=True)))
    for hook, d_sae in sorted({(s.hook, s.n_units) for s in sets if s.kind == "sae"}):
        directions = _random_directions(lm.hook_d_in(hook), d_sae, config.random_seed)
        sets.append(UnitSet(f"random directions {hook} x{d_sae}", "random_directions", hook, d_sae,
                            f"x·r > best of its quantiles {quantiles} (measured on the first batch); r Gaussian, "
                            f"unit norm, seed {config.random_seed}",
                            _projection(directions), _quantile_thresholds(config.quantiles, include_zero=False)))
    return sets


def _encoder(sae: SAE):
    def values(x: Tensor) -> Tensor:
        return sae.encode(x.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)).cpu()

    return values


def _identity(x: Tensor) -> Tensor:
    return x.float().cpu()


def _random_directions(d_in: int, n: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(d_in, n, generator=generator)
    return directions / directions.norm(dim=0, keepdim=True)


def _projection(directions: Tensor):
    def values(x: Tensor) -> Tensor:
        return x.float().cpu() @ directions

    return values


@torch.no_grad()
def feature_recovery(lm: LoadedModel, saes: SAE | Sequence[SAE], config: RecoveryConfig | None = None) -> dict:
    """Score ``saes`` (one or several, each at its own hook) and the baselines against the planted
    variables on one pass over held-out toy documents; returns the report (see ``saelab.eval``)."""
    config = config or RecoveryConfig()
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    if not saes:
        raise SaelabError("give at least one SAE to score")
    check_toy_vocabulary(lm)
    context = config.context_size or min(128, model_context(lm) or 128)
    check_context(lm, context)
    variables = planted_variables()
    sets = unit_sets(lm, saes, config)
    for sae in saes:
        sae.eval()
    hooks = sorted({s.hook for s in sets})
    bar = tqdm(total=config.tokens, unit="tok", desc="recovery", disable=not config.progress)
    n_tokens = 0
    for ids, labels, scored in labeled_batches(variables, config.seed, config.tokens, context, config.batch_size):
        _, cache = lm.run_with_cache(ids.to(lm.device), hooks, stop_at_layer="auto")
        y = labels[scored]
        xs = {h: flat_per_token(cache[h])[scored.to(cache[h].device)] for h in hooks}
        for unit_set in sets:
            values = unit_set.values(xs[unit_set.hook])
            if unit_set.counter is None:
                unit_set.counter = BestF1Counter(unit_set.thresholds(values), len(variables))
            unit_set.counter.update(values, y)
        n = int(scored.sum())
        n_tokens += n
        bar.update(n)
    bar.close()
    return _report(lm, config, context, variables, sets, n_tokens)


def _report(lm: LoadedModel, config: RecoveryConfig, context: int, variables: list[PlantedVariable],
            sets: list[UnitSet], n_tokens: int) -> dict:
    positives = sets[0].counter.positives
    kept = [i for i, v in enumerate(variables) if positives[i] >= config.min_positives]
    skipped = [{"variable": variables[i].name, "positives": int(positives[i])}
               for i in range(len(variables)) if i not in kept]
    if not kept:
        raise SaelabError(f"no planted variable has {config.min_positives} positive tokens among the {n_tokens} "
                          "evaluation tokens; raise tokens")
    report = {
        "model": lm.name, "seed": config.seed, "n_tokens": n_tokens, "context_size": context,
        "f1_threshold": config.f1_threshold,
        "variables": [{"variable": variables[i].name, "group": variables[i].group,
                       "positives": int(positives[i]), "base_rate": float(positives[i]) / n_tokens} for i in kept],
        "skipped_variables": skipped,
        "unit_sets": [],
    }
    for unit_set in sets:
        best = unit_set.counter.best()
        rows = [{"variable": variables[i].name, **best[i]} for i in kept]
        f1 = np.array([r["f1"] for r in rows])
        groups = {}
        for group in dict.fromkeys(variables[i].group for i in kept):
            groups[group] = float(np.mean([r["f1"] for r, i in zip(rows, kept, strict=True)
                                           if variables[i].group == group]))
        report["unit_sets"].append({
            "name": unit_set.name, "kind": unit_set.kind, "hook": unit_set.hook, "n_units": unit_set.n_units,
            "threshold_rule": unit_set.threshold_rule,
            "recovered": int((f1 >= config.f1_threshold).sum()), "n_variables": len(rows),
            "mean_best_f1": float(f1.mean()), "mean_best_f1_by_group": groups, "per_variable": rows,
        })
    return report
