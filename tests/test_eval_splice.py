"""Splicing SAEs into a tiny GPT-2 and the streamed evaluation: identity and error-term checks,
baselines against hand-written hooks, special-token masking, batching invariance, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saelab.data.sources import TokenArraySource, ToySource
from saelab.errors import ConfigError
from saelab.eval.evaluate import EmptyEvaluationSetError, EvalConfig, evaluate_sae, evaluate_saes
from saelab.models import LoadedModel, UnknownHookError
from saelab.sae import SAEConfig, make_sae
from saelab.splicing import (
    SAEModelMismatchError,
    check_sae_fits,
    ordinary_token_mask,
    sae_replacement,
    splice_edit,
    spliced_logits,
    zero_replacement,
)

RESID = "blocks.1.hook_resid_pre"
HOOK_Z = "blocks.1.attn.hook_z"
SOURCE = ToySource(5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(tiny_gpt2_with_toy_tokenizer) -> LoadedModel:
    return tiny_gpt2_with_toy_tokenizer


def identity_sae(hook: str, d_in: int = 32):
    """A ReLU SAE with x̂ = ReLU(x) − ReLU(−x) = x exactly."""
    sae = make_sae(SAEConfig("relu", d_in, 2 * d_in, hook_name=hook))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def random_sae(hook: str, arch: str = "relu", **kwargs):
    return make_sae(SAEConfig(arch, 32, 64, hook_name=hook, **kwargs), seed=1).eval()


def config(**changes) -> EvalConfig:
    return EvalConfig(**{**dict(tokens=200, context_size=24, batch_size=4, progress=False), **changes})


def windows(lm, n=3, size=24) -> torch.Tensor:
    ids = torch.randint(3, lm.d_vocab, (n, size), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = lm.bos_token_id
    ids[1, 10] = lm.bos_token_id  # a document boundary inside a window
    return ids


@pytest.mark.parametrize("hook", [RESID, HOOK_Z])
def test_identity_splice_gives_clean_logits_and_zero_delta_loss(lm, hook):
    sae = identity_sae(hook)
    ids = windows(lm)
    clean = lm.run_with_hooks(ids, {})
    assert torch.equal(spliced_logits(lm, sae, ids), clean)
    m = evaluate_sae(lm, sae, SOURCE, config()).metrics
    assert m["delta_loss"] == pytest.approx(0.0, abs=1e-6) and m["kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["fvu"] == pytest.approx(0.0, abs=1e-9) and m["cosine"] == pytest.approx(1.0)
    assert m["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6) and m["kl_recovered"] == pytest.approx(1.0)
    assert m["l0"] > 0 and m["warnings"] == []


def test_hook_z_splice_equals_a_hand_written_hook_on_the_output_projection(lm):
    sae = random_sae(HOOK_Z)
    ids = windows(lm)
    ordinary = ordinary_token_mask(ids, lm.special_token_ids)
    spliced = spliced_logits(lm, sae, ids)

    def pre_hook(module, args):  # GPT-2's hook_z is the input of attn.c_proj, [batch, pos, n_heads * d_head]
        z = args[0]
        return (torch.where(ordinary[..., None], sae.reconstruct(z), z),)

    handle = lm.model.transformer.h[1].attn.c_proj.register_forward_pre_hook(pre_hook)
    try:
        with torch.no_grad():
            expected = lm.model(ids).logits
    finally:
        handle.remove()
    assert torch.allclose(spliced, expected, atol=1e-5)
    assert not torch.allclose(spliced, lm.run_with_hooks(ids, {}), atol=1e-3)


@pytest.mark.parametrize("hook", [RESID, HOOK_Z])
def test_error_term_added_back_reproduces_the_clean_logits(lm, hook):
    sae = random_sae(hook, "topk", k=4)
    ids = windows(lm)
    clean = lm.run_with_hooks(ids, {})
    change = (spliced_logits(lm, sae, ids) - clean).abs().max()
    residual = (spliced_logits(lm, sae, ids, add_error=True) - clean).abs().max()
    assert residual < 1e-5 and residual < change / 100
    m = evaluate_sae(lm, sae, SOURCE, config()).metrics
    assert m["error_term_max_logit_diff"] < 1e-4 and m["kl_with_error"] < 1e-8
    assert m["ce_with_error"] == pytest.approx(m["ce_clean"], abs=1e-5)
    assert m["kl_with_error"] < m["kl"] / 100  # the SAE alone does change the outputs


def test_splices_leave_special_token_positions_untouched(lm):
    ids = windows(lm)
    ordinary = ordinary_token_mask(ids, lm.special_token_ids)
    assert int((~ordinary).sum()) == 4
    _, clean = lm.run_with_cache(ids, [RESID])
    with lm.hooks(edits={RESID: splice_edit(zero_replacement(), ordinary)}, capture=[RESID]) as session, \
            torch.no_grad():
        lm.model(ids)
    edited = session.cache[RESID]
    assert torch.equal(edited[~ordinary], clean[RESID][~ordinary])
    assert torch.all(edited[ordinary] == 0)


def hand_baselines(lm, hook, token_windows):
    """CE of the clean run and of zero/mean ablation at ordinary tokens, computed without saelab.eval."""
    ids = torch.from_numpy(np.stack(token_windows))
    special = torch.isin(ids, torch.tensor(lm.special_token_ids))
    _, cache = lm.run_with_cache(ids, [hook])
    mean = cache[hook][~special].double().mean(0).float()
    scored = (~special[:, :-1]) & (~special[:, 1:])

    def ce(edit=None):
        logits = lm.run_with_hooks(ids, {hook: edit} if edit else {})
        losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        return float(losses[scored].mean())

    def ablate(value):
        return lambda v: torch.where(special[..., None], v, value.expand_as(v))

    return ce(), ce(ablate(torch.zeros_like(mean))), ce(ablate(mean))


def test_baselines_match_a_hand_computation_and_batching_does_not_change_results(lm):
    from saelab.data.packing import PackingConfig, iter_windows

    sae = random_sae(RESID, "jumprelu")
    cfg = config(tokens=150, batch_size=2)
    m = evaluate_sae(lm, sae, SOURCE, cfg).metrics
    packed = iter_windows(SOURCE, lm.tokenizer, PackingConfig(24), lm.bos_token_id, lm.eos_token_id)
    used = []
    while sum(int((~np.isin(w, lm.special_token_ids)).sum()) for w in used) < m["n_tokens"]:
        used.append(next(packed))
    ce_clean, ce_zero, ce_mean = hand_baselines(lm, RESID, used)
    assert m["ce_clean"] == pytest.approx(ce_clean, rel=1e-5)
    assert m["ce_zero_ablation"] == pytest.approx(ce_zero, rel=1e-5)
    assert m["ce_mean_ablation"] == pytest.approx(ce_mean, rel=1e-5)
    assert m["n_tokens"] >= 150
    other = evaluate_sae(lm, sae, SOURCE, config(tokens=m["n_tokens"], batch_size=1)).metrics  # same windows
    for key in ("fvu", "mse", "l0", "ce_clean", "ce_spliced", "kl", "ce_mean_ablation", "dead_fraction"):
        assert other[key] == pytest.approx(m[key], rel=1e-5), key


def test_several_saes_share_one_pass_and_keep_their_order(lm):
    saes = [random_sae(RESID, "relu"), identity_sae(HOOK_Z), random_sae(RESID, "topk", k=3)]
    results = evaluate_saes(lm, saes, SOURCE, config(check_error_term=False))
    assert [r.metrics["sae"] for r in results] == [s.cfg.name for s in saes]
    assert results[0].metrics["ce_clean"] == results[1].metrics["ce_clean"]
    assert results[1].metrics["delta_loss"] == pytest.approx(0.0, abs=1e-6)
    assert results[2].metrics["l0"] == pytest.approx(3.0)
    assert results[2].latent_frequency.shape == (64,)
    assert "ce_with_error" not in results[0].metrics


def test_a_dead_sae_gives_a_clear_warning_and_no_nan(lm):
    sae = random_sae(RESID)
    with torch.no_grad():
        sae.b_enc.fill_(-1e6)
        sae.b_dec.zero_()
    m = evaluate_sae(lm, sae, SOURCE, config()).metrics
    assert m["l0"] == 0 and m["dead_fraction"] == 1.0
    assert any("is dead: all 64 latents are zero" in w for w in m["warnings"])
    assert m["relative_reconstruction_bias"] is None
    json.dumps(m, allow_nan=False)  # raises on NaN or inf


def test_an_sae_that_does_not_fit_the_model_is_refused(lm):
    wrong_width = make_sae(SAEConfig("relu", 16, 64, hook_name=RESID))
    with pytest.raises(SAEModelMismatchError, match=r"d_in=16 .* 'blocks.1.hook_resid_pre' .* has 32"):
        evaluate_sae(lm, wrong_width, SOURCE, config())
    with pytest.raises(UnknownHookError, match="layer 7 does not exist"):
        check_sae_fits(lm, make_sae(SAEConfig("relu", 32, 64, hook_name="blocks.7.hook_resid_pre")))
    with pytest.raises(SAEModelMismatchError, match="records no hook_name"):
        check_sae_fits(lm, make_sae(SAEConfig("relu", 32, 64)))
    with pytest.raises(SAEModelMismatchError, match="attention patterns"):
        check_sae_fits(lm, make_sae(SAEConfig("relu", 32, 64, hook_name="blocks.0.attn.hook_pattern")))


def test_an_empty_evaluation_set_is_refused(lm, tmp_path):
    np.save(tmp_path / "short.npy", np.arange(3, 13, dtype=np.int64))  # 10 tokens: no 24-token window
    with pytest.raises(EmptyEvaluationSetError, match="evaluation set is empty"):
        evaluate_sae(lm, random_sae(RESID), TokenArraySource(tmp_path / "short.npy"), config())
    np.save(tmp_path / "bos.npy", np.zeros((2, 24), dtype=np.int64))  # windows of BOS only
    with pytest.raises(EmptyEvaluationSetError, match="no window .* ordinary"):
        evaluate_sae(lm, random_sae(RESID), TokenArraySource(tmp_path / "bos.npy"), config())
    with pytest.raises(ConfigError, match="tokens"):
        EvalConfig(tokens=0)
    with pytest.raises(ConfigError, match="context_size=65 exceeds the context of model 'tiny-gpt2', 64"):
        evaluate_sae(lm, random_sae(RESID), SOURCE, config(context_size=65))


def test_replacements_keep_the_models_dtype(lm):
    sae = random_sae(RESID)
    x = torch.randn(5, 32, dtype=torch.float64)
    assert sae_replacement(sae)(x).dtype == torch.float64


def test_logits_are_formed_in_chunks_and_chunking_does_not_change_results(lm, monkeypatch):
    sae = random_sae(RESID, "jumprelu")
    whole = evaluate_sae(lm, sae, SOURCE, config()).metrics
    rows_seen = []
    unembed = lm.unembed

    def recording_unembed(resid):
        rows_seen.append(resid.shape[0])
        return unembed(resid)

    monkeypatch.setattr(lm, "unembed", recording_unembed)
    chunk_rows = 5
    chunked = evaluate_sae(lm, sae, SOURCE, config(logit_chunk=chunk_rows * lm.d_vocab)).metrics
    assert rows_seen and max(rows_seen) <= chunk_rows  # never [batch, pos, d_vocab] at once
    for key in ("ce_clean", "ce_spliced", "kl", "ce_zero_ablation", "ce_mean_ablation", "kl_with_error",
                "error_term_max_logit_diff"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key
    with pytest.raises(ConfigError, match="logit_chunk"):
        config(logit_chunk=0)
