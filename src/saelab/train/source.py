"""What the trainer reads: a batch source, and a simple in-memory one.

A batch source is any object with

    iter_batches(start_batch: int = 0) -> Iterator[dict[str, Tensor]]

yielding ``{hook_name: Tensor[batch, d_in]}`` deterministically, so that a resumed run can restart the
stream at the batch after its checkpoint, and optionally

    normalization_factors: dict[str, float]   # the batches were divided by these (per hook)
    metadata: dict                            # JSON-serialisable, stored in saved SAE folders

(e.g. ``{"model_name": ..., "context_size": ..., "dataset_path": ...}``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from torch import Tensor

from saelab.errors import ConfigError


@runtime_checkable
class BatchSource(Protocol):
    def iter_batches(self, start_batch: int = 0) -> Iterator[dict[str, Tensor]]: ...


class InMemorySource:
    """Batches cut in order from in-memory activations ``{hook: Tensor[n_tokens, d_in]}``.

    The stream repeats the data (epoch after epoch) so runs longer than the data still work; batch
    ``i`` always holds the same rows. ``normalization_factors`` is stored as given.
    """

    def __init__(self, activations: dict[str, Tensor], batch_size: int,
                 normalization_factors: dict[str, float] | None = None, metadata: dict | None = None):
        if not activations:
            raise ConfigError("activations must hold at least one hook")
        sizes = {hook: t.shape[0] for hook, t in activations.items()}
        if len(set(sizes.values())) != 1:
            raise ConfigError(f"every hook needs the same number of rows; got {sizes}")
        n = next(iter(sizes.values()))
        if batch_size < 1 or batch_size > n:
            raise ConfigError(f"batch_size={batch_size} is out of range; accepted: [1, {n}] (the rows held)")
        self.activations, self.batch_size = activations, batch_size
        self.batches_per_epoch = n // batch_size
        self.normalization_factors = dict(normalization_factors or {})
        self.metadata = dict(metadata or {})

    def iter_batches(self, start_batch: int = 0) -> Iterator[dict[str, Tensor]]:
        index = start_batch
        while True:
            start = (index % self.batches_per_epoch) * self.batch_size
            yield {hook: t[start:start + self.batch_size] for hook, t in self.activations.items()}
            index += 1


def check_source(source: object) -> None:
    """Refuse objects that do not look like a batch source."""
    if not callable(getattr(source, "iter_batches", None)):
        raise ConfigError(f"the batch source {type(source).__name__} has no iter_batches(start_batch) method; "
                          "see saelab.train.source for what the trainer reads")
    factors = getattr(source, "normalization_factors", None)
    if factors is not None and not isinstance(factors, dict):
        raise ConfigError(f"normalization_factors must be a dict hook -> float, got {type(factors).__name__}")


