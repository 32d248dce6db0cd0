"""Dead and dense latent tracking, and resampling of dead ReLU latents.

A latent is dead once it has not fired for ``window`` tokens (Gao et al.: 10M). Resampling follows
Bricken et al. 2023: inputs are drawn with probability ∝ their squared reconstruction error; each
dead latent gets the drawn input's direction as its decoder row (at the mean live decoder norm) and,
scaled to ``encoder_scale`` × the mean live encoder norm, as its encoder column; its encoder bias is
zeroed and its Adam moments are reset.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.sae.base import SAE


class LatentTracker:
    """Per-latent firing statistics of one SAE (all int64 tensors [d_sae], checkpointed)."""

    def __init__(self, d_sae: int, device: torch.device | str = "cpu"):
        zeros = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.tokens_since_fired = zeros.clone()
        self.window_fires = zeros.clone()
        self.window_tokens = 0
        self.density_fires = zeros.clone()
        self.density_tokens = 0

    def update(self, fire_counts: Tensor, n_tokens: int, count_density: bool) -> None:
        """Record one batch: fire_counts [d_sae] = tokens each latent fired on, out of n_tokens."""
        fired = fire_counts > 0
        self.tokens_since_fired.add_(n_tokens).masked_fill_(fired, 0)
        self.window_fires += fire_counts
        self.window_tokens += n_tokens
        if count_density:
            self.density_fires += fire_counts
            self.density_tokens += n_tokens

    def dead_mask(self, window: int) -> Tensor:
        """[d_sae] bool: no firing in the last ``window`` tokens."""
        return self.tokens_since_fired >= window

    def dense_fraction(self, density: float) -> float:
        """Fraction of latents firing on more than ``density`` of the current log window's tokens."""
        if not self.window_tokens:
            return 0.0
        return float((self.window_fires.double() / self.window_tokens > density).double().mean())

    def reset_window(self) -> None:
        self.window_fires.zero_()
        self.window_tokens = 0

    def log_density(self) -> Tensor:
        """[d_sae] log10 feature density over the density window (SAELens' sparsity.safetensors)."""
        tokens = max(self.density_tokens, 1)
        return torch.log10(self.density_fires.double() / tokens + 1e-10).float()

    def tensors(self) -> dict[str, Tensor]:
        return {"tokens_since_fired": self.tokens_since_fired, "window_fires": self.window_fires,
                "density_fires": self.density_fires}

    def scalars(self) -> dict[str, int]:
        return {"window_tokens": self.window_tokens, "density_tokens": self.density_tokens}

    def load(self, tensors: dict[str, Tensor], scalars: dict[str, int]) -> None:
        for name in ("tokens_since_fired", "window_fires", "density_fires"):
            getattr(self, name).copy_(tensors[name])
        self.window_tokens = int(scalars["window_tokens"])
        self.density_tokens = int(scalars["density_tokens"])


@torch.no_grad()
def resample_dead_latents_(sae: SAE, optimizer: torch.optim.Optimizer, dead: Tensor, x: Tensor,
                           x_hat: Tensor, generator: torch.Generator, encoder_scale: float,
                           y: Tensor | None = None) -> int:
    """Re-initialise the ``dead`` latents ([d_sae] bool) of a ReLU coder from badly predicted tokens.

    x: [n, d_in] inputs; y: [n, d_out] targets (default x, an SAE); x_hat: [n, d_out] predictions.
    Tokens are drawn with probability ∝ ‖y − ŷ‖⁴; a drawn token's target becomes the decoder row and
    its input the encoder column. Returns the number of latents resampled.
    """
    dead_idx = dead.nonzero().squeeze(1)
    if dead_idx.numel() == 0:
        return 0
    y = x if y is None else y
    errors = (y - x_hat).pow(2).sum(1).double()
    if not torch.isfinite(errors).all() or errors.sum() <= 0:
        return 0
    chosen = torch.multinomial(errors.cpu() ** 2 / (errors.cpu() ** 2).sum(), dead_idx.numel(),
                               replacement=True, generator=generator).to(x.device)
    centre = sae.b_dec if sae.cfg.apply_b_dec_to_input else 0
    directions = _unit(y[chosen] - centre)
    in_directions = directions if y is x else _unit(x[chosen] - centre)
    alive = ~dead
    if alive.any():
        dec_norm = sae.W_dec[alive].norm(dim=1).mean()
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean()
    else:
        dec_norm = enc_norm = torch.ones((), dtype=sae.W_dec.dtype, device=sae.W_dec.device)
    sae.W_dec[dead_idx] = directions * (1.0 if sae.cfg.unit_norm_decoder else dec_norm)
    sae.W_enc[:, dead_idx] = (in_directions * (encoder_scale * enc_norm)).t()
    sae.b_enc[dead_idx] = 0
    for param, rows_dim in ((sae.W_dec, 0), (sae.W_enc, 1), (sae.b_enc, 0)):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key].index_fill_(rows_dim, dead_idx, 0)
    return int(dead_idx.numel())


def _unit(rows: Tensor) -> Tensor:
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
