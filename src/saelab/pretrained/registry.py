"""The registry of pretrained SAE releases: ``releases.json`` shipped with saelab, plus SAELens'
``pretrained_saes.yaml`` when the user has it (a path given, or an installed ``sae_lens``).

A release is one set of SAEs published together (one Hub repo, one model, one format); each SAE has
an id, a path inside the repo (its folder), the TransformerLens hook it reads (and, for transcoders,
the one it predicts), architecture, input width, number of latents, the published L0 and its
Neuronpedia id where known. Fields repeated by every SAE of a release (architecture, d_in, d_out)
are written once on the release. ``releases.json`` is validated when first read: a bad entry is
refused with the release, the id and the field.

    list_releases(model="gemma-3-270m")       # [Release, ...]
    release_info("gpt2-small-res-jb", "blocks.8.hook_resid_pre")   # PretrainedSAE
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from saelab.errors import ConfigError, SaelabError

REGISTRY_FILE = "releases.json"
SCHEMA_VERSION = 1
RELEASE_FIELDS = ("repo_id", "model", "format", "saes")
SAE_FIELDS = ("id", "path", "hook_name", "architecture", "d_in", "d_sae", "l0", "neuronpedia_id")
INHERITED = ("architecture", "d_in", "d_out")  # an SAE takes these from its release unless it sets them
OPTIONAL = {"hook_name_out": "", "skip_connection": False, "d_out": None}


class UnknownReleaseError(SaelabError):
    """A release or SAE id the registry does not have."""


@dataclass(frozen=True)
class PretrainedSAE:
    """One published SAE.

    release, sae_id: how it is named. repo_id, path: the Hub repo and the SAE's folder in it.
    model: the model's registry name. format: a key of ``saelab.pretrained.formats.FORMATS`` ("" when
    saelab cannot read it). architecture: a saelab architecture (None: read from the files).
    hook_name / hook_name_out: the sites read and predicted ("" when unknown; out "" for an SAE).
    d_in, d_sae, d_out: widths (None: read from the files). l0: published mean L0. neuronpedia_id:
    ``model/source`` on Neuronpedia. origin: "saelab" or the SAELens yaml it came from.
    """

    release: str
    sae_id: str
    repo_id: str
    path: str
    model: str
    format: str
    architecture: str | None
    hook_name: str
    hook_name_out: str = ""
    skip_connection: bool = False
    d_in: int | None = None
    d_sae: int | None = None
    d_out: int | None = None
    l0: float | None = None
    neuronpedia_id: str | None = None
    origin: str = "saelab"
    conversion: str = ""  # SAELens' conversion function for entries saelab cannot read

    @property
    def kind(self) -> str:
        """"sae", "transcoder" or "skip_transcoder"."""
        if not self.hook_name_out or self.hook_name_out == self.hook_name:
            return "sae"
        return "skip_transcoder" if self.skip_connection else "transcoder"

    @property
    def n_params(self) -> int | None:
        """d_in · d_sae, the size of the encoder (None when a width is unknown)."""
        return self.d_in * self.d_sae if self.d_in and self.d_sae else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind, "parameters": self.n_params}


@dataclass(frozen=True)
class Release:
    """A set of SAEs published together; ``saes`` maps SAE id -> ``PretrainedSAE``."""

    name: str
    repo_id: str
    model: str
    format: str
    description: str = ""
    source: str = ""
    origin: str = "saelab"
    saes: dict[str, PretrainedSAE] = field(default_factory=dict)

    @property
    def architectures(self) -> list[str]:
        return sorted({s.architecture or "from files" for s in self.saes.values()})

    @property
    def kinds(self) -> list[str]:
        return sorted({s.kind for s in self.saes.values()})

    def to_dict(self, with_saes: bool = False) -> dict[str, Any]:
        out = {"release": self.name, "repo_id": self.repo_id, "model": self.model, "format": self.format or None,
               "architectures": self.architectures, "kinds": self.kinds, "n_saes": len(self.saes),
               "description": self.description, "source": self.source, "origin": self.origin}
        if with_saes:
            out["saes"] = [s.to_dict() for s in self.saes.values()]
        return out


# ----------------------------------------------------------------------------- the shipped registry
def registry_data() -> dict[str, Any]:
    """``releases.json`` as shipped (parsed, not validated)."""
    text = resources.files("saelab.pretrained").joinpath(REGISTRY_FILE).read_text()
    return json.loads(text)


@functools.cache
def models() -> dict[str, dict[str, Any]]:
    """Model registry name -> facts (hf_id, n_layers, d_model, n_heads, d_head)."""
    return dict(registry_data()["models"])


@functools.cache
def shipped_releases() -> dict[str, Release]:
    """The releases in ``releases.json``, validated."""
    return parse_registry(registry_data())


def parse_registry(data: dict[str, Any]) -> dict[str, Release]:
    """Validate registry data (the ``releases.json`` schema) and build its releases."""
    from saelab.pretrained.formats import FORMATS
    from saelab.sae import architectures

    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(f"registry data must be an object with schema_version={SCHEMA_VERSION}")
    known_models = data.get("models", {})
    out: dict[str, Release] = {}
    for name, rel in data.get("releases", {}).items():
        missing = [f for f in RELEASE_FIELDS if f not in rel]
        if missing:
            raise ConfigError(f"release {name!r} is missing {', '.join(missing)}; required: {', '.join(RELEASE_FIELDS)}")
        if rel["format"] not in FORMATS:
            raise ConfigError(f"release {name!r}: format={rel['format']!r}; accepted: {', '.join(FORMATS)}")
        if rel["model"] not in known_models:
            raise ConfigError(f"release {name!r}: model={rel['model']!r} is not in the registry's models "
                              f"({', '.join(known_models)})")
        saes: dict[str, PretrainedSAE] = {}
        for raw in rel["saes"]:
            entry = {**{k: rel[k] for k in INHERITED if k in rel}, **OPTIONAL, **raw}
            where = f"release {name!r}, SAE {raw.get('id')!r}"
            missing = [f for f in SAE_FIELDS if f not in entry]
            if missing:
                raise ConfigError(f"{where} is missing {', '.join(missing)}; required: {', '.join(SAE_FIELDS)}")
            if entry["architecture"] not in architectures():
                raise ConfigError(f"{where}: architecture={entry['architecture']!r}; accepted: "
                                  f"{', '.join(architectures())}")
            if entry["id"] in saes:
                raise ConfigError(f"{where} is listed twice")
            check_hooks(entry, known_models[rel["model"]], rel["model"], where)
            saes[entry["id"]] = PretrainedSAE(
                release=name, sae_id=entry["id"], repo_id=rel["repo_id"], path=entry["path"], model=rel["model"],
                format=rel["format"], architecture=entry["architecture"], hook_name=entry["hook_name"],
                hook_name_out=entry["hook_name_out"], skip_connection=bool(entry["skip_connection"]),
                d_in=entry["d_in"], d_sae=entry["d_sae"], d_out=entry["d_out"], l0=entry["l0"],
                neuronpedia_id=entry["neuronpedia_id"])
        out[name] = Release(name, rel["repo_id"], rel["model"], rel["format"], rel.get("description", ""),
                            rel.get("source", ""), "saelab", saes)
    return out


def check_hooks(entry: dict[str, Any], model: dict[str, Any], model_name: str, where: str) -> None:
    """Refuse hook names the model does not have (``blocks.L.kind``, L below its layer count)."""
    from saelab.models.hook_points import UnknownHookError, parse_hook_name

    for key in ("hook_name", "hook_name_out"):
        hook = entry.get(key) or ""
        if not hook and key == "hook_name_out":
            continue
        try:
            parse_hook_name(hook, model["n_layers"], model_name)
        except UnknownHookError as exc:
            raise ConfigError(f"{where}: {key}={entry.get(key)!r}: {exc}") from exc


# ----------------------------------------------------------------------------- with SAELens' registry
def releases(saelens_yaml: str | os.PathLike | None = None, installed_saelens: bool = True) -> dict[str, Release]:
    """The shipped releases, plus SAELens' (``saelens_yaml``, else the installed sae_lens package's when
    ``installed_saelens``): SAELens-only releases are added, and ids SAELens lists for a shipped
    release of the same repo are added to it."""
    from saelab.pretrained.saelens_yaml import installed_saelens_yaml, read_saelens_yaml

    ours = dict(shipped_releases())
    path = Path(saelens_yaml) if saelens_yaml is not None else installed_saelens_yaml() if installed_saelens else None
    if path is None:
        return ours
    for name, theirs in read_saelens_yaml(path).items():
        mine = ours.get(name)
        if mine is None:
            ours[name] = theirs
        elif mine.repo_id == theirs.repo_id:
            ours[name] = _merged(mine, theirs)
    return ours


def _merged(mine: Release, theirs: Release) -> Release:
    """``mine`` with SAELens' extra ids, which take the release's format and shared fields."""
    template = next(iter(mine.saes.values()))
    extra = {sid: replace(sae, release=mine.name, format=mine.format, model=mine.model,
                          architecture=template.architecture, d_in=sae.d_in or template.d_in)
             for sid, sae in theirs.saes.items() if sid not in mine.saes}
    return replace(mine, saes={**mine.saes, **extra}) if extra else mine


def _close(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=5, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def get_release(release: str, saelens_yaml: str | os.PathLike | None = None) -> Release:
    """The release called ``release``, or ``UnknownReleaseError`` naming close matches."""
    known = releases(saelens_yaml)
    if release not in known:
        raise UnknownReleaseError(f"unknown release {release!r}{_close(release, list(known))} "
                                  "(saelab sae list shows every release)")
    return known[release]


def release_info(release: str, sae_id: str, saelens_yaml: str | os.PathLike | None = None) -> PretrainedSAE:
    """The SAE ``sae_id`` of ``release``, or ``UnknownReleaseError`` naming close matches."""
    rel = get_release(release, saelens_yaml)
    if sae_id not in rel.saes:
        ids = list(rel.saes)
        hint = _close(sae_id, ids) or "; its ids: " + ", ".join(ids[:8]) + (
            f", ... ({len(ids)} in all)" if len(ids) > 8 else "")
        raise UnknownReleaseError(f"release {release!r} has no SAE {sae_id!r}{hint} (saelab sae info {release} "
                                  "lists them)")
    return rel.saes[sae_id]


def list_releases(model: str | None = None, saelens_yaml: str | os.PathLike | None = None) -> list[Release]:
    """Every release, or those for ``model`` (a registry model name or its Hugging Face id, any case)."""
    every = list(releases(saelens_yaml).values())
    if model is None:
        return every
    wanted = model.lower()
    hf_ids = {name: facts.get("hf_id", "").lower() for name, facts in models().items()}
    found = [r for r in every if wanted in (r.model.lower(), hf_ids.get(r.model, ""))]
    if not found:
        names = sorted({r.model for r in every} | set(hf_ids.values()) - {""})
        raise UnknownReleaseError(f"no release for model {model!r}{_close(model, names)}; models with releases: "
                                  f"{', '.join(sorted({r.model for r in every}))}")
    return found
