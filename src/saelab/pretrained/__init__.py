"""Pretrained SAEs: a registry of published releases, converters for the formats people publish, and
loading by release and id (the Hugging Face cache, ``HF_HUB_OFFLINE=1`` honoured, nothing unpickled).

    from saelab.pretrained import load_sae, list_releases, release_info
    sae = load_sae("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")   # a JumpReLU SAE
    [r.name for r in list_releases(model="gpt2-small")]
    release_info("gpt2-small-res-jb", "blocks.8.hook_resid_pre").n_params       # d_in * d_sae
    convert("downloads/ae_folder", "out/sae")                                    # dictionary_learning -> saelab

Formats (``saelab.pretrained.formats``): saelens, gemma_scope_npz, gemma_scope_safetensors, sparsify,
dictionary_learning. The shipped registry is ``releases.json``; SAELens' ``pretrained_saes.yaml`` is
added when given or installed. This package sits above ``saelab.sae``, which never imports it.
"""

from saelab.pretrained.formats import FORMATS, Converted, Hints, detect_format, read_sae, write_sae
from saelab.pretrained.hub import HubError
from saelab.pretrained.loading import LoadInfo, convert, load_sae, load_sae_with_info, save_pretrained
from saelab.pretrained.registry import (
    PretrainedSAE,
    Release,
    UnknownReleaseError,
    get_release,
    list_releases,
    models,
    release_info,
    releases,
)

__all__ = ["FORMATS", "Converted", "Hints", "HubError", "LoadInfo", "PretrainedSAE", "Release", "UnknownReleaseError",
           "convert", "detect_format", "get_release", "list_releases", "load_sae", "load_sae_with_info", "models",
           "read_sae", "release_info", "releases", "save_pretrained", "write_sae"]
