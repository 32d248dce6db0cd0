"""Each architecture's forward pass, losses and gradients against the papers' definitions."""

import pytest
import torch

from saelab.sae import ARCHITECTURES, InputShapeError, SAEConfig, make_sae
from saelab.sae.batchtopk import largest_indices
from saelab.sae.dense import DenseJumpReLU, DenseReLU
from saelab.sae.sparse import SparsePattern, gather_preacts, sparse_decode

D_IN, D_SAE = 12, 48


def build(arch, seed=0, **fields):
    if arch in ("topk", "batchtopk"):
        fields.setdefault("k", 3)
    cfg = SAEConfig(arch, D_IN, D_SAE, hook_name="blocks.0.hook_resid_post", dtype="float64", **fields)
    sae = make_sae(cfg, seed=seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if p.ndim == 1 and name != "threshold":
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    return sae


def data(n=20, seed=1):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_encode_decode_shapes_and_training_output(arch):
    sae = build(arch)
    x = data().reshape(4, 5, D_IN)
    acts = sae.encode(x)
    assert acts.shape == (4, 5, D_SAE) and (acts >= 0).all()
    assert sae.decode(acts).shape == x.shape
    out = sae(x.reshape(-1, D_IN))
    assert out.x_hat.shape == (20, D_IN) and out.acts.shape == (20, D_SAE)
    assert "mse" in out.losses and torch.isclose(out.loss, sum(out.losses.values()))
    out.loss.backward()
    assert all(p.grad is not None for p in sae.parameters())
    assert out.fire_counts().sum() == (out.acts != 0).sum()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_wrong_width_names_both_shapes_and_the_hook(arch):
    sae = build(arch)
    with pytest.raises(InputShapeError) as info:
        sae.encode(torch.zeros(3, D_IN + 1, dtype=torch.float64))
    message = str(info.value)
    assert "(3, 13)" in message and "d_in=12" in message and "blocks.0.hook_resid_post" in message
    with pytest.raises(InputShapeError, match="d_sae=48"):
        sae.decode(torch.zeros(3, D_SAE - 1, dtype=torch.float64))


def test_relu_losses_match_the_definition():
    sae = build("relu", l1_coefficient=0.7)
    x = data()
    out = sae(x, sparsity_scale=0.5)
    f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    x_hat = f @ sae.W_dec + sae.b_dec
    assert torch.allclose(out.x_hat, x_hat)
    assert torch.allclose(out.losses["mse"], ((x - x_hat) ** 2).sum(1).mean())
    assert torch.allclose(out.losses["l1"], 0.35 * (f * sae.W_dec.norm(dim=1)).sum(1).mean())
    unit = build("relu", l1_coefficient=0.7, unit_norm_decoder=True)
    assert torch.allclose(unit(x).losses["l1"], 0.7 * unit.encode(x).sum(1).mean())


def test_tied_uses_one_matrix_with_unit_rows():
    sae = build("tied")
    assert sae.W_enc.data_ptr() == sae.W_dec.data_ptr()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(D_SAE, dtype=torch.float64))
    x = data()
    c = torch.relu(x @ sae.W_dec.t() + sae.b_enc)
    assert torch.allclose(sae.reconstruct(x), c @ sae.W_dec)
    assert "b_dec" not in dict(sae.named_parameters())


def test_gated_definition_and_aux_loss_sends_no_gradient_to_the_decoder():
    sae = build("gated", apply_b_dec_to_input=False)
    x = data()
    pi_gate = x @ sae.W_enc + sae.b_gate
    pi_mag = x @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag
    expected = (pi_gate > 0) * torch.relu(pi_mag)
    assert torch.allclose(sae.encode(x), expected)
    out = sae(x)
    via_gate = torch.relu(pi_gate) @ sae.W_dec + sae.b_dec
    assert torch.allclose(out.losses["aux_recon"], ((x - via_gate) ** 2).sum(1).mean())
    out.losses["aux_recon"].backward()
    assert sae.W_dec.grad is None and sae.b_dec.grad is None
    assert sae.r_mag.grad is None and sae.b_mag.grad is None
    assert sae.W_enc.grad.abs().sum() > 0 and sae.b_gate.grad.abs().sum() > 0


def test_jumprelu_threshold_gradient_equals_the_pseudo_derivative():
    """Identity encoder and decoder, so z = x and ∂L/∂acts = w for L = Σ w ⊙ x̂ + c·L0."""
    eps = 0.001
    z = torch.tensor([[0.5, 0.1004, 0.0998, 0.3], [0.1002, -0.2, 0.2, 0.0003]], dtype=torch.float64)
    theta = torch.tensor([0.1, 0.1, 0.1, 0.0], dtype=torch.float64, requires_grad=True)
    eye = torch.eye(4, dtype=torch.float64)
    W_enc, W_dec = eye.clone().requires_grad_(), eye.clone().requires_grad_()  # noqa: N806
    b_enc, b_dec = (torch.zeros(4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5], [-1.5, 2.0, 0.25, 4.0]], dtype=torch.float64)
    c = 0.7
    x_hat, l0, acts, counts = DenseJumpReLU.apply(z, b_dec, W_enc, b_enc, theta, W_dec, eps, False)
    assert torch.equal(acts, torch.where(z > theta, z, 0))
    assert l0.item() == 3.0 and counts.tolist() == [2, 1, 1, 2]
    ((w * x_hat).sum() + c * l0).backward()
    expected = torch.zeros(4, dtype=torch.float64)
    for n in range(2):
        for j in range(4):
            if abs(z[n, j].item() - theta[j].item()) < eps / 2:  # rectangle kernel K((z - θ)/ε)
                expected[j] += -(theta[j].item() / eps) * w[n, j] - (1 / eps) * c / 2
    assert (expected != 0).sum() == 4  # the inputs hit the window above and below θ, and at θ = 0
    assert torch.allclose(theta.grad, expected)
    grad_z = w * (z > theta)  # no estimator on the input side: ∂acts/∂z = H(z − θ)
    assert torch.allclose(W_enc.grad, z.t() @ grad_z) and torch.allclose(b_enc.grad, grad_z.sum(0))


@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("variant", ["weighted", "unit", "jumprelu"])
def test_fused_dense_passes_match_plain_autograd(variant, apply_b_dec):
    gen = torch.Generator().manual_seed(3)

    def leaf(*shape, scale=0.3):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()

    x = torch.randn(30, D_IN, generator=gen, dtype=torch.float64, requires_grad=True)
    b_dec, W_enc, b_enc, W_dec = leaf(D_IN), leaf(D_IN, D_SAE), leaf(D_SAE, scale=0.1), leaf(D_SAE, D_IN)  # noqa: N806
    theta = (torch.rand(D_SAE, generator=gen, dtype=torch.float64) * 0.2).requires_grad_()
    pre = ((x - b_dec) if apply_b_dec else x) @ W_enc + b_enc
    if variant == "jumprelu":
        acts = pre * (pre > theta).double()
        sparsity = (acts != 0).sum().double() / 30
        x_hat, fused_sparsity, fused_acts, counts = DenseJumpReLU.apply(x, b_dec, W_enc, b_enc, theta, W_dec,
                                                                        0.001, apply_b_dec)
    else:
        acts = torch.relu(pre)
        weights = W_dec.norm(dim=1) if variant == "weighted" else torch.ones(D_SAE, dtype=torch.float64)
        sparsity = (acts * weights).sum(1).mean()
        x_hat, fused_sparsity, fused_acts, counts = DenseReLU.apply(x, b_dec, W_enc, b_enc, W_dec,
                                                                    variant == "weighted", apply_b_dec)
    reference = acts @ W_dec + b_dec
    assert torch.allclose(x_hat, reference) and torch.allclose(fused_sparsity, sparsity)
    assert torch.allclose(fused_acts, acts) and torch.equal(counts, (acts != 0).sum(0))
    params = (x, b_dec, W_enc, b_enc, W_dec)
    target = torch.randn(30, D_IN, generator=gen, dtype=torch.float64)
    ref_grads = torch.autograd.grad(((reference - target) ** 2).sum() + 0.3 * sparsity, params)
    fused_grads = torch.autograd.grad(((x_hat - target) ** 2).sum() + 0.3 * fused_sparsity, params)
    for name, a, b in zip(("x", "b_dec", "W_enc", "b_enc", "W_dec"), ref_grads, fused_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-10), name


def test_topk_keeps_exactly_k_latents_per_token():
    sae = build("topk", k=5)
    acts = sae.encode(data(50))
    assert ((acts != 0).sum(-1) == 5).all()
    out = sae(data(50))
    assert out.pattern.nnz == 50 * 5 and torch.allclose(out.acts, acts)


def test_batchtopk_keeps_k_per_token_on_average_and_learns_a_threshold():
    sae = build("batchtopk", k=4)
    x = data(30)
    out = sae(x)
    assert out.pattern.nnz == 30 * 4
    per_token = (out.acts != 0).sum(-1)
    assert per_token.float().mean() == 4 and per_token.max() > per_token.min()
    kept_min = out.values[out.values > 0].min()
    sae.after_step_(out)
    assert torch.isclose(sae.threshold, kept_min.double())  # bias-corrected EMA after one update
    inference = sae.encode(x)
    assert torch.equal(inference, torch.where(inference > 0, inference, 0))
    assert ((inference != 0) == (sae.preacts(x) > sae.threshold)).all()


def test_batch_topk_selection_is_exact():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(300_000, generator=gen)
    for keep in (1, 77, 5_000, 299_999):
        chosen = largest_indices(values, keep)
        assert chosen.numel() == keep and chosen.unique().numel() == keep
        assert torch.equal(values[chosen].sort().values, values.topk(keep).values.sort().values)
    fooled = -torch.ones(1 << 21)
    fooled[::2] = 1.0  # the strided sample sees only +1s, so too few entries pass τ: plain topk runs
    chosen = largest_indices(fooled, (1 << 20) + 5)
    assert fooled[chosen].sum().item() == (1 << 20) - 5


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_sparse_decoding_matches_the_dense_reference(arch, apply_b_dec):
    sparse = build(arch, apply_b_dec_to_input=apply_b_dec)
    dense = build(arch, apply_b_dec_to_input=apply_b_dec, sparse_decoding=False)
    dense.load_state_dict(sparse.state_dict())
    x = data(25)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::4] = True
    out_s, out_d = sparse(x, dead_mask=dead), dense(x, dead_mask=dead)
    assert out_s.losses["aux"] > 0
    out_s.loss.backward()
    out_d.loss.backward()
    assert torch.allclose(out_s.x_hat, out_d.x_hat) and torch.allclose(out_s.loss, out_d.loss)
    for (name, ps), (_, pd) in zip(sparse.named_parameters(), dense.named_parameters(), strict=True):
        assert torch.allclose(ps.grad, pd.grad, atol=1e-12), name


def test_sparse_functions_pass_gradcheck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    b_dec = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)
    W_enc = torch.randn(5, 9, dtype=torch.float64, generator=gen, requires_grad=True)  # noqa: N806
    b_enc = torch.randn(9, dtype=torch.float64, generator=gen, requires_grad=True)
    W_dec = torch.randn(9, 5, dtype=torch.float64, generator=gen, requires_grad=True)  # noqa: N806
    with torch.no_grad():
        pre = (x - b_dec) @ W_enc + b_enc
    pattern = SparsePattern.from_flat(pre.reshape(-1).topk(14).indices, 6, 9)

    def f(x, b_dec, W_enc, b_enc, W_dec):  # noqa: N803
        pre_now = ((x - b_dec) @ W_enc + b_enc).detach()
        values = gather_preacts(pre_now, pattern, x, b_dec, W_enc, b_enc, True)
        return sparse_decode(values, pattern, W_dec)

    assert torch.autograd.gradcheck(f, (x, b_dec, W_enc, b_enc, W_dec))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_folding_a_normalisation_factor_serves_raw_activations(arch):
    sae = build(arch)
    x_raw = data() * 7.0
    expected_acts = sae.encode(x_raw / 7.0)
    expected_recon = sae.decode(expected_acts) * 7.0
    sae.fold_input_scale_(7.0)
    scale = 7.0 if arch == "tied" else 1.0  # the tied SAE's latents come out in raw units
    assert torch.allclose(sae.encode(x_raw), expected_acts * scale)
    assert torch.allclose(sae.reconstruct(x_raw), expected_recon)


def test_unit_norm_projection_removes_the_parallel_gradient():
    sae = build("jumprelu")
    out = sae(data())
    out.loss.backward()
    sae.remove_parallel_decoder_grad_()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(D_SAE, dtype=torch.float64), atol=1e-12)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
        sae.threshold.fill_(-1.0)
    sae.after_step_(out)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(D_SAE, dtype=torch.float64))
    assert (sae.threshold == 0).all()
