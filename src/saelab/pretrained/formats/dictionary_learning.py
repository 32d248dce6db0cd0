"""saprmarks/dictionary_learning folders: ``ae.pt`` (a ``state_dict`` saved with ``torch.save``) +
``config.json`` (``{"trainer": {"dict_class", "activation_dim", "dict_size", "k", "layer", "lm_name",
"submodule_name", ...}, "buffer": {...}}``).

``ae.pt`` is read with ``torch.load(weights_only=True)``: tensors and plain containers only; any other
Python object is refused, never unpickled. The dictionary classes (dictionary.py, trainers/*.py):

| dict_class | tensors (``nn.Linear`` weights are [out, in]) | encode | saelab |
|---|---|---|---|
| AutoEncoder | encoder.weight, encoder.bias, decoder.weight, bias | ReLU(W_e(x − bias) + b_e) | relu |
| AutoEncoderNew | encoder.weight, encoder.bias, decoder.weight, decoder.bias | ReLU(W_e x + b_e) | relu, uncentred |
| GatedAutoEncoder | encoder.weight, decoder.weight, decoder_bias, gate_bias, mag_bias, r_mag | gated, centred | gated |
| JumpReluAutoEncoder | W_enc, b_enc, W_dec, b_dec, threshold [d_sae] | ReLU(z)·1[z > θ], z = x W_enc + b_enc | jumprelu, uncentred |
| AutoEncoderTopK | encoder.*, decoder.weight, b_dec, k, threshold | top k of ReLU(W_e(x − b_dec) + b_e) | topk |
| BatchTopKSAE | as AutoEncoderTopK | ReLU(z)·1[ReLU(z) > θ], z centred | batchtopk |
| MatryoshkaBatchTopKSAE | W_enc, b_enc, W_dec, b_dec, k, threshold, group_sizes | as BatchTopK | matryoshka_batchtopk |

Decoding is f W_dec + b_dec in every class. Older versions of JumpReluAutoEncoder and GatedAutoEncoder
scaled the returned features by the decoder column norms (and divided them out when decoding): the
reconstruction is the same, the feature values saelab returns are the current versions'.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import torch
from torch import Tensor

from saelab.errors import CorruptFileError
from saelab.fileio import atomic_write, atomic_write_json
from saelab.pretrained.formats.common import (
    Converted,
    FormatSpec,
    Hints,
    build_sae,
    check_shapes,
    dims,
    dtype_name,
    read_json,
    refuse_write,
    saelab_encoder_bias,
)
from saelab.sae.matryoshka import group_ends

STATE_FILE = "ae.pt"
CONFIG_FILE = "config.json"
NON_TENSOR_ENTRIES = ("_hub_mixin_config",)  # a plain dict some versions keep beside the tensors


@dataclass(frozen=True)
class DictClass:
    """How one dictionary class maps onto a saelab architecture.

    tensors: file key -> (saelab key, stored transposed as an ``nn.Linear`` weight).
    centered: subtracts b_dec before encoding. scalars: buffers beyond the tensors (k, threshold, ...).
    """

    architecture: str
    tensors: dict[str, tuple[str, bool]]
    centered: bool
    scalars: tuple[str, ...] = ()


_LINEAR = {"encoder.weight": ("W_enc", True), "encoder.bias": ("b_enc", False), "decoder.weight": ("W_dec", True)}
_PLAIN = {"W_enc": ("W_enc", False), "b_enc": ("b_enc", False), "W_dec": ("W_dec", False), "b_dec": ("b_dec", False)}
DICT_CLASSES = {
    "AutoEncoder": DictClass("relu", {**_LINEAR, "bias": ("b_dec", False)}, centered=True),
    "AutoEncoderNew": DictClass("relu", {**_LINEAR, "decoder.bias": ("b_dec", False)}, centered=False),
    "GatedAutoEncoder": DictClass("gated", {"encoder.weight": ("W_enc", True), "decoder.weight": ("W_dec", True),
                                            "decoder_bias": ("b_dec", False), "gate_bias": ("b_gate", False),
                                            "mag_bias": ("b_mag", False), "r_mag": ("r_mag", False)}, centered=True),
    "JumpReluAutoEncoder": DictClass("jumprelu", {**_PLAIN, "threshold": ("threshold", False)}, centered=False),
    "AutoEncoderTopK": DictClass("topk", {**_LINEAR, "b_dec": ("b_dec", False)}, centered=True,
                                 scalars=("k", "threshold")),
    "BatchTopKSAE": DictClass("batchtopk", {**_LINEAR, "b_dec": ("b_dec", False)}, centered=True,
                              scalars=("k", "threshold")),
    "MatryoshkaBatchTopKSAE": DictClass("matryoshka_batchtopk", _PLAIN, centered=True,
                                        scalars=("k", "threshold", "group_sizes")),
}
# dict_class names of the trainers that wrote them under other names
ALIASES = {"JumpReLUSAE": "JumpReluAutoEncoder", "TopKSAE": "AutoEncoderTopK"}
WRITES = {"relu": ("AutoEncoder", "AutoEncoderNew"), "gated": ("GatedAutoEncoder",),
          "jumprelu": ("JumpReluAutoEncoder",), "topk": ("AutoEncoderTopK",), "batchtopk": ("BatchTopKSAE",),
          "matryoshka_batchtopk": ("MatryoshkaBatchTopKSAE",)}


# ----------------------------------------------------------------------------- reading
def load_state_dict(path: Path, where: str) -> dict[str, Tensor | Any]:
    """``ae.pt`` as a dict of tensors; pickled Python objects are refused (never unpickled)."""
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of raw pickles before refusing them
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except UnpicklingError as exc:
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise CorruptFileError(f"{where}: {path.name} holds Python objects besides tensors"
                               f"{f' ({named.group(1)})' if named else ''}; saelab refused to unpickle it (it never "
                               "unpickles downloaded files). A state dict saved with torch.save(ae.state_dict(), path) "
                               "loads") from None
    except Exception as exc:  # not a torch.save file at all: torch raises many kinds of errors
        raise CorruptFileError(f"{where}: {path.name} is not a PyTorch state-dict file ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CorruptFileError(f"{where}: {path.name} holds a {type(state).__name__}, not a state dict "
                               "(a dict of tensor names to tensors)")
    others = sorted(k for k, v in state.items() if not isinstance(v, Tensor) and k not in NON_TENSOR_ENTRIES)
    if others:
        raise CorruptFileError(f"{where}: {path.name} is not a state dict: entries {', '.join(others)} are not "
                               "tensors")
    return {k: v for k, v in state.items() if k not in NON_TENSOR_ENTRIES}


def _dict_class(trainer: dict[str, Any], state: dict[str, Tensor], where: str) -> str:
    """The dictionary class: config.json's ``dict_class``, else recognised from the tensor names."""
    name = trainer.get("dict_class")
    if name is not None:
        name = ALIASES.get(name, name)
        if name not in DICT_CLASSES:
            raise CorruptFileError(f"{where}: dict_class={name!r} is not supported; accepted: "
                                   f"{', '.join(DICT_CLASSES)}")
        return name
    keys = set(state)
    matches = [n for n, c in DICT_CLASSES.items() if keys == set(c.tensors) | set(c.scalars)]
    if len(matches) != 1:
        raise CorruptFileError(f"{where}: {STATE_FILE} alone does not say its dictionary class (tensors: "
                               f"{', '.join(sorted(keys))}; {'could be ' + ' or '.join(matches) if matches else 'no match'}"
                               f"); put its {CONFIG_FILE} beside it")
    return matches[0]


def _hooks(hints: Hints, trainer: dict[str, Any], buffer: dict[str, Any]) -> tuple[str, str]:
    """(hook_name, how it was found): the hints, else the trainer's layer and submodule name."""
    if hints.hook_name:
        return hints.hook_name, "registry"
    if trainer.get("saelab_hook_name"):
        return str(trainer["saelab_hook_name"]), "config.json (saelab_hook_name)"
    layer = trainer.get("layer")
    if not isinstance(layer, int):
        return "", ""
    submodule = str(trainer.get("submodule_name") or "").lower()
    if "mlp" in submodule:
        kind = "hook_mlp_out"
    elif "attn" in submodule or "attention" in submodule:
        kind = "hook_attn_out"
    else:
        kind = "hook_resid_pre" if buffer.get("io") == "in" else "hook_resid_post"
    return f"blocks.{layer}.{kind}", "config.json (layer, submodule_name)"


def _scalar(state: dict[str, Tensor], key: str, where: str) -> float:
    value = state[key]
    if value.numel() != 1:
        raise CorruptFileError(f"{where}: {key} has shape {tuple(value.shape)}, expected a scalar")
    return value.item()


def read(folder: Path, hints: Hints) -> Converted:
    """A dictionary_learning folder (``ae.pt`` [+ ``config.json``]) -> saelab SAE of the same architecture."""
    where = str(folder)
    state = load_state_dict(folder / STATE_FILE, where)
    config = read_json(folder / CONFIG_FILE, where) if (folder / CONFIG_FILE).is_file() else {}
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    buffer = config.get("buffer") if isinstance(config.get("buffer"), dict) else {}
    name = _dict_class(trainer, state, where)
    spec = DICT_CLASSES[name]
    key_enc = next(k for k, (ours, _) in spec.tensors.items() if ours == "W_enc")
    if key_enc not in state:
        raise CorruptFileError(f"{where}: {name} needs tensor {key_enc}; found {', '.join(sorted(state))}")
    shape = dims(where, key_enc, tuple(state[key_enc].shape))
    d_sae, d_in = shape if spec.tensors[key_enc][1] else shape[::-1]
    ours = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}  # every other tensor: [d_sae]
    expected = {k: ours.get(s, (d_sae,))[:: -1 if t else 1] for k, (s, t) in spec.tensors.items()}
    check_shapes(where, {k: tuple(v.shape) for k, v in state.items() if k not in spec.scalars}, expected,
                 why=f"d_in={d_in}, d_sae={d_sae} from {key_enc}")
    missing = [s for s in spec.scalars if s not in state]
    if missing:
        raise CorruptFileError(f"{where}: {name} needs buffers {', '.join(missing)}")
    for declared, actual in (("activation_dim", d_in), ("dict_size", d_sae)):
        if declared in trainer and trainer[declared] != actual:
            raise CorruptFileError(f"{where}: config.json {declared}={trainer[declared]} but {key_enc} has shape "
                                   f"{shape}")
    tensors = {s: (state[k].t() if t else state[k]).contiguous() for k, (s, t) in spec.tensors.items()}
    hook, found_by = _hooks(hints, trainer, buffer)
    fields: dict[str, Any] = {"architecture": spec.architecture, "d_in": d_in, "d_sae": d_sae, "hook_name": hook,
                              "name": hints.name, "apply_b_dec_to_input": spec.centered,
                              "dtype": dtype_name(tensors["W_enc"].dtype)}
    if spec.architecture in ("relu", "gated"):
        fields["unit_norm_decoder"] = False  # the decoder norms are read as stored
    notes = [f"{name} -> {spec.architecture}" + (f"; hook from {found_by}: {hook}" if found_by else
                                                 "; no hook named (pass hook_name)")]
    metadata = {"model_name": hints.model or trainer.get("lm_name"), "source_format": "dictionary_learning",
                "dict_class": name}
    if spec.scalars:
        _scalars_into(fields, tensors, state, trainer, spec, notes, where)
        if spec.architecture == "topk":
            metadata["topk_threshold"] = _scalar(state, "threshold", where)  # kept for writing it back
    return Converted(build_sae(fields, tensors, where), notes, {k: v for k, v in metadata.items() if v})


def _scalars_into(fields: dict[str, Any], tensors: dict[str, Tensor], state: dict[str, Tensor],
                  trainer: dict[str, Any], spec: DictClass, notes: list[str], where: str) -> None:
    """k, the inference threshold and Matryoshka's group sizes into the config and state."""
    k = int(_scalar(state, "k", where))
    if "k" in trainer and trainer["k"] != k:
        raise CorruptFileError(f"{where}: config.json k={trainer['k']} but the k buffer holds {k}")
    fields["k"] = k
    threshold = _scalar(state, "threshold", where)
    if spec.architecture == "topk":
        if threshold >= 0:
            notes.append(f"AutoEncoderTopK's optional inference threshold ({threshold:.4g}) is not used: saelab's "
                         "topk selects k latents per token, as its encode does by default")
        return
    tensors.update(threshold=torch.tensor(threshold, dtype=torch.float64),
                   threshold_ema=torch.zeros((), dtype=torch.float64),
                   threshold_updates=torch.zeros((), dtype=torch.int64))
    if "group_sizes" in spec.scalars:
        sizes = [int(s) for s in state["group_sizes"].reshape(-1).tolist()]
        d_sae = fields["d_sae"]
        fractions = [s / d_sae for s in sizes]
        if sum(sizes) != d_sae or any(s <= 0 for s in sizes) or group_ends(fractions, d_sae) != list(
                accumulate(sizes)):
            raise CorruptFileError(f"{where}: group_sizes={sizes} must be positive and sum to d_sae={d_sae}")
        fields["group_fractions"] = fractions
        weights = trainer.get("group_weights")
        if isinstance(weights, list) and len(weights) == len(sizes):
            fields["group_weights"] = weights


# ----------------------------------------------------------------------------- writing
def write(item: Converted, folder: Path) -> Path:
    """An SAE of a dictionary_learning architecture -> ``ae.pt`` (tensors only) + ``config.json``."""
    sae, metadata = item.sae, item.metadata
    cfg = sae.cfg
    if cfg.architecture not in WRITES:
        raise refuse_write("dictionary_learning", sae, f"its classes cover {', '.join(WRITES)}")
    if cfg.is_transcoder:
        raise refuse_write("dictionary_learning", sae, "its dictionaries are autoencoders, not transcoders")
    choices = WRITES[cfg.architecture]
    name = choices[0] if cfg.apply_b_dec_to_input or len(choices) == 1 else choices[1]
    spec = DICT_CLASSES[name]
    if cfg.architecture == "gated" and not cfg.apply_b_dec_to_input:
        raise refuse_write("dictionary_learning", sae, "GatedAutoEncoder subtracts its decoder bias before encoding")
    with torch.no_grad():
        own = dict(sae.state_dict())
        if "b_enc" in own:
            own["b_enc"] = saelab_encoder_bias(sae, spec.centered)
        state = {k: (own[s].t() if t else own[s]).detach().cpu().contiguous() for k, (s, t) in spec.tensors.items()}
        if "k" in spec.scalars:
            state["k"] = torch.tensor(cfg.k, dtype=torch.int32)
            threshold = metadata.get("topk_threshold", -1.0) if cfg.architecture == "topk" else sae.threshold
            state["threshold"] = torch.tensor(float(threshold), dtype=torch.float32)
        if "group_sizes" in spec.scalars:
            ends = [0, *group_ends(cfg.group_fractions, cfg.d_sae)]
            state["group_sizes"] = torch.tensor([end - start for start, end in zip(ends, ends[1:], strict=False)])
    trainer = {"dict_class": name, "trainer_class": "saelab", "activation_dim": cfg.d_in, "dict_size": cfg.d_sae,
               "layer": _layer(cfg.hook_name), "lm_name": metadata.get("model_name"), "submodule_name": None,
               "saelab_hook_name": cfg.hook_name}
    if "k" in spec.scalars:
        trainer["k"] = cfg.k
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / STATE_FILE, lambda tmp: torch.save(state, tmp))
    atomic_write_json(folder / CONFIG_FILE, {"trainer": trainer, "buffer": {"d_submodule": cfg.d_in, "io": "out"}})
    return folder


def _layer(hook: str) -> int | None:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


FORMAT = FormatSpec(
    name="dictionary_learning",
    description="saprmarks/dictionary_learning: ae.pt (state dict, weights_only) + config.json",
    required=(STATE_FILE,), optional=(CONFIG_FILE,), read=read, write=write, writes=tuple(WRITES))
