"""Pretrained SAEs: each published format built by hand from its documentation (names, shapes, dtypes),
read into saelab and checked against a direct computation from the raw arrays, written back where the
format allows; the registry; loading by release and id through a stand-in Hub and a real offline cache;
and the errors (unknown names, pickles, shapes that do not fit)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from saelab.cli import main
from saelab.errors import ConfigError, CorruptFileError
from saelab.pretrained import (
    FORMATS,
    Hints,
    HubError,
    UnknownReleaseError,
    convert,
    detect_format,
    list_releases,
    load_sae,
    load_sae_with_info,
    read_sae,
    release_info,
    releases,
    write_sae,
)
from saelab.pretrained import registry as registry_module
from saelab.pretrained.formats import dictionary_learning, gemma_scope, sparsify
from saelab.sae import SAEConfig, architectures, make_sae
from saelab.sae import load_sae as load_folder
from saelab.sae.saelens_format import from_saelens_architecture

pytestmark = pytest.mark.usefixtures("one_torch_thread")
D_IN, D_SAE, K = 16, 32, 4
DOCS = Path(__file__).resolve().parents[1] / "docs" / "PRETRAINED.md"


def rand(*shape, seed=0, scale=0.3):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def inputs(n=24, d=D_IN):
    return rand(n, d, seed=99, scale=1.0)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def dense_topk(pre, k):
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values)


# ----------------------------------------------------------------------------- files built by hand
def gemma_scope_arrays(d_in=D_IN, d_sae=D_SAE, d_out=D_IN, skip=False):
    """Gemma Scope's arrays: W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc, b_dec, threshold [d_sae]."""
    out = {"W_enc": rand(d_in, d_sae, seed=1), "W_dec": rand(d_sae, d_out, seed=2), "b_enc": rand(d_sae, seed=3),
           "b_dec": rand(d_out, seed=4), "threshold": rand(d_sae, seed=5).abs() * 0.5}
    if skip:
        out["affine_skip_connection"] = rand(d_in, d_out, seed=6)
    return out


def write_npz(folder, arrays):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **{k: v.numpy().astype(np.float32) for k, v in arrays.items()})
    return folder


def write_gs2(folder, arrays, config):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k.lower(): v.contiguous() for k, v in arrays.items()}, folder / "params.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def jumprelu_reference(a, x):
    """Gemma Scope tutorial: z = x W_enc + b_enc; f = ReLU(z)·1[z > θ]; ŷ = f W_dec + b_dec (+ x A)."""
    pre = x @ a["W_enc"] + a["b_enc"]
    acts = torch.relu(pre) * (pre > a["threshold"])
    out = acts @ a["W_dec"] + a["b_dec"]
    if "affine_skip_connection" in a:
        out = out + x @ a["affine_skip_connection"]
    return acts, out


def sparsify_tensors(skip=False, d_in=D_IN):
    out = {"encoder.weight": rand(D_SAE, d_in, seed=11), "encoder.bias": rand(D_SAE, seed=12),
           "W_dec": rand(D_SAE, d_in, seed=13), "b_dec": rand(d_in, seed=14)}
    if skip:
        out["W_skip"] = rand(d_in, d_in, seed=15)
    return out


def write_sparsify(folder, tensors, **cfg):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "sae.safetensors")
    base = {"activation": "topk", "expansion_factor": 2, "normalize_decoder": True, "num_latents": D_SAE, "k": K,
            "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D_IN}
    (folder / "cfg.json").write_text(json.dumps({**base, **cfg}))
    return folder


def dl_state(dict_class):
    """dictionary_learning state dicts (nn.Linear weights are [out, in])."""
    linear = {"encoder.weight": rand(D_SAE, D_IN, seed=21), "encoder.bias": rand(D_SAE, seed=22),
              "decoder.weight": rand(D_IN, D_SAE, seed=23)}
    plain = {"W_enc": rand(D_IN, D_SAE, seed=24), "b_enc": rand(D_SAE, seed=25), "W_dec": rand(D_SAE, D_IN, seed=26),
             "b_dec": rand(D_IN, seed=27)}
    buffers = {"k": torch.tensor(K, dtype=torch.int32), "threshold": torch.tensor(0.05, dtype=torch.float32)}
    return {
        "AutoEncoder": {**linear, "bias": rand(D_IN, seed=28)},
        "AutoEncoderNew": {**linear, "decoder.bias": rand(D_IN, seed=28)},
        "GatedAutoEncoder": {"encoder.weight": linear["encoder.weight"], "decoder.weight": linear["decoder.weight"],
                             "decoder_bias": rand(D_IN, seed=28), "gate_bias": rand(D_SAE, seed=29),
                             "mag_bias": rand(D_SAE, seed=30), "r_mag": rand(D_SAE, seed=31)},
        "JumpReluAutoEncoder": {**plain, "threshold": rand(D_SAE, seed=32).abs() * 0.3},
        "AutoEncoderTopK": {**linear, "b_dec": rand(D_IN, seed=28), **buffers},
        "BatchTopKSAE": {**linear, "b_dec": rand(D_IN, seed=28), **buffers},
        "MatryoshkaBatchTopKSAE": {**plain, **buffers, "group_sizes": torch.tensor([4, 8, 20])},
    }[dict_class]


def dl_reference(dict_class, s, x):
    """The classes' encode/decode (dictionary.py, trainers/*.py), written out."""
    if dict_class in ("AutoEncoder", "AutoEncoderNew"):
        centre = s.get("bias", torch.zeros(D_IN))
        acts = torch.relu((x - centre) @ s["encoder.weight"].T + s["encoder.bias"])
        return acts, acts @ s["decoder.weight"].T + s.get("bias", s.get("decoder.bias"))
    if dict_class == "GatedAutoEncoder":
        x_enc = (x - s["decoder_bias"]) @ s["encoder.weight"].T
        acts = (x_enc + s["gate_bias"] > 0) * torch.relu(s["r_mag"].exp() * x_enc + s["mag_bias"])
        return acts, acts @ s["decoder.weight"].T + s["decoder_bias"]
    if dict_class == "JumpReluAutoEncoder":
        pre = x @ s["W_enc"] + s["b_enc"]
        acts = torch.relu(pre * (pre > s["threshold"]))
        return acts, acts @ s["W_dec"] + s["b_dec"]
    if dict_class == "MatryoshkaBatchTopKSAE":
        post = torch.relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
        acts = post * (post > s["threshold"])
        return acts, acts @ s["W_dec"] + s["b_dec"]
    post = torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    acts = dense_topk(post, K) if dict_class == "AutoEncoderTopK" else post * (post > s["threshold"])
    return acts, acts @ s["decoder.weight"].T + s["b_dec"]


DL_ARCH = {"AutoEncoder": "relu", "AutoEncoderNew": "relu", "GatedAutoEncoder": "gated",
           "JumpReluAutoEncoder": "jumprelu", "AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk",
           "MatryoshkaBatchTopKSAE": "matryoshka_batchtopk"}


def write_dl(folder, dict_class, state=None, config=True):
    folder.mkdir(parents=True, exist_ok=True)
    state = dl_state(dict_class) if state is None else state
    torch.save(state, folder / "ae.pt")
    if config:
        trainer = {"dict_class": dict_class, "trainer_class": "Trainer", "activation_dim": D_IN, "dict_size": D_SAE,
                   "layer": 1, "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": "resid_post_layer_1"}
        if "k" in state:
            trainer["k"] = K
        (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"io": "out", "ctx_len": 128}}))
    return folder


# ----------------------------------------------------------------------------- Gemma Scope
def test_gemma_scope_npz_is_a_jumprelu_sae_with_the_tutorial_outputs(tmp_path):
    arrays = gemma_scope_arrays()
    folder = write_npz(tmp_path / "gemma-scope-2b-pt-res" / "layer_7" / "width_16k" / "average_l0_10", arrays)
    assert detect_format(folder / "params.npz") == "gemma_scope_npz"
    converted = read_sae(folder / "params.npz")
    sae, x = converted.sae, inputs()
    assert (sae.cfg.architecture, sae.cfg.apply_b_dec_to_input, sae.cfg.hook_name) == (
        "jumprelu", False, "blocks.7.hook_resid_post")  # the hook from the folder names
    acts, out = jumprelu_reference(arrays, x)
    close(sae.encode(x), acts)
    close(sae.decode(sae.encode(x)), out)
    assert 0 < (acts > 0).float().sum(-1).mean() < D_SAE

    back = write_sae(converted, tmp_path / "back", "gemma_scope_npz")
    with np.load(back / "params.npz", allow_pickle=False) as written:
        assert sorted(written.files) == sorted(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(written[key], value.numpy())


def test_gemma_scope_2_sae_and_affine_transcoder_follow_config_json(tmp_path):
    arrays = gemma_scope_arrays(d_in=24, d_out=24)  # attn_out: hook_z of all heads, 3 x 8
    sae = read_sae(write_gs2(tmp_path / "att", arrays, {
        "architecture": "jump_relu", "model_name": "google/gemma-3-270m-pt",
        "hf_hook_point_in": "model.layers.5.self_attn.o_proj.input"})).sae
    assert (sae.cfg.hook_name, sae.cfg.d_in, sae.cfg.is_transcoder) == ("blocks.5.attn.hook_z", 24, False)
    close(sae.decode(sae.encode(inputs(d=24))), jumprelu_reference(arrays, inputs(d=24))[1])

    arrays = gemma_scope_arrays(skip=True)
    folder = write_gs2(tmp_path / "transcoder_all" / "layer_3_width_16k_l0_small_affine", arrays, {
        "architecture": "jump_relu", "model_name": "google/gemma-3-270m-pt", "affine_connection": True,
        "hf_hook_point_in": "model.layers.3.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.3.post_feedforward_layernorm.output"})
    converted = read_sae(folder)
    tc, x = converted.sae, inputs()
    assert (tc.cfg.hook_name, tc.cfg.hook_name_out, tc.cfg.skip_connection) == (
        "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out", True)
    acts, out = jumprelu_reference(arrays, x)
    close(tc.encode(x), acts)
    close(tc.reconstruct(x), out)

    back = write_sae(converted, tmp_path / "back", "gemma_scope_safetensors")
    written = load_file(back / "params.safetensors")
    assert set(written) == {k.lower() for k in arrays}
    for key, value in arrays.items():
        assert torch.equal(written[key.lower()], value)
    config = json.loads((back / "config.json").read_text())
    assert config["hf_hook_point_in"] == "model.layers.3.pre_feedforward_layernorm.output"
    assert config["affine_connection"] is True
    again = read_sae(back).sae
    assert (again.cfg.hook_name, again.cfg.hook_name_out) == (tc.cfg.hook_name, tc.cfg.hook_name_out)
    close(again.reconstruct(x), out)


def test_a_saelab_jumprelu_sae_becomes_gemma_scope_2_files(tmp_path):
    sae = randomised(make_sae(SAEConfig("jumprelu", D_IN, D_SAE, hook_name="blocks.2.hook_resid_post"), seed=1))
    assert sae.cfg.apply_b_dec_to_input  # saelab's default: b_enc is shifted into Gemma Scope's convention
    folder = write_sae(sae, tmp_path / "gs2", "gemma_scope_safetensors")
    back = read_sae(folder).sae
    assert back.cfg.hook_name == "blocks.2.hook_resid_post" and not back.cfg.apply_b_dec_to_input
    close(back.encode(inputs()), sae.encode(inputs()))
    close(back.reconstruct(inputs()), sae.reconstruct(inputs()))
    with pytest.raises(CorruptFileError, match="JumpReLU SAEs and transcoders only"):
        write_sae(randomised(make_sae(SAEConfig("topk", D_IN, D_SAE, k=K), seed=1)), tmp_path / "no",
                  "gemma_scope_npz")


def test_gemma_scope_shapes_that_do_not_fit_are_refused(tmp_path):
    arrays = gemma_scope_arrays()
    arrays["W_dec"] = rand(30, D_IN)
    with pytest.raises(CorruptFileError, match=r"W_dec has shape \(30, 16\), expected \(32, 16\)"):
        read_sae(write_npz(tmp_path / "a", arrays), hints=Hints(hook_name="blocks.0.hook_resid_post"))
    arrays = {**gemma_scope_arrays(), "extra": rand(3)}
    with pytest.raises(CorruptFileError, match="unexpected arrays extra"):
        read_sae(write_gs2(tmp_path / "b", arrays, {"architecture": "jump_relu"}))
    folder = tmp_path / "c"
    folder.mkdir()
    np.save(folder / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    import zipfile

    with zipfile.ZipFile(folder / "params.npz", "w") as archive:
        archive.write(folder / "object.npy", "W_enc.npy")
    with pytest.raises(CorruptFileError, match="never unpickled"):
        read_sae(folder)
    transcoder = write_gs2(tmp_path / "d", gemma_scope_arrays(d_out=8), {"architecture": "jump_relu"})
    with pytest.raises(CorruptFileError, match="needs its input and output hook names"):
        read_sae(transcoder)


# ----------------------------------------------------------------------------- sparsify
def test_sparsify_topk_sae_matches_sparse_coder_encode_decode(tmp_path):
    t = sparsify_tensors()
    folder = write_sparsify(tmp_path / "layers.2", t)
    converted = read_sae(folder)
    sae, x = converted.sae, inputs()
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.hook_name, sae.cfg.apply_b_dec_to_input) == (
        "topk", K, "blocks.2.hook_resid_post", True)
    # SparseCoder.encode: top k of ReLU((x - b_dec) encoder.weightᵀ + bias); decode: f W_dec + b_dec
    acts = dense_topk(torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"]), K)
    close(sae.encode(x), acts)
    close(sae.decode(acts), acts @ t["W_dec"] + t["b_dec"])

    back = write_sae(converted, tmp_path / "back" / "layers.2", "sparsify")
    written = load_file(back / "sae.safetensors")
    assert set(written) == set(t) and all(torch.equal(written[k], v) for k, v in t.items())
    assert json.loads((back / "cfg.json").read_text())["k"] == K


def test_sparsify_skip_transcoder_does_not_centre_and_adds_the_skip_term(tmp_path):
    t = sparsify_tensors(skip=True)
    tc = read_sae(write_sparsify(tmp_path / "layers.3.mlp", t, transcode=True, skip_connection=True)).sae
    assert (tc.cfg.hook_name, tc.cfg.hook_name_out, tc.cfg.skip_connection) == (
        "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out", True)
    x = inputs()
    acts = dense_topk(torch.relu(x @ t["encoder.weight"].T + t["encoder.bias"]), K)
    close(tc.encode(x), acts)
    close(tc.reconstruct(x), acts @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].T)
    back = load_file(write_sae(tc, tmp_path / "back", "sparsify") / "sae.safetensors")
    assert all(torch.equal(back[k], v) for k, v in t.items())


def test_sparsify_refusals(tmp_path):
    with pytest.raises(CorruptFileError, match="groupmax"):
        read_sae(write_sparsify(tmp_path / "a", sparsify_tensors(), activation="groupmax"))
    with pytest.raises(CorruptFileError, match="d_in=20"):
        read_sae(write_sparsify(tmp_path / "b", sparsify_tensors(), d_in=20))
    with pytest.raises(CorruptFileError, match="skip terms to transcoders only"):
        read_sae(write_sparsify(tmp_path / "c", sparsify_tensors(skip=True), skip_connection=True))
    bad = {**sparsify_tensors(), "W_dec": rand(D_SAE, 8)}
    with pytest.raises(CorruptFileError, match=r"W_dec has shape \(32, 8\)"):
        read_sae(write_sparsify(tmp_path / "d", bad))


# ----------------------------------------------------------------------------- dictionary_learning
@pytest.mark.parametrize("dict_class", list(DL_ARCH))
def test_dictionary_learning_classes_arrive_as_themselves(tmp_path, dict_class):
    folder = write_dl(tmp_path / "trainer_0", dict_class)
    converted = read_sae(folder)
    sae, x, state = converted.sae, inputs(), dl_state(dict_class)
    assert sae.cfg.architecture == DL_ARCH[dict_class]
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post"
    assert converted.metadata["model_name"] == "EleutherAI/pythia-70m-deduped"
    acts, out = dl_reference(dict_class, state, x)
    close(sae.encode(x), acts)
    close(sae.decode(sae.encode(x)), out)
    if dict_class == "MatryoshkaBatchTopKSAE":
        assert sae.group_ends == [4, 12, 32]

    back = write_sae(converted, tmp_path / "back", "dictionary_learning")
    written = torch.load(back / "ae.pt", weights_only=True)
    assert set(written) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(written[key].to(value.dtype), value)
    assert json.loads((back / "config.json").read_text())["trainer"]["dict_class"] == dict_class


def test_dictionary_learning_without_config_is_recognised_or_refused(tmp_path):
    sae = read_sae(write_dl(tmp_path / "relu", "AutoEncoder", config=False), "dictionary_learning",
                   Hints(hook_name="blocks.0.hook_resid_post")).sae
    assert (sae.cfg.architecture, sae.cfg.hook_name) == ("relu", "blocks.0.hook_resid_post")
    with pytest.raises(CorruptFileError, match="AutoEncoderTopK or BatchTopKSAE"):
        read_sae(write_dl(tmp_path / "topk", "AutoEncoderTopK", config=False))


class Payload:
    """Unpickling it would create a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickles_where_a_state_dict_should_be_are_refused(tmp_path):
    marker = tmp_path / "PWNED"
    cases = {
        "zipped": lambda p: torch.save({**dl_state("AutoEncoder"), "extra": Payload(marker)}, p),
        "module": lambda p: torch.save(torch.nn.Linear(2, 2), p),
        "raw": lambda p: p.write_bytes(pickle.dumps(Payload(marker))),
        "plain": lambda p: p.write_bytes(pickle.dumps({"encoder.weight": [1.0, 2.0]})),
        "lists": lambda p: torch.save({**dl_state("AutoEncoder"), "extra": [1, 2]}, p),
    }
    for name, write in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        write(folder / "ae.pt")
        with pytest.raises(CorruptFileError, match="refused to unpickle|not a PyTorch state-dict|not a state dict") as err:
            read_sae(folder, "dictionary_learning", Hints(hook_name="blocks.0.hook_resid_post"))
        assert "weights_only=False" not in str(err.value)
    assert not marker.exists()


def test_dictionary_learning_shape_and_buffer_errors(tmp_path):
    state = dl_state("AutoEncoderTopK")
    state["decoder.weight"] = rand(D_IN, D_SAE + 1)
    with pytest.raises(CorruptFileError, match=r"decoder.weight has shape \(16, 33\), expected \(16, 32\)"):
        read_sae(write_dl(tmp_path / "a", "AutoEncoderTopK", state))
    state = {**dl_state("MatryoshkaBatchTopKSAE"), "group_sizes": torch.tensor([4, 8, 10])}
    with pytest.raises(CorruptFileError, match="group_sizes"):
        read_sae(write_dl(tmp_path / "b", "MatryoshkaBatchTopKSAE", state))
    with pytest.raises(CorruptFileError, match="transcoders"):
        write_sae(make_sae(SAEConfig("relu", D_IN, D_SAE, hook_name="a", hook_name_out="b")), tmp_path / "c",
                  "dictionary_learning")


# ----------------------------------------------------------------------------- SAELens folders
def randomised(sae):
    """Non-trivial values in every 1-D parameter (biases, thresholds)."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.rand(p.shape, generator=gen) * 0.2 if name == "threshold"
                        else torch.randn(p.shape, generator=gen) * 0.1)
    if hasattr(sae, "threshold_ema"):
        sae.threshold.fill_(0.05)
    return sae.eval()


CODERS = [(arch, {}) for arch in architectures()] + [
    ("relu", {"hook_name_out": "blocks.1.hook_mlp_out"}),
    ("topk", {"hook_name_out": "blocks.1.hook_mlp_out", "skip_connection": True}),
    ("jumprelu", {"hook_name_out": "blocks.1.hook_mlp_out", "d_out": 12}),
    ("batchtopk", {"hook_name_out": "blocks.1.hook_mlp_out", "skip_connection": True}),
]


@pytest.mark.parametrize(("arch", "extra"), CODERS, ids=[f"{a}-{'tc' if e else 'sae'}" for a, e in CODERS])
def test_saelens_folders_of_every_architecture_arrive_as_themselves(tmp_path, arch, extra):
    options = {"k": K} if arch in ("topk", "batchtopk", "matryoshka_batchtopk") else {}
    sae = randomised(make_sae(SAEConfig(arch, D_IN, D_SAE, hook_name="blocks.1.hook_resid_mid", **options, **extra),
                              seed=2))
    folder = write_sae(sae, tmp_path / "sae")
    assert detect_format(folder) == "saelens"
    back = read_sae(folder).sae
    assert back.cfg == sae.cfg
    x = inputs()
    close(back.encode(x), sae.encode(x))
    close(back.reconstruct(x), sae.reconstruct(x))


def test_saelens_native_folders_old_topk_and_skip_transcoders(tmp_path):
    sae = randomised(make_sae(SAEConfig("topk", D_IN, D_SAE, hook_name="blocks.4.hook_resid_post", k=K), seed=2))
    folder = write_sae(sae, tmp_path / "old")
    weights = load_file(folder / "sae_weights.safetensors")
    # a pre-6 SAELens cfg.json of a TopK SAE (the SAELens #553 case: it was read as ReLU)
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "hook_name": "blocks.4.hook_resid_post",
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K}, "apply_b_dec_to_input": True,
        "normalize_activations": "none", "model_name": "gpt2-small"}))
    back = read_sae(folder).sae
    assert (back.cfg.architecture, back.cfg.k) == ("topk", K)
    close(back.encode(inputs()), sae.encode(inputs()))
    assert set(weights) == {"W_enc", "W_dec", "b_enc", "b_dec"}

    skip = randomised(make_sae(SAEConfig("jumprelu", D_IN, D_SAE, hook_name="blocks.1.hook_resid_mid",
                                         hook_name_out="blocks.1.hook_mlp_out", skip_connection=True), seed=4))
    native = write_sae(skip, tmp_path / "skip")
    cfg = json.loads((native / "cfg.json").read_text())
    cfg.pop("saelab")  # as SAELens writes it
    (native / "cfg.json").write_text(json.dumps(cfg))
    if cfg["architecture"] in from_saelens_architecture():
        close(read_sae(native).sae.reconstruct(inputs()), skip.reconstruct(inputs()))
    else:
        with pytest.raises(CorruptFileError, match=cfg["architecture"]):
            read_sae(native)


# ----------------------------------------------------------------------------- the registry
def test_the_shipped_registry_validates():
    data = registry_module.registry_data()
    known = releases(installed_saelens=False)
    assert set(known) == set(data["releases"])
    for name, raw in data["releases"].items():
        release = known[name]
        assert raw["format"] in FORMATS and raw["model"] in data["models"]
        assert len(release.saes) == len(raw["saes"])
        for sae in release.saes.values():
            assert sae.architecture in architectures() and sae.path and sae.repo_id and sae.d_in
            for hook in filter(None, (sae.hook_name, sae.hook_name_out)):
                layer = int(hook.split(".")[1])
                assert layer < data["models"][sae.model]["n_layers"]
            if sae.kind != "sae":
                assert sae.hook_name_out and sae.d_out
    names = {r.name for r in list_releases(model="google/gemma-3-270m")}
    assert {"gemma-scope-2-270m-pt-res", "gemma-scope-2-270m-pt-att", "gemma-scope-2-270m-pt-mlp",
            "gemma-scope-2-270m-pt-transcoders"} <= names
    assert release_info("gpt2-small-res-jb", "blocks.8.hook_resid_pre").n_params == 768 * 24576


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r["saes"][0].pop("path"), "missing path"),
    (lambda r: r["saes"][0].update(architecture="sparse_magic"), "architecture='sparse_magic'"),
    (lambda r: r["saes"][0].update(hook_name="blocks.99.hook_resid_post"), "layer 99 does not exist"),
    (lambda r: r.update(format="onnx"), "format='onnx'"),
    (lambda r: r["saes"].append(dict(r["saes"][0])), "listed twice"),
])
def test_bad_registry_data_is_refused(change, message):
    data = json.loads(json.dumps(registry_module.registry_data()))
    change(data["releases"]["gpt2-small-res-jb"])
    with pytest.raises(ConfigError, match=message):
        registry_module.parse_registry(data)


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UnknownReleaseError, match="did you mean gpt2-small-res-jb"):
        release_info("gpt2-small-res-jbb", "blocks.8.hook_resid_pre")
    with pytest.raises(UnknownReleaseError, match="did you mean layer_12_width_16k_l0_medium"):
        load_sae("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medum")
    with pytest.raises(UnknownReleaseError, match="gemma-3-270m"):
        list_releases(model="gemma-3-27m")


# ----------------------------------------------------------------------------- loading by release and id
TINY_MODEL = {"hf_id": "org/tiny-lm", "n_layers": 4, "d_model": D_IN, "n_heads": 2, "d_head": 8}


def tiny_release(fmt, arch, sae_id, path, hook="blocks.1.hook_resid_post", d_sae=D_SAE, **extra):
    return {"repo_id": f"org/tiny-{fmt}", "model": "tiny", "format": fmt, "architecture": arch, "d_in": D_IN,
            "saes": [{"id": sae_id, "path": path, "hook_name": hook, "d_sae": d_sae, "l0": 4.0,
                      "neuronpedia_id": f"tiny/{sae_id}", **extra}]}


TINY = {"schema_version": 1, "models": {"tiny": TINY_MODEL}, "releases": {
    "tiny-gs2-res": tiny_release("gemma_scope_safetensors", "jumprelu", "layer_1_width_32_l0_medium",
                                 "resid_post/layer_1_width_32_l0_medium"),
    "tiny-gs-res": tiny_release("gemma_scope_npz", "jumprelu", "layer_1/width_32/average_l0_4",
                                "layer_1/width_32/average_l0_4"),
    "tiny-sparsify": tiny_release("sparsify", "topk", "layers.1", "layers.1"),
    "tiny-dl": tiny_release("dictionary_learning", "batchtopk", "trainer_0", "resid_post_layer_1/trainer_0",
                            d_sae=None),
    "tiny-dl-claims-topk": tiny_release("dictionary_learning", "topk", "trainer_1", "resid_post_layer_1/trainer_1"),
    "tiny-too-narrow": tiny_release("sparsify", "topk", "layers.2", "layers.2", d_sae=64),
}}


@pytest.fixture
def tiny_registry(monkeypatch):
    monkeypatch.setattr(registry_module, "registry_data", lambda: json.loads(json.dumps(TINY)))
    registry_module.shipped_releases.cache_clear()
    registry_module.models.cache_clear()
    yield
    registry_module.shipped_releases.cache_clear()
    registry_module.models.cache_clear()


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """``snapshot_download``/``hf_hub_download`` answering from local folders: repo id -> tmp_path/repo."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append(("snapshot", repo_id, tuple(allow_patterns or ())))
        return str(tmp_path / "hub" / repo_id)

    def hf_hub_download(repo_id, filename, revision=None, **kw):
        calls.append(("file", repo_id, filename))
        path = tmp_path / "hub" / repo_id / filename
        if not path.exists():
            raise FileNotFoundError(filename)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return tmp_path / "hub", calls


def test_load_sae_by_release_and_id_for_every_format(tiny_registry, fake_hub):
    hub, calls = fake_hub
    x = inputs()
    gs = gemma_scope_arrays()
    write_gs2(hub / "org/tiny-gemma_scope_safetensors/resid_post/layer_1_width_32_l0_medium", gs,
              {"architecture": "jump_relu", "hf_hook_point_in": "model.layers.1.output"})
    write_npz(hub / "org/tiny-gemma_scope_npz/layer_1/width_32/average_l0_4", gs)
    t = sparsify_tensors()
    write_sparsify(hub / "org/tiny-sparsify/layers.1", t)
    write_dl(hub / "org/tiny-dictionary_learning/resid_post_layer_1/trainer_0", "BatchTopKSAE")

    for release, sae_id in (("tiny-gs2-res", "layer_1_width_32_l0_medium"), ("tiny-gs-res", "layer_1/width_32/average_l0_4")):
        sae, info = load_sae_with_info(release, sae_id, dtype="float64")
        assert (sae.cfg.architecture, sae.cfg.hook_name, sae.cfg.dtype) == ("jumprelu", "blocks.1.hook_resid_post",
                                                                           "float64")
        close(sae.reconstruct(x.double()).float(), jumprelu_reference(gs, x)[1])
        assert info.metadata["neuronpedia_id"] == f"tiny/{sae_id}" and info.metadata["model_name"] == "org/tiny-lm"
    topk = load_sae("tiny-sparsify", "layers.1")
    close(topk.encode(x), dense_topk(torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"]), K))
    batch = load_sae("tiny-dl", "trainer_0")
    assert batch.cfg.architecture == "batchtopk"
    close(batch.encode(x), dl_reference("BatchTopKSAE", dl_state("BatchTopKSAE"), x)[0])
    # only the one SAE's files were asked for
    assert ("snapshot", "org/tiny-sparsify", ("layers.1/cfg.json", "layers.1/sae.safetensors")) in calls
    assert ("file", "org/tiny-gemma_scope_npz", "layer_1/width_32/average_l0_4/params.npz") in calls


def test_files_that_disagree_with_the_registry_are_refused(tiny_registry, fake_hub):
    hub, _ = fake_hub
    write_dl(hub / "org/tiny-dictionary_learning/resid_post_layer_1/trainer_1", "AutoEncoder")
    with pytest.raises(CorruptFileError, match="describe a relu SAE, but the registry records topk"):
        load_sae("tiny-dl-claims-topk", "trainer_1")
    write_sparsify(hub / "org/tiny-sparsify/layers.2", sparsify_tensors())
    with pytest.raises(CorruptFileError, match="d_sae=32.*registry has d_sae=64; the shapes do not fit"):
        load_sae("tiny-too-narrow", "layers.2")
    with pytest.raises(HubError, match="no layers.1/cfg.json"):
        load_sae("tiny-sparsify", "layers.1")  # nothing in the stand-in repo


def hf_cache_snapshot(cache, repo_id):
    """A Hugging Face cache entry (models--org--name/refs/main -> snapshots/<hash>), as huggingface_hub lays it out."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit



def test_offline_loads_from_the_cache_and_an_empty_cache_is_a_clear_error(tiny_registry, offline_cache):
    with pytest.raises(HubError, match=r"not in the Hugging Face cache .*HF_HUB_OFFLINE=1"):
        load_sae("tiny-gs2-res", "layer_1_width_32_l0_medium")
    arrays = gemma_scope_arrays()
    snapshot = hf_cache_snapshot(offline_cache, "org/tiny-gemma_scope_safetensors")
    write_gs2(snapshot / "resid_post/layer_1_width_32_l0_medium", arrays, {"architecture": "jump_relu"})
    sae = load_sae("tiny-gs2-res", "layer_1_width_32_l0_medium")
    close(sae.reconstruct(inputs()), jumprelu_reference(arrays, inputs())[1])
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1"):
        load_sae("tiny-sparsify", "layers.1")


@pytest.mark.slow
def test_gemma_scope_2_shaped_folder_loads_by_release_and_id_from_a_local_cache(offline_cache):
    """A saelab JumpReLU SAE of Gemma 3 270M's width, written as Gemma Scope 2 files in a cache."""
    entry = release_info("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")
    sae = randomised(make_sae(SAEConfig("jumprelu", entry.d_in, entry.d_sae, hook_name=entry.hook_name), seed=0))
    snapshot = hf_cache_snapshot(offline_cache, entry.repo_id)
    write_sae(sae, snapshot / entry.path, "gemma_scope_safetensors")
    loaded, info = load_sae_with_info(entry.release, entry.sae_id)
    x = rand(8, entry.d_in, seed=5, scale=2.0)
    close(loaded.reconstruct(x), sae.reconstruct(x))
    assert info.metadata["neuronpedia_id"] == "gemma-3-270m/12-gemmascope-2-res-16k"


def test_saelens_yaml_adds_releases_and_ids(tmp_path, fake_hub):
    import yaml

    path = tmp_path / "pretrained_saes.yaml"
    path.write_text(yaml.safe_dump({"SAE_LOOKUP": {
        "tiny-saelens": {"repo_id": "org/tiny-saelens", "model": "tiny", "conversion_func": None,
                         "saes": [{"id": "blocks.1.hook_resid_pre", "path": "blocks.1.hook_resid_pre", "l0": 7}]},
        "tiny-hook-z": {"repo_id": "org/z", "model": "tiny", "conversion_func": "connor_rob_hook_z",
                        "saes": [{"id": "blocks.0.hook_z", "path": "z.pt"}]},
        "gemma-scope-2b-pt-res": {"repo_id": "google/gemma-scope-2b-pt-res", "model": "gemma-2-2b",
                                  "conversion_func": "gemma_2",
                                  "saes": [{"id": "layer_20/width_16k/average_l0_99", "path": "layer_20/width_16k/average_l0_99", "l0": 99}]},
    }}))
    known = releases(path)
    assert known["tiny-saelens"].saes["blocks.1.hook_resid_pre"].hook_name == "blocks.1.hook_resid_pre"
    added = known["gemma-scope-2b-pt-res"].saes["layer_20/width_16k/average_l0_99"]
    assert (added.format, added.architecture, added.l0) == ("gemma_scope_npz", "jumprelu", 99.0)
    with pytest.raises(Exception, match="connor_rob_hook_z"):
        load_sae("tiny-hook-z", "blocks.0.hook_z", saelens_yaml=path)
    hub, _ = fake_hub
    sae = randomised(make_sae(SAEConfig("relu", D_IN, D_SAE, hook_name="blocks.1.hook_resid_pre"), seed=7))
    write_sae(sae, hub / "org/tiny-saelens/blocks.1.hook_resid_pre")
    close(load_sae("tiny-saelens", "blocks.1.hook_resid_pre", saelens_yaml=path).encode(inputs()),
          sae.encode(inputs()))
    path.write_text("- not\n- a registry\n")
    with pytest.raises(CorruptFileError, match="mapping of release names"):
        releases(path)


# ----------------------------------------------------------------------------- the command line
def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def test_cli_list_info_convert_and_fetch(tmp_path, capsys, tiny_registry, fake_hub):
    code, out, _ = run_cli(capsys, "sae", "list", "--json")
    assert code == 0 and {r["release"] for r in json.loads(out)} == set(TINY["releases"])
    code, out, _ = run_cli(capsys, "sae", "info", "tiny-sparsify", "layers.1", "--json")
    info = json.loads(out)
    assert (info["parameters"], info["hook_name"], info["architecture"]) == (D_IN * D_SAE, "blocks.1.hook_resid_post",
                                                                             "topk")
    code, out, _ = run_cli(capsys, "sae", "info", "tiny-sparsify")
    assert code == 0 and "layers.1" in out
    code, _, err = run_cli(capsys, "sae", "info", "tiny-sparsfy", "layers.1")
    assert code == 2 and "did you mean tiny-sparsify" in err

    source = write_dl(tmp_path / "downloaded" / "trainer_0", "JumpReluAutoEncoder")
    code, out, _ = run_cli(capsys, "sae", "convert", str(source / "ae.pt"), "--out", str(tmp_path / "converted"),
                           "--json")
    assert code == 0 and json.loads(out)["architecture"] == "jumprelu"
    folder_sae = load_folder(tmp_path / "converted")
    acts, _ = dl_reference("JumpReluAutoEncoder", dl_state("JumpReluAutoEncoder"), inputs())
    close(folder_sae.encode(inputs()), acts)

    hub, _ = fake_hub
    write_sparsify(hub / "org/tiny-sparsify/layers.1", sparsify_tensors())
    code, out, _ = run_cli(capsys, "sae", "fetch", "tiny-sparsify", "layers.1", "--out", str(tmp_path / "fetched"),
                           "--json")
    assert code == 0
    cfg = json.loads((tmp_path / "fetched" / "cfg.json").read_text())
    assert cfg["metadata"]["neuronpedia_id"] == "tiny/layers.1"
    assert cfg["saelab"]["pretrained"]["release"] == "tiny-sparsify"
    assert load_folder(tmp_path / "fetched").cfg.architecture == "topk"


def test_convert_refuses_writing_over_its_input(tmp_path):
    folder = write_sparsify(tmp_path / "layers.0", sparsify_tensors())
    with pytest.raises(ConfigError, match="is the input folder"):
        convert(folder, folder, to="sparsify")


def test_docs_list_every_release_and_format():
    text = DOCS.read_text()
    missing = [name for name in (*releases(installed_saelens=False), *FORMATS) if f"`{name}`" not in text]
    assert not missing, f"docs/PRETRAINED.md does not mention {missing}"


def test_format_modules_document_what_they_refuse():
    assert "groupmax" in sparsify.__doc__ and "weights_only" in dictionary_learning.__doc__
    assert gemma_scope.tl_hook("model.layers.4.output") == "blocks.4.hook_resid_post"
    assert gemma_scope.hf_hook("blocks.4.hook_mlp_out") == "model.layers.4.post_feedforward_layernorm.output"
