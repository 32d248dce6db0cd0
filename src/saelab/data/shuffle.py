"""Deterministic, resumable shuffling of activation rows that arrive in chunks.

A chunk is a group of rows whose size is cheap to know in advance (from tokens alone, or from a
manifest) and whose values are expensive to produce (a forward pass, or reading shards). The
global row order is: chunk 0's rows in a random permutation, then chunk 1's, and so on, each
permutation drawn from a generator seeded by ``(seed, chunk index)``; batch ``b`` is rows
``[b * batch_size, (b + 1) * batch_size)`` of that order. So ``start_batch=N`` skips whole chunks
without loading them and yields exactly the batches an uninterrupted run would have yielded from
batch N on. Rows of one chunk are mixed (many documents per batch); batches at a chunk boundary
take rows from both chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from saelab.errors import check_range


@dataclass
class Chunk:
    """``n_rows`` rows; ``load()`` returns ``{name: Tensor[n_rows, ...]}``."""

    n_rows: int
    load: Callable[[], dict[str, torch.Tensor]]


def chunk_generator(seed: int, index: int, stream: int = 0) -> torch.Generator:
    """The CPU generator that permutes chunk ``index`` for ``seed`` (``stream`` separates other uses
    of the same seed, e.g. the shard order of a cache)."""
    state = np.random.SeedSequence([int(seed), int(stream), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _take(rows: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {k: v[start:stop] for k, v in rows.items()}


def shuffled_batches(chunks: Iterable[Chunk], batch_size: int, seed: int = 0, start_batch: int = 0,
                     shuffle: bool = True, drop_last: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Batches ``{name: Tensor[batch_size, ...]}`` in the order described in the module docstring."""
    check_range("batch_size", batch_size, 1, None, integer=True)
    check_range("start_batch", start_batch, 0, None, integer=True)
    skip = start_batch * batch_size
    pending: dict[str, torch.Tensor] | None = None
    for index, chunk in enumerate(chunks):
        if skip >= chunk.n_rows:
            skip -= chunk.n_rows
            continue
        rows = chunk.load()
        if shuffle:
            order = torch.randperm(chunk.n_rows, generator=chunk_generator(seed, index))[skip:]
            rows = {k: v[order.to(v.device)] for k, v in rows.items()}
        elif skip:
            rows = _take(rows, skip, chunk.n_rows)
        skip = 0
        pending = rows if pending is None else {k: torch.cat([pending[k], rows[k]]) for k in rows}
        n = len(next(iter(pending.values())))
        start = 0
        while n - start >= batch_size:
            yield _take(pending, start, start + batch_size)
            start += batch_size
        pending = _take(pending, start, n)
    if pending is not None and not drop_last and len(next(iter(pending.values()))):
        yield pending
