"""Meta-SAE structure: how far an SAE's decoder directions are sparse combinations of fewer directions.

A meta-SAE (Bussmann, Pearce, Leask et al. 2024, "Showing SAE latents are not atomic using
meta-SAEs"; 2025, "Sparse autoencoders do not find canonical units of analysis") is a small BatchTopK
SAE trained on the decoder rows of another SAE, each row normalised to unit norm; its meta-latents
read as more atomic parts of the latents ("Einstein" -> science + German + famous + ...). SAEBench's
``meta_sae_decoder_variance`` eval trains one of width 0.25 · d_sae with k = 4; those are the
defaults here.

    result = meta_sae_structure(sae, k=4, steps=1500, seed=0)
    result.variance_explained, result.to_dict()["top_meta_latents"][0]["latents"]

Rows ``r [n_rows, d_out]`` (unit norm; zero rows left out and counted) are fitted with the trainer's
update step and a decoder bias fixed at 0 (``train_meta_sae``), and read with the meta-SAE's
inference rule (its learned threshold). Figures, over all rows:

- ``variance_explained`` = 1 − FVU = 1 − Σ_r ‖r − r̂‖² / Σ_r ‖r − r̄‖² (r̄: the mean row), as
  ``saelab.eval.metrics.ReconstructionStats`` computes it for activations
- ``l0``: mean number of meta-latents active per decoder row
- ``n_used``: meta-latents active on at least one row; ``rows_per_meta_latent``: mean rows per used one
- ``n_rows_unexplained``: rows on which no meta-latent is active
- ``top_meta_latents``: the meta-latents active on most rows, each with the SAE latents that load on
  it most (activation, and cosine between that latent's decoder row and the meta-latent's direction)

High variance explained means the decoder directions compress into few shared parts (latents are
less atomic); a meta-SAE as wide as the rows could memorise them, so it must be narrower.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.errors import ConfigError, check_range
from saelab.eval.metrics import ReconstructionStats
from saelab.sae.base import SAE

ROWS_HOOK = "decoder_rows"
ZERO_ROW_NORM = 1e-8  # decoder rows shorter than this have no direction and are left out


@dataclass
class MetaSAEConfig:
    """How the meta-SAE is built and trained.

    d_meta: meta-latents (default ⌈width_ratio · n_rows⌉, at least k). k: BatchTopK's mean active
    meta-latents per row. steps, batch_size (rows per step, at most the rows there are), lr: training
    (Adam, 5% warm-up, linear decay over the last 20%). seed: row order and initialisation.
    n_top: meta-latents reported; n_loadings: SAE latents listed for each.
    """

    d_meta: int | None = None
    width_ratio: float = 0.25
    k: int = 4
    steps: int = 1500
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0
    n_top: int = 10
    n_loadings: int = 8
    progress: bool = False

    def __post_init__(self) -> None:
        if self.d_meta is not None:
            check_range("d_meta", self.d_meta, 1, integer=True)
        check_range("width_ratio", self.width_ratio, 0, 1, lo_open=True)
        for name in ("k", "steps", "batch_size"):
            check_range(name, getattr(self, name), 1, integer=True)
        check_range("lr", self.lr, 0, lo_open=True)
        for name in ("seed", "n_top", "n_loadings"):
            check_range(name, getattr(self, name), 0, integer=True)

    def width(self, n_rows: int) -> int:
        """The number of meta-latents for ``n_rows`` decoder rows."""
        return self.d_meta if self.d_meta is not None else max(self.k, math.ceil(self.width_ratio * n_rows))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("progress")
        return out


@dataclass
class MetaSAEResult:
    """What ``meta_sae_structure`` found (figures: see the module docstring).

    latents: [n_rows] the SAE latent of each row fitted. acts: [n_rows, d_meta] meta-latent
    activations of each row. meta_sae: the trained meta-SAE (reads unit decoder rows).
    ``to_dict`` leaves the tensors and the meta-SAE out.
    """

    sae: str
    d_sae: int
    n_rows: int
    n_zero_rows: int
    d_meta: int
    k: int
    variance_explained: float | None
    fvu: float | None
    mse: float
    l0: float
    n_used: int
    rows_per_meta_latent: float | None
    n_rows_unexplained: int
    train_seconds: float
    config: dict[str, Any]
    top_meta_latents: list[dict[str, Any]] = field(default_factory=list)
    latents: Tensor | None = field(default=None, repr=False)
    acts: Tensor | None = field(default=None, repr=False)
    meta_sae: SAE | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("latents", "acts", "meta_sae"):
            out.pop(key)
        return out


def unit_decoder_rows(sae: SAE) -> tuple[Tensor, Tensor]:
    """(rows [n_rows, d_out] float32, unit norm; latents [n_rows] int64): the decoder rows of ``sae``
    with a direction (norm > ``ZERO_ROW_NORM``) and the latent each belongs to."""
    with torch.no_grad():
        W = sae.W_dec.detach().float()  # noqa: N806
        norms = W.norm(dim=1)
        kept = (norms > ZERO_ROW_NORM).nonzero().squeeze(1)
        return W[kept] / norms[kept, None], kept.cpu()


def reconstruction_figures(rows: Tensor, rows_hat: Tensor, acts: Tensor) -> dict[str, float | None]:
    """``ReconstructionStats`` of ``rows [n, d]`` against ``rows_hat [n, d]`` with meta-latents
    ``acts [n, d_meta]``: fvu, explained_variance, l0, mse (per element)."""
    stats = ReconstructionStats(rows.shape[1])
    stats.update(rows, rows_hat, acts)
    result = stats.result()
    return {key: result[key] for key in ("fvu", "explained_variance", "l0", "mse")}


def check_rows(n_rows: int, d_meta: int, k: int, name: str) -> None:
    """Refuse a meta-SAE that is not narrower than the rows of SAE ``name`` it fits, or a k above its width."""
    if n_rows <= d_meta:
        raise ConfigError(f"SAE {name!r} has {n_rows} decoder rows with a direction, too few for d_meta={d_meta} "
                          f"meta-latents: a meta-SAE needs more rows than meta-latents (one as wide as the rows "
                          f"can memorise them); choose d_meta < {n_rows} (e.g. a smaller width_ratio) or an SAE "
                          "with more latents")
    if k > d_meta:
        raise ConfigError(f"k={k} is out of range for d_meta={d_meta}; accepted: [1, {d_meta}]")


def train_meta_sae(rows: Tensor, cfg: MetaSAEConfig, d_meta: int) -> tuple[SAE, float]:
    """(BatchTopK meta-SAE fitted to ``rows [n_rows, d]``, seconds taken).

    Each step is the trainer's own update (``saelab.train.SAEUpdater``: Adam, clipping, unit-norm
    decoder, AuxK on meta-latents silent for a pass over the rows, BatchTopK's threshold) on
    ``batch_size`` rows drawn with replacement (seeded), with the trainer's learning-rate schedule.
    The decoder bias stays 0, so a row is a non-negative sparse sum of meta-directions: with a learned
    one, fits of planted rows settled where b_dec held one planted direction and meta-latents
    subtracted it (cosines to the planted directions below 0.7 in 6 of 9 runs, against 1.0 in 3 of 3
    with it fixed and a meta-SAE wider than the planted set).
    """
    from saelab.sae.config import SAEConfig
    from saelab.sae.registry import make_sae
    from saelab.train import SAEUpdater, TrainConfig
    from saelab.train.schedule import lr_factor

    batch_size = min(cfg.batch_size, rows.shape[0])
    train = TrainConfig(steps=cfg.steps, batch_size=batch_size, lr=cfg.lr, lr_warmup_steps=cfg.steps // 20,
                        lr_decay_steps=cfg.steps // 5, seed=cfg.seed, dead_window_tokens=max(batch_size, rows.shape[0]),
                        device=str(rows.device))
    meta = make_sae(SAEConfig("batchtopk", d_in=rows.shape[1], d_sae=d_meta, k=cfg.k, hook_name=ROWS_HOOK,
                              name="meta_sae"), seed=cfg.seed).to(rows.device)
    meta.b_dec.requires_grad_(False)  # zero, and left out of the optimiser
    updater = SAEUpdater(meta, train)
    generator = torch.Generator().manual_seed(cfg.seed)
    started = time.perf_counter()
    for step in tqdm(range(cfg.steps), desc="meta-SAE", unit="step", disable=not cfg.progress, leave=False):
        batch = torch.randint(0, rows.shape[0], (batch_size,), generator=generator).to(rows.device)
        updater.step(rows[batch], cfg.lr * lr_factor(step, train), 1.0)
    meta.eval()
    return meta, time.perf_counter() - started


def top_meta_latents(acts: Tensor, latents: Tensor, rows: Tensor, meta_directions: Tensor, n_top: int,
                     n_loadings: int) -> list[dict[str, Any]]:
    """The ``n_top`` meta-latents active on most rows (ties: larger total activation), each with the
    ``n_loadings`` SAE latents of largest activation on it.

    acts [n_rows, d_meta]; latents [n_rows] SAE latent per row; rows [n_rows, d] unit decoder rows;
    meta_directions [d_meta, d] the meta-SAE's decoder rows."""
    counts = (acts > 0).sum(0)
    mass = acts.double().sum(0)
    order = sorted(range(acts.shape[1]), key=lambda j: (-int(counts[j]), -float(mass[j]), j))
    directions = torch.nn.functional.normalize(meta_directions.float(), dim=1)
    out = []
    for j in order[:n_top]:
        if counts[j] == 0:
            break
        column = acts[:, j]
        top = column.topk(min(n_loadings, int(counts[j]))).indices
        cosines = rows[top] @ directions[j]
        out.append({"meta_latent": j, "n_rows": int(counts[j]), "activation_sum": float(mass[j]),
                    "latents": [{"latent": int(latents[i]), "activation": float(column[i]), "cosine": float(c)}
                                for i, c in zip(top.tolist(), cosines.tolist(), strict=True)]})
    return out


@torch.no_grad()
def meta_sae_on_rows(rows: Tensor, cfg: MetaSAEConfig | None = None, latents: Tensor | None = None,
                     name: str = "rows", n_zero_rows: int = 0) -> MetaSAEResult:
    """Fit and read a meta-SAE on unit-norm ``rows [n_rows, d]`` (``latents [n_rows]``: the SAE latent
    of each row, default 0..n_rows-1); ``meta_sae_structure`` does it for an SAE's decoder."""
    cfg = cfg or MetaSAEConfig()
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ConfigError(f"{name!r}: decoder rows must be a non-empty [n_rows, d] matrix; got shape {tuple(rows.shape)}")
    rows = rows.float()
    n_rows = rows.shape[0]
    d_meta = cfg.width(n_rows)
    check_rows(n_rows, d_meta, cfg.k, name)
    latents = torch.arange(n_rows) if latents is None else latents
    with torch.enable_grad():
        meta, seconds = train_meta_sae(rows, cfg, d_meta)
    acts = meta.encode(rows)
    figures = reconstruction_figures(rows, meta.decode(acts), acts)
    used = (acts > 0).any(0)
    n_used = int(used.sum())
    return MetaSAEResult(
        sae=name, d_sae=n_rows + n_zero_rows, n_rows=n_rows, n_zero_rows=n_zero_rows, d_meta=d_meta, k=cfg.k,
        variance_explained=figures["explained_variance"], fvu=figures["fvu"], mse=figures["mse"],
        l0=figures["l0"], n_used=n_used,
        rows_per_meta_latent=float((acts > 0).sum()) / n_used if n_used else None,
        n_rows_unexplained=int((~(acts > 0).any(1)).sum()), train_seconds=round(seconds, 3),
        config={**cfg.to_dict(), "d_meta": d_meta, "batch_size": min(cfg.batch_size, n_rows)},
        top_meta_latents=top_meta_latents(acts.cpu(), latents, rows.cpu(), meta.W_dec.detach().cpu(), cfg.n_top,
                                          cfg.n_loadings),
        latents=latents, acts=acts.cpu(), meta_sae=meta)


def meta_sae_structure(sae: SAE, d_meta: int | None = None, k: int = 4, steps: int = 1500, seed: int = 0,
                       cfg: MetaSAEConfig | None = None) -> MetaSAEResult:
    """Train a meta-SAE on the unit-normalised decoder rows of ``sae`` and report its structure (module
    docstring). ``cfg`` gives every setting; without it ``d_meta``, ``k``, ``steps`` and ``seed`` do."""
    cfg = cfg or MetaSAEConfig(d_meta=d_meta, k=k, steps=steps, seed=seed)
    rows, latents = unit_decoder_rows(sae)
    name = sae.cfg.name
    if rows.shape[0] == 0:
        raise ConfigError(f"SAE {name!r} has no decoder row with a direction (all {sae.cfg.d_sae} are zero); "
                          "there is nothing for a meta-SAE to fit")
    return meta_sae_on_rows(rows, cfg, latents, name=name, n_zero_rows=sae.cfg.d_sae - rows.shape[0])
