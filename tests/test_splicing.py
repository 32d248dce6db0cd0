"""saelab.splicing: SAE splices as before, transcoders read one hook and write another in one forward
(error term, latent edits, skip term), refusals, and transcoders through eval, interp and the explorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saelab.causal import clamp, patch_from, steer
from saelab.data.packing import PackingConfig, iter_windows
from saelab.data.sources import ToySource
from saelab.eval import EvalConfig, evaluate_saes
from saelab.interp import logit_effects, residual_directions
from saelab.sae import SAEConfig, make_sae
from saelab.splicing import (
    InterventionError,
    SAEModelMismatchError,
    Splice,
    check_sae_fits,
    hook_latents_and_errors,
    ordinary_token_mask,
    run_spliced,
    sae_with_error_replacement,
    spliced,
)

MID, MLP_OUT, RESID_PRE = "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_pre"
SOURCE = ToySource(5)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(tiny_gpt2_with_toy_tokenizer):
    return tiny_gpt2_with_toy_tokenizer


def transcoder(skip: bool = False, source: str = MID, target: str = MLP_OUT, d_out: int | None = None):
    """A random TopK transcoder source -> target (a random skip term when ``skip``)."""
    sae = make_sae(SAEConfig("topk", 32, 64, hook_name=source, hook_name_out=target, d_out=d_out, k=8,
                             skip_connection=skip), seed=0)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        if skip:
            sae.W_skip.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    return sae.eval()


def windows(lm, n=3, size=20, seed=0) -> torch.Tensor:
    ids = torch.randint(3, lm.d_vocab, (n, size), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = lm.bos_token_id
    return ids


def capture(lm, ids, hooks, splices=()):
    """Logits and the hooks' values of one forward with ``splices`` (at every position)."""
    with torch.no_grad(), spliced(lm, list(splices)), lm.hooks(capture=hooks) as session:
        logits = lm.model(input_ids=ids, use_cache=False).logits
    return logits, session.cache


def with_hook(lm, ids, hook, fn):
    with torch.no_grad():
        return lm.run_with_hooks(ids, {hook: fn})


# ------------------------------------------------------------------------------------------- SAEs
def test_an_sae_splice_matches_the_hand_written_splice_and_its_error_term_is_exact(lm):
    sae = make_sae(SAEConfig("topk", 32, 64, hook_name=RESID_PRE, k=6), seed=0).eval()
    ids = windows(lm)
    ordinary = ordinary_token_mask(ids, lm.special_token_ids)
    clean = with_hook(lm, ids, RESID_PRE, lambda v: None)
    by_hand = with_hook(lm, ids, RESID_PRE, lambda v: torch.where(ordinary[..., None], sae.reconstruct(v), v))
    assert torch.equal(run_spliced(lm, ids, [Splice(sae)]), by_hand)
    torch.testing.assert_close(run_spliced(lm, ids, [Splice(sae, add_error=True)]), clean, atol=1e-5, rtol=0)
    # with an edit: x̂_edited + (x − x̂), the pre-redesign formula
    edit = steer(5, 2.0, positions=[-1])

    def old_formula(v):
        acts = sae.encode(v)
        edited = edit.apply(acts, ordinary)
        return torch.where(ordinary[..., None], sae.decode(edited) + (v - sae.decode(acts)), v)

    torch.testing.assert_close(run_spliced(lm, ids, [Splice(sae, add_error=True, edits=[edit])]),
                               with_hook(lm, ids, RESID_PRE, old_formula), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ transcoders
@pytest.mark.parametrize("skip", [False, True])
def test_a_transcoder_splice_reads_resid_mid_and_writes_mlp_out(lm, skip):
    tc = transcoder(skip)
    assert check_sae_fits(lm, tc) == (MID, MLP_OUT)
    ids = windows(lm)
    ordinary = ordinary_token_mask(ids, lm.special_token_ids)
    clean, cache = capture(lm, ids, [MID])
    torch.testing.assert_close(run_spliced(lm, ids, [Splice(tc, add_error=True)]), clean, atol=1e-5, rtol=0)
    x = cache[MID]
    by_hand = with_hook(lm, ids, MLP_OUT, lambda y: torch.where(ordinary[..., None], tc.reconstruct(x), y))
    got = run_spliced(lm, ids, [Splice(tc)])
    torch.testing.assert_close(got, by_hand, atol=1e-6, rtol=0)
    assert (got - clean).abs().max() > 1e-3
    _, seen = capture(lm, ids, [MID, MLP_OUT], [Splice(tc)])
    assert torch.equal(seen[MID], x)                      # the source is read, not written
    torch.testing.assert_close(seen[MLP_OUT], tc.reconstruct(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("skip", [False, True])
def test_a_latent_edit_moves_the_target_by_the_decoded_change(lm, skip):
    tc = transcoder(skip)
    ids = windows(lm)
    _, clean = capture(lm, ids, [MID, MLP_OUT])
    x = clean[MID]
    acts = tc.encode(x)
    where = torch.zeros(ids.shape, dtype=torch.bool)
    where[:, -1] = True
    for edit in (steer(3, 2.5, positions=[-1]), clamp([0, 7], 1.5, positions=[-1])):
        _, seen = capture(lm, ids, [MLP_OUT], [Splice(tc, add_error=True, edits=[edit])])
        expected = tc.decode(edit.apply(acts, where), x) - tc.decode(acts, x)
        torch.testing.assert_close(seen[MLP_OUT] - clean[MLP_OUT], expected, atol=1e-5, rtol=0)
        assert expected[:, -1].abs().max() > 1e-2 and expected[:, :-1].abs().max() == 0


def test_patching_a_transcoders_latents_and_error_term_gives_the_counterfactual_target(lm):
    tc = transcoder()
    clean_ids, cf_ids = windows(lm, seed=0), windows(lm, seed=1)
    acts, errors = hook_latents_and_errors(lm, tc, cf_ids)
    assert errors.shape == (3, 20, 32)
    _, cf = capture(lm, cf_ids, [MLP_OUT])
    splice = Splice(tc, add_error=True, error=errors, edits=[patch_from(acts)])
    _, seen = capture(lm, clean_ids, [MLP_OUT], [splice])
    torch.testing.assert_close(seen[MLP_OUT], cf[MLP_OUT], atol=1e-5, rtol=0)


def test_a_transcoder_reads_the_value_an_sae_spliced_at_its_source_leaves(lm):
    tc = transcoder()
    sae = make_sae(SAEConfig("relu", 32, 48, hook_name=MID), seed=3).eval()
    ids = windows(lm)
    _, seen = capture(lm, ids, [MID, MLP_OUT], [Splice(tc), Splice(sae)])
    torch.testing.assert_close(seen[MID], sae.reconstruct(capture(lm, ids, [MID])[1][MID]), atol=1e-5, rtol=0)
    torch.testing.assert_close(seen[MLP_OUT], tc.reconstruct(seen[MID]), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------- refusals
def test_splices_that_cannot_work_are_refused_naming_the_hook_and_the_fix(lm):
    backwards = transcoder(source=MLP_OUT, target=MID)
    with pytest.raises(SAEModelMismatchError, match=r"writes 'blocks.1.hook_resid_mid'.*computes.*first.*hook_name_out"):
        check_sae_fits(lm, backwards)
    wide = transcoder(target="blocks.1.mlp.hook_post")  # d_out=32, but mlp.hook_post has 48 per token
    with pytest.raises(SAEModelMismatchError, match=r"d_out=32 .* 'blocks.1.mlp.hook_post' .* has 48.*hook_name_out"):
        check_sae_fits(lm, wide)
    with pytest.raises(SAEModelMismatchError, match="'blocks.0.attn.hook_pattern' holds attention patterns"):
        check_sae_fits(lm, transcoder(source="blocks.0.hook_resid_pre", target="blocks.0.attn.hook_pattern"))
    sae = make_sae(SAEConfig("relu", 32, 48, hook_name=MLP_OUT), seed=0)
    with pytest.raises(InterventionError, match=r"two splices at hook 'blocks.1.hook_mlp_out'.*merge their edits"):
        run_spliced(lm, windows(lm), [Splice(transcoder()), Splice(sae)])
    with pytest.raises(SAEModelMismatchError, match="transcoder.*Splice\\(sae, add_error=True\\)"):
        sae_with_error_replacement(transcoder())
    with pytest.raises(InterventionError, match=r"target hook's value is \[batch, pos, d_out\]"):
        run_spliced(lm, windows(lm), [Splice(transcoder(), add_error=True, error=torch.zeros(1, 20, 32))])


# ----------------------------------------------------------------------------- eval, interp, explorer
def test_evaluating_a_transcoder_measures_fvu_against_the_target_and_ablates_it(lm):
    tc, sae = transcoder(), make_sae(SAEConfig("relu", 32, 64, hook_name=MID), seed=1).eval()
    cfg = EvalConfig(tokens=150, context_size=24, batch_size=2, progress=False)
    m, m_sae = (r.metrics for r in evaluate_saes(lm, [tc, sae], SOURCE, cfg))
    assert (m["hook"], m["hook_out"]) == (MID, MLP_OUT) and m_sae["hook_out"] == MID
    for key in ("ce_loss_recovered", "kl", "delta_loss", "fvu", "mse", "cosine"):
        assert m[key] is not None and np.isfinite(m[key]), key
    assert m["error_term_max_logit_diff"] < 1e-4 and m["ce_with_error"] == pytest.approx(m["ce_clean"], abs=1e-5)
    assert m["ce_zero_ablation"] != m_sae["ce_zero_ablation"]   # the baselines ablate each coder's target
    packed = iter_windows(SOURCE, lm.tokenizer, PackingConfig(24), lm.bos_token_id, lm.eos_token_id)
    used = []
    while sum(int((~np.isin(w, lm.special_token_ids)).sum()) for w in used) < m["n_tokens"]:
        used.append(next(packed))
    ids = torch.from_numpy(np.stack(used))
    ordinary = ordinary_token_mask(ids, lm.special_token_ids)
    _, cache = lm.run_with_cache(ids, [MID, MLP_OUT])
    x, y = cache[MID][ordinary].double(), cache[MLP_OUT][ordinary].double()
    y_hat = tc.reconstruct(cache[MID][ordinary]).detach().double()
    fvu = float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert m["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert m["fvu"] != pytest.approx(float((x - y_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()), rel=1e-2)
    zeroed = with_hook(lm, ids, MLP_OUT, lambda v: torch.where(ordinary[..., None], torch.zeros_like(v), v))
    scored = ordinary[:, :-1] & ordinary[:, 1:]
    ce_zero = F.cross_entropy(zeroed[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")[scored].mean()
    assert m["ce_zero_ablation"] == pytest.approx(float(ce_zero), rel=1e-5)


def test_a_transcoders_logit_effects_use_the_decoder_at_the_hook_it_writes(lm):
    tc = transcoder(source="blocks.1.attn.hook_q")   # q has no path to the logits; mlp_out does
    torch.testing.assert_close(residual_directions(lm, tc, "blocks.1.attn.hook_q", [0, 5]), tc.W_dec[[0, 5]].detach())
    as_sae = make_sae(SAEConfig("topk", 32, 64, hook_name=MLP_OUT, k=8), seed=0)
    with torch.no_grad():
        as_sae.W_dec.copy_(tc.W_dec)
    assert logit_effects(lm, tc, "blocks.1.attn.hook_q", [2], k=3) == logit_effects(lm, as_sae, MLP_OUT, [2], k=3)


def test_the_explorer_compares_a_spliced_transcoder(lm):
    from saelab.explorer.service import ExplorerService

    tc = transcoder()
    service = ExplorerService(lm, {"tc": tc})
    prompt = "When Mary and John went to the store"
    body = service.compare(prompt, "tc", latent=3, steer=0.0)
    v = {x["name"]: x for x in body["variants"]}
    assert "hook_mlp_out replaced by the transcoder's prediction from blocks.1.hook_resid_mid" in v["spliced"]["description"]
    assert v["steered"]["kl_from_clean"] < 1e-9 and v["spliced"]["kl_from_clean"] > 1e-6
    ids = service.prompt_ids(prompt)
    expected = torch.log_softmax(run_spliced(lm, ids, [Splice(tc)])[0, -1], -1).exp()
    top = v["spliced"]["top"][0]
    assert top["prob"] == pytest.approx(float(expected[top["token_id"]]), rel=1e-5)
    rows = service.tokens(prompt, "tc", k=3)["tokens"]
    acts = tc.encode(lm.run_with_cache(ids, [MID])[1][MID])[0].detach()
    assert rows[1]["latents"][0]["activation"] == pytest.approx(float(acts[1].max()), rel=1e-5)
