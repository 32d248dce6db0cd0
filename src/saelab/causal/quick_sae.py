"""Activations to fit patching bases on, and a small SAE trained on them when none is given.

    x = hook_activations(lm, hook, source="toy", n_windows=256)   # [n_tokens, d_in], special tokens out
    folder = train_quick_sae(lm, hook, x, out_dir)                   # ReLU + L1 SAE, unit-norm decoder

The bases of the patching experiment (SAE, PCA, ICA, ...) are fitted on the same activations.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from saelab.errors import check_range
from saelab.models import LoadedModel
from saelab.splicing import flat_per_token


@torch.no_grad()
def hook_activations(lm: LoadedModel, hook: str, source: str = "toy", n_windows: int = 256, context: int = 64,
                     batch_size: int = 32) -> Tensor:
    """``[n_tokens, d_in]`` float32 activations at ``hook`` over ``n_windows`` windows of ``source``
    (``saelab.data.open_source`` spec), BOS/EOS/PAD positions left out."""
    from saelab.attention.corpus import source_windows

    lm.parse_hooks([hook])
    windows = source_windows(lm, source, n_windows=n_windows, context=context)
    rows = []
    for start in range(0, windows.ids.shape[0], batch_size):
        ids = windows.ids[start:start + batch_size]
        _, cache = lm.run_with_cache(ids, [hook], stop_at_layer="auto")
        rows.append(flat_per_token(cache[hook]).float()[~windows.special[start:start + batch_size]].cpu())
    return torch.cat(rows)


def train_quick_sae(lm: LoadedModel, hook: str, x: Tensor, out_dir: str | Path, d_sae: int = 512,
                    steps: int = 1000, batch_size: int = 1024, l1_coefficient: float = 0.1, lr: float = 2e-3,
                    seed: int = 0, progress: bool = True):
    """Train a ReLU SAE (L1, unit-norm decoder) on ``x [n_tokens, d_in]`` scaled to E‖x‖² = 1 (the factor
    folded back on save); returns the SAE (raw units), saved under ``out_dir/saes/quick_sae``."""
    from saelab.sae import SAEConfig
    from saelab.train import InMemorySource, TrainConfig, train_saes
    from saelab.train.run_spec import folder_meta

    check_range("d_sae", d_sae, 1, integer=True)
    check_range("steps", steps, 1, integer=True)
    x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))]
    factor = float(x.pow(2).sum(-1).mean().sqrt())
    batch_size = min(batch_size, x.shape[0])
    source = InMemorySource({hook: x / factor}, batch_size, normalization_factors={hook: factor},
                            metadata=folder_meta(lm.name, "toy", 64, True, lm.fingerprint()))
    cfg = SAEConfig("relu", d_in=x.shape[1], d_sae=d_sae, hook_name=hook, name="quick_sae",
                    l1_coefficient=l1_coefficient, unit_norm_decoder=True)
    train = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, sparsity_warmup_steps=steps // 5,
                        lr_decay_steps=steps // 5, seed=seed, log_every=max(1, steps // 10))
    return train_saes([cfg], source, train, out_dir, progress=progress)["quick_sae"]
