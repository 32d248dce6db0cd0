"""DFA by head and by source adds up to the SAE pre-activation on every supported family and the toy model."""

import pytest
import torch

from saelab.attention.dfa import direct_feature_attribution, run_attention
from saelab.attention.geometry import (
    NotAttentionSAEError,
    bind_attention_sae,
    head_attribution,
    linear_encoder,
)
from saelab.errors import SaelabError
from saelab.models import LoadedModel, load_model
from saelab.models.tiny import TINY_FAMILIES, tiny_model, torch_threads
from saelab.sae import SAEConfig, make_sae

REL_TOL = 1e-4


def random_sae(lm, layer, architecture="relu", d_sae=24, seed=0):
    d_in = lm.n_heads * lm.d_head
    extra = {"k": 4} if architecture in ("topk", "batchtopk") else {}
    sae = make_sae(SAEConfig(architecture, d_in=d_in, d_sae=d_sae, hook_name=f"blocks.{layer}.attn.hook_z", **extra),
                   seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero biases so the bias terms are tested too
        for name, p in sae.named_parameters():
            if name.startswith("b_") or name == "r_mag":
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return sae


def close(a, b, scale):
    return abs(a - b) <= REL_TOL * max(abs(b), scale, 1e-6)


def check_dfa_sums(lm, asae, ids, features):
    run = run_attention(asae, ids)
    for feature in features:
        for position in (1, ids.shape[0] - 1):
            r = direct_feature_attribution(asae, ids, feature, position, run=run)
            scale = float(r.by_head.abs().sum()) + abs(r.bias) + abs(r.b_dec_term)
            head_sum = float(r.by_head.sum()) + r.bias + r.b_dec_term
            source_sum = float(r.by_source.sum()) + r.bias + r.b_dec_term
            assert close(head_sum, r.preactivation, scale), (feature, position, head_sum, r.preactivation)
            assert close(source_sum, r.preactivation, scale), (feature, position, source_sum, r.preactivation)
            assert torch.all(r.by_source[:, position + 1:] == 0)  # causal: no future sources


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_dfa_adds_up_on_every_family(family):
    with torch_threads(1):
        lm = LoadedModel.from_hf(tiny_model(family))
        asae = bind_attention_sae(lm, random_sae(lm, layer=1))
        ids = torch.randint(3, 97, (12,), generator=torch.Generator().manual_seed(1))
        check_dfa_sums(lm, asae, ids, features=[0, 5, 17])


@pytest.mark.parametrize("architecture", ["topk", "jumprelu", "gated", "tied"])
def test_dfa_linear_part_of_each_architecture(architecture):
    with torch_threads(1):
        lm = LoadedModel.from_hf(tiny_model("llama"))
        sae = random_sae(lm, layer=2, architecture=architecture)
        asae = bind_attention_sae(lm, sae)
        ids = torch.randint(3, 97, (9,), generator=torch.Generator().manual_seed(2))
        check_dfa_sums(lm, asae, ids, features=[3])
        # where the latent is on, the activation equals the linear pre-activation (not for topk ties)
        run = run_attention(asae, ids)
        enc = linear_encoder(sae)
        flat = run.z.reshape(ids.shape[0], -1)
        acts = sae.encode(flat).double()
        pre = enc.preacts(flat)
        on = acts > 0
        assert torch.allclose(acts[on], pre[on], rtol=1e-4, atol=1e-5)


def test_dfa_on_toy_model():
    lm = load_model("toy")
    asae = bind_attention_sae(lm, random_sae(lm, layer=2, d_sae=64))
    ids, _ = lm.tokenize("the cat sees the dog and the cat sees")
    check_dfa_sums(lm, asae, ids[0], features=[0, 31, 63])


def test_head_attribution_sums_to_one_and_finds_planted_heads():
    d_sae, n_heads, d_head = 6, 4, 8
    W = torch.zeros(d_sae, n_heads, d_head)
    W[0, 2] = 1.0  # latent 0 lives in head 2 only
    W[1, 0], W[1, 3] = 3.0, 1.0  # latent 1: head 0 three times head 3
    W[2:] = torch.randn(4, n_heads, d_head)
    h = head_attribution(W)
    assert torch.allclose(h.sum(-1), torch.ones(d_sae, dtype=h.dtype))
    assert h[0].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert torch.allclose(h[1], torch.tensor([0.75, 0, 0, 0.25], dtype=h.dtype))
    assert torch.allclose(head_attribution(torch.zeros(1, 4, 2)), torch.full((1, 4), 0.25, dtype=h.dtype))


def test_bad_inputs_are_refused_with_clear_errors():
    lm = LoadedModel.from_hf(tiny_model("gpt2"))
    resid = make_sae(SAEConfig("relu", d_in=32, d_sae=8, hook_name="blocks.0.hook_resid_pre"))
    with pytest.raises(NotAttentionSAEError, match="hook_z"):
        bind_attention_sae(lm, resid)
    wrong_width = make_sae(SAEConfig("relu", d_in=16, d_sae=8, hook_name="blocks.0.attn.hook_z"))
    with pytest.raises(NotAttentionSAEError, match="d_in=16"):
        bind_attention_sae(lm, wrong_width)
    asae = bind_attention_sae(lm, random_sae(lm, 0, d_sae=8))
    ids = torch.arange(3, 8)
    with pytest.raises(SaelabError, match="feature=8 is out of range"):
        direct_feature_attribution(asae, ids, 8)
    with pytest.raises(SaelabError, match="position=5 is out of range"):
        direct_feature_attribution(asae, ids, 0, position=5)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_recursive_dfa_splits_the_source_term_exactly(family):
    from saelab.attention.recursive import recursive_dfa

    with torch_threads(1):
        lm = LoadedModel.from_hf(tiny_model(family))
        asae = bind_attention_sae(lm, random_sae(lm, layer=2))
        resid = make_sae(SAEConfig("relu", d_in=lm.d_model, d_sae=40, hook_name="blocks.1.hook_resid_post"), seed=3)
        with torch.no_grad():
            resid.b_dec.normal_(0, 0.2)
            resid.b_enc.fill_(0.1)
        ids = torch.randint(3, 97, (10,), generator=torch.Generator().manual_seed(4))
        r = recursive_dfa(asae, resid, ids, feature=2, dest=9, src=4)
        parts = float(r.scores.sum()) + r.error_term + r.b_dec_term + r.value_bias_term
        scale = float(r.scores.abs().sum()) + abs(r.error_term) + abs(r.b_dec_term) + abs(r.value_bias_term)
        assert close(parts, r.source_term, scale), (parts, r.source_term)
        assert r.exact and "frozen" in r.to_json()["approximation"]


def test_recursive_dfa_from_an_earlier_attention_sae_and_refusals():
    from saelab.attention.recursive import recursive_dfa

    lm = LoadedModel.from_hf(tiny_model("gpt2"))
    asae = bind_attention_sae(lm, random_sae(lm, layer=2))
    earlier = random_sae(lm, layer=0, d_sae=16)
    ids = torch.randint(3, 97, (8,), generator=torch.Generator().manual_seed(5))
    r = recursive_dfa(asae, earlier, ids, feature=1)
    assert not r.exact and r.error_term is None and r.scores.shape == (16,)
    assert r.src <= r.dest == 7
    later = random_sae(lm, layer=2, d_sae=16)
    with pytest.raises(SaelabError, match="cannot feed layer 2"):
        recursive_dfa(asae, later, ids, feature=1)
