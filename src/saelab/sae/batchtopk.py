"""BatchTopK SAE (Bussmann et al. 2024, arXiv 2412.06410).

Training keeps the B·k largest pre-activations of the whole batch ``[B, d_sae]`` (ReLU applied), so
the number of active latents varies per token with mean k; AuxK as in TopK. Inference uses a
global threshold θ: f = z ⊙ 1[z > θ] (a JumpReLU with one θ), θ the bias-corrected exponential
moving average (factor ``batchtopk_threshold_beta``) of the smallest positive kept activation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from saelab.errors import ConfigError, CorruptFileError, check_range
from saelab.sae.base import SAEOutput
from saelab.sae.config import SAEConfig
from saelab.sae.sparse import SparsePattern
from saelab.sae.topk import TopKOptions, TopKSAE


def largest_indices(values: Tensor, keep: int) -> Tensor:
    """Indices of the ``keep`` largest entries of 1-D ``values`` (exact; any order).

    ``topk`` over a whole [batch·d_sae] batch is slow on CPU (2.8 s for 100M entries), so a strided
    sample of ~2^20 entries gives a threshold τ expected to admit ~1.25·keep entries; if at least
    ``keep`` entries are ≥ τ they contain the ``keep`` largest, found by a ``topk`` over them alone.
    Otherwise (rare) the plain ``topk`` runs.
    """
    numel = values.numel()
    if keep >= numel:
        return torch.arange(numel, device=values.device)
    sample = values[:: max(1, numel // (1 << 20))]
    want = min(sample.numel(), math.ceil(keep / numel * sample.numel() * 1.25) + 64)
    tau = sample.topk(want, sorted=False).values.min()
    candidates = (values >= tau).nonzero().squeeze(1)
    if candidates.numel() < keep:
        return values.topk(keep, sorted=False).indices
    return candidates[values[candidates].topk(keep, sorted=False).indices]


@dataclass
class BatchTopKOptions(TopKOptions):
    """TopK's options plus batchtopk_threshold_beta: EMA factor of the inference threshold."""

    batchtopk_threshold_beta: float = 0.999

    def resolve(self, cfg: SAEConfig) -> None:
        super().resolve(cfg)
        check_range("batchtopk_threshold_beta", self.batchtopk_threshold_beta, 0, 1)
        if self.batchtopk_threshold_beta >= 1:
            raise ConfigError(f"batchtopk_threshold_beta={self.batchtopk_threshold_beta!r} is out of range; "
                              "accepted: [0, 1)")


class BatchTopKSAE(TopKSAE):
    """Saved for SAELens as a JumpReLU with θ repeated d_sae times (its inference rule)."""

    architecture = "batchtopk"
    Options = BatchTopKOptions
    saelens_names: ClassVar[dict[str, str]] = {"sae": "jumprelu", "transcoder": "jumprelu_transcoder"}
    saelens_native = False

    def __init__(self, cfg, generator=None):
        super().__init__(cfg, generator)
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))
        self.register_buffer("threshold_ema", torch.zeros((), dtype=torch.float64))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.int64))

    def select(self, pre: Tensor) -> SparsePattern:
        n_rows = pre.shape[0]
        keep = min(n_rows * self.cfg.k, pre.numel())
        return SparsePattern.from_flat(largest_indices(pre.reshape(-1), keep), n_rows, self.cfg.d_sae)

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
        self.threshold.copy_(self.threshold_ema / (1 - beta ** self.threshold_updates.double()))  # no host sync

    def logged_values(self) -> dict[str, float]:
        return {"threshold": float(self.threshold)}

    def saelens_tensors(self) -> dict[str, Tensor]:
        return {"b_enc": self.b_enc,
                "threshold": torch.full((self.cfg.d_sae,), float(self.threshold), dtype=self.cfg.torch_dtype)}

    @classmethod
    def saelens_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {"b_enc": (cfg.d_sae,), "threshold": (cfg.d_sae,)}

    @classmethod
    def saelens_cfg_fields(cls, cfg: SAEConfig) -> dict[str, object]:
        return {}

    @classmethod
    def state_from_saelens(cls, cfg: SAEConfig, tensors: dict[str, Tensor], where: str) -> dict[str, Tensor]:
        tensors = dict(tensors)
        threshold = tensors.pop("threshold")
        if not torch.all(threshold == threshold[0]):
            raise CorruptFileError(f"{where}: a {cfg.architecture} SAE needs one threshold repeated d_sae times, "
                                   "but the values differ")
        tensors.update(threshold=threshold[0].double(), threshold_ema=torch.zeros((), dtype=torch.float64),
                       threshold_updates=torch.zeros((), dtype=torch.int64))
        return tensors
