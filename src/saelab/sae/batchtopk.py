"""BatchTopK SAE (Bussmann et al. 2024, arXiv 2412.06410).

Training keeps the B·k largest pre-activations of the whole batch ``[B, d_sae]`` (ReLU applied), so
the number of active latents varies per token with mean k; AuxK as in TopK. Inference uses a
global threshold θ: f = z ⊙ 1[z > θ] (a JumpReLU with one θ), θ the bias-corrected exponential
moving average (factor ``batchtopk_threshold_beta``) of the smallest positive kept activation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.sae.base import SAEOutput
from saelab.sae.sparse import SparsePattern
from saelab.sae.topk import TopKSAE


class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"

    def __init__(self, cfg, generator=None):
        super().__init__(cfg, generator)
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))
        self.register_buffer("threshold_ema", torch.zeros((), dtype=torch.float64))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.int64))

    def select(self, pre: Tensor) -> SparsePattern:
        n_rows = pre.shape[0]
        keep = min(n_rows * self.cfg.k, pre.numel())
        flat = pre.reshape(-1).topk(keep, sorted=False).indices
        return SparsePattern.from_flat(flat, n_rows, self.cfg.d_sae)

    def encode_flat(self, x: Tensor) -> Tensor:
        pre = self.preacts(x)
        threshold = self.threshold.to(pre.dtype).clamp_min(0)
        return torch.where(pre > threshold, pre, 0.0)

    @torch.no_grad()
    def after_step_(self, out: SAEOutput | None = None) -> None:
        super().after_step_(out)
        if out is None or "min_active" not in out.extras:
            return
        beta = self.cfg.batchtopk_threshold_beta
        self.threshold_updates += 1
        self.threshold_ema.mul_(beta).add_((1 - beta) * out.extras["min_active"].double())
        self.threshold.copy_(self.threshold_ema / (1 - beta ** int(self.threshold_updates)))
