"""Coders that read one site and predict another (transcoders, skip transcoders), Matryoshka BatchTopK,
and the registry: what an architecture declares is all the rest of saelab needs."""

import json
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from saelab.errors import ConfigError
from saelab.sae import ARCHITECTURES, SAE, InputShapeError, SAEConfig, SAEOutput, load_sae, make_sae, save_sae
from saelab.sae.config import ArchOptions
from saelab.sae.matryoshka import group_ends
from saelab.sae.registry import SAE_CLASSES, register, sae_class
from saelab.train import InMemorySource, SAEUpdater, TrainConfig, train_saes

D_IN, D_OUT, D_SAE = 12, 7, 48
TRANSCODING = [a for a in ARCHITECTURES if sae_class(a).supports_transcoding]


def coder(arch, skip=False, seed=0, **fields):
    cfg = SAEConfig(arch, D_IN, D_SAE, hook_name="blocks.0.hook_resid_mid", hook_name_out="blocks.0.hook_mlp_out",
                    d_out=D_OUT, skip_connection=skip, dtype="float64", **fields)
    sae = make_sae(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if p.ndim == 1 and name != "threshold" or name == "W_skip":
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
    return sae


def pair(n=20, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, D_IN, generator=gen, dtype=torch.float64),
            torch.randn(n, D_OUT, generator=gen, dtype=torch.float64))


def test_a_transcoder_config_resolves_its_output_side():
    cfg = SAEConfig("topk", D_IN, D_SAE, hook_name="blocks.1.hook_resid_mid", hook_name_out="blocks.1.hook_mlp_out")
    assert cfg.is_transcoder and cfg.d_out == D_IN and cfg.apply_b_dec_to_input is False
    assert cfg.name == "blocks.1.hook_resid_mid.to.blocks.1.hook_mlp_out.topk.48"
    sae_cfg = SAEConfig("topk", D_IN, D_SAE, hook_name="blocks.1.hook_resid_mid")
    assert not sae_cfg.is_transcoder and sae_cfg.hook_name_out == sae_cfg.hook_name and sae_cfg.d_out == D_IN
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="skip_connection=True needs a transcoder"):
        SAEConfig("relu", D_IN, D_SAE, hook_name="h", skip_connection=True)
    with pytest.raises(ConfigError, match="cannot be a transcoder"):
        SAEConfig("tied", D_IN, D_SAE, hook_name="a", hook_name_out="b")
    with pytest.raises(ConfigError, match="apply_b_dec_to_input=True is not accepted.*output space"):
        SAEConfig("relu", D_IN, D_SAE, hook_name="a", hook_name_out="b", apply_b_dec_to_input=True)


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("arch", TRANSCODING)
def test_transcoders_predict_the_target_with_gradients_everywhere(arch, skip):
    sae = coder(arch, skip)
    x, y = pair()
    assert sae.W_dec.shape == (D_SAE, D_OUT) and sae.b_dec.shape == (D_OUT,) and sae.W_enc.shape == (D_IN, D_SAE)
    acts = sae.encode(x)
    expected = acts @ sae.W_dec + sae.b_dec + (x @ sae.W_skip if skip else 0)
    assert torch.allclose(sae.decode(acts, x=x), expected) and torch.allclose(sae.reconstruct(x), expected)
    out = sae(x, y)
    assert out.x_hat.shape == (20, D_OUT)
    assert torch.isclose(out.mse, ((out.x_hat - y) ** 2).sum(1).mean())
    out.loss.backward()
    assert all(p.grad is not None for p in sae.parameters())
    with pytest.raises(InputShapeError, match="needs the target y"):
        sae(x)
    with pytest.raises(InputShapeError, match="d_out=7"):
        sae(x, torch.zeros(20, D_OUT + 1, dtype=torch.float64))
    if skip:
        with pytest.raises(InputShapeError, match="skip transcoder"):
            sae.decode(acts)


def test_skip_term_starts_at_zero():
    sae = make_sae(SAEConfig("jumprelu", D_IN, D_SAE, hook_name="a", hook_name_out="b", d_out=D_OUT,
                             skip_connection=True), seed=0)
    assert sae.W_skip.shape == (D_IN, D_OUT) and not sae.W_skip.any()


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "gated"])
def test_fused_transcoder_passes_match_plain_autograd(arch):
    """The fused dense passes with d_in != d_out against the definition written out with autograd."""
    sae = coder(arch, skip=True)
    x, y = pair(30)
    out = sae(x, y)
    grads = torch.autograd.grad(out.loss, list(sae.parameters()))
    pre = x @ sae.W_enc + (sae.b_enc if arch != "gated" else 0)
    if arch == "relu":
        acts = pre.relu()
        sparsity = sae.cfg.l1_coefficient * (acts * sae.W_dec.norm(dim=1)).sum(1).mean()
        extra = 0
    elif arch == "jumprelu":
        acts = pre * (pre > sae.threshold).double()
        sparsity = sae.cfg.l0_coefficient * (acts != 0).sum().double() / 30
        extra = 0
    else:
        gate = pre + sae.b_gate
        acts = (gate > 0).double() * (pre * sae.r_mag.exp() + sae.b_mag).relu()
        sparsity = sae.cfg.l1_coefficient * gate.relu().sum() / 30
        via = gate.relu() @ sae.W_dec.detach() + sae.b_dec.detach() + x @ sae.W_skip.detach()
        extra = ((via - y) ** 2).sum(1).mean()
    y_hat = acts @ sae.W_dec + sae.b_dec + x @ sae.W_skip
    reference = ((y_hat - y) ** 2).sum(1).mean() + sparsity + extra
    assert torch.allclose(out.loss, reference)
    params = list(sae.parameters())
    ref = torch.autograd.grad(reference, params, allow_unused=True)
    for (name, _), a, b in zip(sae.named_parameters(), grads, ref, strict=True):
        if name == "threshold":
            continue  # the pseudo-derivative, checked in test_sae_architectures
        assert torch.allclose(a, b, atol=1e-10), name


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_sparse_transcoder_pass_matches_the_dense_reference(arch):
    sparse = coder(arch, skip=True, k=3)
    dense = coder(arch, skip=True, k=3, sparse_decoding=False)
    dense.load_state_dict(sparse.state_dict())
    x, y = pair(25)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::4] = True
    out_s, out_d = sparse(x, y, dead_mask=dead), dense(x, y, dead_mask=dead)
    assert out_s.losses["aux"] > 0
    out_s.loss.backward()
    out_d.loss.backward()
    assert torch.allclose(out_s.x_hat, out_d.x_hat) and torch.allclose(out_s.loss, out_d.loss)
    for (name, ps), (_, pd) in zip(sparse.named_parameters(), dense.named_parameters(), strict=True):
        assert torch.allclose(ps.grad, pd.grad, atol=1e-12), name


@pytest.mark.parametrize("arch", TRANSCODING)
def test_folding_two_normalisation_factors_serves_raw_activations(arch):
    sae = coder(arch, skip=True)
    x, _ = pair()
    c_in, c_out = 3.0, 0.5
    expected_acts = sae.encode(x / c_in)
    expected = sae.decode(expected_acts, x=x / c_in) * c_out
    sae.fold_scales_(c_in, c_out)
    assert torch.allclose(sae.encode(x), expected_acts)
    assert torch.allclose(sae.reconstruct(x), expected)


# ----------------------------------------------------------------------------- folders
def _strip_saelab_section(folder):
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.pop("saelab")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return cfg


@pytest.mark.parametrize("arch,skip,saelens_name", [
    ("relu", False, "transcoder"), ("relu", True, "skip_transcoder"), ("jumprelu", False, "jumprelu_transcoder")])
def test_saelens_transcoder_folders_round_trip_without_our_section(tmp_path, arch, skip, saelens_name):
    sae = coder(arch, skip)
    save_sae(sae, tmp_path / "tc")
    weights = load_file(tmp_path / "tc" / "sae_weights.safetensors")
    cfg = _strip_saelab_section(tmp_path / "tc")
    assert cfg["architecture"] == saelens_name and cfg["d_out"] == D_OUT
    assert cfg["hook_name_out"] == "blocks.0.hook_mlp_out" and cfg["hook_layer_out"] == 0
    if skip:
        assert weights["W_skip"].shape == (D_OUT, D_IN)  # SAELens stores it [d_out, d_in]
    loaded = load_sae(tmp_path / "tc")
    assert loaded.cfg.architecture == arch and loaded.cfg.is_transcoder and loaded.cfg.skip_connection == skip
    assert loaded.cfg.hook_name_out == "blocks.0.hook_mlp_out"
    x, _ = pair()
    assert torch.allclose(loaded.reconstruct(x), sae.reconstruct(x), atol=1e-5)


@pytest.mark.parametrize("arch", TRANSCODING)
def test_every_coder_round_trips_through_a_folder_as_itself(tmp_path, arch):
    sae = coder(arch, skip=True)
    save_sae(sae, tmp_path / arch)
    loaded = load_sae(tmp_path / arch, dtype="float64")
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    x, _ = pair()
    assert torch.allclose(loaded.reconstruct(x), sae.reconstruct(x))
    written = json.loads((tmp_path / arch / "cfg.json").read_text())["architecture"]
    names = sae_class(arch).saelens_names
    assert written == names.get("skip_transcoder", f"{arch}_skip_transcoder")


def test_matryoshka_folder_reads_in_saelens_as_a_jumprelu(tmp_path):
    sae = make_sae(SAEConfig("matryoshka_batchtopk", D_IN, 64, hook_name="h", k=4), seed=0)
    with torch.no_grad():
        sae.threshold.fill_(0.05)
    save_sae(sae, tmp_path / "m")
    cfg = _strip_saelab_section(tmp_path / "m")
    assert cfg["architecture"] == "jumprelu"
    as_jumprelu = load_sae(tmp_path / "m")
    x = torch.randn(10, D_IN)
    assert as_jumprelu.cfg.architecture == "jumprelu"
    assert torch.allclose(as_jumprelu.encode(x), sae.encode(x), atol=1e-6)


# ----------------------------------------------------------------------------- Matryoshka
def test_group_ends_follow_the_fractions():
    assert group_ends([1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2 + 1 / 32], 4096) == [128, 384, 896, 1920, 4096]
    assert group_ends([1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2 + 1 / 32], 16) == [1, 2, 4, 8, 16]
    with pytest.raises(ConfigError, match="sum to"):
        SAEConfig("matryoshka_batchtopk", 8, 64, group_fractions=[0.5, 0.25])
    with pytest.raises(ConfigError, match="group_weights"):
        SAEConfig("matryoshka_batchtopk", 8, 64, group_fractions=[0.5, 0.5], group_weights=[1.0])


def test_matryoshka_prefix_losses_match_a_hand_computation():
    cfg = SAEConfig("matryoshka_batchtopk", D_IN, 40, hook_name="h", k=6, dtype="float64",
                    group_fractions=[0.1, 0.3, 0.6], group_weights=[0.5, 0.3, 0.2])
    sae = make_sae(cfg, seed=2)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1, generator=torch.Generator().manual_seed(5))
    x, _ = pair(16)
    out = sae(x)
    acts = out.acts  # BatchTopK's selection over the whole dictionary
    ends = [4, 16, 40]
    expected, start, recon = {}, 0, sae.b_dec.expand(16, -1)
    for weight, end in zip([0.5, 0.3, 0.2], ends, strict=True):
        recon = recon + acts[:, start:end] @ sae.W_dec[start:end]
        expected[end] = weight * ((x - recon) ** 2).sum(1).mean()
        start = end
    assert torch.allclose(out.losses["mse_prefix_4"], expected[4])
    assert torch.allclose(out.losses["mse_prefix_16"], expected[16])
    assert torch.allclose(out.losses["mse"], expected[40])
    assert torch.allclose(out.mse, expected[40] / 0.2)  # the logged metric is the unweighted full MSE
    assert torch.isclose(out.loss, expected[4] + expected[16] + expected[40] + out.losses["aux"])


def _zipf_data(n, d_in=32, n_features=128, seed=0):
    """Sparse codes with Zipf-distributed feature frequencies over a random unit dictionary: x [n, d_in]."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(n_features, d_in, generator=gen)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    p = 0.5 / torch.arange(1, n_features + 1).float() ** 0.8
    codes = (torch.rand(n, n_features, generator=gen) < p) * (0.5 + torch.rand(n, n_features, generator=gen))
    x = codes @ dictionary
    return x / x.pow(2).sum(1).mean().sqrt()


def _prefix_fvu(sae, x, end):
    acts = sae.encode(x)
    recon = acts[:, :end] @ sae.W_dec[:end] + sae.b_dec
    return float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_matryoshka_prefixes_reconstruct_better_than_batchtopk_first_latents():
    x = _zipf_data(60_000)
    held_out = _zipf_data(4096, seed=1)
    results = {}
    for arch in ("batchtopk", "matryoshka_batchtopk"):
        cfg = SAEConfig(arch, 32, 256, hook_name="x", k=8)
        sae = make_sae(cfg, seed=0)
        with torch.no_grad():
            sae.b_dec.copy_(x.mean(0))
        updater = SAEUpdater(sae, TrainConfig(steps=1, batch_size=512, lr=3e-3))
        for _epoch in range(3):
            for i in range(0, len(x) - 511, 512):
                updater.step(x[i:i + 512], 3e-3, 1.0)
        sae.eval()
        with torch.no_grad():
            results[arch] = [_prefix_fvu(sae, held_out, end) for end in (8, 24, 56, 256)]
    batch, matryoshka = results["batchtopk"], results["matryoshka_batchtopk"]
    for end, b, m in zip((8, 24, 56), batch, matryoshka, strict=False):
        assert m < b - 0.05, (end, batch, matryoshka)
    # with the whole dictionary the nesting costs little (Bussmann et al.: a small fidelity price)
    assert abs(matryoshka[-1] - batch[-1]) < 0.1 and batch[-1] < 0.6, (batch, matryoshka)


# ----------------------------------------------------------------------------- planted linear map
def test_a_planted_sparse_linear_map_is_recovered(tmp_path):
    """x = z A and y = z B for sparse codes z (2 of 64 features): a TopK transcoder trained by the trainer
    (two hooks, two normalisation factors) predicts y and its decoder rows find every row of B."""
    gen = torch.Generator().manual_seed(0)
    n_features, d_in, d_out, n = 64, 32, 16, 80_000
    A, B = torch.randn(n_features, d_in, generator=gen), torch.randn(n_features, d_out, generator=gen)  # noqa: N806
    A /= A.norm(dim=1, keepdim=True)
    B /= B.norm(dim=1, keepdim=True)
    active = torch.rand(n, n_features, generator=gen).topk(2, dim=1).indices
    z = torch.zeros(n, n_features).scatter_(1, active, 0.5 + torch.rand(n, 2, generator=gen))
    x, y = z @ A, z @ B
    factors = {"a": float(x.pow(2).sum(1).mean().sqrt()), "b": float(y.pow(2).sum(1).mean().sqrt())}
    source = InMemorySource({"a": x / factors["a"], "b": y / factors["b"]}, batch_size=500,
                            normalization_factors=factors)
    cfg = SAEConfig("topk", d_in, 2 * n_features, hook_name="a", hook_name_out="b", d_out=d_out, k=3)
    tc = train_saes([cfg], source, TrainConfig(steps=1500, batch_size=500, lr=4e-3, lr_decay_steps=300,
                                               log_every=500), tmp_path, progress=False)[cfg.name]
    with torch.no_grad():  # the returned transcoder works on raw activations (both factors folded in)
        pred = tc.reconstruct(x[:4000])
        fvu = float(((y[:4000] - pred) ** 2).sum() / ((y[:4000] - y[:4000].mean(0)) ** 2).sum())
        rows = tc.W_dec / tc.W_dec.norm(dim=1, keepdim=True)
        best = (B @ rows.t()).max(dim=1).values
    assert fvu < 0.08, fvu
    assert (best > 0.95).float().mean() >= 0.9, best


# ----------------------------------------------------------------------------- registry
def test_a_new_architecture_needs_only_its_class_and_one_registration(tmp_path):
    """A ReLU variant with a soft threshold, declared in one class here, works everywhere unchanged."""

    @dataclass
    class ShrinkOptions(ArchOptions):
        shrink: float = 0.05
        l1_coefficient: float = 0.01

    class ShrinkSAE(SAE):
        architecture = "shrink_relu"
        Options = ShrinkOptions
        sparsity_option = "shrink"
        sweep_range = (0.5, 0.01)
        dense_at_init = True

        def encode_flat(self, x):
            return (self.preacts(x) - self.cfg.shrink).relu()

        def training_forward(self, x, y, sparsity_scale, dead_mask):
            acts = self.encode_flat(x)
            y_hat = self.add_skip(self.decode_flat(acts), x)
            l1 = self.cfg.l1_coefficient * sparsity_scale * acts.sum(1).mean()
            return SAEOutput(y_hat, {"mse": self.mse(y, y_hat), "l1": l1}, dense_acts=acts)

    register(ShrinkSAE)
    try:
        cfg = SAEConfig("shrink_relu", 8, 32, hook_name="a", shrink=0.1)
        assert cfg.shrink == 0.1 and cfg.unit_norm_decoder and cfg.name == "a.shrink_relu.32"
        with pytest.raises(ConfigError, match="shrink=0.1 is not used by architecture 'relu'.*shrink_relu"):
            SAEConfig("relu", 8, 32, shrink=0.1)
        x = torch.randn(600, 8)
        transcoder = SAEConfig("shrink_relu", 8, 32, hook_name="a", name="tc", hook_name_out="b", d_out=4, shrink=0.1,
                               skip_connection=True)
        saes = train_saes([cfg, transcoder],
                          InMemorySource({"a": x, "b": x[:, :4] * 2}, batch_size=100),
                          TrainConfig(steps=12, batch_size=100, log_every=6), tmp_path / "run", progress=False)
        loaded = load_sae(tmp_path / "run" / "saes" / "tc")
        assert type(loaded) is ShrinkSAE and loaded.cfg.shrink == 0.1
        assert torch.allclose(loaded.reconstruct(x), saes["tc"].reconstruct(x), atol=1e-6)
        records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert {r["architecture"] for r in records} == {"shrink_relu"}
    finally:
        del SAE_CLASSES["shrink_relu"]
