"""The discrete-SAE method's small SAE and its full-batch trainer (O'Neill & Bui 2024).

Model: tied pre-bias ``b_dec``, unit-norm encoder columns and decoder rows, ReLU:
``h = relu((x - b_dec) @ W_enc/|W_enc| + b_enc)``, ``x_hat = h @ W_dec/|W_dec| + b_dec``; Adam (PyTorch's
update rule, bias-corrected). Loss, by ``loss_norm`` (``LOSS_NORMS``), for ``m`` vectors ``x [m, d_model]``:

- ``paper`` (the authors' code: ``F.mse_loss`` + ``l1 * mean |h|_1``, on raw activations):
  ``sum |x - x_hat|^2 / (m * d_model) + l1 * sum |h|_1 / m``;
- ``sum_rescaled`` (saelab's earlier rule): inputs divided by ``sqrt(mean_i |x_i|^2)`` (unit mean squared
  norm), then ``sum |x - x_hat|^2 / m + l1 * sum |h|_1 / m``. Relative to the reconstruction term, the
  same ``l1`` weighs ``d_model / sqrt(mean_i |x_i|^2)`` times more under ``paper`` (its squared error is
  divided by ``d_model``; on raw data the L1 term scales with the data once, the squared error twice).

The data are a few hundred vectors, so every epoch is a handful of small matrix products: the trainer
writes the gradients by hand (no autograd graph), keeps every parameter, gradient and Adam moment in one
flat buffer (one fused update per epoch), reads the loss back only every ``check_every`` epochs, and
stops early once the loss has plateaued (relative drop below ``plateau_tol`` over ``check_every``
epochs). ``loss_and_grads`` is checked against autograd in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saelab.errors import check_choice, check_range

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
LOSS_NORMS = ("paper", "sum_rescaled")


def input_scale(x: torch.Tensor, loss_norm: str) -> float:
    """What ``x [m, d_model]`` is divided by before training and encoding: 1 for ``paper`` (raw
    activations), ``sqrt(mean_i |x_i|^2)`` for ``sum_rescaled``."""
    check_choice("loss_norm", loss_norm, LOSS_NORMS)
    if loss_norm == "paper":
        return 1.0
    return float(x.pow(2).sum(-1).mean().sqrt().clamp_min(1e-8))


def reconstruction_weight(loss_norm: str, d_model: int) -> float:
    """The factor on ``sum_dims |x - x_hat|^2`` (before the mean over vectors): ``1 / d_model`` for
    ``paper`` (a mean over elements), 1 for ``sum_rescaled``."""
    check_choice("loss_norm", loss_norm, LOSS_NORMS)
    return 1.0 / d_model if loss_norm == "paper" else 1.0


@dataclass(frozen=True)
class FitSettings:
    """``epochs``: at most this many full-batch steps; ``plateau_tol``: early-stop tolerance (0: never);
    ``loss_norm``: one of ``LOSS_NORMS`` (module docstring)."""

    codebook: int = 200
    l1: float = 0.02
    lr: float = 1e-3
    epochs: int = 500
    plateau_tol: float = 1e-3
    check_every: int = 25
    seed: int = 0
    loss_norm: str = "paper"

    def __post_init__(self):
        check_choice("loss_norm", self.loss_norm, LOSS_NORMS)
        check_range("codebook", self.codebook, 2, None, integer=True)
        check_range("l1", self.l1, 0, None)
        check_range("lr", self.lr, 0, None, lo_open=True)
        check_range("epochs", self.epochs, 1, None, integer=True)
        check_range("plateau_tol", self.plateau_tol, 0, 1)
        check_range("check_every", self.check_every, 1, None, integer=True)
        check_range("seed", self.seed, 0, None, integer=True)


class DiscreteSAE:
    """SAE over head outputs ``[..., d_model] -> [..., codebook]``; its four tensors are views of one flat
    parameter buffer ``flat`` (``W_enc [d_model, codebook]``, ``W_dec [codebook, d_model]``,
    ``b_enc [codebook]``, ``b_dec [d_model]``)."""

    def __init__(self, d_model: int, codebook: int, generator: torch.Generator):
        sizes = (d_model * codebook, codebook * d_model, codebook, d_model)
        self.flat = torch.zeros(sum(sizes))
        self.W_enc, self.W_dec, self.b_enc, self.b_dec = unflatten(self.flat, d_model, codebook)
        self.W_enc.copy_(torch.randn(d_model, codebook, generator=generator) / d_model ** 0.5)
        self.W_dec.copy_(self.W_enc.T)

    @property
    def codebook(self) -> int:
        return self.b_enc.numel()

    def encoder(self) -> torch.Tensor:
        return self.W_enc / self.W_enc.norm(dim=0, keepdim=True)

    def decoder(self) -> torch.Tensor:
        return self.W_dec / self.W_dec.norm(dim=1, keepdim=True)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d_model] -> [..., codebook]`` latents."""
        return torch.relu((x - self.b_dec) @ self.encoder() + self.b_enc)

    @torch.no_grad()
    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """``[..., codebook] -> [..., d_model]``."""
        return h @ self.decoder() + self.b_dec


def unflatten(flat: torch.Tensor, d_model: int, codebook: int) -> tuple[torch.Tensor, ...]:
    """Views ``(W_enc, W_dec, b_enc, b_dec)`` of a flat buffer laid out as in ``DiscreteSAE``."""
    a, b = d_model * codebook, 2 * d_model * codebook
    return (flat[:a].view(d_model, codebook), flat[a:b].view(codebook, d_model), flat[b:b + codebook],
            flat[b + codebook:])


@torch.no_grad()
def loss_and_grads(sae: DiscreteSAE, x: torch.Tensor, l1: float, grad: torch.Tensor,
                   need_loss: bool = False, loss_norm: str = "paper") -> torch.Tensor | None:
    """Write the gradient of the ``loss_norm`` loss (module docstring) w.r.t. ``sae.flat`` into ``grad``
    (same layout) for ``x [m, d_model]`` (already divided by ``input_scale``); return the loss (a 0-d
    tensor) when ``need_loss``."""
    m = x.shape[0]
    w = reconstruction_weight(loss_norm, x.shape[1])
    g_W_enc, g_W_dec, g_b_enc, g_b_dec = unflatten(grad, sae.b_dec.numel(), sae.codebook)
    enc_norm = sae.W_enc.norm(dim=0, keepdim=True)  # [1, codebook]
    dec_norm = sae.W_dec.norm(dim=1, keepdim=True)  # [codebook, 1]
    W_e, W_d = sae.W_enc / enc_norm, sae.W_dec / dec_norm
    centred = x - sae.b_dec
    pre = torch.addmm(sae.b_enc, centred, W_e)  # [m, codebook]
    h = pre.clamp_min(0)
    err = torch.addmm(sae.b_dec, h, W_d).sub_(x)  # x_hat - x, [m, d_model]
    loss = (w * err.pow(2).sum() + l1 * h.sum()) / m if need_loss else None
    g_err = err.mul_(2.0 * w / m)
    g_Wd = h.T @ g_err  # [codebook, d_model]
    g_pre = torch.addmm(torch.full((1,), l1 / m), g_err, W_d.T).mul_(pre > 0)  # [m, codebook]
    g_b_enc.copy_(g_pre.sum(0))
    g_We = centred.T @ g_pre  # [d_model, codebook]
    torch.sub(g_err.sum(0), W_e @ g_b_enc, out=g_b_dec)
    # through the unit-norm reparametrisation W / |W|: g_W = (g_Wn - Wn <g_Wn, Wn>) / |W|
    torch.div(g_We - W_e * (g_We * W_e).sum(0, keepdim=True), enc_norm, out=g_W_enc)
    torch.div(g_Wd - W_d * (g_Wd * W_d).sum(1, keepdim=True), dec_norm, out=g_W_dec)
    return loss


@torch.no_grad()
def fit_discrete_sae(x: torch.Tensor, settings: FitSettings) -> tuple[DiscreteSAE, dict]:
    """Train on ``x [m, d_model]`` (already divided by ``input_scale(x, settings.loss_norm)``); returns the
    SAE and ``{"epochs_run", "loss", "reconstruction", "l0"}`` (final loss and its reconstruction term
    under ``settings.loss_norm``; ``l0``: mean active latents per vector)."""
    generator = torch.Generator().manual_seed(settings.seed)
    sae = DiscreteSAE(x.shape[-1], settings.codebook, generator)
    sae.b_dec.copy_(x.mean(0))
    grad, exp_avg, exp_avg_sq = (torch.zeros_like(sae.flat) for _ in range(3))
    beta1, beta2 = ADAM_BETAS
    last_loss, epoch = None, 0
    while epoch < settings.epochs:
        epoch += 1
        check = epoch % settings.check_every == 0
        loss = loss_and_grads(sae, x, settings.l1, grad, need_loss=check, loss_norm=settings.loss_norm)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().div_((1 - beta2 ** epoch) ** 0.5).add_(ADAM_EPS)
        sae.flat.addcdiv_(exp_avg, denom, value=-settings.lr / (1 - beta1 ** epoch))
        if check:
            value = float(loss)
            if last_loss is not None and settings.plateau_tol > 0 and last_loss - value < settings.plateau_tol * last_loss:
                break
            last_loss = value
    h = sae.encode(x)
    recon = reconstruction_weight(settings.loss_norm, x.shape[1]) * float((sae.decode(h) - x).pow(2).sum(-1).mean())
    return sae, {"epochs_run": epoch, "reconstruction": recon, "l0": float((h > 0).float().sum(-1).mean()),
                 "loss": recon + settings.l1 * float(h.sum(-1).mean())}
