"""What every format module shares: the hints a registry entry gives, the result of a read, the
description of a format, and checked reading of tensors and JSON.

Shapes: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ``b_enc [d_sae]``, ``b_dec [d_out]``,
``W_skip [d_in, d_out]`` (saelab's layout, whatever the file's).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saelab.errors import ConfigError, CorruptFileError
from saelab.fileio import load_safetensors, read_safetensors_header
from saelab.sae import SAE, SAEConfig, make_sae
from saelab.sae.config import DTYPES

SAFETENSORS_DTYPES = {"F32": "float32", "F64": "float64", "BF16": "bfloat16", "F16": "float16"}


@dataclass(frozen=True)
class Hints:
    """What a registry entry (or the command line) knows that a file may not say.

    hook_name, hook_name_out: TransformerLens hook names of the site read and the site predicted.
    model: the model's name. name: the saelab name to give the SAE. repo_id, path: where the
    files came from (some formats name their site only in folder names).
    """

    hook_name: str = ""
    hook_name_out: str = ""
    model: str = ""
    name: str = ""
    repo_id: str = ""
    path: str = ""


@dataclass
class Converted:
    """A file read into a saelab SAE: the SAE (eval mode, CPU), what was done to get there, and
    what the file said about itself (``model_name``, hook names as the file writes them, ...)."""

    sae: SAE
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    sparsity: Tensor | None = None  # [d_sae] log10 feature density, where the file has it


@dataclass(frozen=True)
class FormatSpec:
    """One published format.

    required, optional: file names inside one SAE's folder (what a Hub download fetches).
    read(folder, hints) -> Converted. write(converted, folder) -> folder (the SAE and its metadata), or
    None where saelab cannot write the format; writes: the architectures ``write`` accepts.
    """

    name: str
    description: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    read: Callable[[Path, Hints], Converted]
    write: Callable[[Converted, Path], Path] | None = None
    writes: tuple[str, ...] = ()

    def present(self, folder: Path) -> bool:
        """Whether ``folder`` holds this format's required files."""
        return all((folder / name).is_file() for name in self.required)


def read_json(path: Path, where: str) -> dict[str, Any]:
    """A JSON object from ``path``, or ``CorruptFileError`` naming ``where``."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptFileError(f"{where}: no {path.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptFileError(f"{where}: {path.name} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CorruptFileError(f"{where}: {path.name} must hold a JSON object, found {type(data).__name__}")
    return data


def safetensors_shapes(path: Path, where: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (checked against the file size, nothing else read)."""
    header = read_safetensors_header(path, where=f"{where}: {path.name}")
    return {name: tuple(entry["shape"]) for name, entry in header.items()}


def safetensors_dtype(path: Path, where: str) -> str:
    """The saelab dtype name of a safetensors file's floating tensors (they must share one)."""
    header = read_safetensors_header(path, where=f"{where}: {path.name}")
    found = {entry["dtype"] for entry in header.values()}
    if len(found) != 1 or next(iter(found)) not in SAFETENSORS_DTYPES:
        raise CorruptFileError(f"{where}: {path.name} holds tensors of dtypes {sorted(found)}; accepted: one of "
                               f"{', '.join(SAFETENSORS_DTYPES)} for every tensor")
    return SAFETENSORS_DTYPES[found.pop()]


def load_tensors(path: Path, where: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """The tensors of a safetensors file whose header already passed ``check_shapes``."""
    return load_safetensors(path, shapes, where=f"{where}: {path.name}")


def check_shapes(where: str, found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                 optional: tuple[str, ...] = (), why: str = "") -> None:
    """Refuse missing, unexpected or mis-shaped tensors, naming each (``why``: where shapes come from)."""
    missing = sorted(set(expected) - set(found) - set(optional))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected)}"] if unexpected else [])
        raise CorruptFileError(f"{where}: the tensors do not match the format ({'; '.join(parts)}); expected: "
                               f"{', '.join(expected)}")
    for name, shape in expected.items():
        if name in found and tuple(found[name]) != tuple(shape):
            raise CorruptFileError(f"{where}: tensor {name} has shape {tuple(found[name])}, expected {tuple(shape)}"
                                   f"{f' ({why})' if why else ''}")


def dims(where: str, name: str, shape: tuple[int, ...], rank: int = 2) -> tuple[int, ...]:
    """``shape`` of tensor ``name`` when it has ``rank`` positive dimensions, else ``CorruptFileError``."""
    if len(shape) != rank or not all(d > 0 for d in shape):
        raise CorruptFileError(f"{where}: tensor {name} has shape {tuple(shape)}; expected {rank} positive "
                               "dimensions")
    return shape


def dtype_name(dtype: torch.dtype) -> str:
    """saelab's name of a floating torch dtype (float32 for anything else)."""
    return next((name for name, value in DTYPES.items() if value == dtype), "float32")


def build_sae(fields: dict[str, Any], state: dict[str, Tensor], where: str) -> SAE:
    """``make_sae(SAEConfig(**fields))`` with ``state`` loaded strictly, in eval mode; a config or
    state that does not fit is refused naming ``where``."""
    try:
        cfg = SAEConfig(**fields)
    except ConfigError as exc:
        raise CorruptFileError(f"{where}: the file does not describe a usable {fields.get('architecture')} "
                               f"SAE: {exc}") from exc
    sae = make_sae(cfg)
    state = {k: v.to(cfg.torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
    try:
        sae.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CorruptFileError(f"{where}: the tensors do not fit a {cfg.architecture} SAE with d_in={cfg.d_in}, "
                               f"d_sae={cfg.d_sae}: {exc}") from exc
    return sae.eval()


def shifted_bias(b_enc: Tensor, b_dec: Tensor, W_enc: Tensor, centered_from: bool,  # noqa: N803
                 centered_to: bool) -> Tensor:
    """[d_sae] encoder bias giving the same pre-activations when the convention of subtracting
    b_dec [d_in] from the input changes: (x − b_dec) W + c = x W + (c − b_dec W)."""
    if centered_from == centered_to:
        return b_enc
    shift = b_dec.to(W_enc.dtype) @ W_enc
    return b_enc - shift if centered_from else b_enc + shift


def saelab_encoder_bias(sae: SAE, centered: bool) -> Tensor:
    """[d_sae] b_enc for a format that subtracts b_dec before encoding (``centered``) or not."""
    return shifted_bias(sae.b_enc.detach(), sae.b_dec.detach(), sae.W_enc.detach(), sae.cfg.apply_b_dec_to_input,
                        centered)


def refuse_write(fmt: str, sae: SAE, why: str) -> CorruptFileError:
    """The error for an SAE a format cannot hold."""
    return CorruptFileError(f"cannot write SAE {sae.cfg.name!r} ({sae.cfg.architecture}) as {fmt}: {why}; "
                            "write a saelab/SAELens folder instead (--to saelens)")


_LAYER = re.compile(r"layer_(\d+)")


def layer_in(text: str) -> int | None:
    """The last ``layer_N`` in a path or id, if any."""
    found = _LAYER.findall(text)
    return int(found[-1]) if found else None
