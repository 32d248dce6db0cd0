"""Model-family adapters, chosen by ``config.model_type``.

Supported: ``gpt2``; ``gpt_neox`` (Pythia); ``llama``, ``mistral``, ``qwen2`` (one layout);
``gemma``; ``gemma2``; ``gemma3_text`` and ``gemma3`` (the multimodal wrapper, text decoder only).
"""

from __future__ import annotations

from torch import nn

from saelab.errors import SaelabError
from saelab.models.adapters.base import Adapter, ModelLayoutError
from saelab.models.adapters.gpt2 import GPT2Adapter
from saelab.models.adapters.llama import (
    Gemma2Adapter,
    Gemma3Adapter,
    Gemma3MultimodalAdapter,
    GemmaAdapter,
    LlamaAdapter,
)
from saelab.models.adapters.neox import NeoXAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    "gpt2": GPT2Adapter,
    "gpt_neox": NeoXAdapter,
    "llama": LlamaAdapter,
    "mistral": LlamaAdapter,
    "qwen2": LlamaAdapter,
    "gemma": GemmaAdapter,
    "gemma2": Gemma2Adapter,
    "gemma3_text": Gemma3Adapter,
    "gemma3": Gemma3MultimodalAdapter,
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(ADAPTERS)


class UnsupportedModelError(SaelabError):
    """The model family has no adapter."""


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for ``model`` (a Hugging Face causal LM), its layout checked."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    cls = ADAPTERS.get(model_type)
    if cls is None:
        raise UnsupportedModelError(
            f"model family {model_type!r} ({type(model).__name__}) is not supported; "
            f"supported model_type values: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    adapter = cls(model)
    adapter.check_layout()
    return adapter


__all__ = ["ADAPTERS", "Adapter", "ModelLayoutError", "SUPPORTED_MODEL_TYPES", "UnsupportedModelError",
           "adapter_for"]
