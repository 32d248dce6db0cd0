"""Gemma Scope (Gemma 2, ``params.npz``) and Gemma Scope 2 (Gemma 3, ``params.safetensors`` +
``config.json``): JumpReLU SAEs and transcoders.

Arrays (Gemma Scope writes ``W_enc``..., Gemma Scope 2 ``w_enc``...; both are read):
``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ``b_enc [d_sae]``, ``b_dec [d_out]``,
``threshold [d_sae]``, and for Gemma Scope 2's affine transcoders ``affine_skip_connection [d_in, d_out]``.
Inference (the Gemma Scope tutorials): z = x W_enc + b_enc (no b_dec subtracted),
f = ReLU(z) ⊙ 1[z > θ], ŷ = f W_dec + b_dec (+ x A) — saelab's JumpReLU with ``apply_b_dec_to_input=False``.

Gemma Scope 2's ``config.json`` names its sites by Hugging Face module paths (``hf_hook_point_in``,
``hf_hook_point_out``, ``affine_connection``); they are mapped to TransformerLens names below. A
``params.npz`` says nothing about its site: the hook comes from the registry, the command line, or
the folder names (``layer_N`` and ``-res``/``-mlp``/``-att``/``transcoder``). ``np.load`` runs with
``allow_pickle=False`` after every array's header has been checked against the others.
"""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.errors import CorruptFileError
from saelab.fileio import atomic_save_safetensors, atomic_write, atomic_write_json
from saelab.pretrained.formats.common import (
    Converted,
    FormatSpec,
    Hints,
    build_sae,
    check_shapes,
    dims,
    layer_in,
    load_tensors,
    read_json,
    refuse_write,
    saelab_encoder_bias,
    safetensors_dtype,
    safetensors_shapes,
)
from saelab.sae import SAE

NPZ_FILE = "params.npz"
SAFETENSORS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
SKIP = "affine_skip_connection"
# file key (lower case) -> saelab state_dict key
KEYS = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold",
        SKIP: "W_skip"}
# Gemma 3 module paths -> TransformerLens hook kinds (``ln2.hook_normalized``: the MLP's normalised input).
HF_SITES = (("model.layers.{L}.output", "hook_resid_post"),
            ("model.layers.{L}.self_attn.o_proj.input", "attn.hook_z"),
            ("model.layers.{L}.post_feedforward_layernorm.output", "hook_mlp_out"),
            ("model.layers.{L}.pre_feedforward_layernorm.output", "ln2.hook_normalized"))
# words in repo ids / folder names -> (hook kind, output hook kind or "" for an SAE), first match wins
PATH_SITES = (("transcoder", "ln2.hook_normalized", "hook_mlp_out"), ("attn_out", "attn.hook_z", ""),
              ("-att", "attn.hook_z", ""), ("mlp_out", "hook_mlp_out", ""), ("-mlp", "hook_mlp_out", ""),
              ("resid_post", "hook_resid_post", ""), ("-res", "hook_resid_post", ""))


# ----------------------------------------------------------------------------- site names
def tl_hook(hf_name: str) -> str:
    """A Gemma Scope 2 module path -> TransformerLens hook name ("" when unknown)."""
    for template, kind in HF_SITES:
        found = re.fullmatch(re.escape(template).replace(r"\{L\}", r"(\d+)"), hf_name or "")
        if found:
            return f"blocks.{found.group(1)}.{kind}"
    return ""


def hf_hook(tl_name: str) -> str:
    """A TransformerLens hook name -> Gemma Scope 2 module path ("" when it has none)."""
    parts = tl_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        for template, kind in HF_SITES:
            if kind == parts[2]:
                return template.format(L=parts[1])
    return ""


def hooks_from_path(text: str) -> tuple[str, str]:
    """(hook_name, hook_name_out) from ``layer_N`` and a site word in a repo id or path, or ("", "")."""
    layer = layer_in(text)
    if layer is None:
        return "", ""
    for word, kind, kind_out in PATH_SITES:
        if word in text:
            return f"blocks.{layer}.{kind}", f"blocks.{layer}.{kind_out}" if kind_out else ""
    return "", ""


def _hooks(hints: Hints, config: dict[str, Any], folder: Path) -> tuple[str, str, str]:
    """(hook_name, hook_name_out, how they were found): hints, then config.json, then the path."""
    if hints.hook_name:
        return hints.hook_name, hints.hook_name_out, "registry"
    section = config.get("saelab") if isinstance(config.get("saelab"), dict) else {}
    if section.get("hook_name"):
        return str(section["hook_name"]), str(section.get("hook_name_out") or ""), "config.json"
    hook_in = tl_hook(str(config.get("hf_hook_point_in") or ""))
    if hook_in:
        return hook_in, tl_hook(str(config.get("hf_hook_point_out") or "")), "config.json"
    hook_in, hook_out = hooks_from_path(f"{hints.repo_id}/{hints.path}/{folder.as_posix()}")
    return hook_in, hook_out, "folder names" if hook_in else ""


# ----------------------------------------------------------------------------- reading
def _npz_headers(path: Path, where: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Array name -> (shape, dtype) of every member of an .npz, from the .npy headers only."""
    found: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise CorruptFileError(f"{where}: {path.name} holds {info.filename!r}, not an .npy array")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in ((1, 0), (2, 0)):
                        raise CorruptFileError(f"{where}: array {info.filename!r} uses .npy format {version}; "
                                               "accepted: 1.0, 2.0")
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _fortran, dtype = header(member)
                if dtype.hasobject or dtype.kind != "f":
                    raise CorruptFileError(f"{where}: array {info.filename[:-4]!r} has dtype {dtype}; accepted: "
                                           "floating point (object arrays are never unpickled)")
                if math.prod(shape) * dtype.itemsize > info.file_size:
                    raise CorruptFileError(f"{where}: array {info.filename[:-4]!r} declares shape {shape} of {dtype}, "
                                           f"more than the {info.file_size} bytes it holds (truncated file)")
                found[info.filename[:-4]] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CorruptFileError(f"{where}: {path.name} is not a readable .npz archive ({exc})") from exc
    return found


def _expected(d_in: int, d_sae: int, d_out: int) -> dict[str, tuple[int, ...]]:
    return {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_enc": (d_sae,), "b_dec": (d_out,),
            "threshold": (d_sae,), "W_skip": (d_in, d_out)}


def _renamed(names: list[str], where: str) -> dict[str, str]:
    """File key -> saelab key, refusing keys the format does not have."""
    unknown = [n for n in names if n.lower() not in KEYS]
    if unknown:
        raise CorruptFileError(f"{where}: unexpected arrays {', '.join(sorted(unknown))}; a Gemma Scope file "
                               f"holds {', '.join(KEYS)}")
    return {n: KEYS[n.lower()] for n in names}


def _checked_dims(where: str, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int, int]:
    if "W_enc" not in shapes or "W_dec" not in shapes:
        raise CorruptFileError(f"{where}: no W_enc/W_dec arrays; a Gemma Scope file holds {', '.join(KEYS)}")
    d_in, d_sae = dims(where, "W_enc", shapes["W_enc"])
    d_out = dims(where, "W_dec", shapes["W_dec"])[1]
    check_shapes(where, shapes, _expected(d_in, d_sae, d_out), optional=("W_skip",),
                 why=f"d_in={d_in}, d_sae={d_sae} from W_enc, d_out={d_out} from W_dec")
    return d_in, d_sae, d_out


def _read_npz(folder: Path, where: str) -> tuple[dict[str, Tensor], str]:
    path = folder / NPZ_FILE
    headers = _npz_headers(path, where)
    names = _renamed(list(headers), where)
    _checked_dims(where, {names[k]: shape for k, (shape, _) in headers.items()})
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {names[k]: torch.from_numpy(np.ascontiguousarray(data[k])) for k in headers}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CorruptFileError(f"{where}: {NPZ_FILE} could not be read ({exc})") from exc
    dtype = "float64" if arrays["W_enc"].dtype == torch.float64 else "float32"
    return arrays, dtype


def _read_safetensors(folder: Path, where: str) -> tuple[dict[str, Tensor], str]:
    path = folder / SAFETENSORS_FILE
    shapes = safetensors_shapes(path, where)
    names = _renamed(list(shapes), where)
    d_in, d_sae, d_out = _checked_dims(where, {names[k]: v for k, v in shapes.items()})
    raw = load_tensors(path, where, {k: _expected(d_in, d_sae, d_out)[names[k]] for k in shapes})
    return {names[k]: v for k, v in raw.items()}, safetensors_dtype(path, where)


def read(folder: Path, hints: Hints) -> Converted:
    """A Gemma Scope folder (``params.npz``, or ``params.safetensors`` [+ ``config.json``]) -> JumpReLU SAE."""
    where = str(folder)
    if "embedding" in f"{hints.path}/{folder.as_posix()}":
        raise CorruptFileError(f"{where}: Gemma Scope's embedding SAEs read the unscaled embeddings (a site saelab "
                               "has no hook for); they are not supported")
    npz = (folder / NPZ_FILE).is_file()
    tensors, dtype = _read_npz(folder, where) if npz else _read_safetensors(folder, where)
    config = read_json(folder / CONFIG_FILE, where) if (folder / CONFIG_FILE).is_file() else {}
    if config.get("architecture", "jump_relu") != "jump_relu":
        raise CorruptFileError(f"{where}: config.json architecture={config.get('architecture')!r}; accepted: "
                               "jump_relu")
    d_in, d_sae = tensors["W_enc"].shape
    d_out = tensors["W_dec"].shape[1]
    skip = "W_skip" in tensors
    hook_in, hook_out, found_by = _hooks(hints, config, folder)
    notes = [f"hooks from {found_by}: {hook_in}" + (f" -> {hook_out}" if hook_out else "")] if found_by else [
        "the files name no hook; pass hook_name (and hook_name_out for a transcoder)"]
    transcoder = skip or d_out != d_in or bool(hook_out and hook_out != hook_in) or bool(
        config.get("hf_hook_point_out"))
    if transcoder and not (hook_in and hook_out):
        raise CorruptFileError(f"{where}: a transcoder (d_in={d_in}, d_out={d_out}{', affine skip' if skip else ''}) "
                               "needs its input and output hook names; give hook_name and hook_name_out")
    fields: dict[str, Any] = {"architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae, "hook_name": hook_in,
                              "name": hints.name, "dtype": dtype, "apply_b_dec_to_input": False}
    if transcoder:
        fields.update(hook_name_out=hook_out, d_out=d_out, skip_connection=skip)
    sae = build_sae(fields, tensors, where)
    metadata = {"model_name": hints.model or config.get("model_name"), "source_format": "gemma_scope",
                "file": NPZ_FILE if npz else SAFETENSORS_FILE}
    return Converted(sae, notes, {k: v for k, v in metadata.items() if v})


# ----------------------------------------------------------------------------- writing
def _arrays(sae: SAE, fmt: str) -> dict[str, Tensor]:
    """File arrays (saelab names) of a JumpReLU SAE, b_enc shifted to the uncentred convention."""
    if sae.cfg.architecture != "jumprelu":
        raise refuse_write(fmt, sae, "Gemma Scope files hold JumpReLU SAEs and transcoders only")
    with torch.no_grad():
        out = {"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_enc": saelab_encoder_bias(sae, centered=False),
               "b_dec": sae.b_dec, "threshold": sae.threshold}
        if sae.cfg.skip_connection:
            out["W_skip"] = sae.W_skip
        return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}


def write_npz(item: Converted, folder: Path) -> Path:
    """``params.npz`` (Gemma Scope's keys W_enc, W_dec, b_enc, b_dec, threshold; float32)."""
    sae = item.sae
    if sae.cfg.skip_connection:
        raise refuse_write("gemma_scope_npz", sae, "params.npz has no skip connection (use gemma_scope_safetensors)")
    arrays = {k: v.numpy() for k, v in _arrays(sae, "gemma_scope_npz").items()}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / NPZ_FILE, write)
    return folder


def write_safetensors(item: Converted, folder: Path) -> Path:
    """``params.safetensors`` (lower-case keys, ``affine_skip_connection``) + ``config.json``."""
    sae, metadata = item.sae, item.metadata
    names = {v: k for k, v in KEYS.items()}
    tensors = {names[k]: v for k, v in _arrays(sae, "gemma_scope_safetensors").items()}
    cfg = sae.cfg
    config: dict[str, Any] = {"architecture": "jump_relu", "model_name": metadata.get("model_name"),
                              "hf_hook_point_in": hf_hook(cfg.hook_name) or None, "width": cfg.d_sae,
                              "saelab": {"hook_name": cfg.hook_name}}
    if cfg.is_transcoder:
        config.update(hf_hook_point_out=hf_hook(cfg.hook_name_out) or None, affine_connection=cfg.skip_connection)
        config["saelab"]["hook_name_out"] = cfg.hook_name_out
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(folder / SAFETENSORS_FILE, tensors)
    atomic_write_json(folder / CONFIG_FILE, config)
    return folder


NPZ_FORMAT = FormatSpec(
    name="gemma_scope_npz", description="Gemma Scope (Gemma 2): params.npz of a JumpReLU SAE",
    required=(NPZ_FILE,), optional=(), read=read, write=write_npz, writes=("jumprelu",))
SAFETENSORS_FORMAT = FormatSpec(
    name="gemma_scope_safetensors",
    description="Gemma Scope 2 (Gemma 3): params.safetensors + config.json of a JumpReLU SAE or (affine) transcoder",
    required=(SAFETENSORS_FILE,), optional=(CONFIG_FILE,), read=read, write=write_safetensors, writes=("jumprelu",))
