"""Opening a pretrained SAE by release and id, and converting downloaded files.

    sae = load_sae("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium", device="cuda")
    sae, info = load_sae_with_info("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    convert("downloads/layers.10", "out/layers.10")          # any format -> a saelab/SAELens folder

The files come from the Hugging Face cache (downloaded once); they are read by the release's
format module and then checked against the registry: an SAE whose files describe another
architecture, kind or width than the registry records is refused instead of being used as
something else (SAELens once read TopK and BatchTopK SAEs as ReLU ones).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saelab.errors import ConfigError, CorruptFileError, SaelabError
from saelab.pretrained.formats import FORMATS, Converted, Hints, read_sae, write_sae
from saelab.pretrained.hub import fetch
from saelab.pretrained.registry import PretrainedSAE, models, release_info
from saelab.sae import SAE
from saelab.sae.config import DTYPES


@dataclass
class LoadInfo:
    """Where a loaded SAE came from: its registry entry, the local folder read, the conversion's notes,
    and the metadata written with it when saved (model, Neuronpedia id, provenance)."""

    entry: PretrainedSAE
    folder: Path
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def sae_name(release: str, sae_id: str) -> str:
    """A saelab SAE name (folder-safe) for ``release``/``sae_id``."""
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", f"{release}.{sae_id}").strip("._-")


def hints_for(entry: PretrainedSAE) -> Hints:
    """What the registry knows about ``entry`` that its files may not say."""
    return Hints(hook_name=entry.hook_name, hook_name_out=entry.hook_name_out, model=entry.model,
                 name=sae_name(entry.release, entry.sae_id), repo_id=entry.repo_id, path=entry.path)


def check_against_registry(entry: PretrainedSAE, sae: SAE) -> None:
    """Refuse files that describe another SAE than the registry records (architecture, kind, widths)."""
    cfg = sae.cfg
    where = f"{entry.release}/{entry.sae_id} ({entry.repo_id}/{entry.path})"
    if entry.architecture and cfg.architecture != entry.architecture:
        raise CorruptFileError(f"{where}: the files describe a {cfg.architecture} SAE, but the registry records "
                               f"{entry.architecture}; refusing to use it as another architecture")
    kind = "sae" if not cfg.is_transcoder else "skip_transcoder" if cfg.skip_connection else "transcoder"
    if entry.architecture and kind != entry.kind:
        raise CorruptFileError(f"{where}: the files describe a {kind}, but the registry records a {entry.kind}")
    model = models().get(entry.model, {}).get("hf_id", entry.model)
    for label, recorded, found in (("d_in", entry.d_in, cfg.d_in), ("d_sae", entry.d_sae, cfg.d_sae),
                                   ("d_out", entry.d_out, cfg.d_out)):
        if recorded is not None and recorded != found:
            raise CorruptFileError(f"{where}: the files give {label}={found}, but {model}'s {entry.hook_name} SAE "
                                   f"in the registry has {label}={recorded}; the shapes do not fit the model")


def _provenance(entry: PretrainedSAE) -> dict[str, Any]:
    facts = models().get(entry.model, {})
    out = {"model_name": facts.get("hf_id", entry.model), "neuronpedia_id": entry.neuronpedia_id,
           "pretrained": {"release": entry.release, "sae_id": entry.sae_id, "repo_id": entry.repo_id,
                          "path": entry.path, "format": entry.format, "l0": entry.l0}}
    return {k: v for k, v in out.items() if v is not None}


def load_sae_with_info(release: str, sae_id: str, device: str | torch.device = "cpu", dtype: str | None = None,
                       *, revision: str | None = None,
                       saelens_yaml: str | os.PathLike | None = None) -> tuple[SAE, LoadInfo]:
    """``load_sae`` that also returns the ``LoadInfo``."""
    entry = release_info(release, sae_id, saelens_yaml)
    if not entry.format:
        raise SaelabError(f"release {release!r} is read by SAELens' conversion {entry.conversion!r}, which saelab "
                          f"cannot read; formats saelab reads: {', '.join(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not accepted; choose one of: {', '.join(DTYPES)}")
    folder = fetch(entry.repo_id, entry.path, FORMATS[entry.format], revision=revision)
    converted = read_sae(folder, entry.format, hints_for(entry))
    sae = converted.sae
    check_against_registry(entry, sae)
    if dtype is not None:
        sae.to(DTYPES[dtype])
        sae.cfg = sae.cfg.replace(dtype=dtype)
    sae.to(device)
    metadata = {**converted.metadata, **_provenance(entry)}
    return sae.eval(), LoadInfo(entry, folder, converted.notes, metadata)


def load_sae(release: str, sae_id: str, device: str | torch.device = "cpu", dtype: str | None = None, *,
             revision: str | None = None, saelens_yaml: str | os.PathLike | None = None) -> SAE:
    """Open the pretrained SAE ``sae_id`` of ``release`` as a saelab SAE (eval mode).

    device, dtype: where and in which dtype (a saelab dtype name; default: the file's) to put it.
    revision: a Hub revision. saelens_yaml: SAELens' pretrained_saes.yaml to look releases up in
    too (default: an installed sae_lens package's, if any). Unknown names raise
    ``UnknownReleaseError`` naming the close matches; ``HF_HUB_OFFLINE=1`` reads the cache only.
    """
    return load_sae_with_info(release, sae_id, device, dtype, revision=revision, saelens_yaml=saelens_yaml)[0]


def save_pretrained(release: str, sae_id: str, out: str | os.PathLike, **kwargs: Any) -> tuple[Path, LoadInfo]:
    """Load ``release``/``sae_id`` and write it as a saelab/SAELens folder at ``out`` (with its provenance)."""
    sae, info = load_sae_with_info(release, sae_id, **kwargs)
    return write_sae(Converted(sae.cpu(), info.notes, info.metadata), out), info


def convert(path: str | os.PathLike, out: str | os.PathLike, format: str = "auto",  # noqa: A002
            to: str = "saelens", hints: Hints | None = None) -> tuple[Path, Converted]:
    """Read the SAE at ``path`` (a folder, or a file in it) in ``format`` and write it as ``to`` at ``out``."""
    converted = read_sae(path, format, hints)
    if Path(out).expanduser().resolve() == Path(path).expanduser().resolve():
        raise ConfigError(f"--out {str(out)!r} is the input folder; write the conversion somewhere else")
    return write_sae(converted, out, to), converted
