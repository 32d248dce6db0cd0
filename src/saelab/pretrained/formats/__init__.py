"""The published SAE formats saelab reads (and writes where the format can hold the SAE), one module each.

    converted = read_sae("downloads/layer_12", "gemma_scope_safetensors", Hints(model="gemma-3-270m"))
    converted.sae                         # a saelab JumpReLU SAE
    write_sae(converted, "out/sae")       # a saelab/SAELens folder
    write_sae(converted, "out/gs", "gemma_scope_safetensors")

| format | files | reads | writes |
|---|---|---|---|
| saelens | cfg.json, sae_weights.safetensors | every SAELens architecture | every saelab architecture |
| gemma_scope_npz | params.npz | JumpReLU | JumpReLU |
| gemma_scope_safetensors | params.safetensors, config.json | JumpReLU, (affine) transcoders | the same |
| sparsify | cfg.json, sae.safetensors | TopK, (skip) transcoders | the same |
| dictionary_learning | ae.pt, config.json | ReLU, gated, JumpReLU, TopK, BatchTopK, Matryoshka | the same |
"""

from __future__ import annotations

import os
from pathlib import Path

from saelab.errors import ConfigError, CorruptFileError, SaelabError
from saelab.pretrained.formats import dictionary_learning, gemma_scope, saelens, sparsify
from saelab.pretrained.formats.common import Converted, FormatSpec, Hints
from saelab.sae import SAE

FORMATS: dict[str, FormatSpec] = {spec.name: spec for spec in (
    saelens.FORMAT, gemma_scope.NPZ_FORMAT, gemma_scope.SAFETENSORS_FORMAT, sparsify.FORMAT,
    dictionary_learning.FORMAT)}
WRITABLE: tuple[str, ...] = tuple(name for name, spec in FORMATS.items() if spec.write is not None)


def format_spec(name: str) -> FormatSpec:
    """The format called ``name``, or ``ConfigError`` listing the formats."""
    if name not in FORMATS:
        raise ConfigError(f"format={name!r} is not accepted; choose one of: {', '.join(FORMATS)}")
    return FORMATS[name]


def sae_folder(path: str | os.PathLike) -> Path:
    """The folder holding one SAE: ``path`` itself, or the folder of a file inside it (e.g. params.npz)."""
    local = Path(path).expanduser()
    if not local.exists():
        raise SaelabError(f"no file or folder at {str(local)!r}")
    return local if local.is_dir() else local.parent


def detect_format(path: str | os.PathLike) -> str:
    """The format whose files ``path`` (an SAE folder, or a file in one) holds; ambiguity is refused."""
    folder = sae_folder(path)
    found = [name for name, spec in FORMATS.items() if spec.present(folder)]
    if len(found) != 1:
        listing = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
        what = f"files of several formats ({', '.join(found)})" if found else f"no known SAE files ({listing})"
        raise CorruptFileError(f"{str(folder)!r} holds {what}; give the format: "
                               + "; ".join(f"{n} ({', '.join(s.required)})" for n, s in FORMATS.items()))
    return found[0]


def read_sae(path: str | os.PathLike, format: str = "auto", hints: Hints | None = None) -> Converted:  # noqa: A002
    """Read one SAE in ``format`` ("auto": detected from the files) into a saelab SAE (eval mode, CPU)."""
    folder = sae_folder(path)
    name = detect_format(folder) if format == "auto" else format
    spec = format_spec(name)
    missing = [f for f in spec.required if not (folder / f).is_file()]
    if missing:
        raise CorruptFileError(f"{str(folder)!r} is not a {name} SAE: no {', '.join(missing)} (a {name} folder "
                               f"holds {', '.join(spec.required + spec.optional)})")
    return spec.read(folder, hints or Hints())


def write_sae(item: Converted | SAE, out: str | os.PathLike, format: str = "saelens") -> Path:  # noqa: A002
    """Write an SAE (or a read result, keeping its metadata) as ``format`` into the folder ``out``."""
    spec = format_spec(format)
    if spec.write is None:
        raise ConfigError(f"saelab reads {format} but does not write it; write one of: {', '.join(WRITABLE)}")
    converted = item if isinstance(item, Converted) else Converted(item)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"cannot write an SAE folder at {str(out)!r}: a file with that name exists")
    return spec.write(converted, out)


__all__ = ["FORMATS", "WRITABLE", "Converted", "FormatSpec", "Hints", "detect_format", "format_spec", "read_sae",
           "sae_folder", "write_sae"]
