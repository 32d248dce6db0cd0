"""The typed, validated settings of a training run (shared by all SAEs trained together)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from saelab.errors import ConfigError, check_choice, check_range

B_DEC_INITS = ("geometric_median", "mean", "zeros")
SCHEDULE_SHAPES = ("linear", "cosine")
LOGGERS = ("wandb", "tensorboard")
# Fields that may differ between a checkpoint and the run resuming it (they do not change the weights,
# except steps/tokens, which lengthen or shorten the run from the checkpoint on).
RESUMABLE_CHANGES = ("steps", "tokens", "checkpoint_every", "keep_checkpoints", "log_every", "log_to",
                     "wandb_project", "tune_cpu_allocator", "parallel", "device")
PARALLEL_MODES = ("data", "sae")
AUTOCAST_MODES = ("none", "bf16")


def check_adam_betas(betas) -> tuple[float, float]:
    """``betas`` as a tuple ``(beta1, beta2)``, each in [0, 1), or a ``ConfigError``."""
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise ConfigError(f"adam_betas={betas!r} must be two numbers (beta1, beta2)")
    for i, beta in enumerate(betas):
        check_range(f"adam_betas[{i}]", beta, 0, 1)
        if beta >= 1:
            raise ConfigError(f"adam_betas[{i}]={beta!r} is out of range; accepted: [0, 1)")
    return tuple(betas)


@dataclass
class TrainConfig:
    """How to train.

    steps / tokens: run length (exactly one; tokens are rounded up to whole batches of batch_size).
    batch_size: tokens per step, as the batch source yields them.
    lr, adam_betas, adam_eps: Adam. lr_warmup_steps from ``lr_warmup_start``·lr (shape linear or
        cosine, Gemma Scope: cosine from 0.1·lr over 1,000 steps); lr_decay_steps: the last steps
        decay to ``lr_end_factor``·lr (linear or cosine).
    sparsity_warmup_steps: the L1/L0 coefficients rise linearly from 0 over these steps.
    grad_clip_norm: clip each SAE's total gradient norm (None: no clipping).
    seed: SAE initialisation and resampling (data order belongs to the batch source).
    checkpoint_every: steps between checkpoints (0: only at the end); keep_checkpoints: how many kept.
    log_every: steps between metrics lines (metrics.jsonl).
    dead_window_tokens: a latent is dead after this many tokens without firing (AuxK, metrics);
        sparsity.safetensors holds the feature density over the last such window of the run.
    dense_density: latents firing on more than this fraction of a log window's tokens count as dense.
    resample_dead_every: relu only: every this many steps, re-initialise dead latents from badly
        reconstructed inputs (Bricken et al. 2023); 0 = off. resample_encoder_scale: their 0.2.
    b_dec_init: geometric_median, mean or zeros of the first batch, per hook.
    skip_bad_batches: skip batches with NaN/inf activations (and updates with a NaN/inf loss or
        gradient), counting them, instead of stopping; max_skipped_batches stops a run that skips more.
    device: where the SAEs train. log_to: also log to "wandb" and/or "tensorboard" (must be installed).
    tune_cpu_allocator: on Linux/glibc CPUs keep freed large blocks in the heap, which removes the
        page-fault cost of every large temporary (see saelab.train.allocator).
    parallel: under torch.distributed (torchrun) with several ranks: "data" (every rank trains every
        SAE on its share of each batch, gradients averaged) or "sae" (each rank trains some of the
        SAEs on whole batches); see saelab.train.distributed. Ignored in a single process.
    autocast: "bf16" runs each SAE's training pass (forward and backward) in bfloat16 on a copy of
        its weights refreshed every step, while the master weights, gradient clipping, Adam and its
        moments stay float32 (see saelab.train.precision); "none": all float32 (the SAE's dtype).
    compile: run each SAE's training pass through ``torch.compile`` with ``compile_backend``
        ("inductor" generates kernels and needs a C compiler on CPUs; "aot_eager" only traces).
    """

    steps: int | None = None
    tokens: int | None = None
    batch_size: int = 4096
    lr: float = 3e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    lr_warmup_steps: int = 0
    lr_warmup_start: float = 0.1
    lr_warmup_shape: str = "cosine"
    lr_decay_steps: int = 0
    lr_decay_shape: str = "linear"
    lr_end_factor: float = 0.0
    sparsity_warmup_steps: int = 0
    grad_clip_norm: float | None = 1.0
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 1
    log_every: int = 100
    dead_window_tokens: int = 10_000_000
    dense_density: float = 0.1
    resample_dead_every: int = 0
    resample_encoder_scale: float = 0.2
    b_dec_init: str = "geometric_median"
    skip_bad_batches: bool = False
    max_skipped_batches: int = 1000
    device: str = "cpu"
    log_to: tuple[str, ...] = ()
    wandb_project: str = "saelab"
    tune_cpu_allocator: bool = True
    parallel: str = "data"
    autocast: str = "none"
    compile: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.tokens is None):
            raise ConfigError(f"give exactly one of steps or tokens (got steps={self.steps!r}, "
                              f"tokens={self.tokens!r})")
        if self.steps is not None:
            check_range("steps", self.steps, 1, integer=True)
        if self.tokens is not None:
            check_range("tokens", self.tokens, 1, integer=True)
        check_range("batch_size", self.batch_size, 1, integer=True)
        check_range("lr", self.lr, 0, lo_open=True)
        self.adam_betas = check_adam_betas(self.adam_betas)  # type: ignore[assignment]
        check_range("adam_eps", self.adam_eps, 0, lo_open=True)
        for name in ("lr_warmup_steps", "lr_decay_steps", "sparsity_warmup_steps", "checkpoint_every",
                     "resample_dead_every"):
            check_range(name, getattr(self, name), 0, integer=True)
        check_range("lr_warmup_start", self.lr_warmup_start, 0, 1)
        check_range("lr_end_factor", self.lr_end_factor, 0, 1)
        check_choice("lr_warmup_shape", self.lr_warmup_shape, SCHEDULE_SHAPES)
        check_choice("lr_decay_shape", self.lr_decay_shape, SCHEDULE_SHAPES)
        if self.lr_warmup_steps + self.lr_decay_steps > self.total_steps:
            raise ConfigError(f"lr_warmup_steps={self.lr_warmup_steps} + lr_decay_steps={self.lr_decay_steps} "
                              f"exceed the run's {self.total_steps} steps; accepted: a sum <= {self.total_steps}")
        if self.grad_clip_norm is not None:
            check_range("grad_clip_norm", self.grad_clip_norm, 0, lo_open=True)
        check_range("seed", self.seed, 0, integer=True)
        check_range("keep_checkpoints", self.keep_checkpoints, 1, integer=True)
        check_range("log_every", self.log_every, 1, integer=True)
        check_range("dead_window_tokens", self.dead_window_tokens, 1, integer=True)
        check_range("dense_density", self.dense_density, 0, 1)
        check_range("resample_encoder_scale", self.resample_encoder_scale, 0, lo_open=True)
        check_choice("b_dec_init", self.b_dec_init, B_DEC_INITS)
        check_choice("parallel", self.parallel, PARALLEL_MODES)
        check_range("max_skipped_batches", self.max_skipped_batches, 0, integer=True)
        if not isinstance(self.log_to, (list, tuple)):
            raise ConfigError(f"log_to={self.log_to!r} must be a list of logger names; accepted: {', '.join(LOGGERS)}")
        check_choice("autocast", self.autocast, AUTOCAST_MODES)
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise ConfigError(f"compile_backend={self.compile_backend!r} must name a torch.compile backend such "
                              "as 'inductor' or 'aot_eager'")
        for flag in ("skip_bad_batches", "tune_cpu_allocator", "compile"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag}={getattr(self, flag)!r} must be true or false")
        self.log_to = tuple(self.log_to)
        for name in self.log_to:
            check_choice("log_to", name, LOGGERS)
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device={self.device!r} must be a torch device string such as 'cpu' or 'cuda:0'")

    @property
    def total_steps(self) -> int:
        if self.steps is not None:
            return int(self.steps)
        return math.ceil(int(self.tokens) / self.batch_size)  # type: ignore[arg-type]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default value of every field that has one (what an older run.json or checkpoint lacks)."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        data["log_to"] = list(self.log_to)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are refused with the accepted list."""
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(accepted))
        if unknown:
            raise ConfigError(f"unknown train config key(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
        return cls(**data)
