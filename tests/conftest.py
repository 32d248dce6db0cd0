"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest

from saelab.models import LoadedModel
from saelab.models.tiny import tiny_model, torch_threads


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread (steadier on small shared CPUs)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny_gpt2_with_toy_tokenizer() -> LoadedModel:
    """A random 3-block GPT-2 over the toy world's vocabulary: fast, and reads the toy sources."""
    from saelab.toy.tokenizer import build_hf_tokenizer

    tokenizer = build_hf_tokenizer()
    return LoadedModel.from_hf(tiny_model("gpt2", vocab_size=len(tokenizer)), tokenizer, name="tiny-gpt2")
