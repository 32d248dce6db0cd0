"""Feature absorption: the per-example rules against hand computations, a planted SAE whose absorbing
latents take over a known share of the 'a' words, the F1-jump choice of main latents, the word split,
the toy model flagged as too small, and the refusals."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from saelab.errors import ConfigError
from saelab.eval.absorption import (
    AbsorptionConfig,
    absorption,
    absorption_from_activations,
    absorption_scores,
    main_latents,
    word_split,
)
from saelab.eval.concepts import ConceptError, first_letter_data, toy_texts
from saelab.eval.probing import example_activations
from saelab.models import LoadedModel
from saelab.sae import SAEConfig, make_sae, save_sae
from saelab.splicing import SAEModelMismatchError

HOOK = "blocks.2.hook_resid_post"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy(toy_lm) -> LoadedModel:
    return toy_lm


def _config(**kw) -> AbsorptionConfig:
    return AbsorptionConfig(**{"min_letters": 3, "progress": False, **kw})


# ----------------------------------------------------------------------------------- per example
def test_absorption_rules_match_hand_computations():
    # latent 0 is the main latent; P = x·p̂ = 1 except the last example (P = -1)
    decoder_projection = torch.tensor([1.0, 1.0, 0.6, 1.0, 1.0, 1.0, 1.0])
    cosine = torch.tensor([0.9, 0.5, 0.05, 0.5, 0.5, 0.5, 0.5])
    z = torch.zeros(7, 7)
    z[0, 0] = 1.0                  # main latent carries all of P -> 0
    z[1, 1] = 0.8                  # main silent, one absorber with 0.8 of P -> 1, full
    z[2, 0], z[2, 1] = 0.25, 0.5   # partial: a = min(0.5, 1 - 0.25) -> 0.5 / (0.5 + 0.25)
    z[3, 1] = 0.3                  # absorber below 0.4 of P -> 0, not full
    z[4, 2] = 1.0                  # cos 0.05: too low for the fraction (0.1), enough for full (0.025)
    z[5, 3:7] = 0.12               # four absorbers: only the top 3 count, 0.36 < 0.4 -> 0
    z[6, 1] = 0.8                  # P < 0 -> 0
    total = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0])
    fraction, full, best = absorption_scores(z, total, decoder_projection, cosine, [0], _config())
    assert torch.allclose(fraction, torch.tensor([0.0, 1.0, 2 / 3, 0.0, 0.0, 0.0, 0.0]))
    assert full.tolist() == [False, True, False, False, True, False, False]
    assert best[1] == 1 and best[4] == 2
    four = absorption_scores(z[5:6], total[5:6], decoder_projection, cosine, [0], _config(max_absorbing_latents=4))[0]
    assert float(four) == 1.0  # 0.48 of P with four absorbers, no main activation


def test_main_latents_follow_the_f1_jump_rule():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2 == 0
    z = torch.rand(400, 12, generator=gen) * 0.1
    half = y & (torch.arange(400) % 4 == 0)
    z[:, 3] = half.float()                 # two latents split the concept between them
    z[:, 8] = (y & ~half).float()
    train = torch.arange(400) < 300
    main, f1s = main_latents(z[train], y[train], z[~train], y[~train], _config())
    assert sorted(main) == [3, 8]
    assert f1s[1] - f1s[0] > 0.03 and len(f1s) == 3  # k=2 jumps, k=3 does not: stop
    assert f1s[1] == pytest.approx(1.0)


def test_word_split_keeps_every_word_on_one_side():
    letters = torch.tensor([0] * 12 + [1] * 6 + [2] * 2)
    words = torch.tensor([i // 3 for i in range(12)] + [10 + i // 2 for i in range(6)] + [20, 20])
    train = word_split(letters, words, 0.8, seed=0)
    for w in words.unique():
        sides = train[words == w]
        assert sides.all() or not sides.any()
    assert not train[letters == 0].all() and not train[letters == 1].all()
    assert train[letters == 2].all()  # one word only: nothing to test on
    occurrence = word_split(letters, words, 0.8, seed=0, by="occurrence")
    assert int(occurrence[letters == 0].sum()) == round(0.8 * 12)


# ----------------------------------------------------------------------------------- planted absorption
A_WORDS, B_WORDS, C_WORDS = range(0, 50), range(50, 70), range(70, 90)
TEST_WORDS = set(range(40, 50)) | set(range(66, 70)) | set(range(86, 90))
ABSORBED = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 40, 41, 42]   # latent A silent, an absorbing latent fires
PARTIAL = [10, 11, 12, 13, 43, 44]                         # latent A at 0.5, an absorbing latent fires


def _planted_absorption(occurrences: int = 3):
    """x = e_letter + 0.5·e_word over 3 letters and 90 words; an SAE whose latent 0 reads e_a except on
    ABSORBED (silent) and PARTIAL (0.5) words, each of which has its own latent with decoder e_a."""
    d_in = 3 + 90
    rows, letters, words = [], [], []
    for letter, group in enumerate((A_WORDS, B_WORDS, C_WORDS)):
        for w in group:
            for _ in range(occurrences):
                x = torch.zeros(d_in)
                x[letter] = 1.0
                x[3 + w] = 0.5
                rows.append(x)
                letters.append(letter)
                words.append(w)
    absorbers = ABSORBED + PARTIAL
    sae = make_sae(SAEConfig("relu", d_in, 3 + len(absorbers), name="planted_absorption"))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_dec.zero_()
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        for letter in range(3):
            sae.W_enc[letter, letter] = 1.2 if letter == 0 else 1.0
            sae.W_dec[letter, letter] = 1.0
        for j, w in enumerate(absorbers, start=3):
            sae.W_enc[3 + w, 0] = -2.4 if w in ABSORBED else -1.4   # 1.2 - 1.2 = 0, 1.2 - 0.7 = 0.5
            sae.W_enc[3 + w, j] = 2.0                                  # fires at 1 on its word
            sae.W_dec[j, 0] = 1.0                                      # and writes the 'a' direction
    words_t = torch.tensor(words)
    train = ~torch.isin(words_t, torch.tensor(sorted(TEST_WORDS)))
    return sae.eval(), torch.stack(rows), torch.tensor(letters), words_t, train


def test_planted_absorbing_latents_give_the_planted_share():
    sae, x, letters, words, train = _planted_absorption()
    result = absorption_from_activations(sae, x, letters, words, train, _config())
    by_letter = {r.letter: r for r in result.letters}
    a = by_letter["a"]
    assert a.probe_f1 == 1.0 and a.probe_true_positives == 30 and a.scored
    assert 0 in a.main_latents
    # test 'a' words: 3 absorbed (fraction 1, full), 2 partial (0.5 / (0.5 + 0.5)), 5 clean (0)
    assert a.mean_absorption_fraction == pytest.approx((3 * 1.0 + 2 * 0.5) / 10)
    assert a.full_absorption_rate == pytest.approx(3 / 10) and a.n_full_absorption == 9
    assert {latent for latent, _ in a.top_absorbers} == {13, 14, 15}  # the test words' absorbing latents
    for letter in ("b", "c"):
        assert by_letter[letter].mean_absorption_fraction == 0.0 and by_letter[letter].full_absorption_rate == 0.0
    summary = result.summary()
    assert summary["n_letters_scored"] == 3
    assert summary["mean_absorption_fraction_score"] == pytest.approx(0.4 / 3)
    assert summary["mean_full_absorption_score"] == pytest.approx(0.1)
    assert not result.notes
    json.dumps(result.to_dict(), allow_nan=False)
    assert [d["first_letter"] for d in result.saebench_details()] == ["a", "b", "c"]


def test_without_absorbing_latents_nothing_is_absorbed():
    sae, x, letters, words, train = _planted_absorption()
    with torch.no_grad():
        sae.W_dec[3:] = 0.0  # the extra latents now write nothing: no projection on the probe
    result = absorption_from_activations(sae, x, letters, words, train, _config())
    a = next(r for r in result.letters if r.letter == "a")
    assert a.mean_absorption_fraction == 0.0 and a.full_absorption_rate == 0.0


# ----------------------------------------------------------------------------------- toy world and CLI
def test_the_toy_model_is_flagged_as_too_small_for_first_letters(toy, tmp_path):
    sae = make_sae(SAEConfig("topk", toy.d_model, 256, hook_name=HOOK, k=8, name="toy_topk"), seed=0)
    data = first_letter_data(toy, toy_texts(64))
    result = absorption(sae, toy, data, AbsorptionConfig(progress=False))
    summary = result.summary()
    assert summary["n_letters"] >= 20 and summary["n_letters_scored"] < 20
    notes = " ".join(result.notes)
    assert "too small to represent first letters" in notes and "word-level" in notes
    assert "have too few distinct words" in notes  # q, y, z: two or fewer words in the toy vocabulary
    json.dumps(result.to_dict(), allow_nan=False)
    x = example_activations(toy, HOOK, data.input_ids, data.context, data.positions)
    shared = absorption(sae, toy, data, AbsorptionConfig(progress=False), activations=x)  # as the panel passes them
    assert shared.to_dict() == result.to_dict()
    with pytest.raises(ConceptError, match="do not match the first-letter data"):
        absorption(sae, toy, data, AbsorptionConfig(progress=False), activations=x[:-1])

    from saelab.eval import probe_commands

    folder = save_sae(sae, tmp_path / "sae", extra_meta={"model_name": "toy"})
    parser = argparse.ArgumentParser()
    probe_commands.register(parser.add_subparsers())
    args = parser.parse_args(["absorption", "--sae", str(folder), "--max-texts", "24", "--no-progress", "--out",
                              str(tmp_path / "out")])
    assert args.func(args) == 0
    report = json.loads((tmp_path / "out" / "absorption.json").read_text())
    assert report["text_source"].startswith("toy:") and report["notes"]
    assert (tmp_path / "out" / "absorption_by_letter.png").stat().st_size > 0


def test_refusals(toy):
    data = first_letter_data(toy, toy_texts(16))
    transcoder = make_sae(SAEConfig("relu", toy.d_model, 32, hook_name="blocks.1.hook_resid_mid",
                                    hook_name_out="blocks.1.hook_mlp_out"))
    with pytest.raises(ConfigError, match="transcoder"):
        absorption(transcoder, toy, data, _config())
    with pytest.raises(SAEModelMismatchError, match="d_in=64"):
        absorption(make_sae(SAEConfig("relu", 64, 32, hook_name=HOOK)), toy, data, _config())
    with pytest.raises(ConceptError, match="tokenized for another tokenizer"):
        absorption(make_sae(SAEConfig("relu", toy.d_model, 32, hook_name=HOOK)), toy,
                   dataclasses.replace(data, vocabulary="50257:0123456789ab"), _config())
    with pytest.raises(ConceptError, match="no single-token alphabetic word"):
        first_letter_data(toy, ["17 32 . , 99"])
    with pytest.raises(ConfigError, match="split"):
        AbsorptionConfig(split="letter")
