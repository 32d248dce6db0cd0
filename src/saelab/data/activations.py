"""Running the model on token windows and gathering per-token activations of several hooks.

One forward pass (stopped after the last block the hooks need) feeds every hook. Values are
flattened per token to the SAE input convention: ``hook_z`` (and q/k/v) ``[n_heads * d_head]``,
residual and output hooks ``[d_model]``, ``mlp.hook_post`` ``[d_mlp]``. Rows come window by
window, positions in order; positions holding special tokens are skipped when
``exclude_special_tokens``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from saelab.data.packing import special_token_mask
from saelab.errors import ConfigError, SaelabError, check_range
from saelab.models import LoadedModel
from saelab.models.hook_points import ATTN_PATTERN
from saelab.models.loading import resolve_dtype


class ActivationExtractor:
    """Activations of ``hooks`` for batches of windows ``[n_windows, context_size]``."""

    def __init__(self, lm: LoadedModel, hooks: Iterable[str] | str, *, model_batch_size: int = 16,
                 exclude_special_tokens: bool = True, dtype: str | torch.dtype = "float32",
                 device: str | torch.device | None = None):
        check_range("model_batch_size", model_batch_size, 1, None, integer=True)
        self.lm = lm
        self.points = lm.parse_hooks(hooks)
        patterns = [p.name for p in self.points if p.kind == ATTN_PATTERN]
        if patterns:
            raise ConfigError(f"hooks {patterns}: attention patterns cannot be stored as per-token activations; "
                              "choose residual, attention (q/k/v/z/attn_out) or MLP hooks")
        self.hooks = [p.name for p in self.points]
        self.hook_shapes = {name: lm.hook_shape(name) for name in self.hooks}
        self.d_in = {name: lm.hook_d_in(name) for name in self.hooks}
        self.model_batch_size = int(model_batch_size)
        self.exclude_special_tokens = bool(exclude_special_tokens)
        self.special_ids = lm.special_token_ids if exclude_special_tokens else []
        dtype = resolve_dtype(dtype)
        if dtype == "auto":
            raise ConfigError("dtype='auto' is not accepted for activations; choose float32, float16 or bfloat16")
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else lm.device

    def valid_mask(self, windows: np.ndarray) -> np.ndarray:
        """``[n, context_size]`` bool: positions whose activations are kept."""
        if not self.exclude_special_tokens:
            return np.ones(windows.shape, dtype=bool)
        return ~special_token_mask(windows, self.special_ids)

    def _check_ids(self, windows: np.ndarray) -> None:
        if windows.size and (windows.min() < 0 or windows.max() >= self.lm.d_vocab):
            raise SaelabError(f"token ids must lie in 0..{self.lm.d_vocab - 1} for {self.lm.name}; "
                              f"got values in {windows.min()}..{windows.max()} (tokenized for another model?)")

    @torch.no_grad()
    def run(self, windows: np.ndarray) -> dict[str, torch.Tensor]:
        """``{hook: Tensor[n_valid, d_in]}`` for ``windows [n, context_size]``, on ``self.device`` in ``self.dtype``."""
        windows = np.asarray(windows, dtype=np.int64)
        self._check_ids(windows)
        keep = torch.from_numpy(self.valid_mask(windows).reshape(-1))
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.hooks}
        for start in range(0, len(windows), self.model_batch_size):
            batch = windows[start:start + self.model_batch_size]
            _, cache = self.lm.run_with_cache(torch.from_numpy(batch), self.hooks, stop_at_layer="auto")
            rows = keep[start * windows.shape[1]:(start + len(batch)) * windows.shape[1]]
            rows = rows.to(self.lm.device)
            for name in self.hooks:
                flat = cache[name].reshape(-1, self.d_in[name])[rows]
                parts[name].append(flat.to(device=self.device, dtype=self.dtype))
        return {name: torch.cat(chunks) if chunks else torch.empty(0, self.d_in[name], dtype=self.dtype,
                                                                  device=self.device)
                for name, chunks in parts.items()}
