"""A small hook_z SAE trained on layer 3 of the toy model (where its induction heads are) with saelab's
trainer: census, families against the planted induction heads, IOI ablation (on layer 2: S2 effects
must reach the end position), the reports and the ``saelab attn`` commands end to end."""

import json

import pytest
import torch

from saelab.attention.census import CensusConfig, build_census
from saelab.attention.corpus import latent_activations, toy_windows
from saelab.attention.induction import induction_scores
from saelab.attention.ioi import ioi_latent_ablation, toy_ioi_prompts
from saelab.attention.reports import build_census_report, open_attention_sae
from saelab.attention.toy_sae import DEFAULT_LAYER, train_toy_attention_sae
from saelab.cli import main
from saelab.errors import SaelabError
from saelab.models.tiny import torch_threads
from saelab.sae import SAEConfig, make_sae, save_sae

D_SAE = 256


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def toy_sae_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_attn_sae")
    with torch_threads(1):
        return train_toy_attention_sae(out, d_sae=D_SAE, steps=300, batch_size=1024, n_docs=32, progress=False)


@pytest.fixture(scope="module")
def asae(toy_sae_dir):
    return open_attention_sae(str(toy_sae_dir))


@pytest.fixture(scope="module")
def layer2_sae_dir(tmp_path_factory):
    """An untrained ReLU SAE on layer 2: the IOI ablation's bookkeeping does not depend on training."""
    folder = tmp_path_factory.mktemp("layer2") / "sae"
    save_sae(make_sae(SAEConfig("relu", d_in=128, d_sae=64, hook_name="blocks.2.attn.hook_z"), seed=1), folder)
    return folder


def test_trained_sae_is_a_hook_z_sae_of_the_toy_model(asae, toy_sae_dir):
    assert DEFAULT_LAYER == 3
    assert asae.hook_name == "blocks.3.attn.hook_z" and asae.layer == 3 and asae.d_sae == D_SAE
    cfg = json.loads((toy_sae_dir / "cfg.json").read_text())
    assert cfg["saelab"]["model"] == {"spec": "toy"}


def test_census_on_the_toy_world(asae):
    windows = toy_windows(asae.lm, n_docs=16)
    acts = latent_activations(asae, windows.ids)
    scores = induction_scores(asae.lm, n_seqs=8)
    assert windows.ids.shape == (16, 128) and windows.labels["topic"].shape == (16, 128)
    census = build_census(asae, windows, acts, CensusConfig(top_latents=4, n_examples=2))
    assert [h["head"] for h in census.heads] == ["3.0", "3.1", "3.2", "3.3"]
    for k, head in enumerate(census.heads):
        attributions = [e["head_attribution"] for e in head["latents"]]
        assert attributions == sorted(attributions, reverse=True) and len(attributions) == 4
        for e in head["latents"]:  # the listed latents are those with the most decoder norm in this head
            assert e["head_attribution"] == pytest.approx(float(census.attribution[e["latent"], k]), abs=1e-4)
            assert e["examples"] and e["examples"][0]["activation"] == pytest.approx(
                float(acts[..., e["latent"]][~windows.special].max()), abs=1e-3)
            assert e["family"] in ("induction", "short_range_context", "long_range_context", "unclassified", "rare")
    summary = census.summary()
    assert sum(summary["family_counts"].values()) == D_SAE
    assert summary["polysemantic"]["families"]["n_heads_judged"] <= 4
    conc = summary["head_concentration"]
    live = census.attribution[acts[~windows.special].gt(0).any(0)]
    assert sum(conc["max_share_histogram"]["counts"]) == sum(conc["dominant_head_counts"].values()) == len(live)
    assert conc["share_above_0.5"] == pytest.approx(float((live.max(1).values > 0.5).float().mean()), abs=1e-4)
    assert 0.25 <= conc["max_share_mean"] <= 1.0  # 4 heads: the largest share is at least a quarter
    # planted ground truth: the induction-family latents live in the toy model's top induction head
    induction = [f for f, fam in enumerate(census.families) if fam.family == "induction"]
    assert summary["family_counts"]["induction"] == len(induction) >= 5
    top_head = int(scores[asae.layer].argmax())
    assert scores[asae.layer, top_head] > 0.8
    assert int(census.attribution[induction].mean(0).argmax()) == top_head
    in_top_head = census.attribution[induction].argmax(1) == top_head
    assert in_top_head.float().mean() > 0.5  # most of them have their largest decoder slice there


def test_ioi_refuses_the_last_layer(asae):
    with pytest.raises(SaelabError, match=r"last attention layer.*layers 0\.\.2"):
        ioi_latent_ablation(asae, toy_ioi_prompts(asae, n=2))


def test_ioi_ablation_matches_a_direct_rerun(asae, layer2_sae_dir):
    asae = open_attention_sae(str(layer2_sae_dir), asae.lm)
    prompts = toy_ioi_prompts(asae, n=6)
    assert prompts.abba.any() and (~prompts.abba).any()
    lm, sae = asae.lm, asae.sae
    _, cache = lm.run_with_cache(prompts.ids, [asae.hook_name], attention_mask=prompts.mask)
    z_s2 = cache[asae.hook_name][torch.arange(6), prompts.s2].reshape(6, -1)
    f = int((sae.encode(z_s2) > 0).sum(0).argmax())  # the latent active at S2 most often
    result = ioi_latent_ablation(asae, prompts, min_effect=0.0, latents=[f, 63])
    assert f in [e["latent"] for e in result.latents] and all(e["relevant"] for e in result.latents)
    effects = [e["mean_abs_effect"] for e in result.latents]
    assert effects == sorted(effects, reverse=True)
    # redo its ablation by hand, prompt by prompt
    top = next(e for e in result.latents if e["latent"] == f)
    changes = []
    for i in range(6):
        ids, mask = prompts.ids[i:i + 1], prompts.mask[i:i + 1]
        _, cache = lm.run_with_cache(ids, [asae.hook_name], attention_mask=mask)
        act = sae.encode(cache[asae.hook_name][0, prompts.s2[i]].reshape(1, -1))[0, f]
        if act <= 0:
            continue

        def ablate(z, act=act, i=i):
            z = z.clone()
            z[0, prompts.s2[i]] -= (act * sae.W_dec[f]).reshape(z.shape[2:])
            return z

        def diff(logits, i=i):
            last = logits[0, prompts.end[i]]
            return float(last[prompts.io[i]] - last[prompts.s[i]])

        clean = diff(lm.run_with_hooks(ids, {}, attention_mask=mask))
        changes.append(diff(lm.run_with_hooks(ids, {asae.hook_name: ablate}, attention_mask=mask)) - clean)
    assert len(changes) == top["fires_on"]
    assert top["delta_logit_diff"]["all"] == pytest.approx(sum(changes) / len(changes), abs=1e-4)
    assert top["mean_abs_effect"] == pytest.approx(sum(map(abs, changes)) / len(changes), abs=1e-4)


def test_ioi_positional_flag_follows_the_template_split(asae, layer2_sae_dir):
    """Plant the ground truth: relabel the prompts so that one latent's S2 activation separates the two
    templates perfectly; it must come out positional (AUC 1) and the result must list it first."""
    import dataclasses

    asae = open_attention_sae(str(layer2_sae_dir), asae.lm)
    prompts = toy_ioi_prompts(asae, n=8)
    _, cache = asae.lm.run_with_cache(prompts.ids, [asae.hook_name], attention_mask=prompts.mask)
    acts = asae.sae.encode(cache[asae.hook_name][torch.arange(8), prompts.s2].reshape(8, -1)).detach()
    f = int(acts.var(0).argmax())
    planted = dataclasses.replace(prompts, abba=acts[:, f] > acts[:, f].median())
    assert planted.abba.any() and (~planted.abba).any()
    report = ioi_latent_ablation(asae, planted, min_effect=0.0).to_json()
    entry = next(e for e in report["latents"] if e["latent"] == f)
    assert entry["abba_auc"] == 1.0 and entry["positional"]
    assert report["most_positional_latents"][0]["abba_auc"] in (0.0, 1.0)
    assert f in report["positional_relevant_latents"]


def run_cli(argv: list[str]) -> int:
    with torch_threads(1), pytest.raises(SystemExit) as exit_info:  # --threads 1 is undone on exit
        main([*argv, "--threads", "1"])
    return exit_info.value.code


def test_census_report_and_cli(asae, toy_sae_dir, layer2_sae_dir, tmp_path, capsys):
    report = build_census_report(asae, "toy", n_windows=2)
    assert report["hook"] == "blocks.3.attn.hook_z" and len(report["heads"]) == 4
    assert run_cli(["attn", "census", str(toy_sae_dir), "--n-windows", "2", "--top", "3", "--json",
                    "--out", str(tmp_path / "census")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"]["n_latents"] == D_SAE
    assert {p.name for p in (tmp_path / "census").iterdir()} == {"census.png", "census.html", "census.json"}
    assert run_cli(["attn", "dfa", str(toy_sae_dir), "--prompt", "the cat sees the dog", "--feature", "3", "--json",
                    "--out", str(tmp_path / "dfa")]) == 0
    dfa = json.loads(capsys.readouterr().out)
    assert dfa["sum_by_source_plus_bias"] == pytest.approx(dfa["preactivation"], rel=1e-4, abs=1e-5)
    assert (tmp_path / "dfa" / "dfa.png").stat().st_size > 0
    assert run_cli(["attn", "ioi", str(layer2_sae_dir), "--model", "toy", "--n-prompts", "2", "--json",
                    "--out", str(tmp_path / "ioi")]) == 0
    assert "clean_logit_diff" in json.loads(capsys.readouterr().out)
    assert run_cli(["attn", "ioi", str(toy_sae_dir), "--n-prompts", "2"]) == 2
    assert "last attention layer" in capsys.readouterr().err
    assert run_cli(["attn", "dfa", str(toy_sae_dir), "--prompt", "the cat", "--feature", "999"]) == 2
    assert "feature=999 is out of range" in capsys.readouterr().err


def test_induction_cli_on_toy(tmp_path, capsys):
    assert run_cli(["attn", "induction", "--model", "toy", "--n-seqs", "4", "--length", "8", "--max-prefix", "3",
                    "--json", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["induction_scores"]) == 16 and report["prefix"]["prefix_lengths"] == [1, 2, 3]
    assert {p.name for p in tmp_path.iterdir()} == {"induction.png", "prefix.png", "induction.json"}
    # the command names the toy model's induction head, and its ablation hurts copying most
    top = report["induction_heads"][0]["head"]
    assert report["induction_heads"][0]["score"] > 0.8 and report["most_harmful_ablations"][0] == top
    assert report["ablated_loss_ratio"][top] > report["loss_ratio"] + 0.5
    assert set(report["prefix"]["short_prefix"]) | set(report["prefix"]["long_prefix"]) == {
        h["head"] for h in report["induction_heads"]}
    assert run_cli(["attn", "induction", "--model", "toy", "--n-seqs", "0"]) == 2
    assert "n_seqs=0" in capsys.readouterr().err


def test_folder_without_model_needs_model_flag(tmp_path):
    from saelab.sae import SAEConfig, make_sae, save_sae

    save_sae(make_sae(SAEConfig("relu", d_in=128, d_sae=8, hook_name="blocks.0.attn.hook_z")), tmp_path / "s")
    with pytest.raises(SaelabError, match="--model"):
        open_attention_sae(str(tmp_path / "s"))
