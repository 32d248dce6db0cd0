"""The toy world: a synthetic corpus with ground-truth labels, its tokenizer, task generators and
a small GPT-2 trained on it, bundled as a Hugging Face folder (spec name ``toy``)."""

from __future__ import annotations

from pathlib import Path


def bundled_model_path() -> Path:
    """The folder of the bundled toy model (config.json, model.safetensors, tokenizer files, card)."""
    return Path(__file__).resolve().parent / "model"
