"""Train several SAEs from one stream of activation batches, with exact resume.

    from saelab.sae import SAEConfig
    from saelab.train import TrainConfig, train_saes
    saes = train_saes([SAEConfig("jumprelu", d_in=512, d_sae=2048, hook_name="blocks.1.attn.hook_z")],
                      source, TrainConfig(tokens=2_000_000, batch_size=4096), "runs/demo")

Each batch ``{hook: [batch, d_in]}`` from the source feeds every SAE that reads that hook (several
SAEs may share a hook); a transcoder reads its input hook and is trained to predict the same tokens
at its output hook (``hook_name_out``), so the source must give both. Under ``out_dir``:

    metrics.jsonl            one JSON line per SAE every log_every steps
    checkpoints/step_N/      state.json + one safetensors file per SAE (weights, Adam, counters) + rng
    saes/<name>/             the trained SAEs (SAELens-format folders, normalisation folded in)

A run stopped anywhere and resumed (``resume=True``) continues from its newest checkpoint and ends
with the same weights as an uninterrupted run (same machine, same settings).

The step loop reads nothing back from the device between logging steps: metric sums and NaN/inf
checks stay on the device (``saelab.train.nonfinite``) and are read every ``log_every`` steps and
before each checkpoint. ``skip_bad_batches`` is the exception: skipping needs a look at every batch.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.errors import ConfigError, SaelabError
from saelab.fileio import check_output_folder
from saelab.sae.base import SAE, InputShapeError
from saelab.sae.config import SAEConfig
from saelab.sae.folder import save_sae
from saelab.sae.registry import architectures, make_sae, sae_class
from saelab.train.allocator import tune_cpu_allocator
from saelab.train.checkpoint import (
    checkpoint_dirs,
    optimizer_from_files,
    optimizer_to_files,
    read_latest_checkpoint,
    write_checkpoint,
)
from saelab.train.config import RESUMABLE_CHANGES, TrainConfig
from saelab.train.dead import resample_dead_latents_
from saelab.train.distributed import DistributedRun
from saelab.train.init import b_dec_from_sample
from saelab.train.metrics import MetricsLog
from saelab.train.nonfinite import FirstFailure, NonFiniteError
from saelab.train.schedule import lr_factor, sparsity_scale
from saelab.train.source import check_source
from saelab.train.step import SAEUpdater, StepResult

logger = logging.getLogger("saelab.train")
SAES_DIR = "saes"
RNG_FILE = "rng.safetensors"


def sae_seed(seed: int, name: str) -> int:
    """Initialisation seed of one SAE: depends on the run seed and the SAE's name only."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


class _Window:
    """Metric sums over the current log window of one SAE, kept on the device (float64) so that adding a
    step reads nothing back to the host; ``summary()`` (at logging steps) does."""

    SUMS = ("x_sq", "sse", "l0", "grad_norm")

    def __init__(self, d_in: int, device: torch.device):
        self.x_sum = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.sums = torch.zeros(len(self.SUMS), dtype=torch.float64, device=device)  # grad_norm: the last one
        self.losses: dict[str, Tensor] = {}
        self.reset()

    def reset(self) -> None:
        self.x_sum.zero_()
        self.sums.zero_()
        self.losses = {}
        self.steps = 0
        self.n = 0

    def add(self, x_stats: tuple[Tensor, Tensor], result: StepResult) -> None:
        """x_stats: (Σ_batch y [d_out], Σ_batch ‖y‖² []) in float64 of the targets this update used."""
        out = result.out
        n = out.n_tokens
        self.steps += 1
        self.n += n
        self.x_sum += x_stats[0]
        step_sums = torch.stack([x_stats[1], out.mse.detach().double() * n,
                                 out.fire_counts().sum().double() / n, self.sums[3].new_zeros(())])
        self.sums += step_sums
        if result.grad_norm is not None:
            self.sums[3] = result.grad_norm.detach().double()
        for key, value in out.losses.items():
            value = value.detach().double()
            self.losses[key] = self.losses[key] + value if key in self.losses else value

    def summary(self) -> dict[str, Any]:
        steps = max(self.steps, 1)
        x_sq, sse, l0, grad_norm = self.sums.tolist()
        variance = x_sq - float(self.x_sum.pow(2).sum()) / max(self.n, 1)
        losses = {k: float(v) / steps for k, v in self.losses.items()}
        return {"loss": sum(losses.values()),
                "losses": losses,
                "l0": l0 / steps,
                "fvu": sse / variance if variance > 0 else float("nan"),
                "mse": sse / max(self.n, 1),
                "grad_norm": grad_norm}

    def tensors(self) -> dict[str, Tensor]:
        """What a checkpoint stores of the window (exact resume)."""
        return {"window.x_sum": self.x_sum, "window.sums": self.sums,
                **{f"window.loss.{k}": v.reshape(1) for k, v in self.losses.items()}}

    def scalars(self) -> dict[str, Any]:
        return {"steps": self.steps, "n": self.n, "loss_terms": list(self.losses)}

    def load(self, tensors: dict[str, Tensor], scalars: dict[str, Any]) -> None:
        self.x_sum.copy_(tensors["window.x_sum"])
        self.steps, self.n = int(scalars["steps"]), int(scalars["n"])
        if "window.sums" in tensors:
            self.sums.copy_(tensors["window.sums"])
            self.losses = {k: tensors[f"window.loss.{k}"].to(self.sums.device).reshape(()) for k in scalars["loss_terms"]}
        else:  # a checkpoint written before the sums moved to the device: they were JSON numbers
            self.sums.copy_(torch.tensor([float(scalars[k]) for k in self.SUMS], dtype=torch.float64))
            self.losses = {k: torch.tensor(float(v), dtype=torch.float64, device=self.sums.device)
                           for k, v in scalars["losses"].items()}


class _Member:
    """One SAE in the run: its updater, metrics window and counters."""

    def __init__(self, sae: SAE, cfg: TrainConfig, dist: DistributedRun | None = None):
        self.sae = sae
        self.base_lr = sae.cfg.lr if sae.cfg.lr is not None else cfg.lr
        self.updater = SAEUpdater(sae, cfg, dist, check_each_step=cfg.skip_bad_batches)
        self.window = _Window(sae.cfg.d_out, sae.W_dec.device)
        self.first_failure = FirstFailure(sae.W_dec.device)  # non-finite updates, when not checked each step
        self.loss_terms: list[str] = []  # names of the values first_failure keeps
        self.skipped_updates = 0
        self.resampled = 0
        self.last_record: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.sae.cfg.name

    @property
    def hook(self) -> str:
        return self.sae.cfg.hook_name

    @property
    def hook_out(self) -> str:
        return self.sae.cfg.hook_name_out

    def target(self, xs: dict[str, Tensor]) -> Tensor | None:
        """The batch this member predicts: None for an SAE (its input), the output hook's for a transcoder."""
        return xs[self.hook_out] if self.sae.cfg.is_transcoder else None


class Trainer:
    """Trains ``sae_cfgs`` on ``source`` with ``cfg``, writing everything under ``out_dir``."""

    def __init__(self, sae_cfgs: list[SAEConfig], source: Any, cfg: TrainConfig, out_dir: str | Path, *,
                 progress: bool = True, extra_meta: dict[str, Any] | None = None):
        if not isinstance(cfg, TrainConfig):
            raise ConfigError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        _check_sae_cfgs(sae_cfgs)
        check_source(source)
        self.cfg, self.source, self.out_dir = cfg, source, Path(out_dir)
        self.progress, self.extra_meta = progress, dict(extra_meta or {})
        self.device = torch.device(cfg.device)
        factors = getattr(source, "normalization_factors", None) or {}
        self.hooks = sorted({h for c in sae_cfgs for h in (c.hook_name, c.hook_name_out)})
        self.factors = {hook: float(factors.get(hook, 1.0)) for hook in self.hooks}
        if cfg.resample_dead_every and not any(sae_class(c.architecture).resamples_dead_latents for c in sae_cfgs):
            able = ", ".join(a for a in architectures() if sae_class(a).resamples_dead_latents)
            raise ConfigError(f"resample_dead_every applies to {able} SAEs, and this run has none; set it to 0")
        self.dist = DistributedRun.current(cfg.parallel)
        if self.dist is not None:
            self.dist.check_batch_size(cfg.batch_size)
        self.sae_cfgs = list(sae_cfgs)  # every SAE of the run; ``members`` are those this process trains
        owned = self.dist.owned(self.sae_cfgs) if self.dist is not None else self.sae_cfgs
        self.members = [_Member(make_sae(c, seed=sae_seed(cfg.seed, c.name)).to(self.device), cfg, self.dist)
                        for c in owned]
        self.bad_activations = {hook: FirstFailure(self.device) for hook in self.hooks}
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = self.tokens = self.batches_consumed = self.skipped_batches = 0
        self.b_dec_initialized = False
        self.checkpointed_step = -1
        self.lr_factor = lr_factor(0, cfg)

    # ------------------------------------------------------------------ the loop
    def run(self, resume: bool = False, stop_at_step: int | None = None) -> dict[str, SAE]:
        """Train to the end (or until ``stop_at_step``) and return ``{name: SAE}`` for raw activations.

        resume: continue from the newest checkpoint in out_dir (a fresh start when there is none).
        stop_at_step: checkpoint and return after this many steps (the run can be resumed later).
        """
        cfg = self.cfg
        if stop_at_step is not None and stop_at_step < 1:
            raise ConfigError(f"stop_at_step={stop_at_step!r} is out of range; accepted: a step >= 1")
        check_output_folder(self.out_dir, self._bytes_needed(), what="training output folder")
        resumed = self._restore() if resume else self._check_fresh()
        metrics = MetricsLog(self.out_dir, cfg.log_to, cfg.wandb_project, self._run_config()) if self.is_main else None
        if metrics is not None:
            metrics.truncate_after(self.step if resumed else -1)
        if self.dist is not None:
            self.dist.barrier()  # every rank has checked or restored before rank 0 writes anything
        if cfg.tune_cpu_allocator and self.device.type == "cpu":
            tune_cpu_allocator()
        total = cfg.total_steps
        end = total if stop_at_step is None else min(total, stop_at_step)
        density_from = max(0, total - math.ceil(cfg.dead_window_tokens / cfg.batch_size))
        bar = tqdm(total=total, initial=self.step, disable=not self.progress or not self.is_main, unit="step", dynamic_ncols=True,
                   desc="train")
        batches = self.source.iter_batches(self.batches_consumed)
        started, started_tokens = time.perf_counter(), self.tokens
        try:
            while self.step < end:
                batch = next(batches, None)
                if batch is None:
                    raise SaelabError(f"the batch source ended after {self.batches_consumed} batches, but the run "
                                      f"needs {total} steps; give a longer source or fewer steps/tokens")
                self.batches_consumed += 1
                xs = self._prepare(batch)
                if xs is None:
                    continue
                if not self.b_dec_initialized:
                    self._init_b_dec(xs)
                self._train_step(xs, count_density=self.step >= density_from)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == total:
                    self._raise_first_failure()
                    rate = (self.tokens - started_tokens) / max(time.perf_counter() - started, 1e-9)
                    records = self._records(rate)
                    if self.dist is not None and not self.dist.data_parallel:
                        records = [r for part in self.dist.gather_json(records) for r in part]
                    if metrics is not None:
                        metrics.write(records)
                    bar.set_postfix_str(self._postfix())
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self._checkpoint()
            if self.step != self.checkpointed_step:
                self._checkpoint()
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
        if self.step >= total:
            results = self._save_final()
        else:
            results = {m.name: self._export(m) for m in self.members}
        if self.dist is not None:
            self.dist.barrier()
        return results

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's shared files (always, without torch.distributed)."""
        return self.dist is None or self.dist.is_main

    def _train_step(self, xs: dict[str, Tensor], count_density: bool) -> None:
        cfg = self.cfg
        factor = lr_factor(self.step, cfg)
        scale = sparsity_scale(self.step, cfg)
        n_tokens = next(iter(xs.values())).shape[0]
        if self.dist is not None:
            used = {h for m in self.members for h in (m.hook, m.hook_out)}
            xs = {hook: self.dist.local_rows(x) for hook, x in xs.items() if hook in used}
        with torch.no_grad():
            targets = {m.hook_out for m in self.members}
            stats = {hook: (x.double().sum(0), x.double().pow(2).sum()) for hook, x in xs.items() if hook in targets}
        for m in self.members:
            x, y = xs[m.hook], m.target(xs)
            result = m.updater.step(x, m.base_lr * factor, scale, count_density, y=y)
            if not result.ok:
                self._bad_update(m, result)
                continue
            if not m.updater.check_each_step:
                m.loss_terms = list(result.out.losses)
                m.first_failure.record(result.finite, self.step,
                                       torch.where(torch.isfinite(result.loss), 2, 1),
                                       torch.stack([v.detach().double() for v in result.out.losses.values()]))
            m.window.add(stats[m.hook_out], result)
            if (cfg.resample_dead_every and m.sae.resamples_dead_latents
                    and (self.step + 1) % cfg.resample_dead_every == 0):
                dead = m.updater.tracker.dead_mask(cfg.dead_window_tokens)
                count = resample_dead_latents_(m.sae, m.updater.optimizer, dead, x, result.out.x_hat.detach(),
                                               self.generator, cfg.resample_encoder_scale, y=y)
                m.updater.tracker.tokens_since_fired.masked_fill_(dead, 0)
                m.resampled += count
                if self.dist is not None and self.dist.data_parallel:
                    self._broadcast_member(m)
        self.step += 1
        self.tokens += n_tokens
        self.lr_factor = factor

    def _prepare(self, batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """Check and move one batch; None when it is skipped for non-finite values."""
        if not isinstance(batch, dict):
            raise SaelabError(f"the batch source yielded a {type(batch).__name__}; expected a dict "
                              "{hook_name: Tensor[batch, d_in]}")
        xs, rows = {}, {}
        for hook in self.hooks:
            if hook not in batch:
                raise SaelabError(f"the batch source gave no activations for hook {hook!r} (it gave: "
                                  f"{', '.join(map(repr, batch)) or 'nothing'}); the SAEs "
                                  f"{', '.join(_users(self.sae_cfgs, hook))} use it")
            x = batch[hook]
            reader, label, width = _hook_width(self.sae_cfgs, hook)
            if x.ndim == 0 or x.shape[-1] != width:
                raise InputShapeError(f"activations from hook {hook!r} have shape {tuple(x.shape)} but SAE "
                                      f"{reader.name!r} expects [..., {label}={width}]; train or load an SAE "
                                      "for this hook's width, or pass the activations of the hook it was trained on")
            x = x.reshape(-1, x.shape[-1]).to(device=self.device, dtype=reader.torch_dtype)
            finite = torch.isfinite(x).all()
            if self.b_dec_initialized and not self.cfg.skip_bad_batches:
                self.bad_activations[hook].record(finite, self.step)  # read at the next log step or checkpoint
            elif not bool(finite):
                if not self.cfg.skip_bad_batches:
                    raise self._bad_activations_error(hook, self.step, self.batches_consumed - 1)
                self.skipped_batches += 1
                if self.skipped_batches > self.cfg.max_skipped_batches:
                    raise NonFiniteError(f"step {self.step}: skipped {self.skipped_batches} batches with NaN/inf "
                                         f"activations (hook {hook!r}), more than max_skipped_batches="
                                         f"{self.cfg.max_skipped_batches}; the activation source looks broken")
                logger.warning("step %d: skipped batch %d (NaN/inf in %s)", self.step, self.batches_consumed - 1,
                               hook)
                return None
            xs[hook], rows[hook] = x, x.shape[0]
        if len(set(rows.values())) > 1:
            raise SaelabError(f"hooks in one batch must have the same number of tokens; got {rows}")
        return xs

    def _bad_activations_error(self, hook: str, step: int, batch: int) -> NonFiniteError:
        names = ", ".join(_users(self.sae_cfgs, hook))
        return NonFiniteError(
            f"step {step}: activations of hook {hook!r} (batch {batch}, read by SAE {names}) contain NaN or inf; "
            "training stopped and the last checkpoint is intact. Fix the activation source, or set "
            "skip_bad_batches=True to skip such batches")

    def _bad_update_error(self, m: _Member, step: int, problem: str, terms: str) -> NonFiniteError:
        return NonFiniteError(
            f"step {step}: the {problem} of SAE {m.name!r} (hook {m.hook!r}) is not finite ({terms}); training "
            "stopped and the last checkpoint is intact. Lower lr or the sparsity coefficient, enable "
            "grad_clip_norm, or set skip_bad_batches=True to skip such updates")

    def _raise_first_failure(self) -> None:
        """Read the device-side NaN/inf records (one synchronisation) and stop at the earliest failure;
        at equal steps bad activations are named before the updates they spoiled."""
        failures = []
        for hook, watch in self.bad_activations.items():
            found = watch.read()
            if found is not None:
                failures.append((found[0], 0, self._bad_activations_error(hook, found[0],
                                                                           found[0] + self.skipped_batches)))
        for m in self.members:
            found = m.first_failure.read()
            if found is not None:
                step, code, values = found
                terms = ", ".join(f"{k}={v:.4g}" for k, v in zip(m.loss_terms, values, strict=False))
                failures.append((step, 1, self._bad_update_error(m, step, "loss" if code == 1 else "gradient",
                                                                 terms)))
        if failures:
            raise min(failures, key=lambda f: f[:2])[2]

    def _bad_update(self, m: _Member, result: StepResult) -> None:
        terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in result.out.losses.items())
        if not self.cfg.skip_bad_batches:
            raise self._bad_update_error(m, self.step, result.problem, terms)
        m.skipped_updates += 1
        if m.skipped_updates > self.cfg.max_skipped_batches:
            raise NonFiniteError(f"step {self.step}: SAE {m.name!r} (hook {m.hook!r}) skipped {m.skipped_updates} "
                                 f"updates with a non-finite {result.problem}, more than max_skipped_batches="
                                 f"{self.cfg.max_skipped_batches}")
        logger.warning("step %d: skipped the update of %s (non-finite %s: %s)", self.step, m.name,
                       result.problem, terms)

    @torch.no_grad()
    def _init_b_dec(self, xs: dict[str, Tensor]) -> None:
        for hook, x in xs.items():
            readers = [m for m in self.members if m.hook_out == hook and m.sae.has_b_dec]
            if not readers:
                continue
            b_dec = b_dec_from_sample(x, self.cfg.b_dec_init)  # of the predicted site
            for m in readers:
                m.sae.b_dec.copy_(b_dec)
        self.b_dec_initialized = True

    # ------------------------------------------------------------------ metrics
    def _records(self, tokens_per_s: float) -> list[dict[str, Any]]:
        records = []
        for m in self.members:
            tracker = m.updater.tracker
            summary = m.window.summary()
            record = {"step": self.step, "tokens": self.tokens, "sae": m.name, "hook": m.hook,
                      **({"hook_out": m.hook_out} if m.sae.cfg.is_transcoder else {}),
                      "architecture": m.sae.cfg.architecture, "lr": m.base_lr * self.lr_factor,
                      "sparsity_scale": sparsity_scale(self.step - 1, self.cfg), **summary,
                      "dead_fraction": float(tracker.dead_mask(self.cfg.dead_window_tokens).double().mean()),
                      "dead_window_tokens": min(self.cfg.dead_window_tokens, self.tokens),
                      "dense_fraction": tracker.dense_fraction(self.cfg.dense_density),
                      "skipped_batches": self.skipped_batches, "skipped_updates": m.skipped_updates,
                      "resampled": m.resampled, "tokens_per_s": tokens_per_s}
            record.update(m.sae.logged_values())
            records.append(record)
            m.last_record = record
            m.window.reset()
            tracker.reset_window()
        return records

    def _postfix(self) -> str:
        shown = [m.last_record for m in self.members[:3]]
        return " | ".join(f"{r['sae']}: L0 {r['l0']:.1f} FVU {r['fvu']:.3f}" for r in shown)

    def _run_config(self) -> dict[str, Any]:
        return {"train": self.cfg.to_dict(), "saes": [c.to_dict() for c in self.sae_cfgs]}

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> None:
        self._raise_first_failure()
        files: dict[str, dict[str, Tensor]] = {}
        members: dict[str, Any] = {}
        for m in self.members:
            optim_tensors, optim_meta = optimizer_to_files(m.updater.optimizer)
            tensors = {f"model.{k}": v for k, v in m.sae.state_dict().items()}
            tensors.update({f"optim.{k}": v for k, v in optim_tensors.items()})
            tensors.update({f"tracker.{k}": v for k, v in m.updater.tracker.tensors().items()})
            tensors.update(m.window.tensors())
            files[f"{m.name}.safetensors"] = tensors
            members[m.name] = {"optimizer": optim_meta, "tracker": m.updater.tracker.scalars(),
                               "window": m.window.scalars(), "skipped_updates": m.skipped_updates,
                               "resampled": m.resampled, "last_record": m.last_record}
        if self.dist is not None and not self.dist.data_parallel:  # each rank holds some of the SAEs
            files = self.dist.gather_tensor_files(files)
            members = {name: meta for part in self.dist.gather_json(members) for name, meta in part.items()}
        self.checkpointed_step = self.step
        if not self.is_main:
            return
        files[RNG_FILE] = {"trainer": self.generator.get_state(), "torch": torch.get_rng_state()}
        state = {"tokens": self.tokens, "batches_consumed": self.batches_consumed,
                 "skipped_batches": self.skipped_batches, "b_dec_initialized": self.b_dec_initialized,
                 "lr_factor": self.lr_factor, "train_config": self.cfg.to_dict(),
                 "sae_configs": [c.to_dict() for c in self.sae_cfgs], "members": members}
        write_checkpoint(self.out_dir, self.step, state, files, self.cfg.keep_checkpoints)

    def _broadcast_member(self, m: _Member) -> None:
        """Give every rank rank 0's weights and Adam moments of ``m`` (after a rank-local change)."""
        state = [t for entries in m.updater.optimizer.state.values() for t in entries.values()
                 if isinstance(t, Tensor) and t.ndim > 0]
        self.dist.broadcast_([*m.sae.parameters(), *state])

    def _bytes_needed(self) -> int:
        """Disk space for the checkpoints kept (plus one being written) and the saved SAEs: each SAE's
        parameters, Adam's two moments and a margin for counters."""
        params = sum(p.numel() * p.element_size() for m in self.members for p in m.sae.parameters())
        return params * (4 * (self.cfg.keep_checkpoints + 1) + 1)

    def _check_fresh(self) -> bool:
        existing = checkpoint_dirs(self.out_dir)
        if existing:
            raise ConfigError(f"{self.out_dir} already holds a run (checkpoint {existing[0].name}); pass "
                              "resume=True (--resume) to continue it, or choose an empty output folder")
        return False

    def _restore(self) -> bool:
        found = read_latest_checkpoint(self.out_dir)
        if found is None:
            logger.info("no checkpoint in %s: starting a new run", self.out_dir)
            return False
        folder, state, files = found
        self._check_compatible(folder, state)
        for m in self.members:
            tensors = files[f"{m.name}.safetensors"]
            meta = state["members"][m.name]
            model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
            m.sae.load_state_dict(model, strict=True)
            optimizer_from_files(m.updater.optimizer, {k[6:]: v.to(self.device) for k, v in tensors.items()
                                                       if k.startswith("optim.")}, meta["optimizer"])
            m.updater.tracker.load({k[8:]: v for k, v in tensors.items() if k.startswith("tracker.")},
                                   meta["tracker"])
            m.window.load(tensors, meta["window"])
            m.skipped_updates, m.resampled = meta["skipped_updates"], meta["resampled"]
            m.last_record = meta.get("last_record", {})
        rng = files[RNG_FILE]
        self.generator.set_state(rng["trainer"])
        torch.set_rng_state(rng["torch"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.batches_consumed, self.skipped_batches = state["batches_consumed"], state["skipped_batches"]
        self.b_dec_initialized, self.lr_factor = state["b_dec_initialized"], state["lr_factor"]
        self.checkpointed_step = self.step
        logger.info("resumed from %s (step %d)", folder, self.step)
        return True

    def _check_compatible(self, folder: Path, state: dict[str, Any]) -> None:
        defaults = TrainConfig.defaults()
        saved = {**{k: v for k, v in defaults.items() if k not in ("steps", "tokens")}, **state.get("train_config", {})}
        current = self.cfg.to_dict()
        for key in sorted(set(saved) | set(current)):
            if key in RESUMABLE_CHANGES or saved.get(key) == current.get(key):
                continue
            raise ConfigError(f"cannot resume from {folder}: train setting {key} was {saved.get(key)!r} there and "
                              f"is {current.get(key)!r} now; resume with the same settings or use a new folder")
        saved_saes = {c["name"]: c for c in state.get("sae_configs", [])}
        current_saes = {c.name: c.to_dict() for c in self.sae_cfgs}
        if set(saved_saes) != set(current_saes):
            raise ConfigError(f"cannot resume from {folder}: it trained SAEs {sorted(saved_saes)}, this run has "
                              f"{sorted(current_saes)}")
        for name, cfg in current_saes.items():
            if saved_saes[name] != cfg:
                diff = sorted(k for k in cfg if saved_saes[name].get(k) != cfg[k])
                raise ConfigError(f"cannot resume from {folder}: SAE {name!r} differs in {', '.join(diff)}")

    # ------------------------------------------------------------------ results
    def _export(self, m: _Member) -> SAE:
        """A copy of the SAE for raw activations (normalisation folded in), in eval mode."""
        workspace, m.sae.workspace = m.sae.workspace, None
        try:
            sae = copy.deepcopy(m.sae)
        finally:
            m.sae.workspace = workspace
        sae.fold_scales_(self.factors[m.hook], self.factors[m.hook_out])
        return sae.eval()

    def _save_final(self) -> dict[str, SAE]:
        results = {}
        source_meta = getattr(self.source, "metadata", None) or {}
        writes = self.is_main or not self.dist.data_parallel
        for m in self.members:
            sae = self._export(m)
            results[m.name] = sae
            if not writes:
                continue
            meta = {**source_meta, **self.extra_meta,
                    "normalization_factor": self.factors[m.hook], "normalization_folded": True,
                    **({"normalization_factor_out": self.factors[m.hook_out]} if m.sae.cfg.is_transcoder else {}),
                    "training": {"steps": self.step, "tokens": self.tokens, "seed": self.cfg.seed,
                                 "train_config": self.cfg.to_dict(), "skipped_batches": self.skipped_batches,
                                 "skipped_updates": m.skipped_updates, "resampled": m.resampled,
                                 "final_metrics": m.last_record}}
            save_sae(sae, self.out_dir / SAES_DIR / m.name, extra_meta=meta,
                     sparsity=m.updater.tracker.log_density())
        return results


def _check_sae_cfgs(sae_cfgs: list[SAEConfig]) -> None:
    if not sae_cfgs:
        raise ConfigError("give at least one SAEConfig to train")
    names: dict[str, int] = {}
    for i, c in enumerate(sae_cfgs):
        if not isinstance(c, SAEConfig):
            raise ConfigError(f"sae_cfgs[{i}] is a {type(c).__name__}; expected an SAEConfig")
        if not c.hook_name:
            raise ConfigError(f"sae_cfgs[{i}] ({c.name!r}) has no hook_name; the trainer needs the hook each "
                              "SAE reads, e.g. hook_name='blocks.1.attn.hook_z'")
        names[c.name] = names.get(c.name, 0) + 1
    duplicates = sorted(n for n, count in names.items() if count > 1)
    if duplicates:
        raise ConfigError(f"SAE names must be unique within a run; repeated: {', '.join(duplicates)}; set "
                          "name=... on SAEs that share a hook, architecture and d_sae")
    hook_widths: dict[str, set[int]] = {}
    for c in sae_cfgs:
        hook_widths.setdefault(c.hook_name, set()).add(c.d_in)
        hook_widths.setdefault(c.hook_name_out, set()).add(c.d_out)
    for hook, widths in hook_widths.items():
        if len(widths) > 1:
            raise ConfigError(f"SAEs on hook {hook!r} disagree on d_in ({sorted(widths)}); one hook has one width")


def _users(sae_cfgs: list[SAEConfig], hook: str) -> list[str]:
    """Names of the SAEs that read or predict ``hook``."""
    return [c.name for c in sae_cfgs if hook in (c.hook_name, c.hook_name_out)]


def _hook_width(sae_cfgs: list[SAEConfig], hook: str) -> tuple[SAEConfig, str, int]:
    """(an SAE using ``hook``, "d_in" or "d_out", the width it expects there)."""
    for c in sae_cfgs:
        if c.hook_name == hook:
            return c, "d_in", c.d_in
    c = next(c for c in sae_cfgs if c.hook_name_out == hook)
    return c, "d_out", c.d_out


def train_saes(sae_cfgs: list[SAEConfig], source: Any, train_cfg: TrainConfig, out_dir: str | Path, *,
               resume: bool = False, progress: bool = True, stop_at_step: int | None = None,
               extra_meta: dict[str, Any] | None = None) -> dict[str, SAE]:
    """Train every SAE in ``sae_cfgs`` from ``source``'s batches; returns ``{name: SAE}`` (raw-activation units).

    See ``Trainer`` and the module docstring for what is written under ``out_dir``.
    extra_meta: JSON-serialisable dict stored in each saved folder's ``saelab`` section (e.g. a
    ``model`` spec); the source's ``metadata`` is stored too.
    """
    trainer = Trainer(sae_cfgs, source, train_cfg, out_dir, progress=progress, extra_meta=extra_meta)
    return trainer.run(resume=resume, stop_at_step=stop_at_step)
