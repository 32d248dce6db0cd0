"""The bundled toy model: loads through the ordinary Hugging Face path and passes the gates."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from saelab.cli import main
from saelab.errors import ConfigError, CorruptFileError
from saelab.toy import bundled_model_path
from saelab.toy.evaluation import GATES, evaluate_toy_model, load_toy_model

N_PROMPTS = 100


@pytest.fixture(scope="module")
def loaded():
    path = bundled_model_path()
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def scores(loaded):
    model, tokenizer = loaded
    return evaluate_toy_model(n_prompts=N_PROMPTS, model=model, tokenizer=tokenizer)


def test_bundled_folder_is_a_complete_hf_folder():
    path = bundled_model_path()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (path / name).is_file(), name
    assert (path / "model.safetensors").stat().st_size <= 25 * 1024 * 1024


def test_loads_with_auto_classes(loaded):
    model, tokenizer = loaded
    assert isinstance(model, GPT2LMHeadModel)
    assert {tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token} == {
        "<bos>", "<eos>", "<pad>", "<unk>"}
    ids = [tokenizer.bos_token_id] + tokenizer("When Mary and John went to the store, John gave a book to")["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer))
    assert tokenizer.convert_ids_to_tokens(int(logits[0, -1].argmax())) == "Mary"


@pytest.mark.parametrize("gate", list(GATES))
def test_gate(scores, gate):
    result = scores["gates"][gate]
    assert result["passed"], f"{gate} = {result['value']:.4f}, needs {result['op']} {result['threshold']}"


def test_card_reports_scores_and_reproduce_command():
    card = (bundled_model_path() / "README.md").read_text()
    for text in ("saelab toy build --out", "parameters", "MB", "min of training", *GATES):
        assert text in card


def test_cli_eval_json(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["toy", "eval", "--n-prompts", "8", "--json", "--check"])
    out = json.loads(capsys.readouterr().out)
    for name in GATES:
        task, metric = name.split(".")
        assert isinstance(out[task][metric], float)
    assert exit_info.value.code == (0 if out["passed"] else 1)


def test_unreadable_model_folders_give_clear_errors(tmp_path):
    with pytest.raises(CorruptFileError, match="does not exist"):
        load_toy_model(tmp_path / "nope")
    with pytest.raises(CorruptFileError, match="lacks config.json, model.safetensors, tokenizer.json"):
        load_toy_model(tmp_path)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("not what it should be")
    with pytest.raises(CorruptFileError, match="cannot be loaded"):
        load_toy_model(tmp_path)


def test_cli_eval_on_bad_folder_prints_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["toy", "eval", "--model", str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_prompt_count_is_refused(loaded):
    model, tokenizer = loaded
    with pytest.raises(ConfigError, match="n_prompts=0"):
        evaluate_toy_model(n_prompts=0, model=model, tokenizer=tokenizer)
