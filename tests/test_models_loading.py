"""load_model: local folders, unsupported families, bad specs; tokenization helpers."""

from __future__ import annotations

import json

import pytest
import torch

from saelab.errors import SaelabError
from saelab.models import LoadedModel, UnsupportedModelError, load_model
from saelab.models.tiny import tiny_model, torch_threads


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    from saelab.toy.tokenizer import build_hf_tokenizer

    tokenizer = build_hf_tokenizer()
    model = tiny_model("gpt2", vocab_size=len(tokenizer))
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


def test_local_folder_loads_with_its_tokenizer_and_same_outputs(gpt2_folder):
    folder, original = gpt2_folder
    lm = load_model(str(folder), dtype="float32")
    assert lm.adapter.family == "gpt2" and lm.name == str(folder)
    assert not any(p.requires_grad for p in lm.model.parameters())
    ids, mask = lm.tokenize(["the cat", "the"])
    assert ids[0, 0].item() == lm.tokenizer.bos_token_id and mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    torch.testing.assert_close(lm.run_with_hooks(ids, {}), original(ids).logits, rtol=0, atol=1e-6)
    assert set(lm.special_token_ids) >= {lm.tokenizer.bos_token_id, lm.tokenizer.eos_token_id,
                                          lm.tokenizer.pad_token_id}


def test_half_precision_loading(gpt2_folder):
    lm = load_model(str(gpt2_folder[0]), dtype=torch.bfloat16)
    assert lm.dtype == torch.bfloat16
    _, cache = lm.run_with_cache(torch.tensor([[0, 5, 6]]), ["blocks.0.attn.hook_z"])
    assert cache["blocks.0.attn.hook_z"].dtype == torch.bfloat16


def test_unsupported_family_is_refused_before_reading_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gptj", "n_embd": 32, "n_layer": 2,
                                                      "n_head": 4, "vocab_size": 50}))
    with pytest.raises(UnsupportedModelError, match="'gptj'.*gpt2, gpt_neox, llama, mistral, qwen2, gemma, gemma2"):
        load_model(str(tmp_path))


def test_unsupported_model_object_names_the_supported_families():
    from transformers import GPTJConfig, GPTJForCausalLM

    model = GPTJForCausalLM(GPTJConfig(n_embd=32, n_layer=1, n_head=4, vocab_size=50, rotary_dim=4))
    with pytest.raises(UnsupportedModelError, match="supported model_type values: gpt2, gpt_neox"):
        LoadedModel.from_hf(model)


def test_bad_specs_say_what_is_wrong(tmp_path):
    with pytest.raises(SaelabError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(SaelabError, match="no such folder"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(SaelabError, match="dtype='float8'.*float32, float16, bfloat16"):
        load_model(str(tmp_path), dtype="float8")


def test_input_ids_are_checked():
    lm = LoadedModel.from_hf(tiny_model("llama"))
    with pytest.raises(SaelabError, match="integer token ids"):
        lm.run_with_cache(torch.rand(1, 4), ["blocks.0.hook_resid_pre"])
    with pytest.raises(SaelabError, match=r"\[batch, pos\]"):
        lm.run_with_cache(torch.zeros(1, 1, 4, dtype=torch.long), ["blocks.0.hook_resid_pre"])
    with pytest.raises(SaelabError, match="stop_at_layer=9"):
        lm.run_with_cache([[0, 1, 2]], ["blocks.0.hook_resid_pre"], stop_at_layer=9)
    with pytest.raises(SaelabError, match="without a tokenizer"):
        lm.tokenize("hello")
    logits, cache = lm.run_with_cache([0, 1, 2], "blocks.0.hook_resid_pre,blocks.1.hook_mlp_out")
    assert logits.shape == (1, 3, lm.d_vocab) and len(cache) == 2


def test_fingerprint_follows_the_weights_not_the_load_path(gpt2_folder, tmp_path):
    folder, model = gpt2_folder
    a, b = load_model(str(folder)), LoadedModel.from_hf(model)
    assert a.fingerprint() == b.fingerprint()
    other = LoadedModel.from_hf(tiny_model("gpt2", seed=1, vocab_size=model.config.vocab_size))
    assert other.fingerprint() != a.fingerprint()


def test_pattern_hooks_work_on_an_eager_loaded_model():
    lm = LoadedModel.from_hf(tiny_model("llama", attn_implementation="eager"))
    ids = torch.randint(3, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    logits, cache = lm.run_with_cache(ids, ["blocks.1.attn.hook_pattern"])
    assert torch.equal(logits, lm.model(ids).logits)  # the same eager function runs either way
    torch.testing.assert_close(cache["blocks.1.attn.hook_pattern"].sum(-1), torch.ones(2, lm.n_heads, 10))
    assert lm.model.config._attn_implementation == "eager"
