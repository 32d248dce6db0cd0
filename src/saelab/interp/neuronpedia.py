"""Neuronpedia export: the folder Neuronpedia's importer reads, built from ``build_feature_data``.

    summary = export_neuronpedia(lm, sae, hook, source, "out/np", features="0-99")
    summary["folder"]       # out/np/{modelId}/{sourceId}, already checked by ``validate_export``

Layout and field names follow Neuronpedia's Prisma schema (``saelab.interp.neuronpedia_schema``:
hijohnnylin/neuronpedia ``apps/webapp/prisma/schema.prisma``) and the folder its importer reads::

    {modelId}/{sourceId}/release.jsonl  model.jsonl  sourceset.jsonl  source.jsonl    one row each
    {modelId}/{sourceId}/features/batch-N.jsonl.gz      a ``Neuron`` row per latent
    {modelId}/{sourceId}/activations/batch-N.jsonl.gz   ``Activation`` rows of those latents

``sourceId`` is ``{layer}-{sourceSet}`` (Neuronpedia's convention, e.g. ``6-res-jb``). Features are
gathered ``features_per_batch`` at a time (1024, the batch size of Neuronpedia's own exporter), one
``build_feature_data`` pass per batch, and each batch is written atomically as soon as it is done.

Per latent (``Neuron``): ``maxActApprox`` (max activation seen), ``frac_nonzero`` (density),
``freq_hist_data_bar_values/heights`` (activation histogram: bin centres, counts), ``pos_str/
pos_values`` and ``neg_str/neg_values`` (logit table), ``logits_hist_data_bar_values/heights``,
``vector`` (the steering vector: the decoder row ``W_dec[f]``, written at ``hookName``, the site
the decoder writes), ``vectorDefaultSteerStrength`` (max activation, as SAEDashboard's converter
sets it), ``topkCosSimIndices/Values`` (the latent itself first, then its nearest decoder rows),
``correlated_features_indices/pearson`` and, for ``hook_z`` SAEs, ``decoder_weights_dist`` (decoder
norm share per head). Left empty: ``neuron_alignment_*``, ``correlated_neurons_*``,
``correlated_features_l1`` (not measured), ``umap_*`` (not written).

Per example (``Activation``): ``tokens``, ``values`` (the latent's activation at each),
``maxValue``/``maxValueTokenIndex``/``minValue``, ``qualifyingTokenIndex`` (the token the example was
chosen for) and its bin, as SAEDashboard's converter writes bins: top examples ``binMin = -1``,
``binMax`` = max activation, ``binContains = -1``; quantile examples ``binMin``/``binMax`` = the
group's activation range and ``binContains`` = the share of the latent's firings in the group.
Contexts are whole windows by default (``export_feature_config``), as Neuronpedia shows them.
For ``attn.hook_z`` SAEs, ``dfaValues [tokens]`` is the direct feature attribution by source token
at ``dfaTargetIndex`` = ``maxValueTokenIndex`` (``saelab.attention.dfa``: Σ_h pattern·(v·w_f)),
``dfaMaxValue`` its maximum; sources outside a cut context are not shown.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saelab import __version__
from saelab.errors import ConfigError, check_choice, check_range
from saelab.fileio import atomic_write_bytes
from saelab.interp.gather import Example, FeatureData, FeatureDataConfig, FeatureRecord, build_feature_data
from saelab.interp.neuronpedia_schema import BATCH_PATTERN, VISIBILITY, validate_export
from saelab.interp.selection import parse_features
from saelab.interp.site import check_site
from saelab.models import LoadedModel, parse_hook_name
from saelab.models.adapters.base import expand_kv
from saelab.models.hook_points import ATTN_PATTERN, ATTN_V, ATTN_Z
from saelab.sae import SAE
from saelab.splicing import target_hook

#: the bot user that Neuronpedia's seed creates (``apps/webapp/prisma/seed.ts``), the default creator
#: of imported rows (``DEFAULT_CREATOR_USER_ID`` in its webapp's env)
DEFAULT_CREATOR_ID = "clkht01d40000jv08hvalcvly"
FEATURES_PER_BATCH = 1024
SLUG = re.compile(r"[^a-z0-9_-]+")


def slug(text: str) -> str:
    """``text`` as a Neuronpedia id: lower case, runs of other characters than ``a-z0-9_-`` -> ``-``."""
    return SLUG.sub("-", str(text).lower()).strip("-")


@dataclass
class NeuronpediaConfig:
    """Names and authorship of an export (None: derived from the model and SAE; see ``export_ids``)."""

    model_id: str | None = None          # default: the model's name, e.g. "toy", "gemma-3-270m"
    source_set: str | None = None        # default: "saelab-{site}-{d_sae}", e.g. "saelab-resid-pre-512"
    release: str | None = None           # default: the source set
    release_title: str | None = None
    description: str | None = None       # of the source set, e.g. "Residual Stream - 16k"
    creator_name: str = "saelab"
    creator_id: str = DEFAULT_CREATOR_ID
    urls: list[str] = field(default_factory=list)
    hf_repo_id: str | None = None
    hf_folder_id: str | None = None
    instruct: bool = False
    visibility: str = "PUBLIC"
    features_per_batch: int = FEATURES_PER_BATCH

    def __post_init__(self) -> None:
        check_choice("visibility", self.visibility, VISIBILITY)
        check_range("features_per_batch", self.features_per_batch, 1, None, integer=True)
        for name in ("model_id", "source_set", "release"):
            value = getattr(self, name)
            if value is not None and (not value or slug(value) != value):
                raise ConfigError(f"{name}={value!r} is not accepted; use lower-case letters, digits, '-' and "
                                  f"'_' (e.g. {slug(value) or 'my-saes'!r})")
        if not self.creator_id or not self.creator_name:
            raise ConfigError("creator_id and creator_name must not be empty")


@dataclass(frozen=True)
class ExportIds:
    """Where an export goes: ``model_id/source_id``, with ``source_id = f"{layer}-{source_set}"``."""

    model_id: str
    source_set: str
    source_id: str
    release: str
    layer: int
    site: str          # hook kind, e.g. "hook_resid_pre", "attn.hook_z"


def export_ids(lm: LoadedModel, sae: SAE, hook: str, cfg: NeuronpediaConfig) -> ExportIds:
    """Resolve the ids of ``cfg`` (defaults from the model name, the hook and ``d_sae``)."""
    point = parse_hook_name(hook, lm.n_layers, lm.name)
    model_id = cfg.model_id or slug(Path(str(lm.name)).name) or "model"
    source_set = cfg.source_set or f"saelab-{slug(point.kind.replace('hook_', ''))}-{sae.cfg.d_sae}"
    return ExportIds(model_id, source_set, f"{point.layer}-{source_set}", cfg.release or source_set,
                     point.layer, point.kind)


def export_feature_config(context_size: int = 128, **overrides: Any) -> FeatureDataConfig:
    """``FeatureDataConfig`` for an export: whole windows as contexts (Neuronpedia shows whole prompts,
    and DFA then sees every source token), no random negatives."""
    return FeatureDataConfig(**{"context_size": context_size, "context_left": context_size,
                                "context_right": context_size, **overrides})


def resolve_features(features: str | list[int], d_sae: int) -> list[int]:
    """``"all"``, ``"0-99,120"`` or indices -> sorted indices, each checked against ``d_sae``."""
    if isinstance(features, str) and features.strip().lower() == "all":
        return list(range(d_sae))
    return parse_features(features, d_sae)


# ----------------------------------------------------------------------------- rows
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _centres(edges: list[float]) -> list[float]:
    return [round((a + b) / 2, 6) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _text(token: str) -> str:
    return token.replace("\x00", " ")  # Postgres text holds no NUL (the importer does the same)


def feature_row(record: FeatureRecord, sae: SAE, ids: ExportIds, hook_out: str, creator_id: str,
                created: str) -> dict[str, Any]:
    """The ``Neuron`` row of one latent (see the module docstring for each field)."""
    logits = record.logits or {"top": [], "bottom": [], "hist": {"edges": [], "counts": []}}
    vector = sae.W_dec.detach()[record.index].float().cpu().tolist()             # [d_out]
    near = record.neighbors_cosine
    return {
        "modelId": ids.model_id, "layer": ids.source_id, "index": str(record.index),
        "sourceSetName": ids.source_set, "creatorId": creator_id, "createdAt": created,
        "maxActApprox": record.max_act, "hasVector": True, "vector": vector, "vectorLabel": None,
        "vectorDefaultSteerStrength": record.max_act if record.max_act > 0 else 10.0, "hookName": hook_out,
        "topkCosSimIndices": [record.index] + [i for i, _ in near],
        "topkCosSimValues": [1.0] + [round(v, 6) for _, v in near],
        "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
        "correlated_neurons_indices": [], "correlated_neurons_pearson": [], "correlated_neurons_l1": [],
        "correlated_features_indices": [i for i, _ in record.neighbors_correlation],
        "correlated_features_pearson": [round(v, 6) for _, v in record.neighbors_correlation],
        "correlated_features_l1": [],
        "neg_str": [_text(t) for t, _ in logits["bottom"]], "neg_values": [v for _, v in logits["bottom"]],
        "pos_str": [_text(t) for t, _ in logits["top"]], "pos_values": [v for _, v in logits["top"]],
        "frac_nonzero": record.density,
        "freq_hist_data_bar_heights": [float(c) for c in record.hist["counts"]],
        "freq_hist_data_bar_values": _centres(record.hist["edges"]),
        "logits_hist_data_bar_heights": [float(c) for c in logits["hist"]["counts"]],
        "logits_hist_data_bar_values": _centres(logits["hist"]["edges"]),
        "decoder_weights_dist": list(record.head_shares or []),
    }


def binned_examples(record: FeatureRecord) -> list[tuple[Example, float, float, float]]:
    """(example, binMin, binMax, binContains) of every example of a latent: top examples, then quantiles."""
    out = [(e, -1.0, record.max_act, -1.0) for e in record.top_examples]
    for group in record.quantile_groups:
        out += [(e, group["lo"], group["hi"], group["fraction"]) for e in group["examples"]]
    return out


def activation_row(example: Example, bins: tuple[float, float, float], record: FeatureRecord, ids: ExportIds,
                   number: int, dataset: str, creator_id: str, created: str,
                   dfa: list[float] | None) -> dict[str, Any]:
    """The ``Activation`` row of one example (``number``: its place among the latent's examples)."""
    values = list(example.acts)
    top = int(np.argmax(values))
    key = f"{ids.model_id}/{ids.source_id}/{record.index}/{number}"
    return {
        "id": "c" + hashlib.sha256(key.encode()).hexdigest()[:24],     # cuid-shaped, reproducible
        "tokens": [_text(t) for t in example.tokens], "dataIndex": str(example.window),
        "index": str(record.index), "layer": ids.source_id, "modelId": ids.model_id, "dataSource": dataset,
        "maxValue": values[top], "maxValueTokenIndex": top, "minValue": min(values), "values": values,
        "dfaValues": dfa or [], "dfaTargetIndex": top if dfa else None,
        "dfaMaxValue": max(dfa) if dfa else None,
        "creatorId": creator_id, "createdAt": created,
        "binMin": bins[0], "binMax": bins[1], "binContains": bins[2],
        "qualifyingTokenIndex": example.mark,
    }


@torch.no_grad()
def example_dfa(lm: LoadedModel, sae: SAE, hook: str, data: FeatureData, wanted: list[tuple[int, Example]],
                batch_size: int = 16) -> list[list[float]]:
    """DFA by source token ``[len(example.tokens)]`` of each (latent, example) of a hook_z SAE at the
    example's highest-activation token ``dest``: Σ_h pattern[h, dest, src] · (v[src, h] · w_{f,h}), with
    ``w_f`` the encoder's linear part split per head (``saelab.attention.dfa`` explains the
    decomposition). Windows holding examples run ``batch_size`` at a time, up to the SAE's layer."""
    layer = parse_hook_name(hook, lm.n_layers, lm.name).layer
    names = [f"blocks.{layer}.{ATTN_V}", f"blocks.{layer}.{ATTN_PATTERN}"]
    W = sae.linear_encoder()[0].detach().double().cpu().reshape(lm.n_heads, lm.d_head, -1)  # [heads, d_head, d_sae]
    by_window: dict[int, list[int]] = {}
    for j, (_, example) in enumerate(wanted):
        by_window.setdefault(example.window, []).append(j)
    windows = sorted(by_window)
    out: list[list[float]] = [[] for _ in wanted]
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        _, cache = lm.run_with_cache(lm.as_input_ids(data.windows[chunk]), names, stop_at_layer="auto")
        for b, window in enumerate(chunk):
            v = expand_kv(cache[names[0]][b].double().cpu().transpose(0, 1), lm.n_heads)  # [heads, src, d_head]
            pattern = cache[names[1]][b].double().cpu()                                   # [heads, dest, src]
            for j in by_window[window]:
                feature, example = wanted[j]
                lo = example.pos - example.mark
                dest = lo + int(np.argmax(example.acts))
                reads = torch.einsum("hsd,hd->hs", v, W[:, :, feature])                    # [heads, src]
                dfa = (pattern[:, dest, :] * reads).sum(0)                                 # [src]
                out[j] = [round(float(x), 6) for x in dfa[lo:lo + len(example.tokens)]]
    return out


def batch_rows(lm: LoadedModel, sae: SAE, hook: str, data: FeatureData, ids: ExportIds, dataset: str,
               creator_id: str, created: str) -> tuple[list[dict], list[dict]]:
    """(feature rows, activation rows) of one gathered batch of latents."""
    hook_out = target_hook(sae, hook)
    features = [feature_row(r, sae, ids, hook_out, creator_id, created) for r in data.features]
    examples = [(r, e, bins) for r in data.features for e, *bins in binned_examples(r)]
    dfa: list[list[float] | None] = [None] * len(examples)
    if ids.site == ATTN_Z:
        dfa = list(example_dfa(lm, sae, hook, data, [(r.index, e) for r, e, _ in examples],
                               data.meta["config"]["model_batch_size"]))
    counters: dict[int, int] = {}
    activations = []
    for (record, example, bins), values in zip(examples, dfa, strict=True):
        number = counters[record.index] = counters.get(record.index, -1) + 1
        activations.append(activation_row(example, tuple(bins), record, ids, number, dataset, creator_id,
                                          created, values))
    return features, activations


def metadata_rows(lm: LoadedModel, sae: SAE, ids: ExportIds, cfg: NeuronpediaConfig, dataset: str,
                  n_prompts: int, context_size: int, created: str) -> dict[str, dict[str, Any]]:
    """``{file name: row}`` of release.jsonl, model.jsonl, sourceset.jsonl and source.jsonl."""
    from saelab.sae.saelens_format import to_saelens

    name = str(lm.name)
    owner = name.split("/")[0] if "/" in name and not Path(name).exists() else "saelab"
    attention = ids.site == ATTN_Z
    title = cfg.release_title or f"saelab export: {sae.cfg.architecture} SAEs on {ids.model_id}"
    description = cfg.description or f"{ids.site} - {sae.cfg.d_sae} latents ({sae.cfg.architecture})"
    common = {"creatorId": cfg.creator_id, "visibility": cfg.visibility, "createdAt": created}
    return {
        "release.jsonl": {"name": ids.release, "description": title, "descriptionShort": title,
                          "urls": list(cfg.urls), "creatorName": cfg.creator_name,
                          "creatorNameShort": cfg.creator_name, **common},
        "model.jsonl": {"id": ids.model_id, "displayName": name, "displayNameShort": ids.model_id,
                        "dimension": lm.d_model, "layers": lm.n_layers, "neuronsPerLayer": lm.d_mlp,
                        "owner": owner, "instruct": cfg.instruct, "inferenceEnabled": False,
                        "updatedAt": created, **common},
        "sourceset.jsonl": {"modelId": ids.model_id, "name": ids.source_set, "description": description,
                            "creatorName": cfg.creator_name, "urls": list(cfg.urls), "releaseName": ids.release,
                            "hasDashboards": True, "showDfa": attention, "showHeadAttribution": attention,
                            "showCorrelated": False, **common},
        "source.jsonl": {"id": ids.source_id, "modelId": ids.model_id, "setName": ids.source_set,
                         "hasDashboards": True, "inferenceEnabled": False,
                         "saelensConfig": to_saelens(sae)[0], "hfRepoId": cfg.hf_repo_id,
                         "hfFolderId": cfg.hf_folder_id, "num_prompts": n_prompts,
                         "num_tokens_in_prompt": context_size, "dataset": dataset,
                         "notes": f"exported by saelab {__version__} from {sae.cfg.name or 'an SAE'} at "
                                  f"{sae.cfg.hook_name}", **common},
    }


# ----------------------------------------------------------------------------- files
def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, allow_nan=False, separators=(",", ":")) + "\n" for r in rows).encode("utf-8")


def write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, gzip-compressed (level 5, as Neuronpedia's exporter), written atomically."""
    atomic_write_bytes(path, gzip.compress(_jsonl(rows), compresslevel=5, mtime=0))


def _remove_stale_batches(folder: Path, n_batches: int) -> None:
    for sub in ("features", "activations"):
        for path in (folder / sub).glob("batch-*.jsonl.gz"):
            found = BATCH_PATTERN.match(path.name)
            if found and int(found.group(1)) >= n_batches:
                path.unlink()


def export_neuronpedia(lm: LoadedModel, sae: SAE, hook: str, source, out_dir: str | Path,
                       features: str | list[int] = "all", cfg: NeuronpediaConfig | None = None,
                       data_cfg: FeatureDataConfig | None = None) -> dict[str, Any]:
    """Gather ``features`` of ``sae`` (reading ``hook`` of ``lm``) over ``source`` and write the
    Neuronpedia folder ``out_dir/{modelId}/{sourceId}``; validate it and return a summary."""
    cfg = cfg or NeuronpediaConfig()
    data_cfg = data_cfg or export_feature_config()
    check_site(lm, sae, hook)
    ids = export_ids(lm, sae, hook, cfg)
    indices = resolve_features(features, sae.cfg.d_sae)
    folder = Path(out_dir) / ids.model_id / ids.source_id
    dataset = getattr(source, "dataset_path", None) or json.dumps(source.describe(), sort_keys=True)
    created = _now()
    step = cfg.features_per_batch
    n_activations, n_prompts, seconds = 0, 0, 0.0
    for batch, start in enumerate(range(0, len(indices), step)):
        data = build_feature_data(lm, sae, hook, source, indices[start:start + step], data_cfg)
        rows, acts = batch_rows(lm, sae, hook, data, ids, dataset, cfg.creator_id, created)
        write_jsonl_gz(folder / "features" / f"batch-{batch}.jsonl.gz", rows)
        acts_path = folder / "activations" / f"batch-{batch}.jsonl.gz"
        if acts:
            write_jsonl_gz(acts_path, acts)
        else:                                # dead latents only: no file (an empty one breaks the importer)
            acts_path.unlink(missing_ok=True)
        n_activations += len(acts)
        n_prompts, seconds = data.meta["n_windows"], seconds + data.meta["seconds"]
    n_batches = math.ceil(len(indices) / step)
    for name, row in metadata_rows(lm, sae, ids, cfg, dataset, n_prompts, data_cfg.context_size, created).items():
        atomic_write_bytes(folder / name, _jsonl([row]))
    _remove_stale_batches(folder, n_batches)
    report = validate_export(folder)
    return {"folder": str(folder), "model_id": ids.model_id, "source_id": ids.source_id, "hook": hook,
            "n_features": len(indices), "n_activations": n_activations, "n_batches": n_batches,
            "n_prompts": n_prompts, "gather_seconds": round(seconds, 2), "schema": report["schema"]}
