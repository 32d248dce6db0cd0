"""One SAE's full training update: forward, loss, backward, decoder projection, clipping, Adam, bookkeeping.

``SAEUpdater`` is what the trainer runs for each SAE on each batch, and what the step benchmark
times, so the figures there are the trainer's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saelab.sae.base import SAE, SAEOutput
from saelab.sae.dense import Workspace
from saelab.train.compiled import compile_training_pass
from saelab.train.config import TrainConfig
from saelab.train.dead import LatentTracker
from saelab.train.precision import training_module

if TYPE_CHECKING:
    from saelab.train.distributed import DistributedRun


@dataclass
class StepResult:
    """What one update did, as device tensors (reading them as numbers is a host synchronisation).

    loss [], grad_norm [] (before clipping), finite [] bool: loss and gradient were finite. When the
    updater checks every step (``check_each_step``) a non-finite update is not applied: ok=False and
    ``problem`` says which ("loss" or "gradient"). Otherwise the update is applied whatever ``finite``
    says and the trainer reads ``finite`` at its next logging step or checkpoint.
    """

    out: SAEOutput
    loss: Tensor
    grad_norm: Tensor | None
    finite: Tensor
    ok: bool = True
    problem: str = ""


def make_optimizer(sae: SAE, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam over the SAE's parameters (fused kernel where the device and dtype support it)."""
    params = [p for p in sae.parameters() if p.requires_grad]
    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.adam_betas), "eps": cfg.adam_eps}
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, **kwargs)


class SAEUpdater:
    """An SAE with its optimiser and firing statistics.

    dist: a data-parallel ``DistributedRun``; gradients and loss are then averaged over the ranks
    (one all-reduce), firing counts summed and BatchTopK's smallest kept activation min-reduced, so
    every rank makes the same update.
    check_each_step: read the loss and gradient norm on the host every step and skip non-finite
        updates (one synchronisation per step; what ``skip_bad_batches`` needs). Otherwise (the
        default, and the trainer's unless skip_bad_batches) the step
        never waits for the device: clipping is a device-side factor and ``StepResult.finite`` is left
        for the caller to read when it logs.
    The training pass runs in bf16 on a ``ComputeCopy`` when ``cfg.autocast == "bf16"`` and through
    ``torch.compile`` when ``cfg.compile`` (``saelab.train.precision``, ``saelab.train.compiled``).
    """

    def __init__(self, sae: SAE, cfg: TrainConfig, dist: DistributedRun | None = None,
                 check_each_step: bool = False):
        self.sae, self.cfg = sae, cfg
        self.dist = dist if dist is not None and dist.data_parallel else None
        self.check_each_step = check_each_step
        sae.workspace = Workspace()  # outputs of a step are not kept past the next one
        self.optimizer = make_optimizer(sae, cfg)
        self.tracker = LatentTracker(sae.cfg.d_sae, device=sae.W_dec.device)
        self.uses_dead_mask = type(sae).uses_dead_mask
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        module, self.compute = training_module(sae, cfg.autocast)
        self.compute_dtype = self.compute.dtype if self.compute is not None else None
        self.forward = compile_training_pass(module, cfg.compile_backend) if cfg.compile else module
        self._scale = torch.zeros((), dtype=torch.float32, device=sae.W_dec.device) if cfg.compile else None

    def step(self, x: Tensor, lr: float, sparsity_scale: float, count_density: bool = False,
             y: Tensor | None = None) -> StepResult:
        """One update on ``x [batch, d_in]`` predicting ``y [batch, d_out]`` (default x) at learning rate ``lr``."""
        dead = self.tracker.dead_mask(self.cfg.dead_window_tokens) if self.uses_dead_mask else None
        if self.compute is not None:
            self.compute.refresh()
            x = x.to(self.compute_dtype)
            y = None if y is None else y.to(self.compute_dtype)
        if self._scale is not None:  # a tensor, so a compiled pass is not re-traced as the warm-up moves
            sparsity_scale = self._scale.fill_(sparsity_scale)
        out = self.forward(x, y, sparsity_scale=sparsity_scale, dead_mask=dead)
        loss = out.loss
        if self.dist is None and self.check_each_step and not _finite(loss):
            return StepResult(out, loss.detach(), None, loss.new_zeros((), dtype=torch.bool), ok=False,
                              problem="loss")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.compute is not None:
            self.compute.gradients_to_master()
        loss = self._average_over_ranks(loss) if self.dist is not None else loss.detach()
        if self.dist is not None and self.check_each_step and not _finite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult(out, loss, None, loss.new_zeros((), dtype=torch.bool), ok=False, problem="loss")
        self.sae.remove_parallel_decoder_grad_()
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        if self.check_each_step and not _finite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult(out, loss, grad_norm, finite, ok=False, problem="gradient")
        max_norm = self.cfg.grad_clip_norm
        if max_norm is not None:  # scale by max_norm / (norm + 1e-6) where norm > max_norm, else by exactly 1
            factor = torch.where(grad_norm > max_norm, max_norm / (grad_norm + 1e-6), torch.ones_like(grad_norm))
            torch._foreach_mul_(grads, factor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        fire_counts, n_tokens = out.fire_counts(), x.shape[0]
        if self.dist is not None:
            fire_counts, n_tokens = self.dist.sum_(fire_counts), n_tokens * self.dist.world_size
            self._global_min_active(out)
        self.sae.after_step_(out)
        self.tracker.update(fire_counts, n_tokens, count_density)
        return StepResult(out, loss, grad_norm, finite)

    def _average_over_ranks(self, loss: Tensor) -> Tensor:
        """Average gradients and loss over the ranks; a parameter without a gradient on every rank keeps none."""
        missing = [p.grad is None for p in self.params]
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        mean_loss = self.dist.average_([p.grad for p in self.params], loss)
        for p, was_missing in zip(self.params, missing, strict=True):
            if was_missing and not bool(p.grad.any()):  # only parameters this rank left without a gradient
                p.grad = None
        return mean_loss.detach().to(loss.device)

    def _global_min_active(self, out: SAEOutput) -> None:
        """BatchTopK's threshold statistic over the global batch: the smallest positive kept activation."""
        if "min_active" not in out.extras or out.values is None:
            return
        with torch.no_grad():
            values = out.values.float()
            local = torch.where(values > 0, values, torch.full_like(values, math.inf)).amin() if values.numel() \
                else values.new_tensor(math.inf)
            smallest = self.dist.min_(local)
            out.extras["min_active"] = torch.where(torch.isinf(smallest), torch.zeros_like(smallest), smallest)


def _finite(value: Tensor) -> bool:
    """Whether a scalar tensor is finite (a host synchronisation)."""
    return bool(torch.isfinite(value.detach()))
