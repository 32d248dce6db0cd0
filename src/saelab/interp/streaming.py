"""Streaming top-k per latent: keep the ``k`` largest keys of every column seen so far, with a payload.

Used twice by ``saelab.interp.gather``: for the top activating tokens (key = activation) and for a
uniform random sample of firing tokens (key = a random number, so the kept set is a uniform
reservoir sample of the tokens where the latent fired).
"""

from __future__ import annotations

import torch


class StreamingTopK:
    """Top ``k`` keys per column over a stream of ``[n, n_cols]`` blocks.

    ``keys [n_cols, k]`` (``-inf`` where fewer than ``k`` entries were offered), ``ids [n_cols, k]``
    (int64 payload, e.g. global token index), ``values [n_cols, k]`` (float payload).
    """

    def __init__(self, n_cols: int, k: int):
        self.k = k
        self.keys = torch.full((n_cols, k), float("-inf"))
        self.ids = torch.full((n_cols, k), -1, dtype=torch.int64)
        self.values = torch.zeros((n_cols, k))

    def update(self, keys: torch.Tensor, ids: torch.Tensor, values: torch.Tensor | None = None) -> None:
        """Offer ``keys [n, n_cols]`` with ``ids [n]`` (shared by the row) and ``values [n, n_cols]``
        (default: the keys). Entries with key ``-inf`` are never kept."""
        n = keys.shape[0]
        if n == 0:
            return
        values = keys if values is None else values
        take = min(self.k, n)
        block_keys, rows = keys.topk(take, dim=0)                         # [take, n_cols]
        block_ids = ids[rows]                                              # [take, n_cols]
        block_values = values.gather(0, rows)
        all_keys = torch.cat([self.keys, block_keys.T.float()], dim=1)     # [n_cols, k + take]
        all_ids = torch.cat([self.ids, block_ids.T], dim=1)
        all_values = torch.cat([self.values, block_values.T.float()], dim=1)
        self.keys, order = all_keys.topk(self.k, dim=1)
        self.ids = all_ids.gather(1, order)
        self.values = all_values.gather(1, order)

    def column(self, col: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(keys, ids, values)`` of column ``col`` that were filled, largest key first."""
        keep = torch.isfinite(self.keys[col])
        return self.keys[col][keep], self.ids[col][keep], self.values[col][keep]
