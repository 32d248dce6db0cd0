"""The task datasets' labels, metrics and tokenisation checks; the shipped ground truths."""

from __future__ import annotations

import pytest
import torch

from saelab.circuits.ground_truth import available, ground_truth_for, load_ground_truth
from saelab.circuits.heads import Head, parse_head
from saelab.circuits.tasks import TokenizationError, gpt2_text_pairs, single_token_id, task_batch, text_pairs
from saelab.errors import ConfigError


@pytest.fixture(scope="module")
def toy_lm(one_torch_thread):
    from saelab.models import load_model

    return load_model("toy")


def _decode(lm, ids):
    return lm.tokenizer.convert_ids_to_tokens(ids.tolist())


def test_ioi_labels(toy_lm):
    batch = task_batch(toy_lm, "ioi", 20, seed=3)
    for i in range(len(batch)):
        clean, corrupted = _decode(toy_lm, batch.clean_ids[i]), _decode(toy_lm, batch.corrupted_ids[i])
        io, s = _decode(toy_lm, batch.answers[i].nonzero()[:, 0]), _decode(toy_lm, batch.wrong[i].nonzero()[:, 0])
        assert len(io) == 1 and len(s) == 1 and io != s
        end = int(batch.end[i])
        assert clean[:end + 1].count(s[0]) == 2 and clean[:end + 1].count(io[0]) == 1
        changed = [j for j in range(end + 1) if clean[j] != corrupted[j]]
        assert len(changed) == 1 and corrupted[changed[0]] not in (io[0], s[0])  # ABC: three distinct names
        assert clean[end] == "to"


def test_greater_than_and_docstring_labels(toy_lm):
    batch = task_batch(toy_lm, "greater_than", 10, seed=3)
    for i in range(len(batch)):
        clean, corrupted = _decode(toy_lm, batch.clean_ids[i]), _decode(toy_lm, batch.corrupted_ids[i])
        yy = next(clean[j] for j in range(len(clean)) if clean[j] != corrupted[j])
        assert corrupted[clean.index(yy)] == "01"
        answers = {int(t) for t in _decode(toy_lm, batch.answers[i].nonzero()[:, 0])}
        wrong = {int(t) for t in _decode(toy_lm, batch.wrong[i].nonzero()[:, 0])}
        assert answers == set(range(int(yy) + 1, 100)) and wrong == set(range(int(yy) + 1))
    batch = task_batch(toy_lm, "docstring", 10, seed=3)
    for i in range(len(batch)):
        clean, corrupted = _decode(toy_lm, batch.clean_ids[i]), _decode(toy_lm, batch.corrupted_ids[i])
        answer = _decode(toy_lm, batch.answers[i].nonzero()[:, 0])[0]
        def_args = clean[clean.index("(") + 1: clean.index(")")]
        assert answer in def_args and answer not in corrupted[corrupted.index("("): corrupted.index(")")]
        assert clean[int(batch.end[i])] == "param"
        wrong = set(_decode(toy_lm, batch.wrong[i].nonzero()[:, 0]))
        assert wrong == {a for a in def_args if a not in (",", "self", answer)}


def test_the_toy_model_solves_clean_prompts_and_not_corrupted_ones(toy_lm):
    for task in ("ioi", "greater_than", "docstring"):
        batch = task_batch(toy_lm, task, 16, seed=9)
        with torch.no_grad():
            clean = batch.metric(toy_lm.run_with_hooks(batch.clean_ids, {})).mean()
            corrupted = batch.metric(toy_lm.run_with_hooks(batch.corrupted_ids, {})).mean()
        assert clean > corrupted + 0.3, task


def test_gpt2_templates():
    for pair in gpt2_text_pairs("ioi", 20, 0):
        io, s = pair.answers[0].strip(), pair.wrong[0].strip()
        assert pair.clean.count(s) == 2 and pair.clean.count(io) == 1
        assert pair.corrupted.count(s) == 1 and pair.corrupted.count(io) == 1
    for pair in gpt2_text_pairs("greater_than", 10, 0):
        assert pair.corrupted[:-2].endswith("01 to the year") or "01 to the year" in pair.corrupted
        yy = int(pair.clean.split(" to the year")[0][-2:])
        assert pair.answers == tuple(f"{y:02d}" for y in range(yy + 1, 100))
    for pair in gpt2_text_pairs("docstring", 10, 0):
        answer = pair.answers[0].strip()
        assert answer in pair.clean.split("\n")[0] and answer not in pair.corrupted.split("\n")[0]
        assert pair.clean.split("\n", 1)[1] == pair.corrupted.split("\n", 1)[1]
        assert pair.clean.endswith(":param")


def test_tokenizer_that_breaks_task_words_is_refused(toy_lm):
    with pytest.raises(TokenizationError, match="'Mary and' to be one token"):
        single_token_id(toy_lm.tokenizer, "Mary and")
    with pytest.raises(TokenizationError, match="does not know it"):
        single_token_id(toy_lm.tokenizer, "Bartholomew")
    for templates in ("gpt2", "natural"):  # the toy vocabulary lacks template words such as "Then"
        with pytest.raises(TokenizationError, match="does not know"):
            task_batch(toy_lm, "ioi", 8, seed=0, templates=templates)


def test_gpt2_is_the_former_name_of_natural_and_the_published_draw_is_kept():
    for task in ("ioi", "greater_than", "docstring"):
        assert text_pairs(task, 6, 2, "gpt2") == text_pairs(task, 6, 2, "natural") == gpt2_text_pairs(task, 6, 2)
    with pytest.raises(ConfigError, match="templates"):
        text_pairs("ioi", 2, 0, "gemma")


def test_published_ground_truths():
    ioi = load_ground_truth("gpt2-small:ioi")
    assert len(ioi.heads) == 26 and Head(9, 9) in ioi.heads and Head(11, 10) in ioi.classes["negative name mover"]
    assert set(map(str, load_ground_truth("gpt2-small:greater_than").heads)) == {
        "0.1", "0.3", "0.5", "5.5", "6.1", "6.9", "7.10", "8.11", "9.1"}
    doc = load_ground_truth("attn-only-4l:docstring")
    assert set(map(str, doc.heads)) == {"0.5", "1.2", "1.4", "2.0", "3.0", "3.6", "1.0"}
    assert all(load_ground_truth(name).source for name in available())


def test_toy_reference_and_model_checks(toy_lm):
    truth = ground_truth_for(toy_lm, "ioi")
    assert truth.name == "toy:ioi" and truth.heads and "mean ablation" in truth.source
    with pytest.raises(ConfigError, match="does not have"):
        ground_truth_for(toy_lm, "ioi", "gpt2-small:ioi")
    with pytest.raises(ConfigError, match="for task 'ioi', not 'docstring'"):
        ground_truth_for(toy_lm, "docstring", "toy:ioi")
    with pytest.raises(ConfigError, match="does not exist"):
        load_ground_truth("nope")
    with pytest.raises(ConfigError, match="LAYER.HEAD"):
        parse_head("9-6")
