"""Fetching one SAE's files from the Hugging Face Hub through ``huggingface_hub`` and its cache.

Only the files the format needs are fetched (``snapshot_download`` with ``allow_patterns`` for the
SAE's folder; ``hf_hub_download`` when the format is a single file). With ``HF_HUB_OFFLINE=1`` the
cache alone is used, and a missing SAE is reported as such (what to run, where the cache is).
"""

from __future__ import annotations

from pathlib import Path

from saelab.errors import SaelabError
from saelab.pretrained.formats import FormatSpec


class HubError(SaelabError):
    """An SAE's files could not be fetched (offline and not cached, missing repo or file, network)."""


def offline() -> bool:
    """Whether huggingface_hub runs offline (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _failure(repo_id: str, folder: str, exc: Exception) -> HubError:
    from huggingface_hub import constants

    where = f"{repo_id}/{folder}" if folder else repo_id
    if offline():
        return HubError(f"{where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 "
                        "forbids downloading it; run once with network access (or copy a cache that has it and "
                        "point HF_HUB_CACHE at it), or unset HF_HUB_OFFLINE")
    return HubError(f"fetching {where} from the Hugging Face Hub failed ({type(exc).__name__}: {exc}); check the "
                    "repo id and your connection (gated repos need a Hugging Face token and accepted terms)")


def fetch(repo_id: str, path: str, spec: FormatSpec, revision: str | None = None) -> Path:
    """The local folder (in the Hugging Face cache) holding the files of the SAE at ``path`` in ``repo_id``.

    path: the SAE's folder in the repo, or a file in it (its folder is used)."""
    import huggingface_hub

    folder = path.strip("/")
    if folder.rsplit("/", 1)[-1] in spec.required + spec.optional:
        folder = folder.rpartition("/")[0]
    prefix = f"{folder}/" if folder else ""
    try:
        if len(spec.required) == 1 and not spec.optional:
            local = Path(huggingface_hub.hf_hub_download(repo_id=repo_id, filename=prefix + spec.required[0],
                                                         revision=revision)).parent
        else:
            root = huggingface_hub.snapshot_download(repo_id=repo_id, revision=revision,
                                                     allow_patterns=[prefix + f for f in spec.required + spec.optional])
            local = Path(root) / folder
    except Exception as exc:  # network, auth, missing repo or file, offline cache miss: reported alike
        raise _failure(repo_id, folder, exc) from exc
    missing = [f for f in spec.required if not (local / f).is_file()]
    if missing:
        if offline():
            raise _failure(repo_id, folder, FileNotFoundError(", ".join(missing)))
        raise HubError(f"{repo_id} has no {', '.join(prefix + f for f in missing)}; a {spec.name} SAE folder holds "
                       f"{', '.join(spec.required)}")
    return local
