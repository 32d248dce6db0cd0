"""Splicing several SAEs with edits: error term, ablation, clamping, steering, patching, bad input."""

from __future__ import annotations

import pytest
import torch

from saelab.causal import (
    InterventionError,
    Splice,
    clamp,
    hook_latents,
    hook_latents_and_errors,
    mean_ablate,
    pair_prompts,
    patch_from,
    run_spliced,
    spliced,
    steer,
    steer_generate,
    zero_ablate,
)
from saelab.errors import SaelabError
from saelab.sae import SAEConfig, make_sae
from saelab.splicing import SAEModelMismatchError, sae_replacement, splice_edit

HOOK_A, HOOK_B = "blocks.0.hook_resid_post", "blocks.1.attn.hook_z"


@pytest.fixture(scope="module")
def setup(one_torch_thread, tiny_gpt2_with_toy_tokenizer):
    lm = tiny_gpt2_with_toy_tokenizer
    gen = torch.Generator().manual_seed(0)
    sae_a = make_sae(SAEConfig("relu", d_in=lm.hook_d_in(HOOK_A), d_sae=48, hook_name=HOOK_A), generator=gen)
    sae_b = make_sae(SAEConfig("topk", d_in=lm.hook_d_in(HOOK_B), d_sae=40, k=6, hook_name=HOOK_B), generator=gen)
    with torch.no_grad():
        for sae in (sae_a, sae_b):
            sae.b_enc.add_(0.05)
            sae.b_dec.normal_(0, 0.1, generator=gen)
    pairs = pair_prompts(lm, [("When Mary and John went to the store , John gave a book to",
                               "When Mary and John went to the store , Paul gave a book to"),
                              ("Then , Jack and Ella went to the school . Ella passed a ring to",
                               "Then , Jack and Ella went to the school . Sam passed a ring to")])
    return lm, sae_a, sae_b, pairs


def logits_of(lm, ids):
    with torch.no_grad():
        return lm.run_with_hooks(ids, {})


def test_splicing_with_error_term_reproduces_clean_logits(setup):
    lm, sae_a, sae_b, pairs = setup
    clean = logits_of(lm, pairs.clean_ids)
    both = run_spliced(lm, pairs.clean_ids, [Splice(sae_a, add_error=True), Splice(sae_b, add_error=True)])
    torch.testing.assert_close(both, clean, atol=1e-5, rtol=0)
    without = run_spliced(lm, pairs.clean_ids, [Splice(sae_a)])
    assert (without - clean).abs().max() > 1e-2  # the reconstruction alone does change the run


def test_several_saes_match_nested_splice_edits(setup):
    lm, sae_a, sae_b, pairs = setup
    ids = pairs.clean_ids
    expected = lm.run_with_hooks(ids, {HOOK_A: splice_edit(sae_replacement(sae_a)),
                                       HOOK_B: splice_edit(sae_replacement(sae_b))})
    with torch.no_grad(), spliced(lm, [Splice(sae_a), Splice(sae_b)]):
        got = lm.model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_zero_ablating_every_latent_equals_splicing_a_zero_reconstruction(setup):
    lm, sae_a, _, pairs = setup
    zero_reconstruction = splice_edit(lambda x: sae_a.decode(torch.zeros(x.shape[0], sae_a.cfg.d_sae)))
    expected = lm.run_with_hooks(pairs.clean_ids, {HOOK_A: zero_reconstruction})
    with torch.no_grad(), spliced(lm, [Splice(sae_a, edits=[zero_ablate()])]):
        got = lm.model(input_ids=pairs.clean_ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_patching_every_latent_and_error_reproduces_the_counterfactual(setup):
    lm, sae_a, sae_b, pairs = setup
    cf = logits_of(lm, pairs.counterfactual_ids)
    splices = []
    for sae in (sae_a, sae_b):
        acts, errors = hook_latents_and_errors(lm, sae, pairs.counterfactual_ids)
        splices.append(Splice(sae, add_error=True, error=errors, edits=[patch_from(acts)], positions=None))
    with torch.no_grad(), spliced(lm, splices):
        got = lm.model(input_ids=pairs.clean_ids, use_cache=False).logits
    torch.testing.assert_close(got, cf, atol=1e-4, rtol=0)
    # the latents alone, with the clean run's error term kept, do not
    acts = hook_latents(lm, sae_a, pairs.counterfactual_ids)
    partial = run_spliced(lm, pairs.clean_ids, [Splice(sae_a, add_error=True, edits=[patch_from(acts)])])
    assert not torch.allclose(partial, cf, atol=1e-3)


def test_steering_with_scale_zero_changes_nothing_and_nonzero_moves_the_hook(setup):
    lm, sae_a, _, pairs = setup
    clean = logits_of(lm, pairs.clean_ids)
    assert torch.equal(run_spliced(lm, pairs.clean_ids, [Splice(sae_a, add_error=True, edits=[steer(5, 0.0)])]), clean)
    captured = {}
    with torch.no_grad(), spliced(lm, [Splice(sae_a, add_error=True, edits=[steer(5, 3.0, positions=[-1])])]):
        with lm.hooks(capture=[HOOK_A]) as session:
            lm.model(input_ids=pairs.clean_ids, use_cache=False)
        captured = session.cache[HOOK_A]
    _, cache = lm.run_with_cache(pairs.clean_ids, [HOOK_A])
    moved = captured - cache[HOOK_A]
    torch.testing.assert_close(moved[:, -1], 3.0 * sae_a.W_dec[5].expand(2, -1), atol=1e-5, rtol=0)
    assert moved[:, :-1].abs().max() < 1e-6
    result = steer_generate(lm, sae_a, 5, 0.0, "When Mary and John", max_new_tokens=4)
    assert result.steered_ids == result.baseline_ids and len(result.steered_ids) == 4


def test_clamp_and_mean_ablation_set_the_chosen_latents(setup):
    lm, sae_a, _, pairs = setup
    means = torch.full((sae_a.cfg.d_sae,), 0.7)
    seen = {}
    for name, edit in (("clamp", clamp([1, 2], 2.5, positions=[3])), ("mean", mean_ablate(means, [4], positions=[3]))):
        with torch.no_grad(), spliced(lm, [Splice(sae_a, edits=[edit])]), lm.hooks(capture=[HOOK_A]) as session:
            lm.model(input_ids=pairs.clean_ids, use_cache=False)
        seen[name] = session.cache[HOOK_A]
    acts = hook_latents(lm, sae_a, pairs.clean_ids)
    recon = sae_a.decode(acts)
    clamped = acts.clone()
    clamped[:, 3, [1, 2]] = 2.5
    torch.testing.assert_close(seen["clamp"][:, 3], sae_a.decode(clamped)[:, 3], atol=1e-5, rtol=0)
    torch.testing.assert_close(seen["clamp"][:, 2], recon[:, 2], atol=1e-5, rtol=0)
    averaged = acts.clone()
    averaged[:, 3, 4] = 0.7
    torch.testing.assert_close(seen["mean"][:, 3], sae_a.decode(averaged)[:, 3], atol=1e-5, rtol=0)


def test_bad_input_is_refused_with_clear_messages(setup):
    lm, sae_a, _, pairs = setup
    with pytest.raises(InterventionError, match=r"positions \[40\] are out of range.*accepted"):
        run_spliced(lm, pairs.clean_ids, [Splice(sae_a, edits=[zero_ablate(positions=[40])])])
    with pytest.raises(InterventionError, match="d_sae=48"):
        Splice(sae_a, edits=[zero_ablate([48])])
    far = make_sae(SAEConfig("relu", d_in=lm.hook_d_in(HOOK_A), d_sae=8, hook_name="blocks.7.hook_resid_post"))
    with pytest.raises(SaelabError, match="blocks.7"):
        run_spliced(lm, pairs.clean_ids, [Splice(far)])
    narrow = make_sae(SAEConfig("relu", d_in=5, d_sae=8, hook_name=HOOK_A))
    with pytest.raises(SAEModelMismatchError, match="d_in=5"):
        run_spliced(lm, pairs.clean_ids, [Splice(narrow)])
    short = hook_latents(lm, sae_a, pairs.counterfactual_ids[:, :-2])
    with pytest.raises(InterventionError, match="same batch size and length"):
        run_spliced(lm, pairs.clean_ids, [Splice(sae_a, edits=[patch_from(short)])])
    with pytest.raises(InterventionError, match="two splices at hook"):
        run_spliced(lm, pairs.clean_ids, [Splice(sae_a), Splice(sae_a)])
    with pytest.raises(SaelabError, match="different lengths"):
        pair_prompts(lm, [("When Mary and John", "When Mary and John went")])
