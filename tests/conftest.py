"""Fixtures shared by several test modules."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from saelab.models import LoadedModel, load_model
from saelab.models.tiny import TINY_FAMILIES, tiny_model, torch_threads

# Property-test budgets: ``ci`` (default, the same inputs every run) and ``long`` (on demand:
# ``pytest --hypothesis-profile=long`` or ``SAELAB_HYPOTHESIS_PROFILE=long``).
_LENIENT = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, suppress_health_check=_LENIENT)
settings.register_profile("long", max_examples=2000, deadline=None, suppress_health_check=_LENIENT)
settings.load_profile(os.environ.get("SAELAB_HYPOTHESIS_PROFILE", "ci"))

# Under pytest-xdist (``-n N``), the workers share the cores: each gets its share of torch threads
# instead of one thread per core each, which would oversubscribe the machine N times.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _WORKERS > 1:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread (steadier on small shared CPUs)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def toy_lm(one_torch_thread) -> LoadedModel:
    """The bundled toy model, for a module run on one torch thread."""
    return load_model("toy")


@pytest.fixture(scope="module")
def tiny_gpt2_with_toy_tokenizer() -> LoadedModel:
    """A random 3-block GPT-2 over the toy world's vocabulary: fast, and reads the toy sources."""
    from saelab.toy.tokenizer import build_hf_tokenizer

    tokenizer = build_hf_tokenizer()
    return LoadedModel.from_hf(tiny_model("gpt2", vocab_size=len(tokenizer)), tokenizer, name="tiny-gpt2")


@pytest.fixture(scope="module", params=(*TINY_FAMILIES, "toy"))
def every_family(request) -> LoadedModel:
    """A tiny random model of each supported family (built from its config), and the bundled toy model."""
    if request.param == "toy":
        return load_model("toy")
    return LoadedModel.from_hf(tiny_model(request.param), name=f"tiny-{request.param}")


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache with the hub in offline mode (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
