"""``evaluate_sae`` / ``evaluate_saes``: fidelity and sparsity of SAEs spliced into their model.

    from saelab.eval import EvalConfig, evaluate_sae
    result = evaluate_sae(lm, sae, source="toy:1000003", config=EvalConfig(tokens=32768))
    result.metrics["delta_loss"], result.metrics["fvu"], result.latent_frequency   # [d_sae]

A coder reads ``x`` at its source hook and predicts ``y`` at its target hook (an SAE: the same hook, y = x;
a transcoder: another, e.g. ``blocks.1.hook_resid_mid`` -> ``blocks.1.hook_mlp_out``): reconstruction
metrics compare ŷ with y, both captured in the clean run, and the splice, the error-term check and
the zero/mean-ablation baselines act on the target hook (``saelab.splicing``).

The evaluation set is ``tokens`` ordinary tokens (not BOS/EOS/PAD) of held-out text, by default the
toy world's documents for seed ``DEFAULT_EVAL_SEED`` (training uses seed 0), packed into windows of
``context_size`` and streamed ``batch_size`` windows at a time: memory does not grow with
``tokens``. Two passes over it: the first, stopped after the hooks' blocks, computes each target
hook's mean (the mean-ablation baseline); the second runs per batch the clean model (capturing every
source and target hook), the zero- and mean-ablation of each target hook, and per SAE the spliced run
and, with ``check_error_term``, the spliced run with the error term added back. Several SAEs share
the clean run and the baselines of their target hook. Latent firing (dead, dense, density) is
counted over ``dead_window_tokens`` (default: the evaluation tokens); a longer window makes the
second pass go on past the evaluation set, encoding latents only. Every run stops at the unembedding; logits are formed in chunks of predictions by
``score_runs``, so a large vocabulary never costs ``[batch, pos, d_vocab]`` floats. Splices touch ordinary tokens only; CE and KL are masked to predictions between
ordinary tokens. Metric definitions: ``saelab.eval.metrics``, ``saelab.eval.downstream``,
``saelab.eval.latents``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.data.packing import PackingConfig, iter_windows
from saelab.data.sources import Source, open_source
from saelab.errors import ConfigError, SaelabError, check_range
from saelab.eval.downstream import (
    LOGIT_CHUNK_VALUES,
    LossSums,
    ScoredRun,
    downstream_metrics,
    score_runs,
    scored_predictions,
)
from saelab.eval.latents import LatentStats
from saelab.eval.metrics import ReconstructionStats
from saelab.models import LoadedModel
from saelab.sae.base import SAE
from saelab.splicing import (
    Splice,
    SpliceSites,
    as_coder,
    check_sae_fits,
    coder_values,
    flat_per_token,
    mean_replacement,
    ordinary_token_mask,
    splice_edit,
    splice_edits,
    zero_replacement,
)
from saelab.toy.evaluation import EVAL_SEED

DEFAULT_EVAL_SEED = EVAL_SEED
DEFAULT_EVAL_SOURCE = f"toy:{DEFAULT_EVAL_SEED}"
ERROR_TERM_TOLERANCE = 1e-3  # max |logit difference| the error-term run may show against the clean run


class EmptyEvaluationSetError(SaelabError):
    """The evaluation data holds no usable token."""


@dataclass
class EvalConfig:
    """What to evaluate on and how.

    tokens: ordinary (non-special) evaluation tokens to read; whole windows are read, so slightly
        more may be used (``n_tokens`` in the result says how many).
    context_size: tokens per window. batch_size: windows per forward pass.
    dense_threshold: latents firing on more than this fraction of tokens count as dense.
    dead_window_tokens: ordinary tokens over which latent fires are counted for the dead/dense
        fractions, the density histogram and ``latent_frequency`` (None: the evaluation tokens). Fewer
        than ``tokens``: the first ones of the evaluation set; more: the evaluation set, then the
        tokens that follow it in the source, read only up to the SAEs' hooks and encoded (no splice, no
        unembedding), so a 10M-token window (Gao et al. 2024) costs one forward pass to the hook per
        token. The metrics state the window counted as ``dead_window_tokens``.
    check_error_term: also run the SAE with its error term added back (must equal the clean run).
    progress: show progress bars.
    logit_chunk: float32 logit values formed at once per run while scoring (rows x d_vocab); bounds
        the memory of CE/KL for large vocabularies.
    """

    tokens: int = 32_768
    context_size: int = 128
    batch_size: int = 16
    dense_threshold: float = 0.1
    dead_window_tokens: int | None = None
    check_error_term: bool = True
    progress: bool = True
    logit_chunk: int = LOGIT_CHUNK_VALUES

    def __post_init__(self) -> None:
        check_range("tokens", self.tokens, 1, None, integer=True)
        check_range("context_size", self.context_size, 2, 1 << 20, integer=True)
        check_range("batch_size", self.batch_size, 1, None, integer=True)
        check_range("dense_threshold", self.dense_threshold, 0, 1)
        if self.dead_window_tokens is not None:
            check_range("dead_window_tokens", self.dead_window_tokens, 1, None, integer=True)
        check_range("logit_chunk", self.logit_chunk, 1, None, integer=True)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def tokens_read(self) -> int:
        """Ordinary tokens the pass reads: the evaluation set, or the dead-latent window if longer."""
        return max(self.tokens, self.dead_window_tokens or 0)


@dataclass
class EvalResult:
    """``metrics``: JSON-able dict (see module docstring and ``saelab.eval``); ``latent_frequency``:
    ``[d_sae]`` fraction of the ``dead_window_tokens`` counted on which each latent fired."""

    metrics: dict
    latent_frequency: Tensor


def resolve_source(source: Source | str | None) -> Source:
    """A ``Source`` from a source object, a spec string (``toy:SEED``, a path, ``hf:NAME``) or None
    (the held-out toy documents, ``DEFAULT_EVAL_SOURCE``)."""
    if source is None:
        source = DEFAULT_EVAL_SOURCE
    return open_source(source) if isinstance(source, str) else source


def model_context(lm: LoadedModel) -> int | None:
    """The longest input the model takes (``n_positions`` / ``max_position_embeddings``), if recorded."""
    config = lm.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def check_context(lm: LoadedModel, context_size: int) -> None:
    limit = model_context(lm)
    if limit is not None and context_size > limit:
        raise ConfigError(f"context_size={context_size} exceeds the context of model {lm.name!r}, {limit} tokens; "
                          f"accepted: 2..{limit}")


def evaluation_batches(lm: LoadedModel, source: Source, config: EvalConfig,
                       tokens: int | None = None) -> Iterator[np.ndarray]:
    """Batches of windows ``[n <= batch_size, context_size]`` until ``tokens`` (default
    ``config.tokens``) ordinary tokens have been read (or the source ends). The batches for fewer
    tokens are a prefix of those for more."""
    tokens = config.tokens if tokens is None else tokens
    packing = PackingConfig(context_size=config.context_size)
    windows = iter_windows(source, lm.tokenizer, packing, lm.bos_token_id, lm.eos_token_id)
    special = np.asarray(lm.special_token_ids, dtype=np.int64)
    seen = 0
    while seen < tokens:
        batch = list(itertools.islice(windows, config.batch_size))
        if not batch:
            return
        array = np.stack(batch)
        seen += int((~np.isin(array, special)).sum())
        yield array


def _check_ids(lm: LoadedModel, windows: np.ndarray) -> None:
    if windows.size and (windows.min() < 0 or windows.max() >= lm.d_vocab):
        raise SaelabError(f"token ids must lie in 0..{lm.d_vocab - 1} for {lm.name}; got values in "
                          f"{windows.min()}..{windows.max()} (was the data tokenized for another model?)")


def _ordinary(lm: LoadedModel, ids: Tensor) -> Tensor:
    return ordinary_token_mask(ids, lm.special_token_ids)


@torch.no_grad()
def hook_means(lm: LoadedModel, hooks: Sequence[str], source: Source, config: EvalConfig) -> tuple[dict, int]:
    """(``{hook: mean [d_in] float64}`` over the ordinary tokens of the evaluation set, token count)."""
    sums = {h: torch.zeros(lm.hook_d_in(h), dtype=torch.float64) for h in hooks}
    count = 0
    bar = tqdm(total=config.tokens, unit="tok", desc="hook means", disable=not config.progress, leave=False)
    for windows in evaluation_batches(lm, source, config):
        _check_ids(lm, windows)
        ids = torch.from_numpy(windows).to(lm.device)
        ordinary = _ordinary(lm, ids)
        _, cache = lm.run_with_cache(ids, list(hooks), stop_at_layer="auto")
        for hook in hooks:
            sums[hook] += flat_per_token(cache[hook])[ordinary].double().sum(0).cpu()
        n = int(ordinary.sum())
        count += n
        bar.update(n)
    bar.close()
    if count == 0:
        raise EmptyEvaluationSetError(
            f"the evaluation set is empty: source {source.describe()} gave no window of {config.context_size} tokens "
            "with an ordinary (non-special) token; use a longer source or a smaller --context-size")
    return {h: s / count for h, s in sums.items()}, count


class _SAEAccumulators:
    """Everything summed for one SAE over the evaluation pass."""

    def __init__(self, sae: SAE, sites: SpliceSites, window: int | None = None):
        self.sae, self.sites = sae, sites
        self.recon = ReconstructionStats(sae.cfg.d_out)
        self.latents = LatentStats(sae.cfg.d_sae, window)
        self.spliced = LossSums()
        self.with_error = LossSums()


@torch.no_grad()
def evaluate_saes(lm: LoadedModel, saes: Sequence[SAE], source: Source | str | None = None,
                  config: EvalConfig | None = None) -> list[EvalResult]:
    """Evaluate every SAE of ``saes`` (each at its own hooks) on one pass over ``source``; results in order."""
    config = config or EvalConfig()
    if not saes:
        raise SaelabError("give at least one SAE to evaluate")
    source = resolve_source(source)
    accs = [_SAEAccumulators(sae, check_sae_fits(lm, sae), config.dead_window_tokens) for sae in saes]
    check_context(lm, config.context_size)
    for acc in accs:
        acc.sae.eval()
    targets = sorted({a.sites.target for a in accs})
    captured = sorted({hook for a in accs for hook in a.sites})
    means, _ = hook_means(lm, targets, source, config)
    clean = LossSums()
    zero = {h: LossSums() for h in targets}
    mean = {h: LossSums() for h in targets}
    n_tokens = 0
    bar = tqdm(total=config.tokens_read, unit="tok", desc="evaluate", disable=not config.progress)
    for windows in evaluation_batches(lm, source, config, config.tokens_read):
        ids = torch.from_numpy(windows).to(lm.device)
        ordinary = _ordinary(lm, ids)
        bar.update(int(ordinary.sum()))
        if n_tokens >= config.tokens:  # past the evaluation set: the dead-latent window only
            if all(acc.latents.full for acc in accs):
                break
            _count_fires(lm, accs, ids, ordinary)
            continue
        scored = scored_predictions(ordinary)
        clean_resid, cache = lm.run_to_unembed(ids, capture=captured)
        runs = []
        for hook in targets:
            for sums, replace in ((zero[hook], zero_replacement()), (mean[hook], mean_replacement(means[hook]))):
                resid, _ = lm.run_to_unembed(ids, {hook: splice_edit(replace, ordinary)})
                runs.append(ScoredRun(resid, sums))
        for acc in accs:
            sae = acc.sae
            x, y = coder_values(sae, cache, acc.sites)
            where = ordinary.to(x.device)
            x, y = x[where], y[where]
            acts = sae.encode(x)
            acc.recon.update(y, sae.decode(acts, x), acts)
            acc.latents.update(acts)
            variants = [(acc.spliced, False)] + ([(acc.with_error, True)] if config.check_error_term else [])
            for sums, add_error in variants:
                splice = Splice(sae, add_error, positions=ordinary, hook=acc.sites.source, hook_out=acc.sites.target)
                resid, _ = lm.run_to_unembed(ids, splice_edits(lm, [splice]))
                runs.append(ScoredRun(resid, sums, track_logit_diff=add_error))
        score_runs(lm.unembed, lm.d_vocab, ids, scored, clean_resid, clean, runs, chunk_values=config.logit_chunk)
        n_tokens += int(ordinary.sum())
    bar.close()
    if clean.n == 0:
        raise EmptyEvaluationSetError(
            f"the evaluation set has no prediction between two ordinary tokens (source {source.describe()}, "
            f"context_size {config.context_size}); CE loss cannot be measured")
    return [_result(lm, acc, source, config, n_tokens, clean, zero[acc.sites.target], mean[acc.sites.target])
            for acc in accs]


def _count_fires(lm: LoadedModel, accs: Sequence[_SAEAccumulators], ids: Tensor, ordinary: Tensor) -> None:
    """Count latent fires on the ordinary tokens of ``ids [batch, pos]`` (a clean run stopped after the
    SAEs' source hooks; nothing spliced, nothing unembedded)."""
    todo = [acc for acc in accs if not acc.latents.full]
    _, cache = lm.run_with_cache(ids, sorted({acc.sites.source for acc in todo}), stop_at_layer="auto")
    for acc in todo:
        x = as_coder(acc.sae, flat_per_token(cache[acc.sites.source]))[ordinary.to(acc.sae.W_dec.device)]
        acc.latents.update(acc.sae.encode(x))


def evaluate_sae(lm: LoadedModel, sae: SAE, source: Source | str | None = None,
                 config: EvalConfig | None = None) -> EvalResult:
    """Evaluate one SAE; see ``evaluate_saes``."""
    return evaluate_saes(lm, [sae], source, config)[0]


def _result(lm: LoadedModel, acc: _SAEAccumulators, source: Source, config: EvalConfig, n_tokens: int,
            clean: LossSums, zero: LossSums, mean: LossSums) -> EvalResult:
    cfg = acc.sae.cfg
    metrics: dict = {"sae": cfg.name, "architecture": cfg.architecture, "hook": acc.sites.source,
                     "hook_out": acc.sites.target, "d_in": cfg.d_in, "d_out": cfg.d_out, "d_sae": cfg.d_sae, "model": lm.name, "source": source.describe(), "context_size": config.context_size,
                     "n_tokens": n_tokens, "n_predictions": clean.n}
    metrics.update(acc.recon.result())
    metrics.update(downstream_metrics(clean, acc.spliced, zero, mean,
                                      acc.with_error if config.check_error_term else None))
    metrics.update(acc.latents.result(config.dense_threshold))
    metrics["warnings"] = _warnings(metrics, config)
    return EvalResult(metrics, acc.latents.frequency())


def _warnings(m: dict, config: EvalConfig) -> list[str]:
    """Plain-language notes on results that need care (dead SAE, undefined ratios, a short source)."""
    notes = []
    if m["n_dead"] == m["d_sae"]:
        notes.append(f"SAE {m['sae']!r} is dead: all {m['d_sae']} latents are zero on every one of the "
                     f"{m['dead_window_tokens']} tokens counted, so it reconstructs every token as its decoder bias "
                     "(L0 = 0); its fidelity figures are those of that constant")
    window = config.dead_window_tokens
    if window is not None and m["dead_window_tokens"] < window:
        notes.append(f"the source ended after {m['dead_window_tokens']} tokens, so dead and dense latents are "
                     f"counted over those, not the {window} asked for (dead_window_tokens)")
    if m["relative_reconstruction_bias"] is None:
        notes.append("relative_reconstruction_bias is undefined (E[x·x̂] = 0): reported as null")
    if m["fvu"] is None:
        notes.append("fvu is undefined: the evaluation activations have zero variance; reported as null")
    if m["ce_loss_recovered"] is None:
        notes.append(f"zero-ablating {m['hook_out']} does not change the loss, so ce_loss_recovered is undefined "
                     "(null)")
    if m["ce_loss_recovered_mean_ablation"] is None:
        notes.append(f"mean-ablating {m['hook_out']} does not change the loss, so ce_loss_recovered_mean_ablation "
                     "is undefined (null)")
    if m["n_tokens"] < config.tokens:
        notes.append(f"the source ended after {m['n_tokens']} evaluation tokens ({config.tokens} requested)")
    diff = m.get("error_term_max_logit_diff")
    if diff is not None and diff > ERROR_TERM_TOLERANCE:
        notes.append(f"with the error term added back the logits differ from the clean run by up to {diff:.3g} "
                     f"(tolerance {ERROR_TERM_TOLERANCE}); the splice at {m['hook_out']} is not exact")
    return notes
