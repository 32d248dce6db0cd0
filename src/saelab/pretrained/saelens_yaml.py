"""SAELens' registry file, ``pretrained_saes.yaml``, read into saelab releases.

Its layout: ``{SAE_LOOKUP: {release: {repo_id, model, conversion_func, links, config_overrides,
saes: [{id, path, l0, neuronpedia, variance_explained}, ...]}}}`` (newer versions drop the
``SAE_LOOKUP`` level). ``conversion_func`` says how SAELens reads the files: none (SAELens folders),
``gemma_2`` (Gemma Scope params.npz), ``gemma_3`` (Gemma Scope 2), ``sparsify``,
``dictionary_learning_1``; other conversions are listed but refused when loaded. Parsed with
``yaml.safe_load`` (plain data only); the file is found in an installed ``sae_lens`` package without
importing it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from saelab.errors import CorruptFileError
from saelab.pretrained.registry import PretrainedSAE, Release

YAML_NAME = "pretrained_saes.yaml"
CONVERSION_FORMATS = {None: "saelens", "sae_lens": "saelens", "gemma_2": "gemma_scope_npz",
                      "gemma_3": "gemma_scope_safetensors", "sparsify": "sparsify",
                      "dictionary_learning_1": "dictionary_learning"}
_HOOK_ID = re.compile(r"^(blocks\.\d+\.[A-Za-z_.]+?)(?:__.*)?$")


def installed_saelens_yaml() -> Path | None:
    """``pretrained_saes.yaml`` of an installed sae_lens package (not imported), if any."""
    try:
        spec = importlib.util.find_spec("sae_lens")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / YAML_NAME
        if path.is_file():
            return path
    return None


def _hook_from_id(sae_id: str) -> str:
    """The TransformerLens hook an id like ``blocks.8.hook_resid_pre`` (or ``...__trainer_3``) names."""
    from saelab.models.hook_points import HOOK_KINDS

    found = _HOOK_ID.match(sae_id)
    return found.group(1) if found and found.group(1).split(".", 2)[2] in HOOK_KINDS else ""


def read_saelens_yaml(path: str | os.PathLike) -> dict[str, Release]:
    """SAELens' releases from ``path`` (``yaml.safe_load``, cached while the file is unchanged); a file
    that is not its layout is refused."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise CorruptFileError(f"no SAELens registry file at {str(path)!r}") from None
    return dict(_read(str(path), (stat.st_mtime_ns, stat.st_size)))


@functools.lru_cache(maxsize=4)
def _read(where: str, stamp: tuple[int, int]) -> dict[str, Release]:
    import yaml

    try:
        data = yaml.safe_load(Path(where).read_text())
    except OSError as exc:
        raise CorruptFileError(f"{where}: cannot be read ({exc})") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{where}: not valid YAML ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("SAE_LOOKUP"), dict):
        data = data["SAE_LOOKUP"]
    if not isinstance(data, dict):
        raise CorruptFileError(f"{where}: expected a mapping of release names to releases (SAELens' "
                               f"{YAML_NAME}), found {type(data).__name__}")
    return {str(name): _release(str(name), rel, where) for name, rel in data.items() if _is_release(rel)}


def _is_release(rel: Any) -> bool:
    return isinstance(rel, dict) and isinstance(rel.get("repo_id"), str) and isinstance(rel.get("saes"), list)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _release(name: str, rel: dict[str, Any], where: str) -> Release:
    conversion = rel.get("conversion_func")
    fmt = CONVERSION_FORMATS.get(conversion, "")
    model = str(rel.get("model") or "")
    saes: dict[str, PretrainedSAE] = {}
    for raw in rel["saes"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            continue
        sae_id = raw["id"]
        saes[sae_id] = PretrainedSAE(
            release=name, sae_id=sae_id, repo_id=rel["repo_id"], path=str(raw.get("path") or sae_id), model=model,
            format=fmt, architecture=None, hook_name=_hook_from_id(sae_id), l0=_number(raw.get("l0")),
            neuronpedia_id=raw.get("neuronpedia") if isinstance(raw.get("neuronpedia"), str) else None,
            origin=where, conversion="" if fmt else str(conversion))
    links = rel.get("links") if isinstance(rel.get("links"), dict) else {}
    description = f"from SAELens' registry{'; dashboards: ' + str(links['dashboards']) if 'dashboards' in links else ''}"
    return Release(name, rel["repo_id"], model, fmt, description, f"SAELens {YAML_NAME}", where, saes)
