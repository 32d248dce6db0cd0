"""The sites transcoders read: ``ln1.hook_normalized``, ``hook_mlp_in`` and ``ln2.hook_normalized`` on
tiny models of every family and the toy model (capture, edit, shapes, order, errors), and a toy
transcoder ``blocks.1.ln2.hook_normalized -> blocks.1.hook_mlp_out`` spliced with its error term."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from saelab.models import LoadedModel, UnknownHookError, load_model
from saelab.models import hook_points as H
from saelab.models.hooking import FORWARD_ORDER
from saelab.sae import SAEConfig, make_sae
from saelab.splicing import (
    SAEModelMismatchError,
    Splice,
    check_sae_fits,
    ordinary_token_mask,
    run_spliced,
    spliced,
    spliced_logits,
)

SEQ = 12
NEW_KINDS = (H.LN1_NORMALIZED, H.MLP_IN, H.LN2_NORMALIZED)
Edit = Callable[[torch.Tensor], torch.Tensor]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(every_family) -> LoadedModel:
    """Each tiny family from its config, and the toy model."""
    return every_family


@pytest.fixture(scope="module")
def toy() -> LoadedModel:
    return load_model("toy")


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    """``[2, SEQ]`` ids valid in every tiny vocabulary (97) and the toy one."""
    return torch.randint(3, 97, (2, SEQ), generator=torch.Generator().manual_seed(0))


def names(layer: int, *kinds: str) -> list[str]:
    return [f"blocks.{layer}.{kind}" for kind in kinds]


def mlp_input_residual(lm: LoadedModel) -> str:
    """The residual hook the MLP's norm reads: resid_pre with parallel attention (GPT-NeoX), else resid_mid."""
    return H.RESID_PRE if lm.adapter.parallel_attn_mlp else H.RESID_MID


def mlp_contribution(lm: LoadedModel, layer: int, normalized: torch.Tensor) -> torch.Tensor:
    """What block ``layer`` adds to the residual from the MLP's input ``[batch, pos, d_model]``: the MLP,
    then (Gemma 2/3) its post-norm or (GPT-NeoX) its dropout."""
    block = lm.adapter.blocks()[layer]
    out = block.mlp(normalized)
    after = lm.adapter.mlp_contribution_module(block)
    return out if after is block.mlp else after(out)


def shifted(x: torch.Tensor) -> torch.Tensor:
    """A deterministic change of a ``[batch, pos, d_model]`` value: ``1.5 x + noise``."""
    return 1.5 * x + torch.randn(x.shape, generator=torch.Generator().manual_seed(3))


def run(lm: LoadedModel, tokens: torch.Tensor, capture: list[str], edits: dict[str, Edit] | None = None):
    """Logits ``[batch, pos, d_vocab]`` and captured values of one forward with ``edits``."""
    with torch.no_grad(), lm.hooks(edits=edits, capture=capture) as session:
        logits = lm.model(tokens).logits
    return logits, session.cache


# ------------------------------------------------------------------------------ names and shapes
def test_the_new_hooks_are_listed_shaped_d_model_and_ordered(lm):
    for kind in NEW_KINDS:
        name = f"blocks.{lm.n_layers - 1}.{kind}"
        assert name in lm.hook_names()
        assert lm.hook_shape(name) == (lm.d_model,) and lm.hook_d_in(name) == lm.d_model
    order = FORWARD_ORDER
    assert order[H.RESID_PRE] < order[H.LN1_NORMALIZED] < min(order[k] for k in (H.ATTN_Q, H.ATTN_K, H.ATTN_V))
    assert order[H.RESID_MID] < order[H.MLP_IN] < order[H.LN2_NORMALIZED] < order[H.MLP_POST]


def test_capturing_them_gives_batch_pos_d_model_and_leaves_logits_alone(lm, tokens):
    hooks = [n for layer in range(lm.n_layers) for n in names(layer, *NEW_KINDS)]
    logits, cache = lm.run_with_cache(tokens, hooks)
    assert torch.equal(logits, lm.model(tokens).logits)
    assert all(cache[n].shape == (2, SEQ, lm.d_model) for n in hooks)


# --------------------------------------------------------------------------------------- capture
def test_the_norm_hooks_are_the_family_norms_of_the_residual(lm, tokens):
    resid = mlp_input_residual(lm)
    for layer in range(lm.n_layers):
        hooks = names(layer, H.RESID_PRE, H.RESID_MID, *NEW_KINDS, H.ATTN_Q)
        _, cache = lm.run_with_cache(tokens, hooks)
        pre, mid, ln1, mlp_in, ln2, q = (cache[n] for n in hooks)
        assert torch.equal(mlp_in, cache[f"blocks.{layer}.{resid}"])
        if lm.adapter.parallel_attn_mlp:  # the MLP reads the block input, not resid_mid
            assert not torch.allclose(mlp_in, mid)
        with torch.no_grad():
            assert torch.equal(ln2, lm.adapter.norm_module("mlp", layer)(mlp_in))
            assert torch.equal(ln1, lm.adapter.norm_module("attn", layer)(pre))
        # the same norms as data (float32): saelab's NormSpec agrees with the module
        torch.testing.assert_close(lm.norm("mlp", layer)(mlp_in), ln2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lm.norm("attn", layer)(pre), ln1, rtol=1e-5, atol=1e-5)
        # queries are projected from ln1.hook_normalized
        q_from_ln1 = torch.einsum("bpm,hmd->bphd", ln1, lm.W_Q(layer)) + lm.b_Q(layer)
        torch.testing.assert_close(q_from_ln1, q, rtol=1e-5, atol=1e-5)


def test_the_mlp_of_ln2_hook_normalized_is_hook_mlp_out(lm, tokens):
    for layer in range(lm.n_layers):
        hooks = names(layer, H.LN2_NORMALIZED, H.MLP_OUT)
        _, cache = lm.run_with_cache(tokens, hooks)
        with torch.no_grad():
            assert torch.equal(mlp_contribution(lm, layer, cache[hooks[0]]), cache[hooks[1]])


# ----------------------------------------------------------------------------------------- edits
@pytest.mark.parametrize("kind", NEW_KINDS)
def test_identity_edits_change_nothing(lm, tokens, kind):
    plain = lm.model(tokens).logits
    for layer in range(lm.n_layers):
        for identity in (lambda x: x, lambda x: x.clone(), lambda x: None):
            logits, _ = run(lm, tokens, [], {f"blocks.{layer}.{kind}": identity})
            assert torch.equal(logits, plain), f"blocks.{layer}.{kind}"


def test_editing_ln2_hook_normalized_changes_only_what_the_mlp_sees(lm, tokens):
    layer = min(1, lm.n_layers - 1)
    untouched = names(layer, H.RESID_PRE, H.ATTN_OUT, H.RESID_MID, H.MLP_IN)
    ln2, mlp_out, post = names(layer, H.LN2_NORMALIZED, H.MLP_OUT, H.RESID_POST)
    _, clean = run(lm, tokens, [*untouched, ln2, mlp_out, post])
    logits, cache = run(lm, tokens, [*untouched, ln2, mlp_out, post], {ln2: shifted})
    for name in untouched:
        assert torch.equal(cache[name], clean[name]), name
    torch.testing.assert_close(cache[ln2], shifted(clean[ln2]), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(cache[mlp_out], mlp_contribution(lm, layer, shifted(clean[ln2])),
                                   rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cache[mlp_out], clean[mlp_out])
    # the residual stream changes by the MLP's change alone
    torch.testing.assert_close(cache[post] - clean[post], cache[mlp_out] - clean[mlp_out], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits, lm.model(tokens).logits)


def test_editing_hook_mlp_in_changes_the_mlps_input_before_its_norm(lm, tokens):
    layer = min(1, lm.n_layers - 1)
    mid, mlp_in, ln2, mlp_out, post = names(layer, H.RESID_MID, H.MLP_IN, H.LN2_NORMALIZED, H.MLP_OUT,
                                            H.RESID_POST)
    _, clean = run(lm, tokens, [mid, mlp_in, mlp_out, post])
    _, cache = run(lm, tokens, [mid, mlp_in, ln2, mlp_out, post], {mlp_in: shifted})
    assert torch.equal(cache[mid], clean[mid])  # the residual stream is not written
    with torch.no_grad():
        assert torch.equal(cache[ln2], lm.adapter.norm_module("mlp", layer)(shifted(clean[mlp_in])))
    torch.testing.assert_close(cache[post] - clean[post], cache[mlp_out] - clean[mlp_out], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(cache[mlp_out], clean[mlp_out])


def test_editing_ln1_hook_normalized_changes_what_attention_reads(lm, tokens):
    layer = min(1, lm.n_layers - 1)
    pre, ln1, q, attn_out, mid, mlp_in = names(layer, H.RESID_PRE, H.LN1_NORMALIZED, H.ATTN_Q, H.ATTN_OUT,
                                               H.RESID_MID, H.MLP_IN)
    _, clean = run(lm, tokens, [pre, ln1, attn_out, mlp_in])
    _, cache = run(lm, tokens, [pre, q, attn_out, mid, mlp_in], {ln1: shifted})
    assert torch.equal(cache[pre], clean[pre])
    expected_q = torch.einsum("bpm,hmd->bphd", shifted(clean[ln1]), lm.W_Q(layer)) + lm.b_Q(layer)
    torch.testing.assert_close(cache[q], expected_q, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cache[attn_out], clean[attn_out])
    if lm.adapter.parallel_attn_mlp:  # the MLP reads resid_pre, which attention does not change
        assert torch.equal(cache[mlp_in], clean[mlp_in])
    else:
        assert torch.equal(cache[mlp_in], cache[mid])


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("name", "message"), [
    ("blocks.0.ln2.hook_normalised", r"unknown hook name .*did you mean blocks\.0\.ln2\.hook_normalized"),
    ("blocks.0.ln3.hook_normalized", r"unknown hook name .*valid hook names are .*blocks\.\{L\}\.ln2\.hook_normalized"),
    ("blocks.9.hook_mlp_in", r"layer 9 does not exist in toy, which has 4 blocks"),
    ("blocks.0.mlp.hook_in", r"unknown hook name .*blocks\.\{L\}\.hook_mlp_in"),
])
def test_unknown_and_invalid_names_still_fail_clearly(toy, name, message):
    with pytest.raises(UnknownHookError, match=message):
        toy.hook_shape(name)
    with pytest.raises(UnknownHookError, match=message):
        toy.run_with_cache(torch.zeros(1, 3, dtype=torch.long), [name])


# ---------------------------------------------------------------------------- a toy transcoder
SOURCE, TARGET = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


@pytest.fixture(scope="module")
def transcoder(toy):
    """A random TopK transcoder ln2.hook_normalized -> hook_mlp_out of toy block 1."""
    sae = make_sae(SAEConfig("topk", toy.d_model, 256, hook_name=SOURCE, hook_name_out=TARGET, k=16), seed=0)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    return sae.eval()


@pytest.fixture(scope="module")
def toy_ids(toy) -> torch.Tensor:
    ids = torch.randint(3, toy.d_vocab, (3, 20), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = toy.bos_token_id
    return ids


def test_a_transcoder_on_ln2_hook_normalized_reproduces_clean_logits_with_its_error_term(toy, transcoder, toy_ids):
    assert check_sae_fits(toy, transcoder) == (SOURCE, TARGET)
    clean = toy.model(toy_ids).logits
    torch.testing.assert_close(spliced_logits(toy, transcoder, toy_ids, add_error=True), clean, rtol=0, atol=1e-5)
    torch.testing.assert_close(run_spliced(toy, toy_ids, [Splice(transcoder, add_error=True)]), clean,
                               rtol=0, atol=1e-5)
    # without the error term the MLP's output becomes the prediction from the MLP's normalised input
    _, before = run(toy, toy_ids, [SOURCE])
    with torch.no_grad(), spliced(toy, [Splice(transcoder)]), toy.hooks(capture=[SOURCE, TARGET]) as session:
        replaced = toy.model(toy_ids).logits
    assert torch.equal(session.cache[SOURCE], before[SOURCE])  # read, not written
    torch.testing.assert_close(session.cache[TARGET], transcoder.reconstruct(before[SOURCE]), rtol=0, atol=1e-6)
    assert (replaced - clean).abs().max() > 1e-3
    # spliced_logits splices every ordinary token: the hand-written edit of hook_mlp_out there
    ordinary = ordinary_token_mask(toy_ids, toy.special_token_ids)[..., None]
    x = before[SOURCE]
    by_hand, _ = run(toy, toy_ids, [], {TARGET: lambda y: torch.where(ordinary, transcoder.reconstruct(x), y)})
    torch.testing.assert_close(spliced_logits(toy, transcoder, toy_ids), by_hand, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("source", "target", "ok"), [
    ("blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out", True),
    ("blocks.1.hook_resid_mid", "blocks.1.ln2.hook_normalized", True),
    ("blocks.1.ln1.hook_normalized", "blocks.1.hook_attn_out", True),
    ("blocks.1.hook_mlp_out", "blocks.1.ln2.hook_normalized", False),
    ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_in", False),
    ("blocks.1.ln1.hook_normalized", "blocks.1.hook_resid_pre", False),
])
def test_the_splice_order_check_knows_the_new_sites(toy, source, target, ok):
    sae = make_sae(SAEConfig("topk", toy.d_model, 64, hook_name=source, hook_name_out=target, k=4), seed=0)
    if ok:
        assert check_sae_fits(toy, sae) == (source, target)
    else:
        with pytest.raises(SAEModelMismatchError, match="computes .* first"):
            check_sae_fits(toy, sae)
