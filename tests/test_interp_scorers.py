"""Autointerp scorers beyond detection/fuzzing/simulation: intruder detection, surprisal, embedding
scoring, hard negatives and frequency-weighted summaries, each against a hand computation on planted
examples; on the toy world a trained SAE's latents beat density-matched random directions."""

import json
import re

import numpy as np
import pytest
import torch

from saelab.errors import ConfigError
from saelab.interp.autointerp import (
    AutointerpConfig,
    explain_and_score,
    frequency_weighted_mean,
    run_autointerp,
    split_examples,
    summarise,
)
from saelab.interp.embedding import (
    TfidfEmbedder,
    WordLlamaEmbedder,
    embedding_score,
    example_text,
    make_embedder,
    unit_rows,
)
from saelab.interp.explainers import TokenExplainer
from saelab.interp.gather import Example, FeatureData, FeatureRecord
from saelab.interp.intruder import intruder_score, intruder_trials, parse_intruder_reply
from saelab.interp.judges import LLMJudge, TokenJudge
from saelab.interp.negatives import hard_negatives, rank_hard_negatives
from saelab.interp.prompts import ReplyFormatError
from saelab.interp.scoring import detection_score, roc_auc
from saelab.interp.surprisal import GENERIC, TEMPLATE, CausalLMScorer, surprisal_score

# ------------------------------------------------------------------ planted examples: "cat" fires


def ex(text, fire_on="cat", value=2.0, window=0):
    words = text.split()
    acts = [value if w == fire_on else 0.0 for w in words]
    return Example(tokens=words, acts=acts, mark=acts.index(value) if value in acts else -1, window=window,
                   pos=0, act=max(acts))


def silent(text, window=0):
    return ex(text, fire_on=None, window=window)


POS = [ex("the cat sat on a mat", window=1), ex("a big cat ran off", window=2), ex("cat and dog play now", window=3),
       ex("my old cat is grey", window=4), ex("feed the cat some fish", window=5), ex("one cat two birds", window=6)]
NEG = [silent(f"dogs and cows eat grass number {i}", window=100 + i) for i in range(12)]


class Fixed:
    """An explainer that always says ``text``."""

    name = "fixed"

    def __init__(self, text):
        self.text = text

    def explain(self, examples):
        return self.text


def test_roc_auc_is_the_mann_whitney_probability_with_half_ties():
    # pairs (pos, neg): 3>2, 3>0, 2=2 (half), 2>0, 1<2, 1>0  ->  4.5 / 6
    assert roc_auc([3, 2, 1], [2, 0]) == pytest.approx(0.75)
    assert roc_auc([1, 1], [1]) == 0.5 and roc_auc([5], [1, 2]) == 1.0
    assert roc_auc([], [1.0]) is None and roc_auc([1.0], []) is None


# ------------------------------------------------------------------ intruder detection


def test_intruder_trials_hold_k_activating_and_the_next_silent_one_at_a_seeded_place():
    trials = intruder_trials(POS, NEG, k=3, n_trials=5, seed=7)
    assert len(trials) == 5
    for t, trial in enumerate(trials):
        assert len(trial.examples) == 4 and trial.examples[trial.intruder] is NEG[t]
        shown = [e for i, e in enumerate(trial.examples) if i != trial.intruder]
        assert all(e.fires for e in shown) and len({id(e) for e in shown}) == 3
    again = intruder_trials(POS, NEG, k=3, n_trials=5, seed=7)
    assert [t.intruder for t in again] == [t.intruder for t in trials]
    assert len(intruder_trials(POS, NEG[:2], k=3, n_trials=5)) == 2            # one trial per negative at most


def test_intruder_accuracy_is_one_for_the_right_explanation_and_chance_for_a_useless_one():
    judge = TokenJudge()
    assert intruder_score(judge, 'Fires on "cat".', POS, NEG, k=3, n_trials=12) == 1.0
    # quoting a word found nowhere, every example ties and the judge names the first: right exactly when
    # the intruder was put first
    trials = intruder_trials(POS, NEG, k=3, n_trials=12, seed=1)
    by_hand = sum(t.intruder == 0 for t in trials) / len(trials)
    assert intruder_score(judge, 'Fires on "zebra".', POS, NEG, k=3, n_trials=12, seed=1) == pytest.approx(by_hand)
    many_neg = [silent(f"dogs eat grass {i}", window=200 + i) for i in range(200)]
    useless = intruder_score(judge, 'Fires on "zebra".', POS, many_neg, k=3, n_trials=200, seed=3)
    assert abs(useless - 1 / 4) < 0.08                                           # chance: 1/(k+1)
    # an explanation of the wrong token names an activating example as often as not
    assert intruder_score(judge, 'Fires on "dog".', POS, NEG, k=3, n_trials=12) < 0.5


def test_intruder_refuses_too_few_examples_for_k_no_intruders_and_an_empty_explanation():
    judge = TokenJudge()
    with pytest.raises(ConfigError, match=r"k=7 needs at least 7 activating examples per trial and got 6"):
        intruder_score(judge, 'Fires on "cat".', POS, NEG, k=7)
    with pytest.raises(ConfigError, match="needs non-activating examples"):
        intruder_score(judge, 'Fires on "cat".', POS, [], k=3)
    with pytest.raises(ConfigError, match="explanation='  ' is empty"):
        intruder_score(judge, "  ", POS, NEG, k=3)
    with pytest.raises(ConfigError, match="intruder_k=5 needs n_activating >= 5"):
        AutointerpConfig(scorers="detection,intruder", intruder_k=5, n_activating=4)


class FakeClient:
    """A chat client that believes the latent fires on "cat" (answers intruder prompts only)."""

    def __init__(self, reply=None):
        self.sent, self.reply = [], reply

    def chat(self, messages):
        self.sent.append(messages[-1]["content"])
        if self.reply is not None:
            return self.reply
        items = re.findall(r"^(\d+)\. (.*)$", messages[-1]["content"], flags=re.M)
        return next(f"Text {n}." for n, text in items if not re.search(r"\bcat\b", text))

    def chat_many(self, batch):
        return [self.chat(m) for m in batch]


def test_llm_judge_names_the_intruder_by_number_and_bad_replies_are_format_errors():
    client = FakeClient()
    assert intruder_score(LLMJudge(client), 'fires on "cat"', POS, NEG, k=4, n_trials=3) == 1.0
    assert len(client.sent) == 3
    prompt = client.sent[0]
    assert 'A latent is explained as: fires on "cat"' in prompt and "the intruder" in prompt
    assert "1. " in prompt and "5. " in prompt and "6. " not in prompt and "(1 to 5)" in prompt
    assert parse_intruder_reply("The intruder is 3", 5) == 2
    with pytest.raises(ReplyFormatError, match="no number"):
        parse_intruder_reply("the third one", 5)
    with pytest.raises(ReplyFormatError, match="names text 6; expected a number in 1..5"):
        intruder_score(LLMJudge(FakeClient("6")), "x", POS, NEG, k=4, n_trials=1)


# ------------------------------------------------------------------ surprisal


class FakeLM:
    """Losses set by hand: ``(generic, explained)`` per text; counts the calls."""

    name = "fake-lm"

    def __init__(self, table):
        self.table, self.calls = table, []

    def losses(self, prefix, texts):
        self.calls.append((prefix, list(texts)))
        generic = GENERIC in prefix
        return [self.table[t][0 if generic else 1] for t in texts]


def test_surprisal_auc_and_mean_reductions_match_a_hand_computation():
    pos, neg = POS[:3], NEG[:2]
    reductions = {**dict(zip(map(example_text, pos), [0.5, 0.3, 0.1], strict=True)),
                  **dict(zip(map(example_text, neg), [0.2, 0.0], strict=True))}
    lm = FakeLM({t: (3.0, 3.0 - r) for t, r in reductions.items()})
    result = surprisal_score(lm, 'Fires on "cat".', pos, neg)
    # pairs: 0.5 beats both, 0.3 both, 0.1 only 0.0  ->  5 / 6
    assert result.auc == pytest.approx(5 / 6)
    assert result.reduction_activating == pytest.approx(0.3) and result.reduction_non_activating == pytest.approx(0.1)
    prefixes = [p for p, _ in lm.calls]
    assert prefixes == [TEMPLATE.format(explanation=GENERIC), TEMPLATE.format(explanation='Fires on "cat".')]


def test_surprisal_refuses_a_missing_lm_an_empty_explanation_and_a_template_without_a_slot():
    with pytest.raises(ConfigError, match="surprisal scoring needs a causal LM"):
        surprisal_score(None, "x", POS, NEG)
    lm = FakeLM({})
    with pytest.raises(ConfigError, match="explanation='' is empty"):
        surprisal_score(lm, "", POS, NEG)
    with pytest.raises(ConfigError, match="must contain '{explanation}'"):
        surprisal_score(lm, "x", POS, NEG, template="Explained: ")
    data = FeatureData(meta={}, features=[planted_record()])
    with pytest.raises(ConfigError, match="scorer 'surprisal' needs a causal LM"):
        run_autointerp(data, TokenExplainer(), TokenJudge(), AutointerpConfig(scorers="surprisal", progress=False))


def reference_losses(lm, prefix, texts):
    """Mean next-token cross-entropy of each text after [BOS] prefix, one unpadded forward per text."""
    head = [lm.bos_token_id] + lm.tokenizer(prefix, add_special_tokens=False)["input_ids"]
    out = []
    for text in texts:
        body = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([head + body])
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0].float()
        out.append(float(torch.nn.functional.cross_entropy(logits[len(head) - 1:-1], ids[0, len(head):])))
    return out


@pytest.fixture(scope="module", params=["toy", "tiny-gemma2"])
def scorer_lm(request, one_torch_thread):
    from saelab.models import LoadedModel, load_model
    from saelab.models.tiny import tiny_model
    from saelab.toy.tokenizer import build_hf_tokenizer

    if request.param == "toy":
        return load_model("toy")
    tokenizer = build_hf_tokenizer()               # a Gemma 2 layout with its logit soft-caps, toy vocabulary
    return LoadedModel.from_hf(tiny_model("gemma2", vocab_size=len(tokenizer)), tokenizer, name="tiny-gemma2")


def test_causal_lm_scorer_losses_are_the_models_own_cross_entropy_batched_and_kept(scorer_lm):
    texts = ["the captain sail hull", "the doctor heals a chronic fever in the harbor", "storm tide"]
    prefix = TEMPLATE.format(explanation='Fires on "sail".')
    scorer = CausalLMScorer(scorer_lm, batch_size=2)                 # two batches, padded rows
    got = scorer.losses(prefix, texts)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(reference_losses(scorer_lm, prefix, texts)),
                               atol=1e-4, rtol=1e-4)
    assert scorer.name.startswith(f"{scorer_lm.name}@") and len(scorer._known) == 3
    assert scorer.losses(prefix, texts[::-1]) == got[::-1] and len(scorer._known) == 3   # kept, not recomputed
    with pytest.raises(ConfigError, match="gives no token"):
        scorer.losses(prefix, [""])


# ------------------------------------------------------------------ embedding scoring


class TableEmbedder:
    """Vectors set by hand per text."""

    name = "table"

    def __init__(self, table):
        self.table = table

    def embed(self, texts):
        return np.array([self.table[t] for t in texts], dtype=float)


def test_embedding_auc_is_computed_from_cosines_to_the_explanation():
    pos, neg = POS[:2], NEG[:2]
    expl = "about cats"
    # cosines to the explanation [1, 0]: pos 0.8 and 0; neg 0.6 and -1  ->  pairs won 1 + 1 + 0 + 1 = 3 of 4
    table = {expl: [2.0, 0.0], example_text(pos[0]): [0.8, 0.6], example_text(pos[1]): [0.0, 3.0],
             example_text(neg[0]): [3.0, 4.0], example_text(neg[1]): [-1.0, 0.0]}
    assert embedding_score(TableEmbedder(table), expl, pos, neg) == pytest.approx(0.75)
    assert embedding_score(TableEmbedder(table), expl, pos, []) is None
    with pytest.raises(ConfigError, match="is empty"):
        embedding_score(TableEmbedder(table), " ", pos, neg)


def test_tfidf_embedding_separates_handmade_texts_by_the_explained_word_and_a_useless_explanation_is_chance():
    tfidf = make_embedder("tfidf")
    assert isinstance(tfidf, TfidfEmbedder) and tfidf.name == "tfidf"
    assert embedding_score(tfidf, 'Fires on "cat".', POS, NEG) == 1.0    # only positives share a word with it
    assert embedding_score(tfidf, 'Mentions "zebra".', POS, NEG) == 0.5  # shares no word: all cosines 0
    vectors = unit_rows(tfidf.embed(["cat cat dog", "cat", "zebra", "!!"]))
    assert vectors[0] @ vectors[1] > 0 and vectors[1] @ vectors[2] == 0 and not vectors[3].any()
    with pytest.raises(ConfigError, match="embedder='bert'"):
        make_embedder("bert")


def test_wordllama_embedder_runs_offline_and_matches_paraphrases_tfidf_cannot():
    embedder = make_embedder("wordllama")
    assert isinstance(embedder, WordLlamaEmbedder) and embedder.embed(["a", "b c"]).shape == (2, 256)
    boats = [ex("captain steered ships across oceans"), ex("sailors rowed boats toward harbors")]
    medicine = [silent("physician treated patients fever"), silent("nurses gave pills")]
    expl = "sea voyages"                                                  # no word in common with any text
    assert embedding_score(embedder, expl, boats, medicine) == 1.0
    assert embedding_score(TfidfEmbedder(), expl, boats, medicine) == 0.5


# ------------------------------------------------------------------ hard negatives


def test_hard_negatives_are_the_silent_contexts_most_similar_to_the_activating_ones():
    shares = silent("the cat is asleep now", window=50)                  # the firing token, latent silent
    close = silent("the dog sat on a mat", window=51)
    far = silent("stocks fell sharply on friday", window=52)
    firing = ex("another cat here", window=53)
    candidates = [far, firing, close, shares] + NEG[:4]
    chosen, stats = hard_negatives(POS, candidates, 3)
    assert chosen[:2] == [shares, close] and firing not in chosen and not any(c.fires for c in chosen)
    # brute force: highest cosine (same TF-IDF fit) to any activating example, after those sharing the token
    pool = [c for c in candidates if not c.fires]
    vectors = unit_rows(TfidfEmbedder().embed([example_text(e) for e in POS + pool]))
    best = (vectors[len(POS):] @ vectors[:len(POS)].T).max(1)
    rest = [c for c in pool if c is not shares]
    assert chosen[1:] == sorted(rest, key=lambda c: -best[pool.index(c)])[:2]
    ranked = rank_hard_negatives(POS, candidates)
    assert [r.example for r in ranked][:3] == chosen and ranked[0].shares_token and not ranked[1].shares_token
    assert stats["share_firing_token"] == pytest.approx(1 / 3)
    assert stats["mean_similarity"] == pytest.approx(float(np.mean([r.similarity for r in ranked[:3]])))
    with pytest.raises(ConfigError, match="need activating examples"):
        hard_negatives([], candidates, 3)


def planted_record(index=0, density=0.1, n_pos=12, negatives=None):
    """A "cat" latent: top examples = one quantile group; random contexts: 12 far ones, then the hard ones
    (the token "cat" where the latent is silent)."""
    pos = [ex(f"the cat number {i} sat", window=i) for i in range(n_pos)]
    negatives = negatives if negatives is not None else NEG + [silent(f"the cat toy {i} broke", window=300 + i)
                                                               for i in range(6)]
    group = {"label": "", "hi": 2.0, "lo": 2.0, "fraction": 1.0, "examples": pos}
    return FeatureRecord(index=index, density=density, n_fires=len(pos), max_act=2.0, mean_act=2.0, hist={},
                         top_examples=pos[:4], quantile_groups=[group], random_examples=negatives)


def test_hard_negatives_in_the_split_make_detection_harder_than_random_ones():
    record = planted_record()
    random_cfg = AutointerpConfig(n_explain=4, n_activating=6, n_quantiles=1, n_non_activating=6, progress=False)
    hard_cfg = AutointerpConfig(n_explain=4, n_activating=6, n_quantiles=1, n_non_activating=6, negatives="hard",
                                progress=False)
    easy, hard = split_examples(record, random_cfg), split_examples(record, hard_cfg)
    assert easy.non_activating == NEG[:6] and easy.negatives is None
    assert all("cat" in e.tokens and not e.fires for e in hard.non_activating)
    assert hard.negatives["share_firing_token"] == 1.0 and easy.activating == hard.activating
    judge, expl = TokenJudge(), 'Fires on "cat".'
    assert detection_score(judge, expl, easy.activating, easy.non_activating) == 1.0
    assert detection_score(judge, expl, hard.activating, hard.non_activating) == 0.5   # every hard one fooled it
    result = explain_and_score(record, Fixed(expl), judge, hard_cfg)
    assert result["negatives"] == hard.negatives and result["detection"] == 0.5
    with pytest.raises(ConfigError, match="negatives='similar'"):
        AutointerpConfig(negatives="similar")


# ------------------------------------------------------------------ aggregates, runs, caching


def test_frequency_weighted_mean_is_hand_checked_beside_the_plain_mean():
    assert frequency_weighted_mean([1.0, 0.5, None], [0.1, 0.3, 0.6]) == pytest.approx((0.1 + 0.15) / 0.4)
    assert frequency_weighted_mean([None], [0.2]) is None and frequency_weighted_mean([1.0], [0.0]) is None
    results = [{"feature": i, "density": d, "detection": s, "fuzzing": None, "simulation": None, "intruder": t,
                "n_activating": 4, "n_non_activating": 4, "error": None}
               for i, (d, s, t) in enumerate([(0.1, 1.0, 0.5), (0.3, 0.5, None), (0.6, None, 1.0)])]
    summary = summarise(results, AutointerpConfig(scorers="detection,intruder", intruder_k=3, n_activating=4))
    assert summary["mean_detection"] == pytest.approx(0.75)
    assert summary["freq_weighted_mean_detection"] == pytest.approx(0.625)          # (0.1·1 + 0.3·0.5) / 0.4
    assert summary["mean_intruder"] == pytest.approx(0.75) and summary["n_intruder"] == 2
    assert summary["freq_weighted_mean_intruder"] == pytest.approx((0.05 + 0.6) / 0.7)
    assert summary["intruder_chance"] == 0.25 and summary["mean_fuzzing"] is None
    assert "mean_surprisal" not in summary


def test_new_scores_are_cached_and_resumed_and_their_settings_are_the_cache_key(tmp_path):
    records = [planted_record(0, 0.1), planted_record(1, 0.3), planted_record(2, 0.2, n_pos=6)]
    data = FeatureData(meta={}, features=records)
    table = {example_text(e): (3.0, 2.0 if "cat" in e.tokens else 3.0)
             for r in records for e in r.top_examples + r.quantile_groups[0]["examples"] + r.random_examples}
    lm = FakeLM(table)
    cfg = AutointerpConfig(n_explain=4, n_activating=6, n_quantiles=1, n_non_activating=6, progress=False,
                           scorers="detection,intruder,surprisal,embedding", intruder_k=5, intruder_trials=4)
    out = tmp_path / "results.json"
    report = run_autointerp(data, TokenExplainer(), TokenJudge(), cfg, out, surprisal_lm=lm)
    first = report["results"][0]
    assert first["explanation"].startswith('Fires on "cat"')
    assert first["intruder"] == 1.0 and first["intruder_trials"] == 4 and first["embedding"] == 1.0
    assert first["surprisal"] == 1.0 and first["surprisal_reduction_activating"] == pytest.approx(1.0)
    assert first["surprisal_reduction_non_activating"] == 0.0 and first["simulation"] is None
    short = report["results"][2]                    # 6 firings: 4 explained, 2 held out < k = 5
    assert short["intruder"] is None and "each trial needs 5 and 1" in short["skipped"]["intruder"]
    assert short["detection"] is not None
    saved = json.loads(out.read_text())
    assert saved["setup"]["config"] == {"n_explain": 4, "n_activating": 6, "n_quantiles": 1,
                                        "n_non_activating": 6, "seed": 0}
    assert saved["setup"]["scoring"] == {"scorers": ["detection", "intruder", "surprisal", "embedding"],
                                         "negatives": "random", "intruder_k": 5, "intruder_trials": 4,
                                         "surprisal_template": TEMPLATE, "surprisal_generic": GENERIC,
                                         "surprisal_lm": "fake-lm", "embedder": "tfidf"}
    summary = saved["summary"]
    assert summary["mean_intruder"] == 1.0 and summary["n_intruder"] == 2 and summary["intruder_chance"] == 1 / 6
    assert summary["freq_weighted_mean_detection"] is not None
    n_calls = len(lm.calls)
    again = run_autointerp(data, TokenExplainer(), TokenJudge(), cfg, out, surprisal_lm=lm)
    assert again["results"] == report["results"] and len(lm.calls) == n_calls          # resumed, nothing redone
    for changed in ({"intruder_k": 4}, {"negatives": "hard"}, {"scorers": "detection,intruder,embedding"}):
        with pytest.raises(ConfigError, match="another setup"):
            run_autointerp(data, TokenExplainer(), TokenJudge(), AutointerpConfig(**{**vars(cfg), **changed}), out,
                           surprisal_lm=lm)
    other_lm = FakeLM(table)
    other_lm.name = "other-lm"
    with pytest.raises(ConfigError, match="another setup"):
        run_autointerp(data, TokenExplainer(), TokenJudge(), cfg, out, surprisal_lm=other_lm)
    # the default scoring records no "scoring": files written before these scorers existed still resume
    plain = run_autointerp(data, TokenExplainer(), TokenJudge(), AutointerpConfig(n_explain=4, n_activating=6,
                           n_quantiles=1, progress=False))
    assert "scoring" not in plain["setup"] and "intruder" not in plain["results"][0]


def test_bad_scorer_lists_and_empty_explanations_are_refused_with_what_is_accepted():
    with pytest.raises(ConfigError, match="scorer='sentiment' is not accepted; choose one of: detection"):
        AutointerpConfig(scorers="detection,sentiment")
    with pytest.raises(ConfigError, match="name each scorer once"):
        AutointerpConfig(scorers=("intruder", "intruder"))
    with pytest.raises(ConfigError, match="n_non_activating=0; both must be >= 1"):
        AutointerpConfig(scorers="embedding", n_non_activating=0)
    cfg = AutointerpConfig(n_explain=4, n_activating=6, n_quantiles=1, scorers="intruder,embedding", progress=False)
    result = explain_and_score(planted_record(), Fixed(""), TokenJudge(), cfg)
    assert "empty explanation" in result["error"] and result["intruder"] is None


# ------------------------------------------------------------------ the toy world

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def toy_sae(tmp_path_factory, one_torch_thread):
    """A TopK SAE (128 latents, k 8) trained on 60k tokens of the toy model's layer-1 residual stream."""
    from saelab.causal.quick_sae import SAETrainSpec, default_sae
    from saelab.models import load_model

    out = tmp_path_factory.mktemp("toy_sae")
    _, note = default_sae(load_model("toy"), HOOK, SAETrainSpec(d_sae=128, k=8, tokens=60_000, batch_size=512,
                                                                dead_window_tokens=30_000), out, progress=False)
    return note["path"]


def autointerp(capsys, folder, out, *extra):
    from saelab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["autointerp", str(folder), "--tokens", "8000", "--threads", "1", "--no-progress", "--json",
              "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    return json.loads(captured.out)


def test_toy_sae_latents_beat_density_matched_random_directions_at_intruder_detection(toy_sae, tmp_path, capsys):
    flags = ["--features", "0-47", "--scorers", "detection,intruder,embedding"]
    sae = autointerp(capsys, toy_sae, tmp_path / "sae", *flags)["summary"]
    rnd = autointerp(capsys, toy_sae, tmp_path / "rnd", *flags, "--baseline", "random", "--baseline-density", "sae",
                     "--baseline-fit-tokens", "8000")["summary"]
    print({k: (sae[k], rnd[k]) for k in sae if k.startswith(("mean_", "freq_"))})
    assert sae["n_intruder"] >= 35 and rnd["n_intruder"] >= 40 and sae["intruder_chance"] == 0.2
    assert sae["mean_intruder"] > rnd["mean_intruder"] + 0.05
    assert rnd["mean_intruder"] > sae["intruder_chance"]          # token explanations say something even so
    assert sae["freq_weighted_mean_intruder"] is not None and sae["mean_embedding"] is not None


def test_cli_surprisal_with_hard_negatives_on_the_toy_model_records_its_setup(toy_sae, tmp_path, capsys):
    report = autointerp(capsys, toy_sae, tmp_path / "s", "--features", "0-3", "--scorers", "surprisal,intruder",
                        "--negatives", "hard", "--intruder-k", "3", "--intruder-trials", "5",
                        "--n-non-activating", "5")
    scoring = report["setup"]["scoring"]
    assert scoring["scorers"] == ["surprisal", "intruder"] and scoring["negatives"] == "hard"
    assert scoring["surprisal_lm"].startswith("toy@") and scoring["embedder"] == "tfidf"
    assert scoring["intruder_k"] == 3 and scoring["intruder_trials"] == 5
    scored = [r for r in report["results"] if r["surprisal"] is not None]
    assert scored and all(0 <= r["surprisal"] <= 1 and r["negatives"]["mean_similarity"] > 0 for r in scored)
    assert all(r["detection"] is None and r["n_non_activating"] <= 5 for r in report["results"])
    from saelab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["autointerp", toy_sae, "--features", "0", "--scorers", "intruder", "--intruder-k", "20",
              "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "intruder_k=20 needs n_activating >= 20" in capsys.readouterr().err
