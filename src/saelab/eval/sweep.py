"""Frontier sweeps: several architectures at several sparsity settings, trained together from one
activation stream, then evaluated side by side.

    from saelab.eval import SweepConfig, run_sweep
    result = run_sweep(lm, SweepConfig(hook="blocks.2.hook_resid_pre", archs=("relu", "topk", "jumprelu"),
                                       points=3), "runs/sweep")
    result["rows"]          # one dict per SAE: architecture, sparsity setting, l0, fvu, delta_loss, ...
    result["matched_l0"]    # metrics interpolated at common L0 values, with the ordering there
    result["files"]         # sweep.json, sweep.csv, delta_loss_vs_l0.png, fvu_vs_l0.png

Every (architecture, sparsity) point is an SAE of ``saelab.train``'s multi-SAE trainer, so one
forward pass of the model feeds all of them (``ActivationStore``, or an ``ActivationCache`` folder).
The sparsity knob is each architecture class's ``sparsity_option`` (``k``, ``l1_coefficient``,
``l0_coefficient``), spaced geometrically over the class's ``sweep_range`` (for inputs normalised to E‖x‖² = 1 as the trainer does; override with ``ranges``). SAEs are then
evaluated on held-out data (``saelab.eval.evaluate``).

Matched L0: architectures rarely land on the same L0, so each one's metric is interpolated linearly
in log L0 between its neighbouring points, at L0 values spaced geometrically over the range every
architecture covers (or, when they share none, over the range all points span); an architecture is
compared only inside its own L0 range (no extrapolation).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from saelab.errors import ConfigError, SaelabError, check_choice, check_range
from saelab.eval.evaluate import DEFAULT_EVAL_SOURCE, EvalConfig, evaluate_saes
from saelab.eval.plots import plot_frontier
from saelab.fileio import atomic_write_bytes, atomic_write_json
from saelab.models import LoadedModel
from saelab.sae.config import SAEConfig
from saelab.sae.registry import architectures, sae_class
from saelab.train.config import check_adam_betas
from saelab.train.curves import plot_training_curves

TABLE_COLUMNS = ("name", "architecture", "sparsity_field", "sparsity_value", "d_sae", "l0", "fvu", "mse", "cosine",
                 "delta_loss", "ce_loss_recovered", "kl", "kl_recovered", "dead_fraction", "dense_fraction",
                 "dead_window_tokens", "ce_clean", "ce_spliced", "path")
PLOTTED = ("delta_loss", "fvu")


@dataclass
class SweepConfig:
    """One frontier sweep.

    hook: the activation site. archs: registered architectures (``saelab.sae.architectures()``). points:
    sparsity settings per architecture (each class's ``sparsity_option``). d_sae: latents per SAE (default
    ``expansion`` × the hook's width). ranges: ``{arch: (sparsest, densest)}`` overriding the class's
    ``sweep_range``. lrs: ``{arch: lr}``
    overriding ``lr`` per architecture. train_tokens, batch_size, lr, seed: training (the warm-up of
    lr and sparsity, the lr decay and the dead-latent window scale with the run's length).
    train_source: data spec for training (default the toy documents of seed 0), unless a cache is
    given to ``run_sweep``. eval_source, eval: the held-out evaluation (error-term check off by
    default here: it is a property of splicing, tested by ``saelab eval``).
    """

    hook: str
    archs: tuple[str, ...] = ("relu", "topk", "jumprelu")
    points: int = 3
    d_sae: int | None = None
    expansion: int = 4
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    lrs: dict[str, float] = field(default_factory=dict)
    train_tokens: int = 400_000
    batch_size: int = 2048
    lr: float = 1e-3
    adam_betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    context_size: int = 128
    train_source: str = "toy:0"
    eval_source: str = DEFAULT_EVAL_SOURCE
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(tokens=16_384, check_error_term=False))
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.hook, str) or not self.hook:
            raise ConfigError(f"hook={self.hook!r} must be a hook name such as blocks.2.hook_resid_pre")
        if isinstance(self.archs, str):
            self.archs = tuple(a.strip() for a in self.archs.split(",") if a.strip())
        self.archs = tuple(self.archs)
        if not self.archs:
            raise ConfigError(f"archs is empty; choose from: {', '.join(architectures())}")
        for arch in self.archs:
            check_choice("archs[]", arch, architectures())
        if len(set(self.archs)) != len(self.archs):
            raise ConfigError(f"archs={','.join(self.archs)} lists an architecture twice; give each once")
        check_range("points", self.points, 1, 50, integer=True)
        if self.d_sae is not None:
            check_range("d_sae", self.d_sae, 1, None, integer=True)
        check_range("expansion", self.expansion, 1, 1024, integer=True)
        check_range("train_tokens", self.train_tokens, 1, None, integer=True)
        check_range("batch_size", self.batch_size, 1, None, integer=True)
        check_range("lr", self.lr, 0, lo_open=True)
        self.adam_betas = check_adam_betas(self.adam_betas)
        check_range("seed", self.seed, 0, None, integer=True)
        check_range("context_size", self.context_size, 2, 1 << 20, integer=True)
        for arch, value in self.lrs.items():
            check_choice("lrs key", arch, architectures())
            check_range(f"lrs[{arch!r}]", value, 0, lo_open=True)
        self.ranges = {arch: tuple(bounds) for arch, bounds in self.ranges.items()}
        for arch, bounds in self.ranges.items():
            check_choice("ranges key", arch, architectures())
            if len(bounds) != 2:
                raise ConfigError(f"ranges[{arch!r}]={bounds!r} must be two numbers (sparsest, densest)")
            for value in bounds:
                check_range(f"ranges[{arch!r}]", value, 0, lo_open=True)
        if self.train_tokens < self.batch_size:
            raise ConfigError(f"train_tokens={self.train_tokens} is less than one batch of {self.batch_size}; "
                              "accepted: train_tokens >= batch_size")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["archs"] = list(self.archs)
        data["ranges"] = {k: list(v) for k, v in self.ranges.items()}
        data["adam_betas"] = list(self.adam_betas)
        return data


def sparsity_knob(arch: str) -> str:
    """The option a sweep varies for ``arch`` (e.g. ``k``, ``l1_coefficient``)."""
    return sae_class(arch).sparsity_option


def integer_knob(arch: str) -> bool:
    """The sparsity knob counts latents (k) rather than weighting a penalty."""
    return all(isinstance(v, int) for v in sae_class(arch).sweep_range)


def short_knob(knob: str) -> str:
    """``l1_coefficient`` -> ``l1``: the knob as it appears in sweep SAE names."""
    return knob.removesuffix("_coefficient")


def sparsity_settings(arch: str, points: int, bounds: tuple[float, float] | None = None) -> list[float]:
    """``points`` values of the architecture's sparsity knob, geometric from its sparsest to its densest
    setting (integers without repeats for k)."""
    lo, hi = bounds or sae_class(arch).sweep_range
    values = [lo] if points == 1 else [lo * (hi / lo) ** (i / (points - 1)) for i in range(points)]
    if integer_knob(arch):
        values = list(dict.fromkeys(max(1, round(v)) for v in values))
    else:
        values = [float(f"{v:.3g}") for v in values]
    return values


def sweep_sae_configs(config: SweepConfig, d_in: int) -> list[SAEConfig]:
    """The SAEs of the sweep, named ``{arch}.{knob}={value}``."""
    d_sae = config.d_sae or config.expansion * d_in
    cfgs = []
    for arch in config.archs:
        knob = sparsity_knob(arch)
        for value in sparsity_settings(arch, config.points, config.ranges.get(arch)):
            value = int(value) if integer_knob(arch) else value
            if integer_knob(arch) and value > d_sae:
                raise ConfigError(f"k={value} for {arch} exceeds d_sae={d_sae}; lower ranges[{arch!r}] or raise d_sae")
            cfgs.append(SAEConfig(arch, d_in, d_sae, hook_name=config.hook, name=f"{arch}.{short_knob(knob)}={value:g}",
                                  lr=config.lrs.get(arch), **{knob: value}))
    return cfgs


def sweep_train_config(config: SweepConfig):
    """The ``TrainConfig`` of the sweep: warm-ups and decay as fractions of the run."""
    from saelab.train import TrainConfig

    steps = math.ceil(config.train_tokens / config.batch_size)
    return TrainConfig(
        tokens=config.train_tokens, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
        adam_betas=config.adam_betas,
        lr_warmup_steps=max(0, steps // 20), lr_decay_steps=max(0, steps // 5),
        sparsity_warmup_steps=max(0, steps // 4), log_every=max(1, steps // 10),
        dead_window_tokens=max(config.batch_size, config.train_tokens // 10),
    )


def matched_l0(rows: list[dict], metrics: tuple[str, ...] = PLOTTED, n_points: int = 5,
               grid: list[float] | None = None) -> list[dict]:
    """Each architecture's metrics interpolated (linear in log L0) at ``n_points`` L0 values spaced
    geometrically over the L0 range all architectures share (else the whole range), or at the L0
    values of ``grid``; per L0, ``order_by_delta_loss`` lists the architectures covering it, best first."""
    by_arch: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("l0") and all(r.get(m) is not None for m in metrics):
            by_arch.setdefault(r["architecture"], []).append(r)
    if not by_arch:
        return []
    lows = [min(r["l0"] for r in group) for group in by_arch.values()]
    highs = [max(r["l0"] for r in group) for group in by_arch.values()]
    lo, hi = max(lows), min(highs)  # where every architecture has a value
    if lo >= hi:  # no common range: cover every architecture's own range
        lo, hi = min(lows), max(highs)
    if grid is None:
        grid = [lo] if hi <= lo else list(np.geomspace(lo, hi, n_points))
    out = []
    for target in grid:
        entry: dict = {"l0": float(target), "values": {}}
        for arch, group in by_arch.items():
            pts = sorted(group, key=lambda r: r["l0"])
            x = np.log([p["l0"] for p in pts])
            if not x[0] - 1e-9 <= math.log(target) <= x[-1] + 1e-9:
                continue
            entry["values"][arch] = {m: float(np.interp(math.log(target), x, [p[m] for p in pts])) for m in metrics}
        if "delta_loss" in metrics:
            entry["order_by_delta_loss"] = sorted(entry["values"], key=lambda a: entry["values"][a]["delta_loss"])
        out.append(entry)
    return out


def table_csv(rows: list[dict], columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
    """The rows as CSV with ``columns`` (null metrics as empty cells)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()


def run_sweep(lm: LoadedModel, config: SweepConfig, out_dir: str | os.PathLike, *, cache: str | None = None,
              resume: bool = False) -> dict:
    """Train, evaluate, and write the table and plots under ``out_dir`` (see module docstring). ``cache``:
    an activation-cache folder holding ``config.hook`` to train from instead of running the model.
    ``resume``: continue an interrupted training run in ``out_dir/train``."""
    from saelab.data import ActivationCache, ActivationStore, StoreConfig, open_source
    from saelab.data.packing import PackingConfig
    from saelab.train import train_saes

    out = Path(out_dir)
    hook = lm.parse_hooks([config.hook])[0].name
    d_in = lm.hook_d_in(hook)
    sae_cfgs = sweep_sae_configs(config, d_in)
    if cache is not None:
        source = ActivationCache(cache, hooks=[hook], batch_size=config.batch_size, seed=config.seed, repeat=True)
        if source.d_in[hook] != d_in:
            raise SaelabError(f"cache {cache!r} holds {source.d_in[hook]} values per token for {hook}, model "
                              f"{lm.name!r} has {d_in}; use a cache of this model")
    else:
        store_cfg = StoreConfig(packing=PackingConfig(context_size=config.context_size), batch_size=config.batch_size,
                                seed=config.seed, repeat=True)
        source = ActivationStore(lm, open_source(config.train_source), [hook], store_cfg)
    trained = train_saes(sae_cfgs, source, sweep_train_config(config), out / "train", resume=resume,
                         progress=config.progress)
    saes = [trained[c.name] for c in sae_cfgs]
    eval_cfg = EvalConfig(**{**config.eval.to_dict(), "context_size": config.context_size,
                             "progress": config.progress})
    results = evaluate_saes(lm, saes, config.eval_source, eval_cfg)
    rows = []
    for cfg, result in zip(sae_cfgs, results, strict=True):
        knob = sparsity_knob(cfg.architecture)
        m = result.metrics
        rows.append({"name": cfg.name, "architecture": cfg.architecture, "sparsity_field": knob,
                     "sparsity_value": getattr(cfg, knob), "d_sae": cfg.d_sae,
                     **{k: m[k] for k in TABLE_COLUMNS if k in m and k not in ("name", "architecture", "d_sae")},
                     "path": str(out / "train" / "saes" / cfg.name), "warnings": m["warnings"]})
    files = {"json": str(out / "sweep.json"), "csv": str(out / "sweep.csv"),
             "delta_loss_plot": str(out / "delta_loss_vs_l0.png"), "fvu_plot": str(out / "fvu_vs_l0.png"),
             "training_curves": str(plot_training_curves(out / "train"))}
    title = f"{lm.name} {hook}, d_sae {sae_cfgs[0].d_sae}, {config.train_tokens:,} training tokens"
    plot_frontier(rows, "delta_loss", files["delta_loss_plot"], title=f"delta LM loss vs L0: {title}")
    plot_frontier(rows, "fvu", files["fvu_plot"], title=f"FVU vs L0: {title}")
    result = {"model": lm.name, "hook": hook, "d_in": d_in, "config": config.to_dict(), "rows": rows,
              "matched_l0": matched_l0(rows), "files": files}
    atomic_write_bytes(files["csv"], table_csv(rows).encode())
    atomic_write_json(files["json"], result)
    return result


SPREAD_METRICS = ("l0", "fvu", "mse", "delta_loss", "ce_loss_recovered", "kl", "dead_fraction", "dense_fraction")


def seed_spread_rows(per_seed_rows: list[list[dict]]) -> list[dict]:
    """One row per sweep point (same ``name`` in every seed's sweep): each metric of ``SPREAD_METRICS``
    as the mean over seeds, with ``{metric}_std`` (sample standard deviation, 0 for one seed),
    ``{metric}_min`` / ``{metric}_max`` and ``n_seeds``."""
    by_name: dict[str, list[dict]] = {}
    for rows in per_seed_rows:
        for row in rows:
            by_name.setdefault(row["name"], []).append(row)
    out = []
    for group in by_name.values():
        row = {k: group[0].get(k) for k in ("name", "architecture", "sparsity_field", "sparsity_value", "d_sae")}
        row["n_seeds"] = len(group)
        for metric in SPREAD_METRICS:
            values = [r[metric] for r in group if r.get(metric) is not None]
            if not values:
                row[metric] = None
                continue
            row[metric] = float(np.mean(values))
            row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            row[f"{metric}_min"], row[f"{metric}_max"] = float(min(values)), float(max(values))
        out.append(row)
    return out


def seed_matched_l0(mean_rows: list[dict], per_seed_rows: list[list[dict]]) -> list[dict]:
    """Matched-L0 comparison on the seed means (``matched_l0``), with, at the same L0 values, each
    seed's interpolated metrics: per architecture ``{metric}_std`` over seeds, and
    ``seed_orders`` (each seed's ordering by delta loss) with ``order_agreement`` (the share of seeds
    whose ordering equals the mean's)."""
    matched = matched_l0(mean_rows)
    grid = [entry["l0"] for entry in matched]
    per_seed = [matched_l0(rows, grid=grid) for rows in per_seed_rows]
    for i, entry in enumerate(matched):
        seeds = [m[i] for m in per_seed]
        for arch, values in entry["values"].items():
            for metric in PLOTTED:
                got = [s["values"][arch][metric] for s in seeds if arch in s["values"]]
                values[f"{metric}_std"] = float(np.std(got, ddof=1)) if len(got) > 1 else 0.0
        entry["seed_orders"] = [s.get("order_by_delta_loss", []) for s in seeds]
        mean_order = entry.get("order_by_delta_loss", [])
        entry["order_agreement"] = float(np.mean([o == mean_order for o in entry["seed_orders"]]))
    return matched


def finished_sweep(folder: Path, config: SweepConfig) -> dict | None:
    """The ``sweep.json`` in ``folder`` when it was written by a sweep of exactly ``config`` (seed
    included), else None. ``progress`` does not count as a setting."""
    path = folder / "sweep.json"
    if not path.is_file():
        return None
    done = json.loads(path.read_text())  # written atomically by run_sweep
    wanted = {**json.loads(json.dumps(config.to_dict())), "progress": None}
    return done if {**done.get("config", {}), "progress": None} == wanted else None


def run_seeded_sweep(lm: LoadedModel, config: SweepConfig, seeds: list[int], out_dir: str | os.PathLike, *,
                     cache: str | None = None, resume: bool = False) -> dict:
    """``run_sweep`` once per seed (initialisation and data order) under ``out_dir/seed{s}`` (a seed whose
    folder already holds a finished sweep of the same settings is read, not rerun, so seeds may run as
    separate processes and be gathered here), then the
    seed spread of every point (``seed_spread_rows``), the matched-L0 comparison on the means with each
    seed's ordering (``seed_matched_l0``), and plots with error bars (one standard deviation over seeds)
    in ``out_dir``."""
    from dataclasses import replace

    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds!r} must list at least one seed, each once")
    out = Path(out_dir)
    sweeps = [finished_sweep(out / f"seed{seed}", replace(config, seed=seed))
              or run_sweep(lm, replace(config, seed=seed), out / f"seed{seed}", cache=cache, resume=resume)
              for seed in seeds]
    per_seed_rows = [s["rows"] for s in sweeps]
    rows = seed_spread_rows(per_seed_rows)
    files = {"json": str(out / "seeds.json"), "csv": str(out / "seeds.csv"),
             "delta_loss_plot": str(out / "delta_loss_vs_l0.png"), "fvu_plot": str(out / "fvu_vs_l0.png"),
             "training_curves": [s["files"]["training_curves"] for s in sweeps]}
    title = (f"{lm.name} {sweeps[0]['hook']}, d_sae {rows[0]['d_sae']}, {config.train_tokens:,} tokens, "
             f"mean ± sd over {len(seeds)} seeds")
    plot_frontier(rows, "delta_loss", files["delta_loss_plot"], title=f"delta LM loss vs L0: {title}")
    plot_frontier(rows, "fvu", files["fvu_plot"], title=f"FVU vs L0: {title}")
    result = {"model": lm.name, "hook": sweeps[0]["hook"], "d_in": sweeps[0]["d_in"], "seeds": list(seeds),
              "config": {**config.to_dict(), "seed": None}, "rows": rows,
              "matched_l0": seed_matched_l0(rows, per_seed_rows), "per_seed": [s["files"]["json"] for s in sweeps],
              "files": files}
    atomic_write_bytes(files["csv"], table_csv(rows, SEED_COLUMNS).encode())
    atomic_write_json(files["json"], result)
    return result


SEED_COLUMNS = ("name", "architecture", "sparsity_field", "sparsity_value", "d_sae", "n_seeds",
                *[c for m in SPREAD_METRICS for c in (m, f"{m}_std")])
