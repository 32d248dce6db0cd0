"""Fused dense training passes for the ReLU and JumpReLU SAEs (fewer passes over ``[batch, d_sae]``).

A plain autograd ReLU SAE step runs six ``[batch, d_in] x [d_in, d_sae]``-sized matmuls (autograd
also forms the gradient of ``x − b_dec``) and a dozen passes over the ``[batch, d_sae]`` latents.
These functions keep the five matmuls an SAE step needs and do the rest with as few full passes as
possible, using only float element-wise kernels (boolean masks are several times slower on CPU):

- the decoder bias enters the encoder through its bias, ``(x − b_dec) W_enc + b_enc = x W_enc +
  (b_enc − b_dec W_enc)``, so no gradient with respect to the input is formed; b_dec's encoder-side
  gradient is ``−W_enc · Σ_batch grad_pre`` and W_enc's extra term is a rank-one update;
- masks are applied with ``threshold_backward(grad, self, t)`` (= grad where self > t, else 0),
  in place where the operand is not needed afterwards;
- per-latent firing counts come from one sign pass and a matrix-vector product.

Both return the latents (no gradient) and their firing counts with the differentiable outputs.
Given a ``Workspace`` (the trainer passes one per SAE) the ``[batch, d_sae]`` temporaries live in
buffers reused from step to step instead of fresh allocations, whose first touch (page faults) costs
more than the arithmetic; the latents returned then stay valid only until the SAE's next training pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

_mask_above = torch.ops.aten.threshold_backward


class Workspace:
    """Named buffers reused across training steps (one per SAE)."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised ``[shape]`` tensor with ``like``'s dtype and device, the same one each call."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.empty(shape, dtype=like.dtype, device=like.device)
            self._buffers[name] = buf
        return buf


def _buffer(ws: Workspace | None, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    return ws.get(name, shape, like) if ws is not None else torch.empty(shape, dtype=like.dtype, device=like.device)


def _mask_above_(values: Tensor, by: Tensor, threshold: float) -> Tensor:
    """In place: values where by > threshold, else 0."""
    return torch.ops.aten.threshold_backward.grad_input(values, by, threshold, grad_input=values)


def effective_bias(b_enc: Tensor, b_dec: Tensor, W_enc: Tensor, apply_b_dec: bool) -> Tensor:  # noqa: N803
    return b_enc - b_dec @ W_enc if apply_b_dec else b_enc


def column_counts(acts: Tensor, ws: Workspace | None = None) -> Tensor:
    """[d_sae] number of positive entries per column of non-negative ``acts [n, d_sae]`` (a sign pass
    and a matvec; ``count_nonzero`` goes through a boolean tensor and is several times slower on CPU)."""
    if acts.dtype not in (torch.float32, torch.float64) or acts.shape[0] > 1 << 24:
        return torch.count_nonzero(acts, dim=0)
    signs = torch.sign(acts, out=_buffer(ws, "signs", tuple(acts.shape), acts))
    return (acts.new_ones(acts.shape[0]) @ signs).round_().to(torch.int64)


def _encoder_grads(grad_pre: Tensor, x: Tensor, b_dec: Tensor, W_enc: Tensor, apply_b_dec: bool,  # noqa: N803
                   need_b_dec: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """(grad W_enc, grad b_enc, encoder-side grad b_dec) from grad_pre [n, d_sae].

    One matmul gives both: [x | 1]ᵀ @ grad_pre has grad W_enc in its first d_in rows and the bias
    gradient Σ_batch grad_pre in its last.
    """
    d_in = x.shape[1]
    stacked = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1).t() @ grad_pre
    grad_W_enc, grad_b_enc = stacked[:d_in], stacked[d_in]  # noqa: N806
    grad_b_dec = None
    if apply_b_dec:
        grad_W_enc.addr_(b_dec, grad_b_enc, alpha=-1)
        if need_b_dec:
            grad_b_dec = -(W_enc @ grad_b_enc)
    return grad_W_enc, grad_b_enc, grad_b_dec


class DenseReLU(torch.autograd.Function):
    """(x_hat [n, d_in], l1 [] , acts [n, d_sae], fire_counts [d_sae]) of a ReLU SAE.

    l1 = mean over the batch of Σ_i acts_i·w_i with w = ‖W_dec[i]‖ (``weighted``) or 1.
    """

    @staticmethod
    def forward(ctx, x, b_dec, W_enc, b_enc, W_dec, weighted: bool, apply_b_dec: bool,  # noqa: N803
                ws: Workspace | None = None):
        n, d_sae = x.shape[0], W_enc.shape[1]
        acts = torch.addmm(effective_bias(b_enc, b_dec, W_enc, apply_b_dec), x, W_enc,
                           out=_buffer(ws, "acts", (n, d_sae), x)).clamp_min_(0)
        x_hat = torch.addmm(b_dec, acts, W_dec)
        act_sums = acts.new_ones(n) @ acts
        norms = W_dec.norm(dim=1) if weighted else None
        counts = column_counts(acts, ws)
        l1 = (act_sums @ norms if weighted else act_sums.sum()) / n
        ctx.save_for_backward(x, b_dec, W_enc, W_dec, acts, norms, act_sums)
        ctx.weighted, ctx.apply_b_dec, ctx.ws = weighted, apply_b_dec, ws
        ctx.mark_non_differentiable(acts, counts)
        ctx.set_materialize_grads(False)
        return x_hat, l1, acts, counts

    @staticmethod
    def backward(ctx, grad_x_hat, grad_l1, _grad_acts, _grad_counts):
        x, b_dec, W_enc, W_dec, acts, norms, act_sums = ctx.saved_tensors  # noqa: N806
        n = x.shape[0]
        if grad_x_hat is None:
            grad_x_hat = x.new_zeros(n, W_dec.shape[1])
        l1_scale = (grad_l1 if grad_l1 is not None else x.new_zeros(())) / n
        grad_acts = _buffer(ctx.ws, "grad", tuple(acts.shape), acts)
        if ctx.weighted:
            torch.mm(grad_x_hat, W_dec.t(), out=grad_acts).add_(norms * l1_scale)
        else:
            torch.addmm(l1_scale, grad_x_hat, W_dec.t(), out=grad_acts)
        grad_pre = _mask_above_(grad_acts, acts, 0)
        need = ctx.needs_input_grad
        grad_x = grad_pre @ W_enc.t() if need[0] else None
        grad_W_enc, grad_b_enc, grad_b_dec = _encoder_grads(grad_pre, x, b_dec, W_enc, ctx.apply_b_dec, need[1])  # noqa: N806
        grad_W_dec = acts.t() @ grad_x_hat  # noqa: N806
        if ctx.weighted:
            grad_W_dec.addcmul_(W_dec, (act_sums * l1_scale / norms.clamp_min(1e-12))[:, None])
        out_b_dec = grad_x_hat.sum(0)
        if grad_b_dec is not None:
            out_b_dec = out_b_dec + grad_b_dec
        return grad_x, out_b_dec, grad_W_enc, grad_b_enc, grad_W_dec, None, None, None


class DenseJumpReLU(torch.autograd.Function):
    """(x_hat [n, d_in], l0 [], acts [n, d_sae], fire_counts [d_sae]) of a JumpReLU SAE.

    acts = z ⊙ H(z − θ), l0 = mean over the batch of ‖acts‖₀, with the rectangle-kernel
    pseudo-derivatives for θ (see ``saelab.sae.jumprelu``); the gradient w.r.t. z is H(z − θ).
    Buffers are reused in place, so this backward can run only once per forward.
    """

    @staticmethod
    def forward(ctx, x, b_dec, W_enc, b_enc, threshold, W_dec, bandwidth: float, apply_b_dec: bool,  # noqa: N803
                ws: Workspace | None = None):
        shape = (x.shape[0], W_enc.shape[1])
        z = torch.addmm(effective_bias(b_enc, b_dec, W_enc, apply_b_dec), x, W_enc, out=_buffer(ws, "acts", shape, x))
        shifted = torch.sub(z, threshold, out=_buffer(ws, "shifted", shape, x))
        acts = _mask_above_(z, shifted, 0)  # z ⊙ H(z − θ), written over z
        x_hat = torch.addmm(b_dec, acts, W_dec)
        counts = column_counts(acts, ws)
        l0 = counts.sum().to(x.dtype) / x.shape[0]
        ctx.save_for_backward(x, b_dec, W_enc, threshold, W_dec, acts, shifted)
        ctx.bandwidth, ctx.apply_b_dec, ctx.used, ctx.ws = bandwidth, apply_b_dec, False, ws
        ctx.mark_non_differentiable(acts, counts)
        ctx.set_materialize_grads(False)
        return x_hat, l0, acts, counts

    @staticmethod
    def backward(ctx, grad_x_hat, grad_l0, _grad_acts, _grad_counts):
        if ctx.used:
            raise RuntimeError("DenseJumpReLU's backward reuses its buffers and can run only once per forward")
        ctx.used = True
        x, b_dec, W_enc, threshold, W_dec, acts, shifted = ctx.saved_tensors  # noqa: N806
        n, eps = x.shape[0], ctx.bandwidth
        if grad_x_hat is None:
            grad_x_hat = x.new_zeros(n, W_dec.shape[1])
        if grad_l0 is None:
            grad_l0 = x.new_zeros(())
        grad_acts = torch.mm(grad_x_hat, W_dec.t(), out=_buffer(ctx.ws, "grad", tuple(acts.shape), acts))
        grad_z = torch.ops.aten.threshold_backward.grad_input(
            grad_acts, shifted, 0, grad_input=_buffer(ctx.ws, "signs", tuple(acts.shape), acts))
        need = ctx.needs_input_grad
        grad_theta = None
        if need[4]:
            # window K = 1[|z − θ| < ε/2] = 1[−(z − θ)² > −(ε/2)²];
            # ∂L/∂θ_j = −(1/ε) Σ_n K_nj (θ_j·∂L/∂acts_nj + c), c = ∂L/∂l0_n = grad_l0 / n,
            #         = −(θ_j/ε) Σ_n K_nj (∂L/∂acts_nj + c/θ_j): one pass fewer (θ_j floored at 1e-30).
            neg_square = shifted.mul_(shifted).neg_()
            safe_theta = threshold.clamp_min(1e-30)
            windowed = _mask_above_(grad_acts.add_((grad_l0 / n) / safe_theta), neg_square, -((eps / 2) ** 2))
            grad_theta = (windowed.new_ones(n) @ windowed).mul_(safe_theta).mul_(-1.0 / eps)
        del grad_acts
        grad_x = grad_z @ W_enc.t() if need[0] else None
        grad_W_enc, grad_b_enc, grad_b_dec = _encoder_grads(grad_z, x, b_dec, W_enc, ctx.apply_b_dec, need[1])  # noqa: N806
        grad_W_dec = acts.t() @ grad_x_hat  # noqa: N806
        out_b_dec = grad_x_hat.sum(0)
        if grad_b_dec is not None:
            out_b_dec = out_b_dec + grad_b_dec
        return grad_x, out_b_dec, grad_W_enc, grad_b_enc, grad_theta, grad_W_dec, None, None, None
