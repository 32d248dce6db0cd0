"""Conversion between saelab SAEs and the SAELens folder format (cfg.json + sae_weights.safetensors).

SAELens (≥ 6) writes ``cfg.json`` as ``{architecture, d_in, d_sae, dtype, device,
apply_b_dec_to_input, normalize_activations, reshape_activations, [k, rescale_acts_by_decoder_norm],
metadata: {model_name, hook_name, sae_lens_version, ...}}``; older versions wrote one flat dict
(``hook_name``/``hook_point``, ``hook_layer``, ``model_name``, ``activation_fn_str`` /
``activation_fn_kwargs``, ``normalize_activations`` as a bool, ...). Both are read; the newer one is
written, plus a ``saelab`` section (ignored by SAELens) with our full config and metadata.

Weights use SAELens names (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``,
``W_skip [d_out, d_in]`` for skip transcoders, as SAELens stores it); each architecture class says
which SAELens architecture it is written as (``saelens_names``: for an SAE, a transcoder, a skip
transcoder) and which tensors and cfg fields it adds (``saelens_tensors``, ``saelens_cfg_fields``).
Today: relu -> standard / transcoder / skip_transcoder; tied -> standard (W_enc = W_decᵀ, b_dec = 0);
gated -> gated; topk -> topk; jumprelu -> jumprelu / jumprelu_transcoder; batchtopk and
matryoshka_batchtopk -> jumprelu with θ repeated d_sae times (BatchTopK's inference rule). A coder
SAELens has no class for (e.g. a TopK transcoder) is written with our own name (``topk_transcoder``): saelab
reads it back through the ``saelab`` section, SAELens does not. Transcoders carry SAELens' top-level
``d_out``, ``hook_name_out``, ``hook_layer_out``, ``hook_head_index_out``.

SAELens inference equals ours for each row. Read-side extras folded exactly into plain weights: ``scaling_factor`` (pre-6 fine-tuning
scale, multiplies the decoder rows), ``rescale_acts_by_decoder_norm`` (decoder norms moved into the
encoder), ``log_threshold`` (older JumpReLU). SAELens' ``normalize_activations`` values
``layer_norm`` and ``constant_norm_rescale`` (per-token rescaling at run time) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saelab import __version__
from saelab.errors import CorruptFileError
from saelab.sae.base import SAE
from saelab.sae.config import DTYPES, SAEConfig
from saelab.sae.registry import SAE_CLASSES, sae_class

FORMAT_VERSION = 1
# SAELens reads cfg.json files whose metadata.sae_lens_version is >= 6 with its current layout;
# this marks the layout we write, not the program that wrote it (see the saelab section for that).
SAELENS_LAYOUT_VERSION = "6.0.0"
SAELENS_METADATA_KEYS = ("model_name", "hook_name", "hook_head_index", "model_class_name",
                         "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens",
                         "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path",
                         "sae_lens_version", "sae_lens_training_version")
_RUNTIME_NORMALISATIONS = ("layer_norm", "constant_norm_rescale")


@dataclass
class FolderConfig:
    """What a cfg.json says, in saelab terms."""

    sae_cfg: SAEConfig
    layout: str  # "saelab", "saelens-v6" or "saelens-pre6"
    saelab: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    rescale_acts_by_decoder_norm: bool = False
    notes: list[str] = field(default_factory=list)


def coder_kind(cfg: SAEConfig) -> str:
    """"sae", "transcoder" or "skip_transcoder" (the keys of ``SAE.saelens_names``)."""
    if not cfg.is_transcoder:
        return "sae"
    return "skip_transcoder" if cfg.skip_connection else "transcoder"


def saelens_architecture(cfg: SAEConfig) -> str:
    """The architecture name cfg.json gives: SAELens' where it has the kind, else ours (``topk_transcoder``,
    so that SAELens refuses the folder instead of reading a transcoder as an SAE)."""
    kind = coder_kind(cfg)
    fallback = cfg.architecture if kind == "sae" else f"{cfg.architecture}_{kind}"
    return sae_class(cfg.architecture).saelens_names.get(kind, fallback)


def from_saelens_architecture() -> dict[str, tuple[str, str]]:
    """SAELens architecture name -> (our architecture, kind), for the classes SAELens' names mean."""
    found: dict[str, tuple[str, str]] = {}
    for name, cls in SAE_CLASSES.items():
        if cls.saelens_native:
            for kind, saelens_name in cls.saelens_names.items():
                found.setdefault(saelens_name, (name, kind))
    return found


# ----------------------------------------------------------------------------- writing
def to_saelens(sae: SAE, extra_meta: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(cfg.json dict, tensors) for ``sae`` in SAELens' current layout plus a ``saelab`` section."""
    cfg = sae.cfg
    extra_meta = dict(extra_meta or {})
    hook = cfg.hook_name
    metadata: dict[str, Any] = {"sae_lens_version": SAELENS_LAYOUT_VERSION,
                                "sae_lens_training_version": SAELENS_LAYOUT_VERSION,
                                "hook_name": hook, "hook_head_index": None}
    for key in SAELENS_METADATA_KEYS:
        if key in extra_meta and key not in ("sae_lens_version", "sae_lens_training_version", "hook_name"):
            metadata[key] = extra_meta[key]
    metadata.setdefault("model_name", extra_meta.get("model", {}).get("name") if isinstance(
        extra_meta.get("model"), dict) else None)
    out: dict[str, Any] = {
        "architecture": saelens_architecture(cfg),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if hook.endswith("hook_z") else "none",
        **type(sae).saelens_cfg_fields(cfg),
    }
    if cfg.is_transcoder:
        out.update(d_out=cfg.d_out, hook_name_out=cfg.hook_name_out, hook_layer_out=_layer(cfg.hook_name_out),
                   hook_head_index_out=None)
    out["metadata"] = metadata
    out["saelab"] = {"format_version": FORMAT_VERSION, "saelab_version": __version__,
                     "architecture": cfg.architecture, "hook_name": hook, "config": cfg.to_dict(),
                     **extra_meta}

    with torch.no_grad():
        tensors = {"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec, **sae.saelens_tensors()}
        if cfg.skip_connection:
            tensors["W_skip"] = sae.W_skip.t()
        tensors = {k: v.detach().clone().contiguous().cpu() for k, v in tensors.items()}
    return out, tensors


def _layer(hook: str) -> int | None:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


# ----------------------------------------------------------------------------- reading
def read_cfg(raw: dict[str, Any], where: str) -> FolderConfig:
    """Interpret a cfg.json dict (saelab, SAELens ≥ 6, or older SAELens)."""
    if not isinstance(raw, dict):
        raise CorruptFileError(f"{where}: cfg.json must hold a JSON object, found {type(raw).__name__}")
    section = raw.get("saelab")
    if isinstance(section, dict) and isinstance(section.get("config"), dict):
        try:
            sae_cfg = SAEConfig.from_dict(section["config"])
        except Exception as exc:
            raise CorruptFileError(f"{where}: the saelab section of cfg.json is not a valid SAE config: {exc}") from exc
        metadata = raw.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise CorruptFileError(f"{where}: cfg.json metadata={metadata!r} must be a JSON object")
        return FolderConfig(sae_cfg, "saelab", saelab=section, metadata=dict(metadata))
    if isinstance(raw.get("metadata"), dict):
        return _read_saelens(dict(raw), dict(raw["metadata"]), "saelens-v6", where)
    return _read_saelens(*_flat_to_v6(raw, where), "saelens-pre6", where)


def _flat_to_v6(raw: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Older flat SAELens cfg -> (core fields, metadata)."""
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}
    flat = {renames.get(k, k): v for k, v in raw.items()}
    flat.setdefault("architecture", "standard")
    flat.setdefault("apply_b_dec_to_input", True)
    activation = flat.get("activation_fn", "relu")
    kwargs = flat.get("activation_fn_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CorruptFileError(f"{where}: cfg.json activation_fn_kwargs={kwargs!r} must be a JSON object")
    if activation == "topk" and kwargs.get("k") is not None:
        flat["architecture"] = "topk"
        flat["k"] = kwargs["k"]
    elif flat["architecture"] == "standard" and activation not in ("relu", None):
        flat["architecture"] = f"standard with activation_fn={activation!r}"
    norm = flat.get("normalize_activations")
    if isinstance(norm, bool) or norm is None:
        flat["normalize_activations"] = "expected_average_only_in" if norm else "none"
    metadata = {k: flat[k] for k in SAELENS_METADATA_KEYS if k in flat}
    if "hook_layer" in flat:
        metadata["hook_layer"] = flat["hook_layer"]
    return flat, metadata


def _read_saelens(core: dict[str, Any], metadata: dict[str, Any], layout: str, where: str) -> FolderConfig:
    arch = core.get("architecture", "standard")
    known = from_saelens_architecture()
    if not isinstance(arch, str) or arch not in known:
        raise CorruptFileError(f"{where}: SAELens architecture {arch!r} is not supported; accepted: "
                               f"{', '.join(known)}")
    ours, kind = known[arch]
    notes: list[str] = []
    norm = core.get("normalize_activations") or "none"
    if not isinstance(norm, str) or norm not in (*_RUNTIME_NORMALISATIONS, "none", "expected_average_only_in"):
        raise CorruptFileError(f"{where}: normalize_activations={norm!r} is not accepted; accepted: none, "
                               "expected_average_only_in")
    if norm in _RUNTIME_NORMALISATIONS:
        raise CorruptFileError(f"{where}: normalize_activations={norm!r} (a per-token run-time rescaling) is "
                               "not supported; accepted: none, expected_average_only_in")
    if norm == "expected_average_only_in":
        notes.append("normalize_activations=expected_average_only_in: the SAE expects inputs scaled by a "
                     "dataset-wide factor that was not folded into these weights (SAELens applies none "
                     "at inference either); scale inputs yourself if you know the factor")
    if core.get("reshape_activations") == "hook_z":
        notes.append("reshape_activations=hook_z: saelab SAEs take hook_z flattened over heads "
                     "[..., n_heads * d_head]")
    for flag in ("apply_b_dec_to_input", "rescale_acts_by_decoder_norm"):
        if not isinstance(core.get(flag, False), bool):
            raise CorruptFileError(f"{where}: cfg.json {flag}={core[flag]!r} must be true or false")
    dtype = str(core.get("dtype", "float32")).removeprefix("torch.")
    if dtype not in DTYPES:
        raise CorruptFileError(f"{where}: dtype={core.get('dtype')!r} is not supported; accepted: {', '.join(DTYPES)}")
    fields: dict[str, Any] = {
        "architecture": ours,
        "d_in": core.get("d_in"), "d_sae": core.get("d_sae"),
        "hook_name": metadata.get("hook_name") or "",
        "apply_b_dec_to_input": bool(core.get("apply_b_dec_to_input", True)),
        "dtype": dtype,
        **sae_class(ours).options_from_saelens(core),
    }
    if kind != "sae":
        fields.update(d_out=core.get("d_out"), apply_b_dec_to_input=False, skip_connection=kind == "skip_transcoder",
                      hook_name_out=core.get("hook_name_out") or metadata.get("hook_name_out") or "")
    try:
        sae_cfg = SAEConfig(**fields)
    except Exception as exc:
        raise CorruptFileError(f"{where}: cfg.json does not describe a usable SAE: {exc}") from exc
    return FolderConfig(sae_cfg, layout, metadata=metadata, notes=notes,
                        rescale_acts_by_decoder_norm=bool(core.get("rescale_acts_by_decoder_norm", False)))


def expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a folder written for ``cfg`` (SAELens names)."""
    shapes: dict[str, tuple[int, ...]] = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.d_out),
                                          "b_dec": (cfg.d_out,), **sae_class(cfg.architecture).saelens_shapes(cfg)}
    if cfg.skip_connection:
        shapes["W_skip"] = (cfg.d_out, cfg.d_in)
    return shapes


def from_saelens_tensors(folder_cfg: FolderConfig, tensors: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """SAELens-named tensors -> the ``state_dict`` of the saelab SAE (folding read-side extras)."""
    cfg = folder_cfg.sae_cfg
    tensors = dict(tensors)
    notes = folder_cfg.notes
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").double().exp()
    scaling = tensors.pop("scaling_factor", None)
    if scaling is None:
        scaling = tensors.pop("finetuning_scaling_factor", None)
    _check_tensors(cfg, tensors, where)
    tensors = {k: v.to(cfg.torch_dtype) for k, v in tensors.items()}
    if scaling is not None and not torch.all(scaling == 1):
        _check_shape(where, "scaling_factor", scaling, (cfg.d_sae,))
        tensors["W_dec"] = tensors["W_dec"] * scaling.to(cfg.torch_dtype)[:, None]
        notes.append("the fine-tuning scaling_factor was folded into W_dec")
    if folder_cfg.rescale_acts_by_decoder_norm:
        norms = tensors["W_dec"].norm(dim=1)
        tensors["W_enc"] = tensors["W_enc"] * norms[None, :]
        tensors["b_enc"] = tensors["b_enc"] * norms
        tensors["W_dec"] = tensors["W_dec"] / norms[:, None]
        notes.append("rescale_acts_by_decoder_norm: decoder norms were folded into the encoder")
    if "W_skip" in tensors:
        tensors["W_skip"] = tensors["W_skip"].t().contiguous()
    return sae_class(cfg.architecture).state_from_saelens(cfg, tensors, where)


def _check_tensors(cfg: SAEConfig, tensors: dict[str, Tensor], where: str) -> None:
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected)}")
        raise CorruptFileError(f"{where}: sae_weights.safetensors does not match the architecture cfg.json gives "
                               f"({cfg.architecture!r}: {'; '.join(parts)}); expected tensors: {', '.join(expected)}")
    for name, shape in expected.items():
        _check_shape(where, name, tensors[name], shape)


def _check_shape(where: str, name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise CorruptFileError(f"{where}: tensor {name} has shape {tuple(tensor.shape)}, expected {shape} "
                               "from cfg.json (d_in, d_sae)")
