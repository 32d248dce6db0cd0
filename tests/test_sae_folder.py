"""SAE folders: exact round trips, SAELens layouts in both directions, the Hub path, and damaged folders."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from saelab.errors import CorruptFileError, SaelabError
from saelab.sae import ARCHITECTURES, SAEConfig, load_sae, load_sae_with_info, make_sae, save_sae
from saelab.sae import folder as folder_module

D_IN, D_SAE = 10, 32


def trained_like(arch, **fields):
    """An SAE with non-trivial weights everywhere (biases, thresholds) for comparing outputs."""
    if arch in ("topk", "batchtopk"):
        fields.setdefault("k", 4)
    cfg = SAEConfig(arch, D_IN, D_SAE, hook_name="blocks.2.hook_resid_post", **fields)
    sae = make_sae(cfg, seed=5)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.rand(p.shape, generator=gen) * 0.2 if name == "threshold"
                        else torch.randn(p.shape, generator=gen) * 0.1)
    if arch == "batchtopk":
        sae.threshold.fill_(0.15)
    return sae.eval()


def inputs(n=40):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(2))


# SAELens' inference formulas (sae_lens/saes/{standard,gated,topk,jumprelu}_sae.py), for comparison.
def saelens_encode(arch, w, cfg, x):
    sae_in = x - w["b_dec"] * cfg["apply_b_dec_to_input"]
    if arch == "gated":
        gate = (sae_in @ w["W_enc"] + w["b_gate"]) > 0
        return gate * torch.relu(sae_in @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"])
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    if arch == "standard":
        return torch.relu(pre)
    if arch == "jumprelu":
        return torch.relu(pre) * (pre > w["threshold"].relu())
    if cfg.get("rescale_acts_by_decoder_norm"):
        pre = pre * w["W_dec"].norm(dim=-1)
    top = pre.topk(cfg["k"], dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())


def saelens_decode(arch, w, cfg, acts):
    if cfg.get("rescale_acts_by_decoder_norm"):
        acts = acts / w["W_dec"].norm(dim=-1)
    if "scaling_factor" in w:
        acts = acts * w["scaling_factor"]
    return acts @ w["W_dec"] + w["b_dec"]


def write_saelens_folder(path, cfg, weights):
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in weights.items()}, path / "sae_weights.safetensors")


def random_weights(arch, gen, scaling=False):
    w = {"W_enc": torch.randn(D_IN, D_SAE, generator=gen) * 0.3, "W_dec": torch.randn(D_SAE, D_IN, generator=gen) * 0.3,
         "b_dec": torch.randn(D_IN, generator=gen) * 0.1}
    if arch == "gated":
        w.update(b_gate=torch.randn(D_SAE, generator=gen) * 0.1, r_mag=torch.randn(D_SAE, generator=gen) * 0.1,
                 b_mag=torch.randn(D_SAE, generator=gen) * 0.1)
    else:
        w["b_enc"] = torch.randn(D_SAE, generator=gen) * 0.1
    if arch == "jumprelu":
        w["threshold"] = torch.rand(D_SAE, generator=gen) * 0.3
    if scaling:
        w["scaling_factor"] = 0.5 + torch.rand(D_SAE, generator=gen)
    return w


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_load_round_trip_is_exact(tmp_path, arch):
    sae = trained_like(arch)
    sparsity = torch.log10(torch.rand(D_SAE) + 1e-3)
    save_sae(sae, tmp_path / "sae", extra_meta={"model": {"name": "toy"}, "context_size": 64}, sparsity=sparsity)
    loaded, info = load_sae_with_info(tmp_path / "sae")
    assert loaded.cfg == sae.cfg and info.layout == "saelab"
    x = inputs()
    acts = sae.encode(x)
    assert torch.equal(loaded.encode(x), acts)
    assert torch.equal(loaded.decode(acts), sae.decode(acts))
    assert torch.equal(info.sparsity, sparsity)
    assert info.metadata["model_name"] == "toy" and info.metadata["context_size"] == 64
    assert info.saelab["model"] == {"name": "toy"}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_saelab_folders_read_back_with_saelens_formulas(tmp_path, arch):
    """What SAELens computes from the files we write equals our own outputs."""
    sae = trained_like(arch)
    save_sae(sae, tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    weights = load_file(tmp_path / "sae" / "sae_weights.safetensors")
    expected_arch = {"relu": "standard", "tied": "standard", "gated": "gated", "topk": "topk",
                     "batchtopk": "jumprelu", "jumprelu": "jumprelu", "matryoshka_batchtopk": "jumprelu"}[arch]
    assert cfg["architecture"] == expected_arch
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    assert cfg["metadata"]["sae_lens_version"] >= "6"
    assert cfg["normalize_activations"] == "none"
    x = inputs()
    acts = saelens_encode(expected_arch, weights, cfg, x)
    assert torch.allclose(acts, sae.encode(x), atol=1e-6)
    assert torch.allclose(saelens_decode(expected_arch, weights, cfg, acts), sae.reconstruct(x), atol=1e-6)


@pytest.mark.parametrize("arch", ["standard", "gated", "topk", "jumprelu"])
def test_saelens_v6_folders_load_with_the_same_outputs(tmp_path, arch):
    w = random_weights(arch, torch.Generator().manual_seed(1))
    cfg = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": arch != "jumprelu", "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_pre", "sae_lens_version": "6.5.1"}}
    if arch == "topk":
        cfg.update(k=5, rescale_acts_by_decoder_norm=True)
    write_saelens_folder(tmp_path / arch, cfg, w)
    sae, info = load_sae_with_info(tmp_path / arch)
    assert info.layout == "saelens-v6" and sae.cfg.hook_name == "blocks.3.hook_resid_pre"
    x = inputs()
    expected = saelens_encode(arch, w, cfg, x)
    assert torch.allclose(sae.encode(x), expected, atol=1e-5)
    assert torch.allclose(sae.reconstruct(x), saelens_decode(arch, w, cfg, expected), atol=1e-5)


def test_saelens_pre6_flat_layouts_load(tmp_path):
    gen = torch.Generator().manual_seed(4)
    flat = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "torch.float32", "device": "cpu", "model_name": "gpt2-small",
            "hook_point": "blocks.8.hook_resid_pre", "hook_point_layer": 8, "activation_fn_str": "topk",
            "activation_fn_kwargs": {"k": 6}, "apply_b_dec_to_input": True, "normalize_activations": False,
            "context_size": 128, "sae_lens_training_version": "3.1.0"}
    w = random_weights("topk", gen)
    write_saelens_folder(tmp_path / "topk", flat, w)
    sae, info = load_sae_with_info(tmp_path / "topk")
    assert info.layout == "saelens-pre6" and sae.cfg.architecture == "topk" and sae.cfg.k == 6
    assert sae.cfg.hook_name == "blocks.8.hook_resid_pre" and info.metadata["model_name"] == "gpt2-small"
    x = inputs()
    cfg = {"apply_b_dec_to_input": True, "k": 6}
    assert torch.allclose(sae.encode(x), saelens_encode("topk", w, cfg, x), atol=1e-6)

    standard = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "hook_name": "blocks.0.hook_mlp_out",
                "hook_layer": 0, "architecture": "standard", "activation_fn_str": "relu",
                "apply_b_dec_to_input": False, "finetuning_scaling_factor": True, "normalize_activations": "none"}
    w = random_weights("standard", gen, scaling=True)
    write_saelens_folder(tmp_path / "standard", standard, w)
    sae, info = load_sae_with_info(tmp_path / "standard")
    acts = saelens_encode("standard", w, standard, x)
    assert torch.allclose(sae.encode(x), acts, atol=1e-6)
    assert torch.allclose(sae.decode(acts), saelens_decode("standard", w, standard, acts), atol=1e-5)
    assert any("scaling_factor" in note for note in info.notes)

    jump = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "hook_name": "blocks.1.hook_resid_post",
            "architecture": "jumprelu", "apply_b_dec_to_input": False, "normalize_activations": None}
    w = random_weights("jumprelu", gen)
    w["log_threshold"] = w.pop("threshold").log()
    write_saelens_folder(tmp_path / "jump", jump, w)
    sae = load_sae(tmp_path / "jump")
    reference = dict(w, threshold=w["log_threshold"].exp())
    assert torch.allclose(sae.encode(x), saelens_encode("jumprelu", reference, jump, x), atol=1e-6)


def test_unsupported_saelens_settings_are_refused(tmp_path):
    w = random_weights("standard", torch.Generator().manual_seed(0))
    base = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
            "apply_b_dec_to_input": True, "metadata": {"hook_name": "h", "sae_lens_version": "6.0.0"}}
    write_saelens_folder(tmp_path / "ln", {**base, "normalize_activations": "layer_norm"}, w)
    with pytest.raises(CorruptFileError, match="normalize_activations='layer_norm'.*accepted: none"):
        load_sae(tmp_path / "ln")
    write_saelens_folder(tmp_path / "arch", {**base, "architecture": "temporal"}, w)
    with pytest.raises(CorruptFileError, match="temporal.*accepted: standard, transcoder, skip_transcoder, gated"):
        load_sae(tmp_path / "arch")


def test_damaged_folders_give_clear_errors(tmp_path):
    sae = trained_like("relu")
    save_sae(sae, tmp_path / "ok")
    with pytest.raises(CorruptFileError, match="no cfg.json"):
        load_sae(tmp_path)
    bad_json = tmp_path / "bad_json"
    save_sae(sae, bad_json)
    (bad_json / "cfg.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_sae(bad_json)
    truncated = tmp_path / "truncated"
    save_sae(sae, truncated)
    data = (truncated / "sae_weights.safetensors").read_bytes()
    (truncated / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="not a readable safetensors"):
        load_sae(truncated)
    wrong = tmp_path / "wrong_shape"
    save_sae(sae, wrong)
    cfg = json.loads((wrong / "cfg.json").read_text())
    cfg["saelab"]["config"]["d_sae"] = D_SAE * 2
    (wrong / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptFileError, match=r"W_enc has shape \(10, 32\), expected \(10, 64\)"):
        load_sae(wrong)
    with pytest.raises(SaelabError, match="no SAE folder"):
        load_sae(tmp_path / "missing")


def test_hub_ids_download_just_that_folder(tmp_path, monkeypatch):
    sae = trained_like("jumprelu")
    repo = tmp_path / "hub_repo"
    save_sae(sae, repo / "layer_2" / "width_32")
    (repo / "README.md").write_text("not needed")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, allow_patterns))
        return str(repo)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    loaded = load_sae("some-org/some-saes/layer_2/width_32", revision="v1")
    x = inputs()
    assert torch.equal(loaded.encode(x), sae.encode(x))
    repo_id, revision, patterns = calls[0]
    assert (repo_id, revision) == ("some-org/some-saes", "v1")
    assert patterns == ["layer_2/width_32/cfg.json", "layer_2/width_32/sae_weights.safetensors",
                        "layer_2/width_32/sparsity.safetensors"]
    with pytest.raises(CorruptFileError, match="has no layer_9/cfg.json"):
        load_sae("some-org/some-saes/layer_9")

    def failing(**kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("huggingface_hub.snapshot_download", failing)
    with pytest.raises(SaelabError, match="network unreachable"):
        load_sae("some-org/other")
    with pytest.raises(SaelabError, match="neither an existing folder nor a Hub id"):
        folder_module.parse_hub_id("just-a-name")
