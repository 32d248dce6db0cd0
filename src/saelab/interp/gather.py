"""Feature data over a token budget, for many latents in one pass.

Pass 1 runs the model over ``n_tokens`` tokens of a source (windows of ``context_size``) and keeps,
per requested latent: firing count and activation sum, the top ``n_top`` activating tokens
(``StreamingTopK`` on activations), a uniform random sample of up to ``reservoir_size`` firing tokens
(``StreamingTopK`` on random keys), and running sums for its activation correlation with every
latent. Pass 2 re-runs only the windows that hold a kept example and cuts each example's context
(``context_left`` tokens before, ``context_right`` after) with the latent's activation at every token.

Per latent (``FeatureRecord``): density, max and mean activation, a histogram of non-zero activations
(estimated from the random sample, scaled to the firing count), top examples, quantile groups (the
random sample sorted and cut into ``n_quantiles`` equal-count groups, ``per_quantile`` examples each,
from the strongest group down to the weakest activations), logit effects (of the decoder direction at
the site it writes: a transcoder's ``hook_name_out``, ``meta["hook_out"]``), nearest latents by
decoder cosine and by activation correlation, and the head shares of hook_z SAEs. ``n_random`` random
contexts (shared by all latents, each with that latent's activations) serve autointerp as negatives.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.data.packing import PackingConfig, iter_windows
from saelab.errors import ConfigError, check_range
from saelab.interp.logits import head_shares, logit_effects
from saelab.interp.neighbors import CorrelationStats, decoder_neighbors
from saelab.interp.selection import parse_features
from saelab.interp.site import check_site, encode_windows
from saelab.interp.streaming import StreamingTopK
from saelab.interp.tokens import TokenNames
from saelab.models import LoadedModel
from saelab.sae import SAE
from saelab.splicing import target_hook


@dataclass
class FeatureDataConfig:
    """What ``build_feature_data`` gathers (validated at construction)."""

    n_tokens: int = 100_000          # token budget of pass 1 (whole windows; rounded up)
    context_size: int = 128          # tokens per window
    prepend_bos: bool = True
    model_batch_size: int = 16       # windows per forward pass
    n_top: int = 20                  # top activating examples per latent
    n_quantiles: int = 10            # groups of the random sample, strongest to weakest
    per_quantile: int = 5            # examples shown per group
    reservoir_size: int = 256        # uniform sample of firing tokens per latent (histogram, quantiles)
    context_left: int = 10           # tokens shown before the activating token
    context_right: int = 5           # tokens shown after it
    n_hist_bins: int = 30
    n_logits: int = 10               # top and bottom tokens of the logit effects
    n_neighbors: int = 5
    correlation: bool = True         # activation-correlation neighbours (costs [F, d_sae] per batch)
    n_random: int = 0                # random contexts kept for autointerp negatives
    exclude_special_tokens: bool = True
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check_range("n_tokens", self.n_tokens, 1, None, integer=True)
        check_range("context_size", self.context_size, 2, 1 << 20, integer=True)
        check_range("model_batch_size", self.model_batch_size, 1, None, integer=True)
        for name in ("n_top", "reservoir_size", "n_quantiles", "n_hist_bins"):
            check_range(name, getattr(self, name), 1, None, integer=True)
        for name in ("per_quantile", "context_left", "context_right", "n_logits", "n_neighbors", "n_random",
                     "seed"):
            check_range(name, getattr(self, name), 0, None, integer=True)

    @property
    def n_windows(self) -> int:
        return math.ceil(self.n_tokens / self.context_size)


@dataclass
class Example:
    """A context around one token: ``tokens`` (strings), ``acts`` (the latent's activation at each),
    ``mark`` (index of the token the example was chosen for, or -1 for random contexts), ``window``
    and ``pos`` (where it came from), ``act`` (activation at the marked token; max for random ones)."""

    tokens: list[str]
    acts: list[float]
    mark: int
    window: int
    pos: int
    act: float

    @property
    def fires(self) -> bool:
        return any(a > 0 for a in self.acts)


@dataclass
class FeatureRecord:
    """Everything gathered for one latent (see the module docstring)."""

    index: int
    density: float
    n_fires: int
    max_act: float
    mean_act: float
    hist: dict[str, list]
    top_examples: list[Example] = field(default_factory=list)
    quantile_groups: list[dict[str, Any]] = field(default_factory=list)  # {label, lo, hi, fraction, examples}
    random_examples: list[Example] = field(default_factory=list)
    logits: dict[str, Any] | None = None      # {"top": [(token, weight)], "bottom": [...], "hist": {...}}
    neighbors_cosine: list[tuple[int, float]] = field(default_factory=list)
    neighbors_correlation: list[tuple[int, float]] = field(default_factory=list)
    head_shares: list[float] | None = None


@dataclass
class FeatureData:
    """The result of ``build_feature_data``: ``meta`` (SAE, model, budget, timings) and one record per
    requested latent, in increasing index order. ``windows`` ``[n_windows, context_size]``: the token
    ids of pass 1 (``Example.window`` indexes it); kept in memory only, not in ``to_dict``."""

    meta: dict[str, Any]
    features: list[FeatureRecord]
    windows: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "features": [asdict(f) for f in self.features]}

    def record(self, index: int) -> FeatureRecord:
        for f in self.features:
            if f.index == index:
                return f
        raise ConfigError(f"latent {index} is not in this feature data; it holds "
                          f"{', '.join(str(f.index) for f in self.features[:10])}...")


def _batches(windows, size: int):
    batch = []
    for w in windows:
        batch.append(w)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def build_feature_data(lm: LoadedModel, sae: SAE, hook: str, source, features: str | list[int],
                       cfg: FeatureDataConfig | None = None) -> FeatureData:
    """Gather ``FeatureData`` for ``features`` (indices or ``"0-99"``) of ``sae`` reading ``hook`` of
    ``lm``, over ``cfg.n_tokens`` tokens of ``source`` (a ``saelab.data`` source)."""
    cfg = cfg or FeatureDataConfig()
    check_site(lm, sae, hook)
    d_sae = sae.cfg.d_sae
    feats = parse_features(features, d_sae)
    cols = torch.as_tensor(feats)
    n_f = len(feats)
    started = time.perf_counter()

    packing = PackingConfig(cfg.context_size, prepend_bos=cfg.prepend_bos)
    stream = iter_windows(source, lm.tokenizer, packing, lm.bos_token_id, lm.eos_token_id)
    top = StreamingTopK(n_f, cfg.n_top)
    sample = StreamingTopK(n_f, cfg.reservoir_size)
    corr = CorrelationStats(feats, d_sae) if cfg.correlation else None
    fires = torch.zeros(n_f, dtype=torch.int64)
    act_sum = torch.zeros(n_f, dtype=torch.float64)
    generator = torch.Generator().manual_seed(cfg.seed)
    stored: list[np.ndarray] = []
    n_valid = 0
    bar = tqdm(total=cfg.n_windows * cfg.context_size, unit="tok", desc="feature data",
               disable=not cfg.progress)
    n_seen = 0
    for batch in _batches((w for _, w in zip(range(cfg.n_windows), stream, strict=False)), cfg.model_batch_size):
        acts = encode_windows(lm, sae, hook, batch, cfg.exclude_special_tokens)     # [b, pos, d_sae]
        flat = acts.reshape(-1, d_sae)
        ids = torch.arange(flat.shape[0]) + n_seen * cfg.context_size
        if cfg.exclude_special_tokens:
            valid = torch.as_tensor(~np.isin(batch, lm.special_token_ids).reshape(-1))
            flat, ids = flat[valid], ids[valid]
        chosen = flat[:, cols]                                                       # [n, F]
        firing = chosen > 0
        fires += firing.sum(0)
        act_sum += chosen.sum(0).double()
        top.update(torch.where(firing, chosen, torch.full_like(chosen, float("-inf"))), ids)
        keys = torch.rand(chosen.shape, generator=generator)
        sample.update(torch.where(firing, keys, torch.full_like(keys, float("-inf"))), ids, chosen)
        if corr is not None:
            corr.update(flat)
        n_valid += flat.shape[0]
        stored.append(batch)
        n_seen += batch.shape[0]
        bar.update(batch.size)
    bar.close()
    if not stored:
        raise ConfigError("the source gave no complete window of "
                          f"context_size={cfg.context_size} tokens; use a larger source or a smaller context")
    tokens = np.concatenate(stored)                                                  # [n_windows, ctx]

    records = [_summarise(i, feats[i], fires[i], act_sum[i], n_valid, top, sample, cfg)
               for i in range(n_f)]
    wanted = _example_slots(records, top, sample, tokens, cfg)
    random_spots = _random_spots(tokens, cfg, lm)
    names = TokenNames(lm)
    _fill_examples(lm, sae, hook, tokens, feats, records, wanted, random_spots, names, cfg)

    for record, effects in zip(records, logit_effects(lm, sae, hook, feats, cfg.n_logits, cfg.n_hist_bins), strict=False):
        if effects is not None:
            effects["top"] = [(names.name(t), w) for t, w in effects["top"]]
            effects["bottom"] = [(names.name(t), w) for t, w in effects["bottom"]]
        record.logits = effects
    for record, near in zip(records, decoder_neighbors(sae, feats, cfg.n_neighbors), strict=False):
        record.neighbors_cosine = near
    if corr is not None:
        for record, near in zip(records, corr.neighbors(cfg.n_neighbors), strict=False):
            record.neighbors_correlation = near
    shares = head_shares(lm, sae, hook, feats)
    if shares is not None:
        for record, row in zip(records, shares, strict=False):
            record.head_shares = [round(float(v), 4) for v in row]

    meta = {"hook": hook, "hook_out": target_hook(sae, hook), "d_sae": d_sae, "d_in": sae.cfg.d_in, "architecture": sae.cfg.architecture,
            "model": lm.name, "n_tokens": int(n_valid), "n_windows": int(tokens.shape[0]),
            "context_size": cfg.context_size, "features": feats, "seconds": round(time.perf_counter() - started, 2),
            "config": asdict(cfg)}
    return FeatureData(meta, records, windows=tokens)


def _summarise(i: int, index: int, n_fires, total, n_tokens: int, top: StreamingTopK, sample: StreamingTopK,
               cfg: FeatureDataConfig) -> FeatureRecord:
    n_fires = int(n_fires)
    top_vals = top.column(i)[0]
    max_act = float(top_vals[0]) if len(top_vals) else 0.0
    values = sample.column(i)[2]
    hist = {"edges": [], "counts": []}
    if n_fires and max_act > 0:
        counts, edges = torch.histogram(values.float(), bins=cfg.n_hist_bins, range=(0.0, max_act))
        scale = n_fires / max(len(values), 1)
        hist = {"edges": [round(float(e), 5) for e in edges], "counts": [round(float(c) * scale, 2) for c in counts]}
    return FeatureRecord(index=index, density=n_fires / max(n_tokens, 1), n_fires=n_fires, max_act=max_act,
                         mean_act=float(total) / n_fires if n_fires else 0.0, hist=hist)


def _example_slots(records, top: StreamingTopK, sample: StreamingTopK, tokens: np.ndarray,
                   cfg: FeatureDataConfig) -> dict[int, list[tuple[int, int, int, str, int]]]:
    """window -> [(feature column, pos, global id, kind, group)] of every example to cut in pass 2."""
    ctx = tokens.shape[1]
    wanted: dict[int, list] = {}

    def want(col: int, gid: int, kind: str, group: int) -> None:
        wanted.setdefault(gid // ctx, []).append((col, gid % ctx, gid, kind, group))

    for col, record in enumerate(records):
        for gid in top.column(col)[1].tolist():
            want(col, gid, "top", 0)
        _, ids, values = sample.column(col)
        if len(ids) == 0 or cfg.per_quantile == 0:
            continue
        order = values.argsort(descending=True)
        ids, values = ids[order], values[order]
        groups = np.array_split(np.arange(len(ids)), min(cfg.n_quantiles, len(ids)))
        rng = np.random.default_rng([cfg.seed, record.index])
        for g, members in enumerate(groups):
            picks = np.sort(rng.choice(members, size=min(cfg.per_quantile, len(members)), replace=False))
            record.quantile_groups.append({
                "label": f"{100 * members[0] / len(ids):.0f}–{100 * (members[-1] + 1) / len(ids):.0f}% of firings "
                         "(strongest first)",
                "hi": float(values[members[0]]), "lo": float(values[members[-1]]),
                "fraction": len(members) / len(ids), "examples": []})
            for p in picks:
                want(col, int(ids[p]), "quantile", g)
    return wanted


def _random_spots(tokens: np.ndarray, cfg: FeatureDataConfig, lm: LoadedModel) -> list[tuple[int, int]]:
    """``n_random`` (window, pos) spots on non-special tokens, seeded."""
    if cfg.n_random == 0:
        return []
    rng = np.random.default_rng([cfg.seed, 7919])
    ok = np.argwhere(~np.isin(tokens, lm.special_token_ids))
    picks = rng.choice(len(ok), size=min(cfg.n_random, len(ok)), replace=False)
    return [(int(ok[p][0]), int(ok[p][1])) for p in np.sort(picks)]


def _fill_examples(lm, sae, hook, tokens, feats, records, wanted, random_spots, names, cfg) -> None:
    """Pass 2: re-run the windows holding examples and cut their contexts."""
    random_by_window: dict[int, list[int]] = {}
    for j, (w, _pos) in enumerate(random_spots):
        random_by_window.setdefault(w, []).append(j)
    random_slots: list[list[Example | None]] = [[None] * len(random_spots) for _ in records]
    windows = sorted(set(wanted) | set(random_by_window))
    cols = torch.as_tensor(feats)
    bar = tqdm(total=len(windows), unit="win", desc="examples", disable=not cfg.progress)
    for start in range(0, len(windows), cfg.model_batch_size):
        chunk = windows[start:start + cfg.model_batch_size]
        acts = encode_windows(lm, sae, hook, tokens[chunk], cfg.exclude_special_tokens)[:, :, cols]  # [b, pos, F]
        for b, w in enumerate(chunk):
            strings = names.names(tokens[w])
            for col, pos, _gid, kind, group in wanted.get(w, []):
                ex = _cut(strings, acts[b, :, col], w, pos, cfg, marked=True)
                if kind == "top":
                    records[col].top_examples.append(ex)
                else:
                    records[col].quantile_groups[group]["examples"].append(ex)
            for j in random_by_window.get(w, []):
                pos = random_spots[j][1]
                for col in range(len(records)):
                    random_slots[col][j] = _cut(strings, acts[b, :, col], w, pos, cfg, marked=False)
        bar.update(len(chunk))
    bar.close()
    for col, record in enumerate(records):
        record.top_examples.sort(key=lambda e: -e.act)
        for group in record.quantile_groups:
            group["examples"].sort(key=lambda e: -e.act)
        record.random_examples = [e for e in random_slots[col] if e is not None]


def _cut(strings: list[str], acts: torch.Tensor, window: int, pos: int, cfg: FeatureDataConfig,
         marked: bool) -> Example:
    lo, hi = max(0, pos - cfg.context_left), min(len(strings), pos + cfg.context_right + 1)
    values = [round(float(a), 4) for a in acts[lo:hi]]
    act = values[pos - lo] if marked else max(values)
    return Example(tokens=strings[lo:hi], acts=values, mark=pos - lo if marked else -1, window=window,
                   pos=pos, act=act)
