"""Neuronpedia's import schema as data, and ``validate_export`` that checks an export folder against it.

Source: the Prisma models of hijohnnylin/neuronpedia, ``apps/webapp/prisma/schema.prisma`` (read at
commit 008d5040ab97abd5c44d92d190b30034ad7a6e97): ``SourceRelease``, ``Model``, ``SourceSet``,
``Source``, ``Neuron`` (a feature) and ``Activation``, scalar columns only (relations left out).
Types are written as Prisma spells them: ``String``, ``Int``, ``Float``, ``Boolean``, ``DateTime``,
``Json``, ``Visibility`` (enum), ``T[]`` for a list and ``T?`` for a nullable column.

A column is *required* in a file when it has neither ``?`` nor a ``@default`` the database fills in:
the importer (``apps/webapp/app/api/admin/import/route.ts`` with ``lib/db/import.ts``) hands
release/model/sourceset/source rows to ``prisma.<model>.create`` and inserts features and
activations with ``INSERT ... SELECT FROM jsonb_to_recordset``, taking the column list from the
*first* line of each ``.jsonl.gz``; so every line of a batch file must carry the same keys, and a
client-side default (``Activation.id @default(cuid())``) is no default at all there.

Folder layout (as ``utils/neuronpedia-utils/neuronpedia_utils/export-data.py`` writes it and the
importer reads it)::

    {modelId}/{sourceId}/release.jsonl  model.jsonl  sourceset.jsonl  source.jsonl
    {modelId}/{sourceId}/features/batch-N.jsonl.gz       Neuron rows
    {modelId}/{sourceId}/activations/batch-N.jsonl.gz    Activation rows
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from saelab.errors import SaelabError

SCHEMA_SOURCE = ("hijohnnylin/neuronpedia apps/webapp/prisma/schema.prisma "
                 "@ 008d5040ab97abd5c44d92d190b30034ad7a6e97")
VISIBILITY = ("PUBLIC", "UNLISTED", "PRIVATE")
MODEL_ID_PATTERN = re.compile(r"^[a-z0-9_-]{1,128}$")  # Model.id's zod rule, after its toLowerCase()
BATCH_PATTERN = re.compile(r"^batch-(\d+)\.jsonl\.gz$")
METADATA_FILES = {"release.jsonl": "SourceRelease", "model.jsonl": "Model", "sourceset.jsonl": "SourceSet",
                  "source.jsonl": "Source"}
BATCH_FOLDERS = {"features": "Neuron", "activations": "Activation"}


class NeuronpediaSchemaError(SaelabError):
    """An export folder or record that Neuronpedia's importer would refuse or misread."""


@dataclass(frozen=True)
class Column:
    """One column: its Prisma type (``Float[]``, ``Int?``...) and whether a file must hold it."""

    type: str
    required: bool = False


def _columns(spec: str) -> dict[str, Column]:
    """``"name Type [!]"`` lines -> columns; ``!`` marks a required column."""
    out = {}
    for line in spec.strip().splitlines():
        name, kind, *flag = line.split()
        out[name] = Column(kind, required=flag == ["!"])
    return out


SCHEMA: dict[str, dict[str, Column]] = {
    "SourceRelease": _columns("""
        name String !
        visibility Visibility
        isNewUi Boolean
        featured Boolean
        description String !
        descriptionShort String?
        urls String[] !
        creatorEmail String?
        creatorName String !
        creatorNameShort String?
        creatorId String !
        defaultSourceSetName String?
        defaultSourceId String?
        defaultUmapSourceIds String[]
        createdAt DateTime
    """),
    "Model": _columns("""
        id String !
        displayNameShort String
        displayName String
        creatorId String !
        tlensId String?
        openRouterId String?
        dimension Int?
        thinking Boolean
        visibility Visibility
        defaultSourceSetName String?
        defaultSourceId String?
        defaultGraphSourceSetName String?
        inferenceEnabled Boolean
        instruct Boolean
        layers Int !
        neuronsPerLayer Int !
        createdAt DateTime
        owner String !
        updatedAt DateTime
        website String?
    """),
    "SourceSet": _columns("""
        modelId String !
        name String !
        hasDashboards Boolean
        allowInferenceSearch Boolean
        visibility Visibility
        description String !
        type String
        creatorName String !
        urls String[] !
        creatorEmail String?
        creatorId String !
        releaseName String?
        hasGraphs Boolean
        graphEnabled Boolean
        similarityMatrixEnabled Boolean
        defaultOfModelId String?
        defaultGraphModelId String?
        defaultRange Int
        defaultShowBreaks Boolean
        showDfa Boolean
        showCorrelated Boolean
        showHeadAttribution Boolean
        showUmap Boolean
        createdAt DateTime
    """),
    "Source": _columns("""
        id String !
        modelId String !
        hasDashboards Boolean
        inferenceEnabled Boolean
        saelensConfig Json?
        saelensRelease String?
        saelensSaeId String?
        hfRepoId String?
        hfFolderId String?
        visibility Visibility
        defaultOfModelId String?
        setName String !
        creatorId String !
        hasUmap Boolean
        hasUmapLogSparsity Boolean
        hasUmapClusters Boolean
        num_prompts Int?
        num_tokens_in_prompt Int?
        dataset String?
        notes String?
        cosSimMatchModelId String?
        cosSimMatchSourceId String?
        createdAt DateTime
    """),
    "Neuron": _columns("""
        modelId String !
        layer String !
        index String !
        sourceSetName String?
        creatorId String?
        createdAt DateTime
        maxActApprox Float?
        hasVector Boolean
        vector Float[]
        vectorLabel String?
        vectorDefaultSteerStrength Float?
        hookName String?
        topkCosSimIndices Int[]
        topkCosSimValues Float[]
        neuron_alignment_indices Int[]
        neuron_alignment_values Float[]
        neuron_alignment_l1 Float[]
        correlated_neurons_indices Int[]
        correlated_neurons_pearson Float[]
        correlated_neurons_l1 Float[]
        correlated_features_indices Int[]
        correlated_features_pearson Float[]
        correlated_features_l1 Float[]
        neg_str String[]
        neg_values Float[]
        pos_str String[]
        pos_values Float[]
        frac_nonzero Float
        freq_hist_data_bar_heights Float[]
        freq_hist_data_bar_values Float[]
        logits_hist_data_bar_heights Float[]
        logits_hist_data_bar_values Float[]
        decoder_weights_dist Float[]
        umap_cluster Int?
        umap_log_feature_sparsity Float?
        umap_x Float?
        umap_y Float?
    """),
    "Activation": _columns("""
        id String !
        tokens String[] !
        dataIndex String?
        index String !
        layer String !
        modelId String !
        dataSource String?
        maxValue Float !
        maxValueTokenIndex Int !
        minValue Float !
        values Float[] !
        dfaValues Float[]
        dfaTargetIndex Int?
        dfaMaxValue Float?
        zQIndices Int[]
        zKIndices Int[]
        zValues Float[]
        creatorId String !
        createdAt DateTime
        lossValues Float[]
        logitContributions String?
        binMin Float?
        binMax Float?
        binContains Float?
        qualifyingTokenIndex Int?
    """),
}


# ----------------------------------------------------------------------------- one value, one record
def _scalar_ok(kind: str, value: Any) -> bool:
    if kind == "String":
        return isinstance(value, str) and "\x00" not in value
    if kind == "Int":
        return isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31
    if kind == "Float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "Boolean":
        return isinstance(value, bool)
    if kind == "Visibility":
        return value in VISIBILITY
    if kind == "DateTime":
        return isinstance(value, str) and _is_iso_with_zone(value)
    if kind == "Json":
        return True
    raise NeuronpediaSchemaError(f"unknown column type {kind!r} in the schema")


def _is_iso_with_zone(text: str) -> bool:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False


def check_value(column: Column, value: Any) -> str | None:
    """Why ``value`` does not fit ``column`` (None when it does)."""
    kind = column.type
    if kind.endswith("?"):
        if value is None:
            return None
        kind = kind[:-1]
    if kind.endswith("[]"):
        if not isinstance(value, list):
            return f"expected a list ({column.type}), got {type(value).__name__}"
        bad = next((i for i, v in enumerate(value) if not _scalar_ok(kind[:-2], v)), None)
        return None if bad is None else f"element {bad} = {value[bad]!r} is not a {kind[:-2]}"
    if not _scalar_ok(kind, value):
        return f"expected {column.type}, got {value!r}"[:200]
    return None


def validate_record(table: str, record: Any) -> list[str]:
    """Problems of one row of ``table`` (unknown keys, missing required keys, wrong types)."""
    if table not in SCHEMA:
        raise NeuronpediaSchemaError(f"unknown table {table!r}; known: {', '.join(SCHEMA)}")
    if not isinstance(record, dict):
        return [f"a {table} row must be a JSON object, got {type(record).__name__}"]
    columns = SCHEMA[table]
    problems = [f"unknown field {k!r} (not a column of {table})" for k in record if k not in columns]
    problems += [f"missing required field {k!r}" for k, c in columns.items() if c.required and k not in record]
    for key, value in record.items():
        if key in columns and (why := check_value(columns[key], value)) is not None:
            problems.append(f"{key}: {why}")
    return problems


# ----------------------------------------------------------------------------- the folder
def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) of a ``.jsonl`` or ``.jsonl.gz`` file, line by line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    yield number, json.loads(line)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NeuronpediaSchemaError(f"{path}: not readable as JSON lines ({exc})") from exc


@dataclass
class _Context:
    """What rows of one export must agree on."""

    model_id: str = ""
    source_id: str = ""
    features: set[str] | None = None


def _check_metadata(folder: Path, problems: list[str]) -> _Context:
    ctx = _Context()
    rows: dict[str, dict] = {}
    for name, table in METADATA_FILES.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing (the importer reads it)")
            continue
        lines = list(read_jsonl(path))
        if len(lines) != 1:
            problems.append(f"{name}: holds {len(lines)} rows, expected 1")
        for number, row in lines:
            problems += [f"{name}:{number}: {p}" for p in validate_record(table, row)]
        if lines and isinstance(lines[0][1], dict):
            rows[table] = lines[0][1]
    model, source = rows.get("Model", {}), rows.get("Source", {})
    sourceset, release = rows.get("SourceSet", {}), rows.get("SourceRelease", {})
    ctx.model_id, ctx.source_id = str(model.get("id", "")), str(source.get("id", ""))
    if model and not MODEL_ID_PATTERN.match(ctx.model_id):
        problems.append(f"model.jsonl: id {ctx.model_id!r} must be 1-128 lower-case letters, digits, '-' or '_'")
    if (folder.parent.name, folder.name) != (ctx.model_id, ctx.source_id):
        problems.append(f"folder {folder.parent.name}/{folder.name} must be named {{modelId}}/{{sourceId}} = "
                        f"{ctx.model_id}/{ctx.source_id}")
    for name, row, key in (("sourceset.jsonl", sourceset, "modelId"), ("source.jsonl", source, "modelId")):
        if row and row.get(key) != ctx.model_id:
            problems.append(f"{name}: {key} {row.get(key)!r} differs from model.jsonl's id {ctx.model_id!r}")
    if source and sourceset and source.get("setName") != sourceset.get("name"):
        problems.append(f"source.jsonl: setName {source.get('setName')!r} differs from sourceset.jsonl's name "
                        f"{sourceset.get('name')!r}")
    if sourceset and release and sourceset.get("releaseName") not in (None, release.get("name")):
        problems.append(f"sourceset.jsonl: releaseName {sourceset.get('releaseName')!r} differs from "
                        f"release.jsonl's name {release.get('name')!r}")
    return ctx


def _batch_files(folder: Path, name: str, problems: list[str]) -> list[Path]:
    """The batch files of ``features/`` (at least one) or ``activations/`` (none when every latent is dead)."""
    sub = folder / name
    if not sub.is_dir():
        if name == "features":
            problems.append(f"{name}/: missing")
        return []
    files = []
    for path in sorted(sub.iterdir()):
        if BATCH_PATTERN.match(path.name):
            files.append(path)
        elif not path.name.startswith("."):
            problems.append(f"{name}/{path.name}: not a batch-N.jsonl.gz file; the importer would skip it")
    if not files and name == "features":
        problems.append(f"{name}/: holds no batch-N.jsonl.gz file")
    return sorted(files, key=lambda p: int(BATCH_PATTERN.match(p.name).group(1)))


def _check_row_links(table: str, row: dict, ctx: _Context) -> list[str]:
    """A feature/activation row must belong to this model and source, and hang together."""
    problems = []
    if row.get("modelId") != ctx.model_id or row.get("layer") != ctx.source_id:
        problems.append(f"modelId/layer {row.get('modelId')!r}/{row.get('layer')!r} must be "
                        f"{ctx.model_id!r}/{ctx.source_id!r}")
    if table == "Neuron":
        for a, b in (("pos_str", "pos_values"), ("neg_str", "neg_values"),
                     ("freq_hist_data_bar_heights", "freq_hist_data_bar_values"),
                     ("logits_hist_data_bar_heights", "logits_hist_data_bar_values"),
                     ("topkCosSimIndices", "topkCosSimValues"),
                     ("correlated_features_indices", "correlated_features_pearson")):
            if len(row.get(a, [])) != len(row.get(b, [])):
                problems.append(f"{a} and {b} must have the same length")
        return problems
    n = len(row.get("tokens", []))
    values = row.get("values", [])
    if len(values) != n or n == 0:
        problems.append(f"values has {len(values)} entries for {n} tokens (one per token, at least one)")
    elif isinstance(row.get("maxValueTokenIndex"), int):
        if not 0 <= row["maxValueTokenIndex"] < n:
            problems.append(f"maxValueTokenIndex {row['maxValueTokenIndex']} is outside the {n} tokens")
        elif values[row["maxValueTokenIndex"]] != row.get("maxValue"):
            problems.append("maxValue is not values[maxValueTokenIndex]")
    dfa = row.get("dfaValues") or []
    if dfa and len(dfa) != n:
        problems.append(f"dfaValues has {len(dfa)} entries for {n} tokens")
    if dfa and not (isinstance(row.get("dfaTargetIndex"), int) and 0 <= row["dfaTargetIndex"] < n):
        problems.append(f"dfaTargetIndex {row.get('dfaTargetIndex')!r} must index the {n} tokens")
    if ctx.features is not None and row.get("index") not in ctx.features:
        problems.append(f"index {row.get('index')!r} is not a feature of features/")
    return problems


def _check_batches(folder: Path, name: str, ctx: _Context, problems: list[str], limit: int) -> int:
    table = BATCH_FOLDERS[name]
    n_rows, seen = 0, set()
    for path in _batch_files(folder, name, problems):
        keys = None
        for number, row in read_jsonl(path):
            n_rows += 1
            where = f"{name}/{path.name}:{number}"
            found = validate_record(table, row)
            if isinstance(row, dict):
                keys = keys if keys is not None else set(row)
                if set(row) != keys:
                    found.append(f"keys differ from the file's first line {sorted(keys)} (the importer takes "
                                 "its columns from the first line)")
                found += _check_row_links(table, row, ctx)
                ident = row.get("index") if table == "Neuron" else row.get("id")
                if ident in seen:
                    found.append(f"duplicate {'index' if table == 'Neuron' else 'id'} {ident!r}")
                seen.add(ident)
            problems += [f"{where}: {p}" for p in found]
            if len(problems) >= limit:
                return n_rows
        if keys is None:
            problems.append(f"{name}/{path.name}: holds no row (the importer parses the first line)")
    if table == "Neuron":
        ctx.features = {str(i) for i in seen}
    return n_rows


def validate_export(source_dir: str | Path, raise_on_error: bool = True, limit: int = 50) -> dict[str, Any]:
    """Check every file and record of an export folder ``{modelId}/{sourceId}`` against ``SCHEMA``.

    Returns ``{"ok", "problems", "n_features", "n_activations", "schema"}``; with ``raise_on_error``
    raises ``NeuronpediaSchemaError`` listing the first ``limit`` problems instead."""
    folder = Path(source_dir)
    if not folder.is_dir():
        raise NeuronpediaSchemaError(f"{folder}: not a folder; give the export's {{modelId}}/{{sourceId}} folder")
    problems: list[str] = []
    ctx = _check_metadata(folder, problems)
    n_features = _check_batches(folder, "features", ctx, problems, limit)
    n_activations = _check_batches(folder, "activations", ctx, problems, limit)
    report = {"ok": not problems, "problems": problems[:limit], "n_features": n_features,
              "n_activations": n_activations, "schema": SCHEMA_SOURCE}
    if problems and raise_on_error:
        shown = "\n  ".join(problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise NeuronpediaSchemaError(f"{folder}: {len(problems)} problem(s) against Neuronpedia's schema "
                                     f"({SCHEMA_SOURCE}):\n  {shown}{more}")
    return report
