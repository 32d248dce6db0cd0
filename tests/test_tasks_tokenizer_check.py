"""The natural templates checked against a tokenizer: tiny BPE and word-level tokenizers built here.

- ``bpe``: byte-level BPE (GPT-2's pre-tokenizer) with digits split one by one (as Gemma and Llama 3
  write numbers), trained on prompts that use only ``KNOWN`` names and arguments, so other names split;
- ``sp``: a SentencePiece-style BPE (Metaspace: words keep the punctuation after them) trained so that
  "file," and "path," become one token each: docstring pairs swapping them change length;
- ``words``: a word-level vocabulary whose two-digit years are one token each (GPT-2's way).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from saelab.causal import task_prompts
from saelab.causal import templates as T
from saelab.causal.templates import TokenizationError, natural_text_pairs, single_token_words, year_scheme
from saelab.circuits.tasks import task_batch, text_pairs
from saelab.models import LoadedModel
from saelab.models.tiny import tiny_model

KNOWN_NAMES = T.NAMES[:8]
KNOWN_ARGS = T.DOC_ARGS[:14]


def _corpus(names=KNOWN_NAMES, args=KNOWN_ARGS) -> list[str]:
    lines = [t.format(A=a, B=b, S2=a, PLACE=p, OBJECT=o) for t in T.IOI_TEMPLATES
             for (a, b), p, o in zip(itertools.permutations(names, 2), itertools.cycle(T.PLACES),
                                     itertools.cycle(T.OBJECTS), strict=False)]
    lines += [T.GT_TEMPLATE.format(NOUN=n, XX=c, YY=f"{y:02d}") for n, c, y in
              zip(T.GT_NOUNS * 10, itertools.cycle(T.GT_CENTURIES), range(100), strict=False)]
    for i in range(0, 60):
        chosen = [args[(i + j) % len(args)] for j in range(6)]
        lines.append(T.DOC_TEMPLATE.format(FUNC="load", **dict(zip(("P1", "P2", "A", "B", "C", "S"), chosen, strict=True)),
                                           D1="the", D2="data", D3="file", W1="new", W2="item", W3="first", W4="value"))
    return lines


def _hf(tok, bos="<|endoftext|>", unk=None):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=bos, unk_token=unk)


def byte_bpe(names=KNOWN_NAMES):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(names), trainers.BpeTrainer(vocab_size=900, special_tokens=["<|endoftext|>"],
                                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                                show_progress=False))
    return _hf(tok)


@pytest.fixture(scope="module")
def bpe():
    return byte_bpe()


def test_single_token_filter_keeps_whole_words_and_drops_split_ones(bpe):
    kept = single_token_words(bpe, T.NAMES)
    assert kept == KNOWN_NAMES
    assert len(bpe(" Bartholomew", add_special_tokens=False)["input_ids"]) > 1
    assert "Bartholomew" not in single_token_words(bpe, ("Mary", "Bartholomew"))
    assert len(bpe(" Kate", add_special_tokens=False)["input_ids"]) > 1 and "Kate" not in kept  # a listed name that splits
    pairs = natural_text_pairs("ioi", 40, seed=1, tokenizer=bpe)
    used = {w.strip() for p in pairs for w in p.answers + p.wrong}
    assert used <= set(KNOWN_NAMES) and len(used) >= 6
    for pair in pairs:
        clean, corrupted = (bpe(t, add_special_tokens=False)["input_ids"] for t in (pair.clean, pair.corrupted))
        assert len(clean) == len(corrupted)
        assert sum(a != b for a, b in zip(clean, corrupted, strict=True)) == 1  # only S2 changed, one token
    args = {w.strip() for p in natural_text_pairs("docstring", 20, seed=1, tokenizer=bpe) for w in p.answers + p.wrong}
    assert args <= set(KNOWN_ARGS) | {"item"}  # "item" is also a description word of the corpus
    assert len(bpe(" target", add_special_tokens=False)["input_ids"]) > 1 and "target" not in args


def test_too_few_single_token_words_is_a_clear_error():
    few = byte_bpe(names=T.NAMES[:3])
    with pytest.raises(TokenizationError, match=r"task 'ioi': only 3 of the 44 names .* at least 4; split or unknown: "
                                                r"James, Dan"):
        natural_text_pairs("ioi", 4, tokenizer=few)
    with pytest.raises(TokenizationError, match=r"task 'ioi'"):
        text_pairs("ioi", 4, templates="natural", tokenizer=few)


def test_digit_by_digit_years_give_an_exact_tens_digit_metric(bpe):
    assert year_scheme(bpe).mode == "digit"
    for pair in natural_text_pairs("greater_than", 30, seed=2, tokenizer=bpe):
        yy = pair.clean.split(" to the year")[0][-2:]
        assert yy[1] == "9" and pair.corrupted.split(" to the year")[0].endswith("01")
        assert pair.answers == tuple(str(d) for d in range(int(yy[0]) + 1, 10))
        assert set(pair.answers) | set(pair.wrong) == set("0123456789") and not set(pair.answers) & set(pair.wrong)
        # every year YY' > YY has a tens digit among the answers, and every YY' <= YY among the wrong ones
        assert all((f"{y:02d}"[0] in pair.answers) == (y > int(yy)) for y in range(100))


def test_whole_word_vocabulary_with_two_digit_years_and_unknown_words():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    words = sorted({w for line in _corpus() for w in line.replace("\n", " ").split()
                    if not any(ch.isdigit() for ch in w)} - {"and"} | {f"{y:02d}" for y in range(100)})
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex(r"\d\d"), "isolated")])
    hf = _hf(tok, bos="<s>", unk="<unk>")
    assert year_scheme(hf).mode == "two_digit"
    pair = natural_text_pairs("greater_than", 1, seed=0, tokenizer=hf)[0]
    assert pair == natural_text_pairs("greater_than", 1, seed=0)[0]  # GPT-2's scheme, the same draw
    assert single_token_words(hf, ("Mary", "Bartholomew")) == ("Mary",)  # unknown -> dropped
    with pytest.raises(TokenizationError, match="template text .* does not know"):
        natural_text_pairs("ioi", 2, tokenizer=hf)  # "and" is not in the vocabulary


def test_pairs_whose_lengths_differ_are_redrawn_and_exhaustion_is_an_error(monkeypatch):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    corpus = _corpus() + ["(self, file, path, data)"] * 200 + [" ".join(KNOWN_ARGS)] * 200
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1200, special_tokens=["<s>", "<unk>"],
                                                        show_progress=False))
    sp = _hf(tok, bos="<s>", unk="<unk>")
    assert sp.convert_ids_to_tokens(sp("(self, file,", add_special_tokens=False)["input_ids"])[-1] == "▁file,"

    def lengths(pair):
        return [len(sp(t, add_special_tokens=False)["input_ids"]) for t in (pair.clean, pair.corrupted)]

    unchecked = [lengths(p) for p in natural_text_pairs("docstring", 60, seed=0)]
    assert any(a != b for a, b in unchecked)  # the published draw has pairs this tokenizer cannot use
    checked = natural_text_pairs("docstring", 60, seed=0, tokenizer=sp)
    assert len(checked) == 60 and all(a == b for a, b in map(lengths, checked))
    monkeypatch.setattr(T, "_same_length", lambda tokenizer, pair: False)
    with pytest.raises(TokenizationError, match=r"task 'ioi': 21 drawn pairs had clean and corrupted prompts of "
                                                "different token lengths"):
        natural_text_pairs("ioi", 1, tokenizer=sp)


def test_task_batch_and_patching_prompts_on_a_model_with_that_tokenizer(bpe, one_torch_thread):
    lm = LoadedModel.from_hf(tiny_model("gpt2", vocab_size=len(bpe)), bpe, name="tiny-bpe")
    for task in ("ioi", "greater_than", "docstring"):
        batch = task_batch(lm, task, 6, seed=4)  # default for a non-toy model: natural, checked
        assert batch.clean_ids.shape == batch.corrupted_ids.shape and batch.answers.any(1).all()
        with torch.no_grad():
            assert batch.metric(lm.run_with_hooks(batch.clean_ids, {}, attention_mask=batch.mask)).isfinite().all()
    ioi = task_batch(lm, "ioi", 6, seed=4)
    ends = ioi.clean_ids[torch.arange(6), ioi.end]
    assert bpe.convert_ids_to_tokens(ends.tolist()) == ["Ġto"] * 6
    for i in range(6):
        (io,) = ioi.answers[i].nonzero()[:, 0].tolist()
        assert (ioi.clean_ids[i] == io).sum() == 1 and (ioi.clean_ids[i] == ioi.wrong[i].nonzero()[0, 0]).sum() == 2

    prompts = task_prompts(lm, "ioi", 5, seed=3, counterfactual="io")
    assert prompts.n == 5 and prompts.dropped == 0
    differs = prompts.clean_ids != prompts.counterfactual_ids
    assert differs.sum(1).tolist() == [1] * 5
    new_io = prompts.counterfactual_ids[differs]
    assert torch.equal(prompts.answer_ids, new_io)  # the counterfactual's answer is its new indirect object
    assert all(bpe.convert_ids_to_tokens(int(t)).lstrip("Ġ") in KNOWN_NAMES for t in new_io)
    with pytest.raises(TokenizationError, match="task 'ioi'"):
        task_prompts(LoadedModel.from_hf(tiny_model("gpt2", vocab_size=900), byte_bpe(T.NAMES[:2]), name="few"),
                     "ioi", 2)


@pytest.mark.real
def test_gemma3_tokenizer_keeps_every_task_word_and_writes_years_digit_by_digit():
    """Gemma 3 270M's SentencePiece tokenizer (262k tokens; no weights needed): every name and argument
    is one token with its leading space, years go digit by digit, and every pair keeps its length."""
    import os
    from pathlib import Path

    from transformers import AutoTokenizer

    folder = Path(os.environ.get("SAELAB_REAL_DIR", Path(__file__).resolve().parents[1] / "real")) / "gemma-3-270m"
    if not (folder / "tokenizer.json").exists():
        pytest.fail(f"{folder} is missing: run bash scripts/get_real_model.sh (or set SAELAB_REAL_DIR)")
    tok = AutoTokenizer.from_pretrained(folder)
    assert single_token_words(tok, T.NAMES) == T.NAMES
    assert single_token_words(tok, T.DOC_ARGS, ":param") == T.DOC_ARGS
    assert year_scheme(tok).mode == "digit"
    for task in ("ioi", "greater_than", "docstring"):
        for pair in natural_text_pairs(task, 64, seed=0, tokenizer=tok):
            clean, corrupted = (tok(t, add_special_tokens=False)["input_ids"] for t in (pair.clean, pair.corrupted))
            assert len(clean) == len(corrupted), pair
