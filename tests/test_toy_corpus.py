"""The toy corpus: determinism, labels that match the text, tokenizer round trip."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saelab.errors import ConfigError
from saelab.toy import vocabulary as V
from saelab.toy.corpus import LABEL_NAMES, SEGMENT_KINDS, iter_documents, make_document
from saelab.toy.spans import ROLES
from saelab.toy.tokenizer import build_hf_tokenizer, render_text


@pytest.fixture(scope="module")
def tokenizer():
    return build_hf_tokenizer()


@pytest.fixture(scope="module")
def docs():
    return list(itertools.islice(iter_documents(7), 40))


def test_stream_is_deterministic_and_random_access(docs):
    again = list(itertools.islice(iter_documents(7), 40))
    assert [d.words for d in again] == [d.words for d in docs]
    assert [d.labels for d in again] == [d.labels for d in docs]
    assert make_document(7, 13).words == docs[13].words
    assert next(iter_documents(7, start=5)).words == docs[5].words
    other = list(itertools.islice(iter_documents(8), 40))
    assert [d.words for d in other] != [d.words for d in docs]


def test_text_tokenizes_into_exactly_the_words(tokenizer, docs):
    for doc in docs:
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        assert ids == doc.token_ids
        assert tokenizer.convert_ids_to_tokens(ids) == doc.words
        assert tokenizer.unk_token_id not in ids


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(V.CONTENT_WORDS), min_size=1, max_size=40))
def test_any_word_sequence_round_trips(words):
    tokenizer = build_hf_tokenizer()
    assert tokenizer.convert_ids_to_tokens(tokenizer(render_text(words))["input_ids"]) == words


def test_years_split_into_century_and_two_digits(tokenizer):
    assert tokenizer.tokenize("from the year 1732 to the year 17") == ["from", "the", "year", "17", "32", "to",
                                                                      "the", "year", "17"]


def test_tokenizer_has_special_tokens(tokenizer):
    for token in (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token):
        assert token in V.SPECIAL_TOKENS
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3
    assert tokenizer("zebra")["input_ids"] == [tokenizer.unk_token_id]


def test_labels_cover_every_token_with_known_values(docs):
    for doc in docs:
        assert set(doc.labels) == set(LABEL_NAMES)
        for values in doc.labels.values():
            assert len(values) == len(doc.words)
        assert set(doc.labels["topic"]) == {doc.topic}
        assert set(doc.labels["role"]) <= set(ROLES)
        assert set(doc.labels["segment"]) <= set(SEGMENT_KINDS)
        assert len(doc.words) >= 128


def test_induction_labels_mark_exact_repeats(docs):
    """Every induction-labelled token repeats, with its predecessor, a bigram seen earlier."""
    n_marked = 0
    for doc in docs:
        w = doc.words
        for t, marked in enumerate(doc.labels["induction"]):
            if marked:
                n_marked += 1
                earlier = {(w[i - 1], w[i]) for i in range(1, t - 1)}
                assert (w[t - 1], w[t]) in earlier
    assert n_marked > 100


def test_ioi_labels_in_documents(docs):
    n = 0
    for doc in docs:
        roles = doc.labels["task_role"]
        for t, role in enumerate(roles):
            if role != "ioi.answer":
                continue
            n += 1
            lo = max(0, t - 20)
            window = {r: i for i, r in enumerate(roles[lo:t], start=lo) if r.startswith("ioi.")}
            io, s1, s2, end = (window[f"ioi.{k}"] for k in ("IO", "S1", "S2", "END"))
            assert doc.words[t] == doc.words[io] != doc.words[s1] == doc.words[s2]
            assert max(io, s1) < s2 < end == t - 1 and doc.words[end] == "to"
    assert n > 10


def test_greater_than_answers_are_larger(docs):
    n = 0
    for doc in docs:
        roles = doc.labels["task_role"]
        for t, role in enumerate(roles):
            if role == "greater_than.answer":
                n += 1
                assert roles[t - 1] == "greater_than.END" and roles[t - 5] == "greater_than.YY"
                assert doc.words[t - 1] == doc.words[t - 6]  # same century
                assert int(doc.words[t]) > int(doc.words[t - 5])
    assert n > 10


def test_docstring_answer_is_next_undocumented_argument(docs):
    n = 0
    for doc in docs:
        roles = doc.labels["task_role"]
        for t, role in enumerate(roles):
            if role != "docstring.answer":
                continue
            n += 1
            start = max(i for i in range(t) if roles[i] == "docstring.def")
            args = [doc.words[i] for i in range(start, t) if roles[i] in {f"docstring.{c}" for c in "ABCDE"}]
            documented = [doc.words[i] for i in range(start, t) if roles[i].startswith("docstring.DOC_")]
            assert documented == args[: len(documented)]
            assert doc.words[t] == args[len(documented)]
    assert n > 5


def test_prose_only_documents_are_prose(tokenizer):
    doc = make_document(3, 0, prose_only=True)
    assert set(doc.labels["segment"]) <= {"prose"}
    assert tokenizer(doc.text)["input_ids"] == doc.token_ids


@pytest.mark.parametrize("kwargs", [{"seed": -1, "index": 0}, {"seed": 0, "index": 1.5},
                                    {"seed": 0, "index": 0, "min_words": 0},
                                    {"seed": 0, "index": 0, "min_words": 50, "max_words": 10}])
def test_bad_document_arguments_are_refused(kwargs):
    with pytest.raises(ConfigError, match="accepted|whole number"):
        make_document(**kwargs)
