"""k-sparse probing: the selection and the probes against hand computations on planted data, concept
builders against the tokenizer, planted-feature latents against random directions on the toy world,
and the refusals (one class, too few examples, hook mismatches, foreign vocabularies)."""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import pytest
import torch

from saelab.eval.concepts import (
    ConceptData,
    ConceptError,
    balanced_concept,
    code_vs_prose_concept,
    first_letter_data,
    package_code_texts,
    token_property_concepts,
    toy_concept_variables,
    toy_concepts,
    toy_texts,
)
from saelab.eval.probing import (
    ProbeDataError,
    ProbingConfig,
    collect_probe_activations,
    context_split,
    example_activations,
    mean_difference,
    probe_concept,
    sparse_probing,
    stratified_split,
    top_mean_difference,
)
from saelab.eval.recovery import NotToyModelError
from saelab.models import LoadedModel
from saelab.models.tiny import tiny_model
from saelab.sae import SAEConfig, make_sae, save_sae
from saelab.splicing import SAEModelMismatchError

HOOK = "blocks.2.hook_resid_post"
CONCEPTS = ("role=noun", "role=verb", "role=punct", "role=name", "role=det", "induction", "segment=ioi",
            "segment=repeat", "task=ioi.S2", "task=greater_than.END")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy(toy_lm) -> LoadedModel:
    return toy_lm


def _variables():
    return [v for v in toy_concept_variables() if v.name in CONCEPTS]


@pytest.fixture(scope="module")
def toy_probe_concepts(toy):
    return toy_concepts(toy, variables=_variables(), n_documents=96, n_per_class=64, min_per_class=10)


def _config(**kw) -> ProbingConfig:
    return ProbingConfig(**{"ks": (1, 2, 5), "min_per_class": 10, "progress": False, **kw})


# ----------------------------------------------------------------------------------- hand computations
def test_mean_difference_selection_matches_a_hand_computation():
    z = torch.tensor([[0.0, 1.0, 5.0], [0.0, 3.0, 1.0], [2.0, 0.0, 1.0], [4.0, 0.0, 3.0]])
    labels = torch.tensor([True, True, False, False])
    # |mean_pos - mean_neg| per column: |0 - 3|, |2 - 0|, |3 - 2|
    assert torch.allclose(mean_difference(z, labels), torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    assert top_mean_difference(z, labels, 2).tolist() == [0, 1]
    tied = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert top_mean_difference(tied, torch.tensor([True, False]), 1).tolist() == [0]  # ties to the lower index


def _planted(n=400, d_sae=32, planted=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2 == 0
    z = torch.rand(n, d_sae, generator=gen)                     # latents unrelated to the label
    z[:, planted] = labels.float() * torch.rand(n, generator=gen).add(0.5)   # fires exactly on positives
    x = torch.randn(n, 8, generator=gen)
    x[:, 0] += 3 * labels.float()
    return x, z, labels


def test_a_latent_equal_to_the_concept_is_chosen_and_probes_perfectly():
    x, z, labels = _planted()
    train = stratified_split(labels, 0.8, seed=0, name="planted")
    row = probe_concept(x, z, labels, train, _config())
    assert row.latents[1] == [7]
    assert 7 in row.latents[2] and 7 in row.latents[5]
    assert row.sae[1].accuracy == 1.0 and row.sae[1].auc == 1.0
    assert row.n_train == 320 and row.n_test == 80
    # the brute-force choice on the training split agrees
    zt, yt = z[train].numpy(), labels[train].numpy()
    diff = np.abs(zt[yt].mean(0) - zt[~yt].mean(0))
    assert row.latents[5] == list(np.argsort(-diff, kind="stable")[:5])


def test_random_latents_probe_near_chance_and_the_dense_probe_finds_the_raw_direction():
    x, z, labels = _planted()
    z = torch.rand(z.shape, generator=torch.Generator().manual_seed(9))
    row = probe_concept(x, z, labels, stratified_split(labels, 0.8, seed=0, name="random"), _config())
    for k in (1, 2, 5):
        assert 0.3 <= row.sae[k].accuracy <= 0.7, (k, row.sae[k])
    assert row.dense.accuracy >= 0.9 and row.raw[1].accuracy >= 0.9  # raw dim 0 carries the label


def test_context_split_keeps_every_context_on_one_side():
    context = torch.arange(200) // 4            # 50 contexts of 4 examples
    labels = context < 10                       # a document-level concept: 10 positive contexts
    train = context_split(context, labels, 0.8, seed=0, name="c")
    assert torch.equal(train, context_split(context, labels, 0.8, seed=0, name="c"))
    assert int(train[labels].sum()) == 8 * 4 and int(train[~labels].sum()) == 32 * 4
    for row in context.unique():
        sides = train[context == row]
        assert sides.all() or not sides.any()


def test_stratified_split_is_deterministic_and_keeps_both_classes_on_both_sides():
    labels = torch.tensor([True] * 30 + [False] * 50)
    a, b = stratified_split(labels, 0.8, 3, "c"), stratified_split(labels, 0.8, 3, "c")
    assert torch.equal(a, b) and not torch.equal(a, stratified_split(labels, 0.8, 4, "c"))
    assert int(a[labels].sum()) == 24 and int(a[~labels].sum()) == 40


# ----------------------------------------------------------------------------------- builders
def test_toy_concepts_are_balanced_and_labelled_by_the_corpus(toy, toy_probe_concepts):
    from saelab.toy import vocabulary as V

    names = [c.name for c in toy_probe_concepts]
    assert names == [v.name for v in _variables()]
    for c in toy_probe_concepts:
        assert c.n_positive == c.n_negative == 64
        assert c.input_ids is toy_probe_concepts[0].input_ids  # one shared set of contexts
        assert int(c.positions.min()) >= 1  # never <bos>
    punct = next(c for c in toy_probe_concepts if c.name == "role=punct")
    punctuation = {V.WORD_ID[w] for w in V.PUNCTUATION}
    assert all(int(t) in punctuation for t in punct.token_ids[punct.labels])


def test_first_letter_and_token_properties_follow_the_token_text(toy):
    texts = toy_texts(24)
    data = first_letter_data(toy, texts, max_per_word=2)
    tokens = toy.tokenizer.convert_ids_to_tokens(data.token_ids.tolist())
    assert tokens == data.words and all(w.isalpha() for w in data.words)
    assert all("abcdefghijklmnopqrstuvwxyz"[i] == w[0].lower() for i, w in zip(data.letters, data.words, strict=True))
    assert max(np.unique(data.token_ids.numpy(), return_counts=True)[1]) <= 2
    letter_s = data.concepts("s", min_per_class=5)[0]
    assert all(w.lower().startswith("s") for w in toy.tokenizer.convert_ids_to_tokens(
        letter_s.token_ids[letter_s.labels].tolist()))
    number, capitalised = token_property_concepts(toy, texts, min_per_class=5)
    assert all(t.isdigit() for t in toy.tokenizer.convert_ids_to_tokens(number.token_ids[number.labels].tolist()))
    assert all(t[0].isupper() for t in toy.tokenizer.convert_ids_to_tokens(
        capitalised.token_ids[capitalised.labels].tolist()))


def _byte_bpe_model() -> LoadedModel:
    """A tiny random GPT-2 with a byte-level BPE trained here on saelab's code and toy prose."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = package_code_texts()[:200] + toy_texts(100, prose_only=True)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    return LoadedModel.from_hf(tiny_model("gpt2", vocab_size=len(hf)), hf, name="tiny-bpe")


def test_real_text_builders_work_with_a_byte_level_bpe():
    lm = _byte_bpe_model()
    text = "The internationalisation of the soup is a big deal, said self in return 1999."
    data = first_letter_data(lm, [text] * 3, context_size=64)
    for word, token in zip(data.words, lm.tokenizer.convert_ids_to_tokens(data.token_ids.tolist()), strict=True):
        assert lm.tokenizer.convert_tokens_to_string([token]).strip() == word  # one whole word per token
    # whole single-token words only: not "T"+"he", " in"+"ter"+..., " s"+"ou"+"p"
    assert Counter(data.words) == {w: 3 for w in ("of", "the", "is", "a", "self", "in", "return")}
    code_texts = package_code_texts()[:40]
    code = code_vs_prose_concept(lm, code_texts, toy_texts(40, prose_only=True), n_per_class=48, min_per_class=10,
                                 context_size=64)
    assert code.n_positive == code.n_negative == 48 and int(code.positions.min()) >= 8
    assert bool((code.context[code.labels] < 40).all()) and bool((code.context[~code.labels] >= 40).all())
    sae = make_sae(SAEConfig("relu", lm.d_model, 64, hook_name="blocks.1.hook_resid_post"), seed=0)
    row = sparse_probing(sae, lm, [code], config=_config(ks=(1, 2))).rows[0]
    assert set(row.sae) == {1, 2} and row.n_train + row.n_test == 96


# ----------------------------------------------------------------------------------- toy world
def _planted_sae(toy, concepts_fit):
    """One ReLU latent per concept: encoder = decoder = the unit class-mean difference, threshold at the
    midpoint of the class means (measured on other documents than the probes use)."""
    acts = collect_probe_activations(toy, HOOK, concepts_fit, progress=False)
    directions, bias = [], []
    for concept, x in zip(concepts_fit, acts.xs, strict=True):
        pos, neg = x[concept.labels].mean(0), x[~concept.labels].mean(0)
        d = (pos - neg) / (pos - neg).norm()
        directions.append(d)
        bias.append(-0.5 * float((pos + neg) @ d))
    d = torch.stack(directions)
    sae = make_sae(SAEConfig("relu", toy.d_model, len(d), hook_name=HOOK, name="planted"))
    with torch.no_grad():
        sae.W_enc.copy_(d.T)
        sae.b_enc.copy_(torch.tensor(bias))
        sae.W_dec.copy_(d)
        sae.b_dec.zero_()
    return sae


def test_planted_feature_latents_beat_random_directions_on_the_toy_world(toy, toy_probe_concepts, tmp_path):
    fit = toy_concepts(toy, variables=_variables(), n_documents=96, n_per_class=64, min_per_class=10, seed=5)
    planted = _planted_sae(toy, fit)
    random = make_sae(SAEConfig("relu", toy.d_model, planted.cfg.d_sae, hook_name=HOOK, name="random"), seed=1)
    with torch.no_grad():
        random.b_enc.zero_()
    acts = collect_probe_activations(toy, HOOK, toy_probe_concepts, progress=False)
    good = sparse_probing(planted, toy, toy_probe_concepts, config=_config(), activations=acts)
    bad = sparse_probing(random, toy, toy_probe_concepts, config=_config(), activations=acts)
    acc = {name: r.summary()["sae_top_k"]["1"]["accuracy"] for name, r in (("planted", good), ("random", bad))}
    assert acc["planted"] >= 0.8 and acc["planted"] - acc["random"] >= 0.15, acc  # measured: 0.88 vs 0.64
    assert good.summary()["dense"] == bad.summary()["dense"]  # same activations, same dense probe
    planted_rows = {r.concept: r.latents[1] for r in good.rows}
    assert sum(planted_rows[c.name] == [i] for i, c in enumerate(fit)) >= 9  # its own latent is chosen (10 of 10)
    out = good.to_dict()
    json.dumps(out, allow_nan=False)
    assert set(out["saebench"]["sae"]) == {"sae_test_accuracy", "sae_top_1_test_accuracy", "sae_top_2_test_accuracy",
                                           "sae_top_5_test_accuracy"}
    assert "llm_test_accuracy" in out["saebench"]["llm"]

    # the CLI on an SAE folder: JSON and the plot
    from saelab.eval import probe_commands

    folder = save_sae(planted, tmp_path / "planted", extra_meta={"model_name": "toy"})
    parser = argparse.ArgumentParser()
    probe_commands.register(parser.add_subparsers())
    args = parser.parse_args(["probe", "--sae", str(folder), "--model", "toy", "--ks", "1,2", "--n-documents", "64",
                              "--n-per-class", "32", "--min-per-class", "5", "--no-progress", "--out",
                              str(tmp_path / "out"), "--json"])
    assert args.func(args) == 0
    report = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert report["results"][0]["ks"] == [1, 2] and (tmp_path / "out" / "probe_accuracy_vs_k.png").stat().st_size


# ----------------------------------------------------------------------------------- refusals
def test_one_class_and_too_few_examples_are_refused_with_the_counts():
    ids = torch.zeros(4, 8, dtype=torch.long)
    candidates = torch.ones(4, 8, dtype=torch.bool)
    with pytest.raises(ConceptError, match=r"'never' has only one class.*0 positive, 32 negative"):
        balanced_concept("never", ids, candidates, torch.zeros_like(candidates))
    rare = torch.zeros_like(candidates)
    rare[0, :3] = True
    with pytest.raises(ConceptError, match=r"'rare' has fewer than min_per_class=20.*3 positive, 29 negative"):
        balanced_concept("rare", ids, candidates, rare)
    concept = ConceptData("tiny", ids, torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([True, False]))
    with pytest.raises(ConceptError, match="'tiny'.*1 positive, 1 negative"):
        concept.check(5)
    lm = LoadedModel.from_hf(tiny_model("gpt2"), name="tiny")
    sae = make_sae(SAEConfig("relu", lm.d_model, 8, hook_name="blocks.0.hook_resid_post"))
    with pytest.raises(ConceptError, match="'tiny' has fewer than min_per_class=10"):
        sparse_probing(sae, lm, [concept], config=_config())
    with pytest.raises(ConceptError, match="labels must be a bool tensor"):
        ConceptData("bad", ids, torch.tensor([0]), torch.tensor([1]), torch.tensor([1]))


def test_hook_mismatches_and_foreign_concepts_are_refused(toy, toy_probe_concepts, tiny_gpt2_with_toy_tokenizer):
    concepts = toy_probe_concepts[:2]
    wrong_layer = make_sae(SAEConfig("relu", toy.d_model, 16, hook_name="blocks.7.hook_resid_post"))
    with pytest.raises(Exception, match="blocks.7"):
        sparse_probing(wrong_layer, toy, concepts, config=_config())
    wrong_width = make_sae(SAEConfig("relu", 64, 16, hook_name=HOOK, name="narrow"))
    with pytest.raises(SAEModelMismatchError, match="d_in=64"):
        sparse_probing(wrong_width, toy, concepts, config=_config())
    elsewhere = collect_probe_activations(toy, "blocks.1.hook_resid_post", concepts, progress=False)
    sae = make_sae(SAEConfig("relu", toy.d_model, 16, hook_name=HOOK))
    with pytest.raises(ProbeDataError, match=r"reads hook 'blocks.2.hook_resid_post'.*blocks.1.hook_resid_post"):
        sparse_probing(sae, toy, concepts, config=_config(), activations=elsewhere)
    bpe = _byte_bpe_model()
    with pytest.raises(ConceptError, match="tokenized for another tokenizer"):
        collect_probe_activations(bpe, "blocks.1.hook_resid_post", concepts, progress=False)
    with pytest.raises(NotToyModelError):
        toy_concepts(bpe, variables=_variables()[:1], n_documents=8, context_size=64)
    with pytest.raises(ConceptError, match="unknown token"):
        code_vs_prose_concept(tiny_gpt2_with_toy_tokenizer, context_size=64)
    with pytest.raises(ConceptError, match="token ids must lie in"):
        example_activations(tiny_gpt2_with_toy_tokenizer, "blocks.0.hook_resid_post",
                            torch.full((1, 4), 10_000), torch.tensor([0]), torch.tensor([1]))
