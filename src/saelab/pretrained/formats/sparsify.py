"""EleutherAI sparsify folders: one folder per hookpoint (``layers.10``, ``layers.3.mlp``, ...) holding
``cfg.json`` (SparseCoderConfig fields + ``d_in``) and ``sae.safetensors``.

Tensors: ``encoder.weight [d_sae, d_in]`` (an ``nn.Linear``), ``encoder.bias [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, and with ``skip_connection`` ``W_skip [d_in, d_in]``
(applied as ``x @ W_skip.T``). sparsify's output width is always d_in. Inference (SparseCoder.encode /
decode): SAEs subtract b_dec before encoding, transcoders (``transcode``) do not; latents are the k
largest of ReLU(x W_encᵀ + b_enc) — the same values as saelab's TopK (ReLU after the selection);
ŷ = f W_dec + b_dec (+ x W_skipᵀ). ``normalize_decoder`` keeps decoder rows at unit norm while
training; the rows are read as stored. ``groupmax`` activations, signed latents, ``embed_skip`` and
``gram_lookup`` (inputs from elsewhere in the model) have no saelab equivalent and are refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from saelab.errors import CorruptFileError
from saelab.fileio import atomic_save_safetensors, atomic_write_json
from saelab.pretrained.formats.common import (
    Converted,
    FormatSpec,
    Hints,
    build_sae,
    check_shapes,
    dims,
    load_tensors,
    read_json,
    refuse_write,
    saelab_encoder_bias,
    safetensors_dtype,
    safetensors_shapes,
)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
UNSUPPORTED_FLAGS = ("signed", "embed_skip", "gram_lookup")
_HOOKPOINT = re.compile(r"^(?:model\.|gpt_neox\.|transformer\.)?(?:layers|h)\.(\d+)(?:\.(mlp|attn|self_attn|attention))?$")
# hookpoint submodule -> (SAE hook kind, transcoder input kind, transcoder output kind)
_SITES = {None: ("hook_resid_post", "hook_resid_pre", "hook_resid_post"),
          "mlp": ("hook_mlp_out", "ln2.hook_normalized", "hook_mlp_out"),
          "attn": ("hook_attn_out", "ln1.hook_normalized", "hook_attn_out")}


def hooks_for(hookpoint: str, transcoder: bool) -> tuple[str, str]:
    """(hook_name, hook_name_out) in TransformerLens names for a sparsify hookpoint ("" out for an SAE).

    ``layers.N`` is decoder layer N's output (its input, for a transcoder); ``layers.N.mlp`` the MLP's
    output (its normalised input for a transcoder); unknown hookpoints keep their own name."""
    found = _HOOKPOINT.match(hookpoint)
    if not found:
        return (f"{hookpoint}.input", f"{hookpoint}.output") if transcoder else (hookpoint, "")
    layer, sub = found.group(1), found.group(2)
    sae_kind, in_kind, out_kind = _SITES["attn" if sub in ("attn", "self_attn", "attention") else sub]
    if transcoder:
        return f"blocks.{layer}.{in_kind}", f"blocks.{layer}.{out_kind}"
    return f"blocks.{layer}.{sae_kind}", ""


def read(folder: Path, hints: Hints) -> Converted:
    """A sparsify hookpoint folder -> TopK SAE or (skip) transcoder."""
    where = str(folder)
    cfg = read_json(folder / CFG_FILE, where)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise CorruptFileError(f"{where}: cfg.json activation={activation!r}; accepted: topk (saelab has no "
                               "groupmax)")
    for flag in UNSUPPORTED_FLAGS:
        if cfg.get(flag):
            raise CorruptFileError(f"{where}: cfg.json {flag}=true has no saelab equivalent; accepted: false")
    transcode, skip = bool(cfg.get("transcode", False)), bool(cfg.get("skip_connection", False))
    if skip and not transcode:
        raise CorruptFileError(f"{where}: skip_connection=true on an autoencoder (transcode=false); saelab gives "
                               "skip terms to transcoders only")
    path = folder / WEIGHTS_FILE
    shapes = safetensors_shapes(path, where)
    d_sae, d_in = dims(where, "encoder.weight", shapes.get("encoder.weight", ()))
    declared = cfg.get("d_in")
    latents = cfg.get("num_latents") or (declared or 0) * int(cfg.get("expansion_factor") or 0)
    if declared != d_in or latents not in (0, d_sae):
        raise CorruptFileError(f"{where}: cfg.json gives d_in={declared}, num_latents={latents or None}, but "
                               f"encoder.weight has shape {(d_sae, d_in)} [d_sae, d_in]")
    expected = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in),
                "b_dec": (d_in,), "W_skip": (d_in, d_in)}
    check_shapes(where, shapes, expected, optional=() if skip else ("W_skip",),
                 why=f"d_in={d_in}, d_sae={d_sae} from encoder.weight")
    if "W_skip" in shapes and not skip:
        raise CorruptFileError(f"{where}: sae.safetensors holds W_skip but cfg.json says skip_connection=false")
    raw = load_tensors(path, where, {k: expected[k] for k in shapes})
    hook_in, hook_out = (hints.hook_name, hints.hook_name_out) if hints.hook_name else hooks_for(folder.name,
                                                                                                  transcode)
    state = {"W_enc": raw["encoder.weight"].t().contiguous(), "b_enc": raw["encoder.bias"], "W_dec": raw["W_dec"],
             "b_dec": raw["b_dec"]}
    fields: dict[str, Any] = {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "hook_name": hook_in,
                              "name": hints.name, "k": cfg.get("k", 32), "dtype": safetensors_dtype(path, where)}
    if transcode:
        fields.update(hook_name_out=hook_out, d_out=d_in, skip_connection=skip)
        if skip:
            state["W_skip"] = raw["W_skip"].t().contiguous()
    else:
        fields["apply_b_dec_to_input"] = True
    notes = [f"hookpoint {folder.name!r} -> {hook_in}" + (f" -> {hook_out}" if transcode else "")]
    if cfg.get("normalize_decoder") is False:
        notes.append("normalize_decoder=false: decoder rows are read as stored (not unit norm); saelab's topk "
                     "renormalises them if fine-tuned")
    if cfg.get("multi_topk"):
        notes.append("multi_topk only changes sparsify's training loss; inference is plain TopK")
    metadata = {"model_name": hints.model, "source_format": "sparsify", "hookpoint": folder.name}
    return Converted(build_sae(fields, state, where), notes, {k: v for k, v in metadata.items() if v})


def write(item: Converted, folder: Path) -> Path:
    """A TopK SAE or transcoder (d_out = d_in) -> ``cfg.json`` + ``sae.safetensors``."""
    sae = item.sae
    cfg = sae.cfg
    if cfg.architecture != "topk":
        raise refuse_write("sparsify", sae, "sparsify folders hold per-token TopK coders only")
    if cfg.d_out != cfg.d_in:
        raise refuse_write("sparsify", sae, f"sparsify's output width is its input width (d_out={cfg.d_out}, "
                                            f"d_in={cfg.d_in})")
    with torch.no_grad():
        tensors = {"encoder.weight": sae.W_enc.t(), "W_dec": sae.W_dec, "b_dec": sae.b_dec,
                   "encoder.bias": saelab_encoder_bias(sae, centered=not cfg.is_transcoder)}
        if cfg.skip_connection:
            tensors["W_skip"] = sae.W_skip.t()
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    cfg_json = {"activation": "topk", "expansion_factor": max(1, cfg.d_sae // cfg.d_in),
                "normalize_decoder": bool(cfg.unit_norm_decoder), "num_latents": cfg.d_sae, "k": cfg.k,
                "multi_topk": False, "skip_connection": bool(cfg.skip_connection), "transcode": cfg.is_transcoder,
                "d_in": cfg.d_in}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(folder / WEIGHTS_FILE, tensors)
    atomic_write_json(folder / CFG_FILE, cfg_json)
    return folder


FORMAT = FormatSpec(
    name="sparsify", description="EleutherAI sparsify: cfg.json + sae.safetensors per hookpoint (TopK, transcoders)",
    required=(CFG_FILE, WEIGHTS_FILE), optional=(), read=read, write=write, writes=("topk",))
