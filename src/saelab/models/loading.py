"""``load_model(spec)``: the bundled toy model, a local Hugging Face folder, a ``.gguf`` file or a hub id.

The family is checked from the config before any weights are read, so an unsupported model fails
fast with the list of supported ones. Hub ids go through the ordinary ``from_pretrained`` path
(network or the local Hugging Face cache); extra keyword arguments (``device_map``,
``attn_implementation``, ``revision``, ...) are passed to ``from_pretrained``. With ``device_map``
the model is left where it was placed; otherwise it is moved to ``device``. A GGUF file is
dequantised into its family's HF model (``saelab.models.gguf``); converting it once with
``saelab models convert`` makes later loads much faster.
"""

from __future__ import annotations

from pathlib import Path
from pickle import UnpicklingError  # only to catch a refused load

import torch
from torch import nn

from saelab.errors import CorruptFileError, SaelabError
from saelab.models.adapters import ADAPTERS, SUPPORTED_MODEL_TYPES, UnsupportedModelError
from saelab.models.loaded import LoadedModel

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    """A torch dtype from a dtype or its name (``"float32"``, ``"bfloat16"``, ...); ``"auto"`` passes through."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise SaelabError(f"dtype={dtype!r} is not accepted; choose one of: {', '.join(DTYPES)}, auto")
    return DTYPES[name]


def resolve_model_path(spec: str) -> str:
    """``toy`` -> the bundled folder; an existing path -> that folder (checked); else the hub id."""
    if spec == "toy":
        from saelab.toy import bundled_model_path

        return str(bundled_model_path())
    path = Path(spec).expanduser()
    if path.is_file():  # a GGUF model file: load_gguf checks it before reading any weights
        return str(path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise SaelabError(f"model folder {str(path)!r} has no config.json; a Hugging Face model folder "
                              "(config.json, weights, tokenizer files) is expected")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise SaelabError(f"model {spec!r}: no such folder (and not a hub id of the form 'owner/name')")
    return spec


def load_model(spec: str | nn.Module, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
               tokenizer=None, **from_pretrained_kwargs) -> LoadedModel:
    """Load ``spec`` (``"toy"``, a local HF folder, a hub id, or an already-built ``PreTrainedModel``
    with ``tokenizer``) as a ``LoadedModel`` in eval mode with frozen parameters."""
    if isinstance(spec, nn.Module):
        return LoadedModel.from_hf(spec, tokenizer)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(from_pretrained_kwargs)
    if "torch_dtype" not in kwargs:
        kwargs["dtype"] = resolve_dtype(dtype)
    path = resolve_model_path(spec)
    if Path(path).is_file():
        from saelab.models.gguf import load_gguf

        gguf_dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        model, gguf_tokenizer = load_gguf(path, torch.float32 if gguf_dtype == "auto" else gguf_dtype,
                                          **from_pretrained_kwargs)
        if "device_map" not in kwargs:
            model = model.to(device)
        return LoadedModel(model, tokenizer or gguf_tokenizer, name=spec)
    trust = from_pretrained_kwargs.get("trust_remote_code", False)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    except (OSError, ValueError) as exc:
        raise SaelabError(f"could not read the config of model {spec!r}: {exc}") from exc
    if config.model_type not in ADAPTERS:
        raise UnsupportedModelError(f"model {spec!r} is of family {config.model_type!r}, which is not supported; "
                                    f"supported model_type values: {', '.join(SUPPORTED_MODEL_TYPES)}")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    except OSError as exc:
        raise SaelabError(f"could not load model {spec!r}: {exc}") from exc
    except UnpicklingError as exc:
        raise CorruptFileError(f"model {spec!r} holds a pickled weights file that is not plain tensors, so it was "
                               "not loaded (saelab never unpickles arbitrary objects); convert the weights to "
                               "model.safetensors with a trusted copy of the model") from exc
    if "device_map" not in kwargs:
        model = model.to(device)
    return LoadedModel(model, tokenizer, name=spec)
