"""Baseline units for autointerp: directions at an SAE's site, scored exactly as its latents are.

Cunningham et al. 2023 (arXiv 2309.08600) compare SAE features with the site's neurons, PCA and random
directions. Here each baseline is an SAE-like coder at the SAE's input hook, so ``build_feature_data``
and ``run_autointerp`` take it unchanged: a JumpReLU coder with ``W_enc = Dᵀ``, ``W_dec = D`` (unit rows
``D [n_units, d_in]``), ``b_enc = 0`` and threshold θ, i.e. unit u's activation is its projection
``p_u = (x − b_dec)·d_u`` where ``p_u > θ_u`` and 0 elsewhere (``θ = 0``: the positive part, ReLU).

- ``neurons``: the site's basis coordinates (``d_u = e_i``; for a residual stream each of d_model
  dimensions). A coordinate has no preferred sign, so by default each gives two units, interleaved:
  unit ``2i`` is ``+x[i]`` (its positive part), unit ``2i+1`` is ``−x[i]`` (its negative part);
  ``signs="positive"`` keeps unit ``i = +x[i]``. Not centred (``b_dec = 0``).
- ``random``: ``n_units`` (default d_in) unit vectors from a seeded Gaussian, positive part of the
  projection (a Gaussian direction's negative is another Gaussian direction, so ``signs="positive"``
  by default). Not centred.
- ``pca``: principal components of the site's activations (fitted on ``fit_tokens`` tokens), by
  decreasing variance, each sign-fixed so its largest-magnitude coordinate is positive; both signs
  interleaved as for neurons; projections of the centred activations (``b_dec`` = their mean).

Both signs of a direction together reconstruct the projection exactly (``relu(p)·d + relu(−p)·(−d) =
p·d``), so ``neurons`` with both signs and θ = 0 is the identity coder.

Density: the positive part of a direction fires on about half of all tokens, while SAE latents fire on
a few in a thousand; the scoring mix's silent contexts barely exist for such a unit. ``density=p``
sets each unit's θ to the quantile of its fitted projections that it exceeds on a fraction p of the
fit tokens (θ ≥ 0, so at most the positive part); ``density="sae"`` uses the SAE's mean latent density
(L0 / d_sae) on the same tokens. θ keeps the activation values (JumpReLU), only where they fire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.data.packing import PackingConfig, iter_windows
from saelab.errors import ConfigError, check_choice, check_range
from saelab.models import LoadedModel
from saelab.sae import SAE, SAEConfig, make_sae
from saelab.splicing import flat_per_token

BASELINES = ("neurons", "random", "pca")
SIGNS = ("positive", "both")
DEFAULT_SIGNS = {"neurons": "both", "random": "positive", "pca": "both"}
SCORES = ("detection", "fuzzing", "simulation")


@dataclass
class BaselineConfig:
    """Which baseline units to build (module docstring). ``signs``: default per kind (``DEFAULT_SIGNS``).
    ``n_units``: random directions only (default d_in). ``density``: None (θ = 0), a fraction in (0, 1],
    or ``"sae"``. ``fit_tokens``: tokens the PCA and the thresholds are fitted on. ``seed``: random
    directions."""

    kind: str
    signs: str | None = None
    n_units: int | None = None
    density: float | str | None = None
    fit_tokens: int = 20_000
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("baseline", self.kind, BASELINES)
        self.signs = self.signs or DEFAULT_SIGNS[self.kind]
        check_choice("baseline signs", self.signs, SIGNS)
        if self.n_units is not None:
            if self.kind != "random":
                raise ConfigError(f"n_units={self.n_units} applies to random directions only; {self.kind} has one "
                                  "unit per " + ("coordinate" if self.kind == "neurons" else "component")
                                  + " and sign: leave n_units unset")
            check_range("n_units", self.n_units, 1, None, integer=True)
        if isinstance(self.density, str):
            if self.density != "sae":
                raise ConfigError(f"baseline density={self.density!r} is not accepted; accepted: a fraction in "
                                  "(0, 1], 'sae' (the SAE's mean latent density) or none (fire wherever > 0)")
        elif self.density is not None:
            check_range("baseline density", self.density, 0, 1, lo_open=True)
        check_range("fit_tokens", self.fit_tokens, 2, None, integer=True)
        check_range("seed", self.seed, 0, None, integer=True)

    @property
    def needs_fit(self) -> bool:
        """Whether building the units reads activations (PCA, or thresholds for a density)."""
        return self.kind == "pca" or self.density is not None


@torch.no_grad()
def fit_activations(lm: LoadedModel, hook: str, source, n_tokens: int, context_size: int = 128,
                    prepend_bos: bool = True, batch_size: int = 16, exclude_special_tokens: bool = True) -> Tensor:
    """``[n, d_in]`` float32 activations at ``hook`` of the first ``⌈n_tokens / context_size⌉`` windows of
    ``source``, packed as ``build_feature_data`` packs them (special tokens left out by default)."""
    packing = PackingConfig(context_size, prepend_bos=prepend_bos)
    stream = iter_windows(source, lm.tokenizer, packing, lm.bos_token_id, lm.eos_token_id)
    windows = [w for _, w in zip(range(math.ceil(n_tokens / context_size)), stream, strict=False)]
    if not windows:
        raise ConfigError(f"the source gave no complete window of context_size={context_size} tokens to fit the "
                          "baseline on; use a larger source or a smaller context")
    rows = []
    for start in range(0, len(windows), batch_size):
        batch = np.stack(windows[start:start + batch_size])
        _, cache = lm.run_with_cache(lm.as_input_ids(batch), [hook], stop_at_layer="auto")
        x = flat_per_token(cache[hook]).float().cpu().reshape(-1, lm.hook_d_in(hook))
        if exclude_special_tokens:
            x = x[torch.as_tensor(~np.isin(batch, lm.special_token_ids).reshape(-1))]
        rows.append(x)
    return torch.cat(rows)


def _pca(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(components [k, d_in] by decreasing variance, sign-fixed; variance fractions [k]; mean [d_in]) of
    ``x [n, d_in]``; components of variance below 1e-9 of the largest are dropped."""
    data = x.double()
    mean = data.mean(0)
    centred = data - mean
    values, vectors = torch.linalg.eigh(centred.T @ centred / max(data.shape[0] - 1, 1))
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1).T               # [d], [d, d_in] rows
    keep = values > values[0] * 1e-9 if values[0] > 0 else values > 0
    values, vectors = values[keep], vectors[keep]
    sign = torch.sign(vectors.gather(1, vectors.abs().argmax(1, keepdim=True)))
    return (vectors * sign).float(), (values / values.sum()).float(), mean.float()


def _directions(cfg: BaselineConfig, d_in: int, x: Tensor | None) -> tuple[Tensor, list[str], Tensor | None]:
    """(unit directions [n, d_in], one label each, mean to centre on or None) before signs."""
    if cfg.kind == "neurons":
        return torch.eye(d_in), [f"x[{i}]" for i in range(d_in)], None
    if cfg.kind == "random":
        n = cfg.n_units or d_in
        g = torch.randn(n, d_in, generator=torch.Generator().manual_seed(cfg.seed), dtype=torch.float64)
        return (g / g.norm(dim=1, keepdim=True)).float(), [f"r{cfg.seed}[{j}]" for j in range(n)], None
    if x is None:
        raise ConfigError("baseline pca needs activations to fit its components on (fit_activations)")
    components, share, mean = _pca(x)
    return components, [f"pc[{j}] ({100 * float(s):.2f}% of variance)" for j, s in enumerate(share)], mean


def _thresholds(projections: Tensor, density: float) -> Tensor:
    """[n_units] θ ≥ 0 exceeded by at most ⌈density·n⌉ of ``projections [n, n_units]``."""
    n = projections.shape[0]
    above = min(n - 1, max(1, math.ceil(density * n)))
    return projections.kthvalue(n - above, dim=0).values.clamp_min(0)


@torch.no_grad()
def sae_density(sae: SAE, x: Tensor, batch_size: int = 4096) -> float:
    """Mean firing fraction of ``sae``'s latents (L0 / d_sae) on ``x [n, d_in]``."""
    param = next(sae.parameters())
    fired = sum(int((sae.encode(x[i:i + batch_size].to(param)) != 0).sum()) for i in range(0, x.shape[0], batch_size))
    return fired / (x.shape[0] * sae.cfg.d_sae)


@dataclass
class Baseline:
    """The built units: ``sae`` (a JumpReLU coder at the reference SAE's hook, ``d_sae = n_units``),
    ``labels`` (one per unit, e.g. ``"-x[17]"``) and ``info`` (JSON-able: what they are)."""

    sae: SAE
    labels: list[str]
    info: dict[str, Any]

    def describe(self, features: list[int]) -> dict[str, Any]:
        """``info`` plus ``units``: ``{str(index): label}`` of ``features``."""
        return {**self.info, "units": {str(i): self.labels[i] for i in features}}


@torch.no_grad()
def build_baseline(reference: SAE, cfg: BaselineConfig, x_fit: Tensor | None = None) -> Baseline:
    """The ``cfg`` baseline at ``reference``'s input hook, of its width and on its device; ``x_fit
    [n, d_in]``: activations there (needed when ``cfg.needs_fit``)."""
    d_in = reference.cfg.d_in
    if cfg.needs_fit:
        if x_fit is None:
            raise ConfigError(f"baseline {cfg.kind} with density={cfg.density!r} needs activations to fit on; pass "
                              "x_fit (saelab.interp.baselines.fit_activations)")
        if x_fit.ndim != 2 or x_fit.shape[1] != d_in or x_fit.shape[0] < 2:
            raise ConfigError(f"x_fit has shape {tuple(x_fit.shape)}; expected [n_tokens >= 2, d_in={d_in}] "
                              f"activations of {reference.cfg.hook_name!r}")
    directions, names, mean = _directions(cfg, d_in, x_fit)
    if cfg.signs == "both":
        directions = torch.stack([directions, -directions], 1).reshape(-1, d_in)  # [2k, d_in]: +d_0, −d_0, ...
        labels = [f"{s}{name}" for name in names for s in "+-"]
    else:
        labels = [f"+{name}" for name in names]
    n_units = directions.shape[0]
    info: dict[str, Any] = {"kind": cfg.kind, "signs": cfg.signs, "n_units": n_units, "seed": cfg.seed,
                            "hook": reference.cfg.hook_name, "centred": mean is not None,
                            "fit_tokens": int(x_fit.shape[0]) if cfg.needs_fit else 0}
    threshold = torch.zeros(n_units)
    if cfg.density is not None:
        density = sae_density(reference, x_fit) if cfg.density == "sae" else float(cfg.density)
        centred = x_fit - mean if mean is not None else x_fit
        threshold = _thresholds(centred @ directions.T, density)
        info |= {"density": cfg.density, "target_density": round(density, 6),
                 "median_threshold": round(float(threshold.median()), 6)}
    else:
        info |= {"density": None}
    coder = make_sae(SAEConfig("jumprelu", d_in=d_in, d_sae=n_units, hook_name=reference.cfg.hook_name,
                               name=f"baseline-{cfg.kind}", apply_b_dec_to_input=mean is not None))
    coder.load_state_dict({"W_enc": directions.T.contiguous(), "W_dec": directions.contiguous(),
                           "b_enc": torch.zeros(n_units), "b_dec": mean if mean is not None else torch.zeros(d_in),
                           "threshold": threshold}, strict=True)
    param = next(reference.parameters())
    return Baseline(coder.to(param.device).eval(), labels, info)


# ----------------------------------------------------------------------------- comparing runs
def score_rows(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per autointerp report (``run_autointerp``'s result, by name): per score the mean over the
    latents that have it, its standard error (sample std / √n) and n; and the mix actually scored
    (``mean_n_non_activating``: 0 means detection saw positives only and is the hit rate alone)."""
    rows = []
    for name, report in reports.items():
        results = report["results"]
        row: dict[str, Any] = {"units": name, "n_features": len(results),
                               "n_errors": sum(r["error"] is not None for r in results)}
        for s in SCORES:
            values = np.array([r[s] for r in results if r[s] is not None], dtype=float)
            row[s] = float(values.mean()) if len(values) else None
            row[f"{s}_se"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
            row[f"n_{s}"] = len(values)
        row["mean_density"] = float(np.mean([r["density"] for r in results])) if results else None
        row["mean_n_non_activating"] = (float(np.mean([r["n_non_activating"] for r in results]))
                                        if results else None)
        rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """``score_rows`` as a Markdown table: mean ± standard error per score."""
    def cell(row: dict[str, Any], s: str) -> str:
        if row[s] is None:
            return "–"
        se = f" ± {row[f'{s}_se']:.3f}" if row[f"{s}_se"] is not None else ""
        return f"{row[s]:.3f}{se} (n={row[f'n_{s}']})"

    lines = ["| units | detection | fuzzing | simulation | mean density | mean n silent |", "|---|---|---|---|---|---|"]
    for row in rows:
        density = f"{row['mean_density']:.4f}" if row["mean_density"] is not None else "–"
        silent = f"{row['mean_n_non_activating']:.1f}" if row["mean_n_non_activating"] is not None else "–"
        lines.append(f"| {row['units']} | " + " | ".join(cell(row, s) for s in SCORES) + f" | {density} | {silent} |")
    return "\n".join(lines)
