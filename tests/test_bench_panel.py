"""The evaluation panel on two tiny SAEs of the toy model: the command writes JSON/CSV/Markdown,
plots and SAEBench files, cached results are reused (the metric function is not called again),
winners by hand, and bad input (missing folder, unknown metric, a hook the model lacks) refused."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch

from saelab.bench.panel import (
    METRICS,
    AutointerpPanelConfig,
    PanelConfig,
    cache_path,
    concept_texts,
    panel_concepts,
    row_labels,
    run_panel,
    winners,
)
from saelab.cli import build_parser
from saelab.errors import ConfigError, SaelabError
from saelab.eval.evaluate import EvalConfig
from saelab.eval.meta_sae import MetaSAEConfig
from saelab.eval.saebench import OUTPUT_FIELDS
from saelab.sae import SAEConfig, make_sae, save_sae

HOOK = "blocks.1.hook_resid_pre"
ALL = ("core", "meta_sae", "autointerp", "sparse_probing", "absorption")
#: SAEBench's metric fields per eval type (its eval_output.py dataclasses)
SAEBENCH_METRICS = {
    "core": {"model_behavior_preservation", "model_performance_preservation", "reconstruction_quality",
             "shrinkage", "sparsity", "token_stats", "misc_metrics"},
    "meta_sae_decoder_variance": {"meta_sae"},
    "sparse_probing": {"llm", "sae"},
    "absorption_first_letter": {"mean"},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(toy_lm):
    return toy_lm


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("saes")
    out = []
    for i, (arch, options) in enumerate((("topk", {"k": 8}), ("relu", {}))):
        sae = make_sae(SAEConfig(arch, d_in=128, d_sae=64, hook_name=HOOK, name=f"toy-{arch}", **options), seed=i)
        out.append(str(save_sae(sae, root / arch, extra_meta={"model_name": "toy"})))
    return out


def small_config(metrics=("core", "meta_sae", "autointerp"), **changes) -> PanelConfig:
    settings = dict(
        core=EvalConfig(tokens=256, context_size=32, check_error_term=False, progress=False),
        meta_sae=MetaSAEConfig(steps=30, batch_size=32),
        autointerp=AutointerpPanelConfig(n_latents=2, tokens=1024, context_size=32, n_explain=4, n_activating=4,
                                         n_quantiles=2, n_non_activating=4),
        probing={"concepts": "text", "n_documents": 64, "n_per_class": 24, "min_per_class": 4, "ks": (1, 2),
                 "max_iter": 200},
        absorption={"n_documents": 24, "max_k": 2, "max_iter": 200})
    return PanelConfig(metrics=metrics, progress=False, **{**settings, **changes})


@pytest.fixture
def toy_loader(lm, monkeypatch):
    """``load_model("toy")`` gives the module's model (the command loads its model by spec)."""
    import saelab.models

    def load(spec, device="cpu", **_):
        assert spec == "toy"
        return lm

    monkeypatch.setattr(saelab.models, "load_model", load)


def command(argv: list[str]) -> None:
    """Run ``saelab panel`` as the command line does."""
    args = build_parser().parse_args(argv)
    args.func(args)


def test_command_writes_table_plots_and_saebench(folders, tmp_path, capsys, toy_loader):
    out = tmp_path / "panel"
    command(["panel", "--model", "toy", "--sae", *folders, "--metrics", "core,meta_sae", "--out", str(out),
             "--tokens", "256", "--context-size", "32", "--meta-steps", "30", "--meta-batch-size", "32",
             "--no-progress"])
    printed = capsys.readouterr().out
    assert "| toy-topk | topk | 64 |" in printed and "| toy-relu | relu | 64 |" in printed
    assert "core.delta_loss ↓" in printed and "winners" in printed
    report = json.loads((out / "panel.json").read_text())
    assert [r["sae"] for r in report["rows"]] == ["toy-topk", "toy-relu"]
    assert report["rows"][0]["core.l0"] == pytest.approx(8.0)
    assert 0 <= report["rows"][1]["meta_sae.variance_explained"] <= 1
    with open(out / "panel.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["sae"] for r in table] == ["toy-topk", "toy-relu"]
    assert float(table[0]["core.fvu"]) == pytest.approx(report["rows"][0]["core.fvu"])
    assert (out / "panel.md").read_text() == printed
    assert (out / "plots" / "core.png").stat().st_size > 0 and (out / "plots" / "meta_sae.png").exists()
    for label in ("toy-topk", "toy-relu"):
        for kind in ("core", "meta_sae_decoder_variance"):
            saved = json.loads((out / "saebench" / kind / f"{label}_eval_results.json").read_text())
            assert tuple(saved) == OUTPUT_FIELDS and saved["eval_type_id"] == kind
            assert set(saved["eval_result_metrics"]) == SAEBENCH_METRICS[kind]
    meta = json.loads((out / "saebench" / "meta_sae_decoder_variance" / "toy-relu_eval_results.json").read_text())
    assert meta["eval_result_metrics"]["meta_sae"]["decoder_fraction_variance_explained"] == pytest.approx(
        report["rows"][1]["meta_sae.variance_explained"])
    assert meta["eval_config"]["k"] == 4 and meta["eval_config"]["width_ratio"] == pytest.approx(0.25)
    command(["panel", "--model", "toy", "--sae", *folders, "--metrics", "core,meta_sae", "--out", str(out),
             "--tokens", "256", "--context-size", "32", "--meta-steps", "30", "--meta-batch-size", "32",
             "--no-progress", "--json"])
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] == {"toy-topk": ["core", "meta_sae"], "toy-relu": ["core", "meta_sae"]}
    assert again["rows"] == report["rows"]


def counting(monkeypatch, name: str) -> list[str]:
    """Replace metric ``name`` by one that records each SAE it computes and then computes it."""
    calls: list[str] = []
    original = METRICS[name]

    def compute(sae, ctx):
        calls.append(ctx.entry.label)
        return original.compute(sae, ctx)

    monkeypatch.setitem(METRICS, name, dataclasses.replace(original, compute=compute))
    return calls


def test_cache_is_reused_and_invalidated(lm, folders, tmp_path, monkeypatch):
    out = tmp_path / "panel"
    calls = {name: counting(monkeypatch, name) for name in ("meta_sae", "autointerp")}
    first = run_panel(lm, folders, out, small_config(("meta_sae", "autointerp")))
    assert calls == {"meta_sae": ["toy-topk", "toy-relu"], "autointerp": ["toy-topk", "toy-relu"]}
    assert first["rows"][0]["autointerp.n_scored"] >= 1
    record = json.loads(cache_path(out, "toy-topk", "meta_sae").read_text())
    assert record["key"]["settings"]["steps"] == 30 and len(record["key"]["sae_weights_sha256"]) == 64

    second = run_panel(lm, folders, out, small_config(("meta_sae", "autointerp")))
    assert calls == {"meta_sae": ["toy-topk", "toy-relu"], "autointerp": ["toy-topk", "toy-relu"]}  # no new call
    assert second["rows"] == first["rows"] and second["cached"]["toy-relu"] == ["meta_sae", "autointerp"]

    changed = small_config(("meta_sae", "autointerp"), meta_sae=MetaSAEConfig(steps=31, batch_size=32))
    run_panel(lm, folders, out, changed)  # other settings: meta_sae again, autointerp still cached
    assert calls["meta_sae"] == ["toy-topk", "toy-relu"] * 2 and len(calls["autointerp"]) == 2
    run_panel(lm, folders, out, dataclasses.replace(changed, metrics=("meta_sae",), force=True))
    assert len(calls["meta_sae"]) == 6 and len(calls["autointerp"]) == 2

    # new weights in the same folder: its cached results no longer apply
    from saelab.sae import load_sae
    sae = load_sae(folders[1])
    with torch.no_grad():
        sae.W_dec.mul_(-1)
    moved = tmp_path / "moved"
    save_sae(sae, moved, extra_meta={"model_name": "toy"})
    run_panel(lm, [folders[0], str(moved)], out, dataclasses.replace(changed, metrics=("meta_sae",)))
    assert calls["meta_sae"][-1:] == ["toy-relu"] and len(calls["meta_sae"]) == 7


def test_core_of_several_saes_is_one_pass_and_equals_each_alone(lm, folders, tmp_path, monkeypatch):
    from saelab.eval.evaluate import evaluate_sae
    from saelab.sae import load_sae

    calls: list[list[str]] = []
    original = METRICS["core"]

    def many(contexts):
        calls.append([ctx.entry.label for ctx in contexts])
        return original.compute_many(contexts)

    monkeypatch.setitem(METRICS, "core", dataclasses.replace(original, compute_many=many))
    config = small_config(("core",))
    report = run_panel(lm, folders, tmp_path / "panel", config)
    assert calls == [["toy-topk", "toy-relu"]] and report["cached"] == {"toy-topk": [], "toy-relu": []}
    for row, folder in zip(report["rows"], folders, strict=True):
        alone = evaluate_sae(lm, load_sae(folder), config.eval_source, config.core).metrics
        for figure in ("l0", "fvu", "ce_loss_recovered", "delta_loss", "dead_fraction"):
            assert row[f"core.{figure}"] == pytest.approx(alone[figure], rel=1e-5, abs=1e-6), figure
    again = run_panel(lm, folders, tmp_path / "panel", config)
    assert len(calls) == 1 and again["cached"] == {"toy-topk": ["core"], "toy-relu": ["core"]}
    forced = run_panel(lm, folders, tmp_path / "panel", dataclasses.replace(config, force=True))
    assert len(calls) == 2 and forced["cached"] == {"toy-topk": [], "toy-relu": []}
    assert forced["rows"] == report["rows"]


def test_probing_and_absorption_slots(lm, folders, tmp_path):
    out = tmp_path / "panel"
    report = run_panel(lm, folders, out, small_config(("sparse_probing",)))
    assert not report["errors"], report["errors"]
    row = report["rows"][0]
    for k in (1, 2):
        assert 0 <= row[f"sparse_probing.sae_top_{k}_accuracy"] <= 1
    assert row["sparse_probing.dense_accuracy"] == report["rows"][1]["sparse_probing.dense_accuracy"]  # one hook
    assert "sparse_probing.sae_top_1_accuracy" in report["winners"]
    report = run_panel(lm, folders[1:], out, small_config(("absorption",)))
    assert not report["errors"], report["errors"]
    assert isinstance(report["rows"][0]["absorption.n_letters_scored"], int)
    for kind, label in (("sparse_probing", "toy-topk"), ("absorption_first_letter", "toy-relu")):
        saved = json.loads((out / "saebench" / kind / f"{label}_eval_results.json").read_text())
        assert tuple(saved) == OUTPUT_FIELDS and set(saved["eval_result_metrics"]) == SAEBENCH_METRICS[kind]
    probing = json.loads((out / "saebench" / "sparse_probing" / "toy-topk_eval_results.json").read_text())
    assert probing["eval_config"]["k_values"] == [1, 2]
    assert probing["eval_result_metrics"]["sae"]["sae_top_1_test_accuracy"] == pytest.approx(
        probing["eval_result_unstructured"]["saelab_result"]["saebench"]["sae"]["sae_top_1_test_accuracy"])
    assert {"dataset_name", "llm_test_accuracy", "sae_top_1_test_accuracy"} <= set(probing["eval_result_details"][0])
    absorbed = json.loads((out / "saebench" / "absorption_first_letter" / "toy-relu_eval_results.json").read_text())
    assert set(absorbed["eval_result_metrics"]["mean"]) == {
        "mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features",
        "std_dev_absorption_fraction_score", "std_dev_full_absorption_score", "std_dev_num_split_features"}


def test_text_concepts_and_absorption_words_come_from_the_panel_source(lm, folders, tmp_path):
    import numpy as np

    from saelab.eval.concepts import toy_texts

    texts = toy_texts(80, seed=7)  # not the default eval source's documents
    held = tmp_path / "held.txt"
    held.write_text("\n\n".join(texts))
    config = small_config(("sparse_probing", "absorption"), eval_source=str(held))
    assert concept_texts(config, 5) == [texts[i] for i in (0, 8, 16, 24, 32)]  # spread over the first 40
    concepts = panel_concepts(lm, config)
    assert [c.name for c in concepts] == ["code", "number", "capitalised"]
    expected, _ = lm.tokenize([texts[i * 80 // 64] for i in range(64)])  # spread over all 80
    for concept in concepts[1:]:  # the token properties read exactly those 64 texts of the source
        assert torch.equal(concept.input_ids, expected[:, :concept.input_ids.shape[1]])
    report = run_panel(lm, folders[1:], tmp_path / "panel", config)
    assert not report["errors"], report["errors"]
    record = json.loads(cache_path(tmp_path / "panel", "toy-relu", "absorption").read_text())
    assert record["key"]["settings"]["text_source"] == str(held)
    assert record["key"]["settings"]["n_documents"] == 24
    assert any(str(held) in note for note in record["result"]["notes"])
    probing = json.loads(cache_path(tmp_path / "panel", "toy-relu", "sparse_probing").read_text())
    assert probing["key"]["settings"]["concepts"]["text_source"] == str(held)
    # another source is another key: computed again, not read from the cache
    other = run_panel(lm, folders[1:], tmp_path / "panel", dataclasses.replace(config, eval_source="toy:9"))
    assert other["cached"]["toy-relu"] == []
    # a source of token ids has no words: the cell is empty and the reason says so
    ids = tmp_path / "ids.npy"
    np.save(ids, np.arange(64, dtype=np.int64))
    report = run_panel(lm, folders[1:], tmp_path / "panel", dataclasses.replace(config, eval_source=str(ids)))
    assert {e["metric"] for e in report["errors"]} == {"sparse_probing", "absorption"}
    assert all("holds token ids, not text" in e["error"] for e in report["errors"])


def test_a_labelled_jsonl_source_adds_one_concept_per_collection(lm, tmp_path):
    from saelab.data.sources import read_labeled_texts
    from saelab.eval.concepts import ConceptError, label_concepts, toy_texts

    texts = toy_texts(60, seed=11)
    labels = ["docs" if i < 30 else "fortunes" for i in range(60)]  # ordered by collection, as the corpus is
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"text": t, "source": f"d{i}", "collection": c}) + "\n"
                            for i, (t, c) in enumerate(zip(texts, labels, strict=True))))
    config = small_config(("sparse_probing",), eval_source=str(held))
    concepts = panel_concepts(lm, config)
    assert [c.name for c in concepts] == ["code", "number", "capitalised", "collection=docs", "collection=fortunes"]
    docs = concepts[3]
    read, read_labels = read_labeled_texts(str(held), 64, "collection")
    assert read == texts and read_labels == labels  # fewer than asked: all of them, both collections
    positive_rows = set(docs.context[docs.labels].tolist())
    assert positive_rows and positive_rows <= set(range(30))
    assert set(docs.context[~docs.labels].tolist()) <= set(range(30, 60))
    no_labels = small_config(("sparse_probing",), eval_source=str(held),
                             probing={**config.probing, "label_column": "topic"})
    assert [c.name for c in panel_concepts(lm, no_labels)] == ["code", "number", "capitalised"]
    with pytest.raises(ConceptError, match="needs at least two"):
        label_concepts(lm, texts[:4], ["docs"] * 4)
    with pytest.raises(ConceptError, match="4 texts but 3 labels"):
        label_concepts(lm, texts[:4], ["a", "b", "a"])
    plain = tmp_path / "held.txt"
    plain.write_text("\n\n".join(texts))
    with pytest.raises(ConfigError, match="has no columns"):
        read_labeled_texts(str(plain), 8, "collection")


def test_winners_by_hand():
    rows = [{"sae": "a", "m.x": 0.5, "m.y": 3.0, "m.z": 1.0}, {"sae": "b", "m.x": 0.7, "m.y": None, "m.z": 2.0},
            {"sae": "c", "m.x": 0.7, "m.y": 2.0, "m.z": 9.0}]
    got = winners(rows, [("m.x", "higher"), ("m.y", "lower"), ("m.z", "")])
    assert got == {"m.x": {"sae": "b", "value": 0.7, "better": "higher"},
                   "m.y": {"sae": "c", "value": 2.0, "better": "lower"}}


def test_row_labels_tell_repeated_names_apart(tmp_path):
    a, b = tmp_path / "run1" / "saes" / "sae", tmp_path / "run2" / "saes" / "sae"
    assert row_labels([("sae", a), ("x y", tmp_path / "q"), ("sae", b), ("sae", b)]) == [
        "run1.sae", "x_y", "run2.sae", "run2.sae-2"]


def test_bad_input_is_refused(lm, folders, tmp_path, toy_loader):
    out = tmp_path / "panel"
    with pytest.raises(SaelabError, match="no SAE folder at"):
        run_panel(lm, [folders[0], str(tmp_path / "missing")], out, small_config(("core",)))
    with pytest.raises(ConfigError, match=r"unknown metric 'probes'; choose from: core, meta_sae, autointerp, sparse_probing, absorption"):
        small_config(("core", "probes"))
    with pytest.raises(ConfigError, match="unknown metric"):
        command(["panel", "--model", "toy", "--sae", *folders, "--metrics", "core,nope", "--out", str(out)])
    with pytest.raises(ConfigError, match="names a metric twice"):
        small_config(("core", "core"))
    with pytest.raises(ConfigError, match="probing concepts='words'"):
        small_config(("sparse_probing",), probing={"concepts": "words"})
    with pytest.raises(ConfigError, match="absorption settings"):
        small_config(("absorption",), absorption={"letters": "abc"})
    far = make_sae(SAEConfig("topk", d_in=128, d_sae=64, k=8, hook_name="blocks.9.hook_resid_pre", name="far"), seed=0)
    far_folder = save_sae(far, tmp_path / "far")
    with pytest.raises(SaelabError, match="blocks.9"):
        run_panel(lm, [folders[0], str(far_folder)], out, small_config(("core",)))
    wide = make_sae(SAEConfig("topk", d_in=96, d_sae=64, k=8, hook_name=HOOK, name="wide"), seed=0)
    with pytest.raises(SaelabError, match="96"):
        run_panel(lm, [str(save_sae(wide, tmp_path / "wide"))], out, small_config(("core",)))
    assert not (out / "cache").exists()  # refused before any metric ran
    tiny = make_sae(SAEConfig("topk", d_in=128, d_sae=4, k=2, hook_name=HOOK, name="tiny"), seed=0)
    report = run_panel(lm, [folders[0], str(save_sae(tiny, tmp_path / "tiny"))], out, small_config(("meta_sae",)))
    assert [e["sae"] for e in report["errors"]] == ["tiny"] and "too few" in report["errors"][0]["error"]
    assert report["rows"][1]["meta_sae.variance_explained"] is None
    assert "not computed" in (out / "panel.md").read_text()
