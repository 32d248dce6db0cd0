"""GGUF files: a tiny Gemma 3 written as llama.cpp lays one out loads as the same model, converts to a
plain HF folder, and damaged, foreign or truncated files are refused with a clear message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saelab.cli import main
from saelab.errors import CorruptFileError, SaelabError
from saelab.models import UnknownHookError, load_model
from saelab.models.gguf import GGUFError, inspect_gguf, is_gguf
from saelab.models.tiny import tiny_model
from tiny_gguf import GGUF_GEMMA3_OVERRIDES, write_tiny_gemma3_gguf

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("gemma3", **GGUF_GEMMA3_OVERRIDES)


@pytest.fixture(scope="module")
def gguf_path(tiny, tmp_path_factory):
    return write_tiny_gemma3_gguf(tiny, tmp_path_factory.mktemp("gguf") / "tiny-gemma3.gguf")


def ids():
    return torch.randint(4, 97, (2, 16), generator=torch.Generator().manual_seed(0))


def test_a_gguf_file_loads_as_the_same_gemma3_model(tiny, gguf_path):
    info = inspect_gguf(gguf_path)
    assert (info.architecture, info.model_type, info.n_tensors) == ("gemma3", "gemma3_text", 3 * 13 + 2)
    lm = load_model(str(gguf_path))
    assert lm.adapter.family == "gemma3" and lm.n_kv_heads == 1 and lm.qk_norm(0) is not None
    assert "quantization_config" not in lm.model.config.to_dict()
    torch.testing.assert_close(lm.model(ids()).logits, tiny(ids()).logits, rtol=0, atol=1e-5)
    tokens, _ = lm.tokenize("the cat sat")
    assert tokens[0, 0] == lm.bos_token_id == 2
    logits, cache = lm.run_with_cache(ids(), ["blocks.2.attn.hook_z", "blocks.1.hook_resid_post"])
    assert cache["blocks.2.attn.hook_z"].shape == (2, 16, 4, 16)
    with pytest.raises(UnknownHookError, match="blocks.3"):
        lm.run_with_cache(ids(), ["blocks.3.hook_resid_post"])


def test_models_convert_writes_a_plain_folder_that_loads_without_gguf(tiny, gguf_path, tmp_path, capsys):
    out = tmp_path / "hf"
    with pytest.raises(SystemExit) as done:
        main(["models", "convert", str(gguf_path), "--out", str(out), "--json"])
    assert done.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["architecture"] == "gemma3" and summary["out"] == str(out)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    lm = load_model(str(out))
    torch.testing.assert_close(lm.model(ids()).logits, tiny(ids()).logits, rtol=0, atol=1e-5)
    with pytest.raises(SystemExit) as again:  # never over an existing model
        main(["models", "convert", str(gguf_path), "--out", str(out)])
    assert again.value.code == 2 and "not empty" in capsys.readouterr().err


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    assert not is_gguf(path)
    with pytest.raises(CorruptFileError, match="is not a GGUF file"):
        load_model(str(path))


def test_a_truncated_gguf_names_the_truncation(gguf_path, tmp_path):
    data = gguf_path.read_bytes()
    for cut, reason in ((len(data) - 1000, "is truncated: its tensor data ends early"), (200, "truncated or damaged")):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError, match=reason):
            load_model(str(path))


def test_a_gguf_of_an_unsupported_architecture_lists_the_supported_ones(tmp_path):
    import gguf

    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match="architecture 'mamba'.*gemma3"):
        load_model(str(path))
    with pytest.raises(SaelabError, match="does not exist"):
        inspect_gguf(tmp_path / "missing.gguf")
