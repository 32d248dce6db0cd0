"""Models stored as GGUF files (llama.cpp's format), loaded as ordinary Hugging Face models.

``load_model("model.gguf")`` and ``saelab models convert FILE.gguf --out DIR`` come here. The file is
checked before anything heavy runs: magic bytes and version, the header (read with the ``gguf``
package), every tensor's extent against the file size (a truncated download is named as such), and
the architecture against the families both transformers' GGUF loader and saelab support. Then
transformers dequantises the weights (``from_pretrained(..., gguf_file=...)``, which needs the
``gguf`` and ``accelerate`` packages: ``pip install "saelab[gguf]"``) into the family's HF model in
the requested dtype, and the tokenizer is rebuilt from the file's vocabulary. The result carries no
quantisation state, so ``save_pretrained`` writes a plain folder (config, safetensors, tokenizer)
that later loads without the GGUF machinery and much faster.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from saelab.errors import CorruptFileError, SaelabError

MAGIC = b"GGUF"
#: GGUF ``general.architecture`` -> Hugging Face ``model_type`` (families saelab has adapters for and
#: transformers' GGUF loader reads)
ARCHITECTURES: dict[str, str] = {
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
}


class GGUFError(SaelabError):
    """A GGUF file that cannot be used: unknown architecture or missing packages."""


@dataclass(frozen=True)
class GGUFInfo:
    """What the header of a GGUF file says: ``architecture`` (GGUF name), ``model_type`` (HF),
    ``name``, tensor count and file size."""

    path: Path
    architecture: str
    model_type: str
    name: str
    n_tensors: int
    file_bytes: int


def is_gguf(path: str | Path) -> bool:
    """True when ``path`` is a file starting with the GGUF magic bytes."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except Exception:  # noqa: BLE001 - a malformed field reads as absent
        return None


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """Check ``path`` is a complete GGUF file of a supported architecture; raise a clear error if not."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SaelabError(f"GGUF file {str(path)!r} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] != MAGIC:
        raise CorruptFileError(f"{str(path)!r} is not a GGUF file: it starts with {head[:4]!r}, not {MAGIC!r}; "
                               "give a .gguf file or a Hugging Face model folder")
    version = struct.unpack("<I", head[4:8])[0] if len(head) == 8 else None
    if version not in (2, 3):
        raise CorruptFileError(f"{str(path)!r}: GGUF version {version} is not readable here (versions 2 and 3 are)")
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise GGUFError('reading GGUF files needs the gguf package: pip install "saelab[gguf]"') from exc
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - the reader fails in many ways on a damaged header
        if "cannot reshape array" in str(exc):  # the tensor data stops before the header says it should
            raise CorruptFileError(f"{str(path)!r} is truncated: its tensor data ends early ({size} bytes; {exc}); "
                                   "download or assemble it again") from exc
        raise CorruptFileError(f"{str(path)!r} is truncated or damaged: its GGUF header cannot be read "
                               f"({type(exc).__name__}: {exc}); download or assemble it again") from exc
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str):
        raise CorruptFileError(f"{str(path)!r} has no general.architecture field; it is not a model GGUF file")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{str(path)!r} holds a model of architecture {arch!r}, which saelab cannot load from GGUF; "
                        f"supported GGUF architectures: {', '.join(ARCHITECTURES)}")
    name = _field(reader, "general.name")
    return GGUFInfo(path, arch, ARCHITECTURES[arch], str(name or path.stem), len(reader.tensors), size)


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32, **from_pretrained_kwargs):
    """``(model, tokenizer)`` from a GGUF file: a plain HF causal LM (weights dequantised to ``dtype``,
    no quantisation state left) and its tokenizer."""
    info = inspect_gguf(path)
    try:
        import accelerate  # noqa: F401 - transformers' GGUF loading requires it
    except ImportError as exc:
        raise GGUFError('loading GGUF files needs the accelerate package: pip install "saelab[gguf]"') from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(info.path.parent), info.path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, **from_pretrained_kwargs)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise CorruptFileError(f"{str(info.path)!r} could not be loaded as a {info.architecture} model: {exc}") from exc
    forget_quantization(model)
    model.config._name_or_path = str(info.path)
    return model, tokenizer


def forget_quantization(model) -> None:
    """Drop the GGUF quantiser and ``quantization_config`` of a dequantised model, so that it saves
    (and is fingerprinted) as an ordinary model."""
    model.hf_quantizer = None
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        if hasattr(config, "quantization_config"):
            del config.quantization_config


def convert_gguf(path: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the GGUF model at ``path`` as a Hugging Face folder ``out`` (config.json,
    model.safetensors, tokenizer files); returns ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SaelabError(f"output folder {str(out)!r} is not empty; choose a new folder")
    model, tokenizer = load_gguf(path, dtype)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        out.rmdir()
    tmp.replace(out)
    return out
