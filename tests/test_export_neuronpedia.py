"""Neuronpedia export on the toy model: layout, schema, values against direct computations, DFA of a
hook_z SAE, the CLI, and bad input."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

from saelab.attention.dfa import direct_feature_attribution
from saelab.attention.geometry import bind_attention_sae
from saelab.cli import main
from saelab.data import ToySource
from saelab.errors import ConfigError
from saelab.interp import FeatureIndexError, build_feature_data, logit_effects
from saelab.interp.neuronpedia import NeuronpediaConfig, export_feature_config, export_neuronpedia
from saelab.interp.neuronpedia_schema import (
    SCHEMA,
    NeuronpediaSchemaError,
    read_jsonl,
    validate_export,
    validate_record,
)
from saelab.interp.site import SiteMismatchError, encode_windows
from saelab.interp.tokens import TokenNames
from saelab.models import load_model
from saelab.models.hook_points import UnknownHookError
from saelab.models.tiny import torch_threads
from saelab.sae import SAEConfig, make_sae, save_sae

RESID, ATTN = "blocks.1.hook_resid_pre", "blocks.1.attn.hook_z"
CONTEXT = 32


def data_cfg():
    return export_feature_config(CONTEXT, n_tokens=384, n_top=5, n_quantiles=3, per_quantile=2, progress=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def lm():
    return load_model("toy")


def sae_at(hook: str, arch: str = "topk", d_in: int = 128, seed: int = 0):
    torch.manual_seed(seed)
    options = {"k": 8} if arch == "topk" else {}
    return make_sae(SAEConfig(arch, d_in=d_in, d_sae=64, hook_name=hook, name=f"{arch}-sae", **options))


@pytest.fixture(scope="module")
def resid(lm, tmp_path_factory):
    """A random TopK SAE on the residual stream: 16 latents exported in batches of 6 (some are dead)."""
    sae = sae_at(RESID)
    out = tmp_path_factory.mktemp("np_resid")
    summary = export_neuronpedia(lm, sae, RESID, ToySource(1), out, "0-15", NeuronpediaConfig(features_per_batch=6),
                                 data_cfg())
    data = build_feature_data(lm, sae, RESID, ToySource(1), "0-15", data_cfg())
    return sae, summary, data


@pytest.fixture(scope="module")
def attn(lm, tmp_path_factory):
    """A random ReLU SAE on hook_z (its activation is its pre-activation wherever it fires)."""
    sae = sae_at(ATTN, "relu")
    out = tmp_path_factory.mktemp("np_attn")
    summary = export_neuronpedia(lm, sae, ATTN, ToySource(1), out, "0-3", None, data_cfg())
    data = build_feature_data(lm, sae, ATTN, ToySource(1), "0-3", data_cfg())
    return sae, summary, data


def rows(folder: Path, sub: str) -> list[dict]:
    out = []
    for path in sorted((folder / sub).glob("batch-*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:          # line by line, as the importer splits
            out += [json.loads(line) for line in fh]
    return out


def one_row(folder: Path, name: str) -> dict:
    (row,) = [r for _, r in read_jsonl(folder / name)]
    return row


def test_layout_ids_and_schema(resid):
    _, summary, _ = resid
    folder = Path(summary["folder"])
    assert (folder.parent.name, folder.name) == ("toy", "1-saelab-resid_pre-64") and summary["n_batches"] == 3
    assert sorted(p.name for p in (folder / "features").iterdir()) == [f"batch-{i}.jsonl.gz" for i in range(3)]
    for name in ("release.jsonl", "model.jsonl", "sourceset.jsonl", "source.jsonl"):
        assert (folder / name).is_file()
    report = validate_export(folder)
    assert report["ok"] and report["n_features"] == 16 and report["n_activations"] == summary["n_activations"] > 0
    source, model = one_row(folder, "source.jsonl"), one_row(folder, "model.jsonl")
    assert source["id"] == "1-saelab-resid_pre-64" and source["setName"] == "saelab-resid_pre-64"
    assert source["saelensConfig"]["d_sae"] == 64 and source["num_tokens_in_prompt"] == CONTEXT
    assert model == {**model, "id": "toy", "layers": 4, "dimension": 128, "neuronsPerLayer": 512}
    assert one_row(folder, "sourceset.jsonl")["showDfa"] is False
    for path in (folder / "features").iterdir():                     # every line of a file has the same keys
        keys = {tuple(r) for _, r in read_jsonl(path)}
        assert len(keys) == 1 and set(next(iter(keys))) <= set(SCHEMA["Neuron"])


def test_feature_rows_match_direct_computations(lm, resid):
    sae, summary, data = resid
    features = rows(Path(summary["folder"]), "features")
    acts = rows(Path(summary["folder"]), "activations")
    assert [f["index"] for f in features] == [str(i) for i in range(16)]
    names = TokenNames(lm)
    live = 0
    for f, record, effects in zip(features, data.features, logit_effects(lm, sae, RESID, list(range(16))),
                                  strict=True):
        i = record.index
        assert f["vector"] == sae.W_dec[i].tolist() and f["hasVector"] and f["hookName"] == RESID
        assert f["maxActApprox"] == record.max_act and f["frac_nonzero"] == record.density
        assert f["pos_str"] == [names.name(t) for t, _ in effects["top"]]
        assert f["pos_values"] == pytest.approx([w for _, w in effects["top"]], abs=1e-5)
        assert f["neg_values"] == pytest.approx([w for _, w in effects["bottom"]], abs=1e-5)
        assert sum(f["logits_hist_data_bar_heights"]) == lm.d_vocab
        assert f["topkCosSimIndices"][0] == i and f["topkCosSimValues"][0] == 1.0
        mine = [a for a in acts if a["index"] == str(i)]
        if record.n_fires == 0:
            assert not mine and f["freq_hist_data_bar_heights"] == []
            continue
        live += 1
        assert f["maxActApprox"] == pytest.approx(max(a["maxValue"] for a in mine), abs=1e-4)
        assert sum(f["freq_hist_data_bar_heights"]) == pytest.approx(record.n_fires, rel=1e-3)
        edges = record.hist["edges"]
        assert f["freq_hist_data_bar_values"][0] == pytest.approx((edges[0] + edges[1]) / 2)
        top = [a for a in mine if a["binMin"] == -1]
        assert len(top) == min(5, record.n_fires) and all(a["binMax"] == record.max_act for a in top)
        fractions = {(a["binMin"], a["binMax"]): a["binContains"] for a in mine if a["binMin"] != -1}
        assert sum(fractions.values()) == pytest.approx(1.0)
    assert 0 < live < 16


def test_activation_rows_are_the_model_s_activations(lm, resid):
    sae, summary, data = resid
    acts = rows(Path(summary["folder"]), "activations")
    assert len({a["id"] for a in acts}) == len(acts)
    for a in acts[::7]:
        values = a["values"]
        assert len(values) == len(a["tokens"]) == CONTEXT          # whole windows by default
        assert a["maxValue"] == max(values) == values[a["maxValueTokenIndex"]] and a["minValue"] == min(values)
        assert a["dfaValues"] == [] and a["dfaTargetIndex"] is None
        window = int(a["dataIndex"])
        direct = encode_windows(lm, sae, RESID, data.windows[window:window + 1])[0, :, int(a["index"])]
        assert values == pytest.approx(direct.tolist(), abs=1e-4)
        assert a["tokens"] == TokenNames(lm).names(data.windows[window])
        assert values[a["qualifyingTokenIndex"]] > 0


def test_attention_sae_has_dfa_and_head_shares(lm, attn):
    sae, summary, data = attn
    folder = Path(summary["folder"])
    assert validate_export(folder)["ok"]
    sourceset = one_row(folder, "sourceset.jsonl")
    assert sourceset["showDfa"] is True and sourceset["showHeadAttribution"] is True
    features, acts = rows(folder, "features"), rows(folder, "activations")
    for f, record in zip(features, data.features, strict=True):
        assert f["decoder_weights_dist"] == record.head_shares and sum(f["decoder_weights_dist"]) == pytest.approx(1, abs=1e-3)
    asae = bind_attention_sae(lm, sae, ATTN)
    constant = asae.encoder().constant
    assert acts
    for a in acts[::9]:
        dfa, target = a["dfaValues"], a["dfaTargetIndex"]
        assert len(dfa) == len(a["tokens"]) and target == a["maxValueTokenIndex"] and a["dfaMaxValue"] == max(dfa)
        feature, window = int(a["index"]), int(a["dataIndex"])
        direct = direct_feature_attribution(asae, torch.as_tensor(data.windows[window]), feature, position=target)
        assert dfa == pytest.approx(direct.by_source_total.tolist(), abs=1e-5)
        assert sum(dfa) + float(constant[feature]) == pytest.approx(a["maxValue"], abs=1e-3)  # exact decomposition
        assert all(v == 0 for v in dfa[target + 1:])                                         # causal


def test_cli_export_and_stale_batches(lm, tmp_path, capsys):
    folder = tmp_path / "sae"
    save_sae(sae_at(ATTN, "relu"), folder, extra_meta={"model_name": "toy"})
    args = ["export", "neuronpedia", str(folder), "--out", str(tmp_path / "np"), "--tokens", "128",
            "--context-size", str(CONTEXT), "--threads", "1", "--no-progress", "--json", "--source-set", "att-test"]
    with pytest.raises(SystemExit) as info:
        main([*args, "--features", "0-3", "--batch-size", "2"])
    summary = json.loads(capsys.readouterr().out)
    assert info.value.code == 0 and summary["source_id"] == "1-att-test" and summary["n_batches"] == 2
    with pytest.raises(SystemExit) as info:
        main([*args, "--features", "0-1"])                          # fewer batches: the old batch-1 goes
    capsys.readouterr()
    export = tmp_path / "np" / "toy" / "1-att-test"
    assert info.value.code == 0 and [p.name for p in (export / "features").iterdir()] == ["batch-0.jsonl.gz"]
    assert validate_export(export)["n_features"] == 2


def test_bad_input_gives_clear_errors(lm, tmp_path, capsys):
    with pytest.raises(FeatureIndexError, match=r"out of range: 64.*d_sae=64"):
        export_neuronpedia(lm, sae_at(RESID), RESID, ToySource(1), tmp_path, "60-64", None, data_cfg())
    with pytest.raises(SiteMismatchError, match="d_in=64 does not match hook"):
        export_neuronpedia(lm, sae_at(RESID, d_in=64), RESID, ToySource(1), tmp_path, "0-1", None, data_cfg())
    with pytest.raises(UnknownHookError, match="layer 9 does not exist"):
        export_neuronpedia(lm, sae_at("blocks.9.hook_resid_pre"), "blocks.9.hook_resid_pre", ToySource(1),
                           tmp_path, "0-1", None, data_cfg())
    assert not list(tmp_path.iterdir())                              # nothing written
    with pytest.raises(ConfigError, match="model_id='My Model'"):
        NeuronpediaConfig(model_id="My Model")
    folder = tmp_path / "sae"
    save_sae(sae_at(RESID), folder, extra_meta={"model_name": "toy"})
    with pytest.raises(SystemExit) as info:
        main(["export", "neuronpedia", str(folder), "--out", str(tmp_path / "o"), "--features", "70", "--no-progress"])
    assert info.value.code == 2 and "out of range: 70" in capsys.readouterr().err


def test_validator_refuses_what_the_importer_would_break_on(resid, tmp_path):
    assert validate_record("Activation", {"id": "x"}) and "missing required field 'tokens'" in validate_record(
        "Activation", {"id": "x"})
    assert validate_record("Neuron", {"modelId": "m", "layer": "0-s", "index": 3}) == [
        "index: expected String, got 3"]
    assert validate_record("Neuron", {"modelId": "m", "layer": "0-s", "index": "3", "vector": [1.0, float("nan")]})
    assert validate_record("Model", {"id": "m", "creatorId": "c", "layers": 1, "neuronsPerLayer": 1, "owner": "o",
                                     "color": "red"}) == ["unknown field 'color' (not a column of Model)"]
    export = Path(resid[1]["folder"])
    broken = tmp_path / "toy" / export.name
    shutil.copytree(export, broken)
    path = broken / "activations" / "batch-0.jsonl.gz"
    lines = [r for _, r in read_jsonl(path)]
    lines[1].pop("dfaValues")                                       # keys differ from the first line
    lines[2]["maxValueTokenIndex"] = 999
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in lines).encode()))
    (broken / "activations" / "batch-1.jsonl.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(NeuronpediaSchemaError) as info:
        validate_export(broken)
    text = str(info.value)
    assert "keys differ from the file's first line" in text and "maxValueTokenIndex 999" in text
    assert "batch-1.jsonl.gz: holds no row" in text and "schema.prisma" in text
    report = validate_export(broken, raise_on_error=False)
    assert not report["ok"] and len(report["problems"]) == 3
