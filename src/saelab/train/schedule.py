"""Learning-rate and sparsity-coefficient schedules: pure functions of the step (0-based)."""

from __future__ import annotations

import math

from saelab.train.config import TrainConfig


def _ramp(progress: float, shape: str) -> float:
    """0 -> 1 as progress goes 0 -> 1, linearly or along half a cosine."""
    progress = min(max(progress, 0.0), 1.0)
    return progress if shape == "linear" else 0.5 * (1.0 - math.cos(math.pi * progress))


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr for the update made at ``step``: warm-up, flat, then decay."""
    total = cfg.total_steps
    if cfg.lr_warmup_steps and step < cfg.lr_warmup_steps:
        start = cfg.lr_warmup_start
        return start + (1.0 - start) * _ramp(step / cfg.lr_warmup_steps, cfg.lr_warmup_shape)
    decay_start = total - cfg.lr_decay_steps
    if cfg.lr_decay_steps and step >= decay_start:
        end = cfg.lr_end_factor
        return end + (1.0 - end) * (1.0 - _ramp((step - decay_start) / cfg.lr_decay_steps, cfg.lr_decay_shape))
    return 1.0


def sparsity_scale(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the L1/L0 coefficient at ``step``: linear from 0 over sparsity_warmup_steps."""
    if not cfg.sparsity_warmup_steps:
        return 1.0
    return min(1.0, step / cfg.sparsity_warmup_steps)
