"""Run a block of torch work on a set number of CPU threads, restoring the previous setting after.

On a small machine shared with other jobs, one thread was measured 2-10x faster than two whenever
another process held a core (the second thread's barrier waits dominate).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from saelab.errors import check_range


@contextmanager
def using_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block (``None``: leave it as it is)."""
    if threads is None:
        yield
        return
    check_range("threads", threads, 1, 1024, integer=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
