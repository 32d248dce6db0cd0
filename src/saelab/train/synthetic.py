"""A synthetic batch source with a planted sparse dictionary: ground truth for SAE training.

x = Σ_i a_i d_i over a few active features i per sample, d_i unit vectors of a random dictionary
``[n_features, d_in]``, magnitudes a_i uniform in [min_magnitude, max_magnitude]; batches are divided
by a fixed factor so that E‖x‖² = 1, and that factor is exposed as ``normalization_factors``.
Batch ``i`` depends only on (seed, i), so a resumed stream is identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.errors import check_range


@dataclass
class PlantedDictionary:
    """Settings of the planted dictionary and its samples."""

    d_in: int = 64
    n_features: int = 512
    active_per_sample: int = 4
    min_magnitude: float = 0.5
    max_magnitude: float = 1.5
    raw_scale: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("d_in", self.d_in, 1, integer=True)
        check_range("n_features", self.n_features, 1, integer=True)
        check_range("active_per_sample", self.active_per_sample, 1, self.n_features, integer=True)
        check_range("min_magnitude", self.min_magnitude, 0, lo_open=True)
        check_range("max_magnitude", self.max_magnitude, self.min_magnitude)
        check_range("raw_scale", self.raw_scale, 0, lo_open=True)
        check_range("seed", self.seed, 0, integer=True)


class PlantedDictionarySource:
    """Batches ``{hook_name: [batch_size, d_in]}`` of planted sparse combinations (normalised)."""

    def __init__(self, spec: PlantedDictionary, batch_size: int, hook_name: str = "synthetic",
                 n_batches: int | None = None):
        check_range("batch_size", batch_size, 1, integer=True)
        self.spec, self.batch_size, self.hook_name, self.n_batches = spec, batch_size, hook_name, n_batches
        gen = torch.Generator().manual_seed(spec.seed)
        dictionary = torch.randn(spec.n_features, spec.d_in, generator=gen, dtype=torch.float64)
        self.dictionary = (dictionary / dictionary.norm(dim=1, keepdim=True)).float()
        self.factor = self._mean_square_norm() ** 0.5
        self.normalization_factors = {hook_name: self.factor}
        self.metadata = {"model_name": "planted-dictionary", "dataset_path": f"synthetic:seed={spec.seed}"}

    def sample(self, index: int) -> tuple[Tensor, Tensor]:
        """Batch ``index`` (any int; -1 calibrates the factor): (raw x [batch, d_in], codes [batch, n_features])."""
        s = self.spec
        gen = torch.Generator().manual_seed((s.seed * 1_000_003 + index + 2) & 0x7FFF_FFFF_FFFF_FFFF)
        scores = torch.rand(self.batch_size, s.n_features, generator=gen)
        active = scores.topk(s.active_per_sample, dim=1).indices
        magnitude = s.min_magnitude + (s.max_magnitude - s.min_magnitude) * torch.rand(
            self.batch_size, s.active_per_sample, generator=gen)
        codes = torch.zeros(self.batch_size, s.n_features).scatter_(1, active, magnitude * s.raw_scale)
        return codes @ self.dictionary, codes

    def _mean_square_norm(self) -> float:
        x, _ = self.sample(-1)
        return float(x.pow(2).sum(1).mean())

    def iter_batches(self, start_batch: int = 0) -> Iterator[dict[str, Tensor]]:
        index = start_batch
        while self.n_batches is None or index < self.n_batches:
            x, _ = self.sample(index)
            yield {self.hook_name: x / self.factor}
            index += 1
