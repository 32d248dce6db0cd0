"""Hook adapters on randomly initialised models of every supported family (no downloads) and on the
bundled toy model (``load_model("toy")``)."""

from __future__ import annotations

import pytest
import torch

from saelab.errors import SaelabError
from saelab.models import LoadedModel, UnknownHookError
from saelab.models.hook_points import HOOK_KINDS

SEQ = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(every_family) -> LoadedModel:
    """Each tiny family from its config, and the toy model."""
    return every_family


def middle_and_last(lm: LoadedModel) -> tuple[int, int]:
    return min(1, lm.n_layers - 1), lm.n_layers - 1


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(3, 97, (2, SEQ), generator=torch.Generator().manual_seed(0))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_capturing_every_hook_leaves_logits_as_the_plain_model(lm, tokens):
    logits, cache = lm.run_with_cache(tokens, lm.hook_names())
    assert set(cache) == set(lm.hook_names())
    # capturing hook_pattern runs the family's eager attention instead of sdpa: float rounding only
    torch.testing.assert_close(logits, lm.model(tokens).logits, rtol=1e-5, atol=1e-5)
    for name, value in cache.items():
        if "pattern" in name:
            assert value.shape == (2, lm.n_heads, SEQ, SEQ)
        else:
            assert value.shape == (2, SEQ, *lm.hook_shape(name)), name


def test_sum_over_heads_of_z_through_W_O_equals_attn_out(lm, tokens):
    _, cache = lm.run_with_cache(tokens, [f"blocks.{L}.{k}" for L in range(lm.n_layers)
                                          for k in ("attn.hook_z", "hook_attn_out")])
    for layer in range(lm.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        per_head = torch.einsum("bphd,hdm->bphm", z, lm.W_O(layer))
        out = per_head.sum(2) + lm.b_O(layer)
        if lm.attn_out_norm(layer) is not None:  # Gemma 2 normalises the attention output
            out = lm.attn_out_norm(layer)(out)
        assert rel_err(out, cache[f"blocks.{layer}.hook_attn_out"]) <= 1e-5


def test_pattern_rows_sum_to_one_are_causal_and_reproduce_z(lm, tokens):
    for layer in range(lm.n_layers):
        names = [f"blocks.{layer}.attn.hook_{k}" for k in ("pattern", "v", "z")]
        _, cache = lm.run_with_cache(tokens, names)
        pattern, v, z = (cache[n] for n in names)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, lm.n_heads, SEQ), rtol=0, atol=1e-5)
        future = torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), diagonal=1)
        assert pattern[..., future].abs().max() == 0
        window = getattr(lm.adapter.attention_module(layer), "sliding_window", None)
        if isinstance(window, int):  # Mistral / Gemma 2 sliding layers see only the last `window` keys
            too_old = torch.tril(torch.ones(SEQ, SEQ, dtype=torch.bool), diagonal=-window)
            assert pattern[..., too_old].abs().max() == 0
        v = v.repeat_interleave(lm.n_heads // lm.n_kv_heads, dim=2)
        assert rel_err(torch.einsum("bhqk,bkhd->bqhd", pattern, v), z) <= 1e-5


@pytest.mark.parametrize("kind", HOOK_KINDS)
def test_replacing_a_hook_with_its_own_value_leaves_logits_unchanged(lm, tokens, kind):
    plain = lm.model(tokens).logits
    for layer in range(lm.n_layers):
        logits = lm.run_with_hooks(tokens, {f"blocks.{layer}.{kind}": lambda x: x.clone()})
        if kind == "attn.hook_pattern":  # the pattern path runs the family's eager attention
            torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(logits, plain), f"blocks.{layer}.{kind}"


def _perturb(kind: str):
    if kind == "attn.hook_pattern":  # attend uniformly to the causal past
        def uniform(p):
            causal = torch.tril(torch.ones_like(p))
            return causal / causal.sum(-1, keepdim=True)
        return uniform
    return lambda x: x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", HOOK_KINDS)
def test_patched_value_changes_downstream_activations_and_logits(lm, tokens, kind):
    layer, last = middle_and_last(lm)
    upstream, downstream = f"blocks.{layer}.hook_resid_pre", f"blocks.{last}.hook_resid_post"
    _, clean = lm.run_with_cache(tokens, [upstream, downstream])
    with lm.hooks(edits={f"blocks.{layer}.{kind}": _perturb(kind)}, capture=[upstream, downstream]) as session:
        logits = lm.model(tokens).logits
    if kind != "hook_resid_pre":  # upstream untouched (the pattern path runs eager attention: rounding only,
        # up to about 1e-6 relative on values near 1, depending on the CPU's kernels)
        torch.testing.assert_close(session.cache[upstream], clean[upstream],
                                   rtol=1e-5 if kind == "attn.hook_pattern" else 0,
                                   atol=1e-6 if kind == "attn.hook_pattern" else 0)
    assert not torch.allclose(session.cache[downstream], clean[downstream])
    assert not torch.allclose(logits, lm.model(tokens).logits)


def test_written_value_is_what_later_hooks_see(lm, tokens):
    target = torch.randn(2, SEQ, lm.d_model, generator=torch.Generator().manual_seed(2))
    for kind in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"):
        with lm.hooks(edits={f"blocks.0.{kind}": lambda x: target}, capture=[f"blocks.0.{kind}"]) as s:
            lm.model(tokens)
        torch.testing.assert_close(s.cache[f"blocks.0.{kind}"], target, rtol=0, atol=1e-6)
    # a written resid_mid is what the block adds its MLP output to
    with lm.hooks(edits={"blocks.0.hook_resid_mid": lambda x: target},
                  capture=["blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]) as s:
        lm.model(tokens)
    torch.testing.assert_close(s.cache["blocks.0.hook_resid_post"], target + s.cache["blocks.0.hook_mlp_out"],
                               rtol=0, atol=1e-5)


def test_in_place_edits_reach_the_model(lm, tokens):
    def zero_head_0(z):
        z[:, :, 0] = 0

    with lm.hooks(edits={"blocks.0.attn.hook_z": zero_head_0}, capture=["blocks.0.attn.hook_z"]) as s:
        edited = lm.model(tokens).logits
    assert s.cache["blocks.0.attn.hook_z"][:, :, 0].abs().max() == 0
    assert not torch.allclose(edited, lm.model(tokens).logits)


def test_stopping_early_gives_the_same_activations_as_a_full_pass(lm, tokens):
    names = lm.hook_names()
    _, full = lm.run_with_cache(tokens, names)
    for layer in range(lm.n_layers):
        hooks = [n for n in names if n.startswith(f"blocks.{layer}.")]
        logits, cache = lm.run_with_cache(tokens, hooks, stop_at_layer="auto")
        assert logits is None
        for name in hooks:
            assert torch.equal(cache[name], full[name]), name
    name = f"blocks.{lm.n_layers - 1}.hook_resid_pre"
    _, plain = lm.run_with_cache(tokens, [name])  # no pattern hook: the attention the model was loaded with
    logits, cache = lm.run_with_cache(tokens, [name], stop_at_layer=lm.n_layers - 1)
    assert logits is None and torch.equal(cache[name], plain[name])


def test_stop_is_real_later_blocks_do_not_run(lm, tokens):
    ran = []
    handle = lm.adapter.attention_module(lm.n_layers - 1).register_forward_pre_hook(lambda m, a: ran.append(1))
    try:
        lm.run_with_cache(tokens, ["blocks.0.hook_resid_post"], stop_at_layer="auto")
        assert not ran or lm.n_layers == 1
        lm.run_with_cache(tokens, ["blocks.0.hook_resid_post"])
        assert ran
    finally:
        handle.remove()


def test_folded_norms_are_exact(lm, tokens):
    last = lm.n_layers - 1
    layer = min(1, last)
    logits, cache = lm.run_with_cache(tokens, [f"blocks.{last}.hook_resid_post", f"blocks.{layer}.hook_resid_pre",
                                               f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_v"])
    W, b = lm.folded_W_U()
    pre_cap = lm.norm("final").normalize(cache[f"blocks.{last}.hook_resid_post"]) @ W + b
    cap = lm.logit_softcap
    expected = cap * torch.tanh(pre_cap / cap) if cap else pre_cap
    torch.testing.assert_close(expected, logits, rtol=0, atol=1e-4)
    x = lm.norm("attn", layer).normalize(cache[f"blocks.{layer}.hook_resid_pre"])
    W_Q, b_Q = lm.fold_layer_norm(lm.W_Q(layer), lm.b_Q(layer), "attn", layer)
    assert rel_err(torch.einsum("bpm,hmd->bphd", x, W_Q) + b_Q, cache[f"blocks.{layer}.attn.hook_q"]) <= 1e-5
    W_V, b_V = lm.fold_layer_norm(lm.W_V(layer), lm.b_V(layer), "attn", layer)  # expanded per query head
    v = cache[f"blocks.{layer}.attn.hook_v"].repeat_interleave(lm.n_heads // lm.n_kv_heads, dim=2)
    assert rel_err(torch.einsum("bpm,hmd->bphd", x, W_V) + b_V, v) <= 1e-5


def test_attention_implementation_is_restored_and_hooks_removed(lm, tokens):
    config = lm.adapter.attention_module(0).config  # the text config of a multimodal wrapper
    before = config._attn_implementation
    plain = lm.model(tokens).logits
    with lm.hooks(edits={"blocks.0.attn.hook_pattern": lambda p: p * 0 + 1.0 / SEQ}):
        assert config._attn_implementation == "saelab_pattern"
        assert not torch.equal(lm.model(tokens).logits, plain)
    assert config._attn_implementation == before
    assert torch.equal(lm.model(tokens).logits, plain)
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in lm.adapter.blocks())


def test_hooks_apply_during_generate(lm):
    prompt = torch.tensor([[0, 5, 6, 7]])
    plain = lm.model.generate(prompt, max_new_tokens=4, do_sample=False)
    boost = torch.zeros(lm.d_model)
    boost[:] = 50.0 * torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3))
    with lm.hooks(edits={f"blocks.{lm.n_layers - 1}.hook_resid_post": lambda x: x + boost},
                  capture=["blocks.0.hook_resid_pre"]) as session:
        steered = lm.model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert not torch.equal(plain, steered)
    assert session.cache["blocks.0.hook_resid_pre"].shape[-1] == lm.d_model


def test_padding_mask_is_respected_with_and_without_the_pattern_path(lm):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 2, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    plain, _ = lm.run_with_cache(ids, ["blocks.0.hook_resid_pre"], attention_mask=mask)
    with_pattern, cache = lm.run_with_cache(ids, ["blocks.0.attn.hook_pattern"], attention_mask=mask)
    torch.testing.assert_close(with_pattern[1, :3], plain[1, :3], rtol=0, atol=1e-5)
    assert cache["blocks.0.attn.hook_pattern"][1, :, :3, 3:].abs().max() == 0


def test_gradients_flow_through_edits(lm, tokens):
    holder = {}

    def grab(x):
        x = x.detach().requires_grad_(True)
        holder["x"] = x
        return x

    logits = lm.run_with_hooks(tokens, {"blocks.0.attn.hook_z": grab}, grad=True)
    logits[:, -1].logsumexp(-1).sum().backward()
    assert holder["x"].grad is not None and holder["x"].grad.abs().sum() > 0


def test_weights_have_documented_shapes(lm):
    n, d, dh = lm.n_heads, lm.d_model, lm.d_head
    for fn in (lm.W_Q, lm.W_K, lm.W_V):
        assert fn(0).shape == (n, d, dh)
    for fn in (lm.b_Q, lm.b_K, lm.b_V):
        assert fn(0).shape == (n, dh)
    assert lm.W_O(0).shape == (n, dh, d) and lm.b_O(0).shape == (d,)
    assert lm.W_U.shape == (d, lm.d_vocab) and lm.b_U.shape == (lm.d_vocab,)
    assert lm.hook_d_in("blocks.0.attn.hook_z") == n * dh
    with pytest.raises(SaelabError, match=rf"layers 0\.\.{lm.n_layers - 1}"):
        lm.W_O(lm.n_layers)


def test_wrong_hook_names_list_the_valid_ones(lm, tokens):
    with pytest.raises(UnknownHookError, match=rf"blocks\.\{{L\}}\.attn\.hook_z.*L in 0\.\.{lm.n_layers - 1}"):
        lm.run_with_cache(tokens, ["blocks.0.attn.hook_zz"])
    with pytest.raises(UnknownHookError, match="did you mean blocks.0.attn.hook_z"):
        lm.run_with_cache(tokens, ["blocks.0.attn.hook_zz"])
    with pytest.raises(UnknownHookError, match=f"has {lm.n_layers} blocks"):
        lm.run_with_hooks(tokens, {f"blocks.{lm.n_layers}.hook_resid_pre": lambda x: x})
    with pytest.raises(SaelabError, match="stops before"):
        lm.run_with_cache(tokens, ["blocks.0.hook_resid_post"], stop_at_layer=0)
    with pytest.raises(SaelabError, match="returned shape"):
        lm.run_with_hooks(tokens, {"blocks.0.hook_resid_pre": lambda x: x[:, :1]})
