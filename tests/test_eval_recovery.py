"""Feature recovery: the best-F1 search against brute force, the labelled data against the corpus, and a
planted latent found with exactly the F1 an independent count gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.errors import ConfigError
from saelab.eval.recovery import (
    BestF1Counter,
    NotToyModelError,
    RecoveryConfig,
    feature_recovery,
    labeled_batches,
    planted_variables,
    relevant_mlp_hook,
)
from saelab.models import LoadedModel
from saelab.models.tiny import tiny_model, torch_threads
from saelab.sae import SAEConfig, make_sae
from saelab.toy import vocabulary as V
from saelab.toy.corpus import make_document
from saelab.toy.spans import ROLES

HOOK = "blocks.0.hook_resid_pre"
SEED = 77


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    """A tiny GPT-2 on the toy vocabulary whose embedding dimension 0 is 1 exactly on name tokens."""
    from saelab.toy.tokenizer import build_hf_tokenizer

    tokenizer = build_hf_tokenizer()
    model = tiny_model("gpt2", vocab_size=len(tokenizer))
    names = torch.tensor([V.WORD_ID[w] for w in V.NAMES])
    with torch.no_grad():
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[names, 0] = 1.0
        model.transformer.wpe.weight[:, 0] = 0.0
    return LoadedModel.from_hf(model, tokenizer, name="tiny-toy")


def name_detector():
    """Latent 0 = ReLU(x_0 − 0.5): fires on name tokens only; latents 1, 2 never fire."""
    sae = make_sae(SAEConfig("relu", 32, 3, hook_name=HOOK))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[0, 0] = 1.0
        sae.b_enc.copy_(torch.tensor([-0.5, -1.0, -1.0]))
        sae.b_dec.zero_()
    return sae.eval()


def test_planted_variables_cover_every_planted_label():
    names = [v.name for v in planted_variables()]
    assert len(names) == len(set(names)) == len(V.TOPIC_NAMES) + len(ROLES) + 1 + 5 + 4
    for expected in ("topic=cooking", "role=name", "role=random", "induction", "task=ioi.S2", "task=ioi.END",
                     "task=greater_than.answer", "task=docstring.answer"):
        assert expected in names


def test_best_f1_matches_brute_force():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(300, 7))
    labels = rng.random((300, 3)) < 0.2
    values[:, 4] = labels[:, 1] * 2.0 + rng.normal(size=300) * 0.1  # unit 4 tracks variable 1
    thresholds = np.stack([np.zeros(7), np.full(7, 1.0), np.quantile(values, 0.8, axis=0)])
    counter = BestF1Counter(torch.tensor(thresholds), 3)
    counter.update(torch.tensor(values[:120]), torch.tensor(labels[:120]))
    counter.update(torch.tensor(values[120:]), torch.tensor(labels[120:]))
    for v, best in enumerate(counter.best()):
        scores = []
        for t in range(3):
            for u in range(7):
                predicted = values[:, u] > np.float32(thresholds[t, u])
                tp = (predicted & labels[:, v]).sum()
                scores.append(2 * tp / (predicted.sum() + labels[:, v].sum()))
        assert best["f1"] == pytest.approx(max(scores))
        predicted = values[:, best["unit"]] > np.float32(best["threshold"])
        assert best["precision"] == pytest.approx((predicted & labels[:, v]).sum() / predicted.sum())
        assert best["recall"] == pytest.approx((predicted & labels[:, v]).sum() / labels[:, v].sum())
    assert counter.best()[1]["unit"] == 4 and counter.best()[1]["f1"] > 0.95


def test_labeled_batches_follow_the_documents():
    variables = planted_variables()
    ids, labels, scored = next(labeled_batches(variables, SEED, 10, context_size=20, batch_size=2))
    for row in range(2):
        doc = make_document(SEED, row)
        assert ids[row, 0] == V.WORD_ID[V.BOS] and not scored[row, 0] and scored[row, 1:].all()
        assert ids[row, 1:].tolist() == doc.token_ids[:19]
        for j, var in enumerate(variables):
            assert labels[row, 1:, j].tolist() == [lab == var.value for lab in doc.labels[var.label][:19]]


def test_a_planted_name_latent_is_found_with_the_independently_counted_f1(lm):
    config = RecoveryConfig(tokens=630, seed=SEED, batch_size=5, progress=False, quantiles=(0.5, 0.9))
    report = feature_recovery(lm, name_detector(), config)
    n_docs = report["n_tokens"] // 63
    assert report["context_size"] == 64 and report["n_tokens"] == 630 and n_docs == 10
    tp = predicted = positives = 0
    for index in range(n_docs):
        doc = make_document(SEED, index)
        is_name = np.array([w in V.NAMES for w in doc.words[:63]])
        role_name = np.array([r == "name" for r in doc.labels["role"][:63]])
        tp, predicted, positives = tp + (is_name & role_name).sum(), predicted + is_name.sum(), positives + role_name.sum()
    sae_set = report["unit_sets"][0]
    assert sae_set["kind"] == "sae" and sae_set["threshold_rule"] == "latent > 0"
    name = next(r for r in sae_set["per_variable"] if r["variable"] == "role=name")
    assert name["unit"] == 0
    assert name["precision"] == pytest.approx(tp / predicted) and name["recall"] == pytest.approx(tp / positives)
    assert name["f1"] == pytest.approx(2 * tp / (predicted + positives))
    kinds = [s["kind"] for s in report["unit_sets"]]
    assert kinds == ["sae", "neurons", "neurons", "random_directions"]
    assert report["unit_sets"][1]["hook"] == "blocks.0.mlp.hook_post" and report["unit_sets"][3]["n_units"] == 3
    for unit_set in report["unit_sets"]:
        assert 0 <= unit_set["recovered"] <= unit_set["n_variables"] == len(report["variables"])
        assert unit_set["mean_best_f1"] == pytest.approx(np.mean([r["f1"] for r in unit_set["per_variable"]]))
    # rare variables absent from 10 documents are listed as skipped, not scored as F1 = 0
    skipped = {v["variable"] for v in report["skipped_variables"]}
    assert all(v["positives"] >= config.min_positives for v in report["variables"])
    assert skipped.isdisjoint(v["variable"] for v in report["variables"])


def test_relevant_mlp_layer(lm):
    assert relevant_mlp_hook(lm, "blocks.2.hook_resid_pre") == "blocks.1.mlp.hook_post"
    assert relevant_mlp_hook(lm, "blocks.0.hook_resid_pre") == "blocks.0.mlp.hook_post"
    assert relevant_mlp_hook(lm, "blocks.1.attn.hook_z") == "blocks.1.mlp.hook_post"
    assert relevant_mlp_hook(lm, "blocks.2.hook_resid_post") == "blocks.2.mlp.hook_post"


def test_recovery_refuses_other_models_and_bad_settings(lm):
    other = LoadedModel.from_hf(tiny_model("gpt2"), None, name="not-toy")
    with pytest.raises(NotToyModelError, match="toy tokenizer"):
        feature_recovery(other, name_detector(), RecoveryConfig(tokens=10, progress=False))
    with pytest.raises(ConfigError, match="context_size=100 exceeds the context of model 'tiny-toy', 64 tokens"):
        feature_recovery(lm, name_detector(), RecoveryConfig(tokens=10, context_size=100, progress=False))
    with pytest.raises(ConfigError, match="neuron_hook"):
        feature_recovery(lm, name_detector(), RecoveryConfig(tokens=10, neuron_hook=HOOK, progress=False))
    with pytest.raises(ConfigError, match="quantiles"):
        RecoveryConfig(quantiles=(0.5, 1.0))
