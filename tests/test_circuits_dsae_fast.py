"""The discrete SAE's fast path: hand-written gradients and Adam equal autograd and torch.optim.Adam
under both loss normalisations, the early stop fires on a plateau, the reduced head outputs equal the
reduced full ones under every position rule."""

from __future__ import annotations

import pytest
import torch

from saelab.circuits.compare import SELF_REFERENCE_NOTE, table_row
from saelab.circuits.discrete_sae import (
    LOSS_NORMS,
    DiscreteSAE,
    FitSettings,
    fit_discrete_sae,
    input_scale,
    loss_and_grads,
    unflatten,
)
from saelab.circuits.dsae import DSAEConfig, changed_positions, head_vectors
from saelab.circuits.heads import POSITION_RULES, head_outputs, reduced_head_outputs
from saelab.circuits.tasks import task_batch
from saelab.errors import ConfigError


def autograd_loss(flat: torch.Tensor, x: torch.Tensor, d_model: int, codebook: int, l1: float,
                  loss_norm: str) -> torch.Tensor:
    """The loss written independently: ``paper`` as the authors' code (``F.mse_loss`` + ``l1 * mean |h|_1``
    on raw inputs), ``sum_rescaled`` as squared error summed over dimensions (inputs already rescaled)."""
    W_enc, W_dec, b_enc, b_dec = unflatten(flat, d_model, codebook)
    h = torch.relu((x - b_dec) @ (W_enc / W_enc.norm(dim=0, keepdim=True)) + b_enc)
    x_hat = h @ (W_dec / W_dec.norm(dim=1, keepdim=True)) + b_dec
    sparsity = l1 * h.abs().sum(-1).mean()
    if loss_norm == "paper":
        return torch.nn.functional.mse_loss(x_hat, x) + sparsity
    return (x_hat - x).pow(2).sum(-1).mean() + sparsity


@pytest.mark.parametrize("loss_norm", LOSS_NORMS)
def test_hand_written_gradients_match_autograd(one_torch_thread, loss_norm):
    generator = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(40, 12, generator=generator)
    x = x / input_scale(x, loss_norm)
    sae = DiscreteSAE(12, 30, generator)
    sae.b_enc.normal_(0, 0.3, generator=generator)  # some latents on, some off
    sae.b_dec.normal_(0, 0.3, generator=generator)
    grad = torch.zeros_like(sae.flat)
    loss = loss_and_grads(sae, x, 0.05, grad, need_loss=True, loss_norm=loss_norm)
    flat = sae.flat.clone().requires_grad_()
    expected = autograd_loss(flat, x, 12, 30, 0.05, loss_norm)
    expected.backward()
    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert torch.allclose(grad, flat.grad, atol=1e-6, rtol=1e-4)
    assert grad.abs().max() > 1e-3  # a real gradient, not two zeros agreeing


def test_the_normalisations_differ_as_documented(one_torch_thread):
    x = 3.0 * torch.randn(40, 12, generator=torch.Generator().manual_seed(4))
    assert input_scale(x, "paper") == 1.0
    assert input_scale(x, "sum_rescaled") == pytest.approx(float(x.pow(2).sum(-1).mean().sqrt()), rel=1e-6)
    sae = DiscreteSAE(12, 30, torch.Generator().manual_seed(0))
    grad = torch.zeros_like(sae.flat)
    paper = loss_and_grads(sae, x, 0.0, grad, need_loss=True, loss_norm="paper")
    summed = loss_and_grads(sae, x, 0.0, grad, need_loss=True, loss_norm="sum_rescaled")
    assert float(summed) == pytest.approx(12 * float(paper), rel=1e-5)  # mean over elements vs sum over dims


@pytest.mark.parametrize("loss_norm", LOSS_NORMS)
def test_fused_adam_follows_torch_adam(one_torch_thread, loss_norm):
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    settings = FitSettings(codebook=16, l1=0.02, lr=1e-2, epochs=20, plateau_tol=0, seed=3, loss_norm=loss_norm)
    sae, stats = fit_discrete_sae(x, settings)
    reference = DiscreteSAE(8, 16, torch.Generator().manual_seed(3))
    reference.b_dec.copy_(x.mean(0))
    flat = reference.flat.clone().requires_grad_()
    optimizer = torch.optim.Adam([flat], lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        autograd_loss(flat, x, 8, 16, 0.02, loss_norm).backward()
        optimizer.step()
    assert stats["epochs_run"] == 20
    assert torch.allclose(sae.flat, flat.detach(), atol=1e-5)
    with torch.no_grad():
        assert stats["loss"] == pytest.approx(float(autograd_loss(flat, x, 8, 16, 0.02, loss_norm)), rel=1e-4)


def test_early_stop_on_a_loss_plateau(one_torch_thread):
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(2))
    _, stopped = fit_discrete_sae(x, FitSettings(codebook=12, lr=5e-2, epochs=2000, plateau_tol=1e-2))
    _, full = fit_discrete_sae(x, FitSettings(codebook=12, lr=5e-2, epochs=2000, plateau_tol=0))
    assert stopped["epochs_run"] < 2000 and full["epochs_run"] == 2000
    assert stopped["epochs_run"] % 25 == 0
    with pytest.raises(ConfigError, match="plateau_tol"):
        DSAEConfig(plateau_tol=2.0)


def reduce_by_hand(outputs: torch.Tensor, batch, rule: str) -> torch.Tensor:
    """``[n, pos, heads, d_model]`` -> ``[n, slots, heads, d_model]`` position by position in Python."""
    rows = []
    for i in range(len(batch)):
        end = int(batch.end[i])
        changed = [p for p in range(end + 1) if batch.clean_ids[i, p] != batch.corrupted_ids[i, p]]
        chosen = {"mean": list(range(end + 1)), "last": [end], "changed": changed,
                  "changed_end": sorted(set(changed) | {end})}.get(rule)
        rows.append(outputs[i] if chosen is None else outputs[i, chosen].mean(0, keepdim=True))
    return torch.stack(rows)


@pytest.mark.parametrize("rule", POSITION_RULES)
def test_reduced_head_outputs_equal_reduced_full_outputs(tiny_gpt2_with_toy_tokenizer, rule):
    lm = tiny_gpt2_with_toy_tokenizer
    batch = task_batch(lm, "ioi", 6, seed=1, templates="toy")
    outputs = head_outputs(lm, batch.clean_ids)  # [n, pos, heads, d_model]
    full = reduce_by_hand(outputs, batch, rule)
    fast = reduced_head_outputs(lm, batch.clean_ids, batch.mask, batch.end, rule,
                                changed=changed_positions(batch, slice(None)), batch_size=4)
    slots = batch.clean_ids.shape[1] if rule == "positions" else 1
    assert fast.vectors.shape == (6, slots, lm.n_layers * lm.n_heads, lm.d_model)
    assert torch.equal(fast.valid, batch.mask.bool() if rule == "positions" else torch.ones(6, 1, dtype=torch.bool))
    assert torch.allclose(fast.vectors[fast.valid], full[fast.valid], atol=1e-5)
    positive, negative = head_vectors(lm, batch, rule)
    assert torch.allclose(positive.rows(), full[fast.valid], atol=1e-5)
    assert not torch.allclose(negative.rows(), positive.rows())


def test_patching_row_is_marked_only_against_a_patching_reference():
    summary = {"method": "patching", "task": "ioi", "auc": 1.0, "runtime_s": 0.1,
               "best_f1": {"f1": 1.0, "precision": 1.0, "recall": 1.0}, "at_truth_size": {"f1": 1.0}}
    assert table_row(summary, "per-head activation patching on 200 pairs")["note"] == SELF_REFERENCE_NOTE
    assert table_row(summary, "mean ablation (per head, then per path) on 200 pairs")["note"] == ""
