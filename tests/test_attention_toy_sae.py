"""A small hook_z SAE trained on the toy model with saelab's trainer: census, families, IOI ablation,
the reports and the ``saelab attn`` commands end to end."""

import json

import pytest
import torch

from saelab.attention.census import CensusConfig, build_census
from saelab.attention.corpus import latent_activations, toy_windows
from saelab.attention.ioi import ioi_latent_ablation, toy_ioi_prompts
from saelab.attention.reports import build_census_report, open_attention_sae
from saelab.attention.toy_sae import train_toy_attention_sae
from saelab.cli import main
from saelab.errors import SaelabError
from saelab.models.tiny import torch_threads


@pytest.fixture(scope="module")
def toy_sae_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_attn_sae")
    with torch_threads(2):
        return train_toy_attention_sae(out, layer=1, d_sae=64, steps=60, batch_size=256, n_docs=12,
                                       progress=False)


@pytest.fixture(scope="module")
def asae(toy_sae_dir):
    return open_attention_sae(str(toy_sae_dir))


def test_trained_sae_is_a_hook_z_sae_of_the_toy_model(asae, toy_sae_dir):
    assert asae.hook_name == "blocks.1.attn.hook_z" and asae.layer == 1 and asae.d_sae == 64
    cfg = json.loads((toy_sae_dir / "cfg.json").read_text())
    assert cfg["saelab"]["model"] == {"spec": "toy"}


def test_census_on_the_toy_world(asae):
    windows = toy_windows(asae.lm, n_docs=8)
    assert windows.ids.shape == (8, 128) and windows.labels["topic"].shape == (8, 128)
    acts = latent_activations(asae, windows.ids)
    census = build_census(asae, windows, acts, CensusConfig(top_latents=4, n_examples=2))
    assert [h["head"] for h in census.heads] == ["1.0", "1.1", "1.2", "1.3"]
    for k, head in enumerate(census.heads):
        attributions = [e["head_attribution"] for e in head["latents"]]
        assert attributions == sorted(attributions, reverse=True) and len(attributions) == 4
        for e in head["latents"]:  # the listed latents are those with the most decoder norm in this head
            assert e["head_attribution"] == pytest.approx(float(census.attribution[e["latent"], k]), abs=1e-4)
            assert e["examples"] and e["examples"][0]["activation"] == pytest.approx(
                float(acts[..., e["latent"]][~windows.special].max()), abs=1e-3)
            assert e["family"] in ("induction", "short_range_context", "long_range_context", "unclassified", "rare")
    summary = census.summary()
    assert sum(summary["family_counts"].values()) == 64
    assert summary["n_heads_judged"] <= 4


def test_ioi_ablation_matches_a_direct_rerun(asae):
    prompts = toy_ioi_prompts(asae, n=6)
    assert prompts.abba.any() and (~prompts.abba).any()
    lm, sae = asae.lm, asae.sae
    _, cache = lm.run_with_cache(prompts.ids, [asae.hook_name], attention_mask=prompts.mask)
    z_s2 = cache[asae.hook_name][torch.arange(6), prompts.s2].reshape(6, -1)
    f = int((sae.encode(z_s2) > 0).sum(0).argmax())  # the latent active at S2 most often
    result = ioi_latent_ablation(asae, prompts, min_effect=0.0, latents=[f, 63])
    assert [e["latent"] for e in result.latents][:1] == [f] and all(e["relevant"] for e in result.latents)
    # redo its ablation by hand, prompt by prompt
    top = result.latents[0]
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


def test_census_report_and_cli(asae, toy_sae_dir, tmp_path, capsys):
    report = build_census_report(asae, "toy", n_windows=2)
    assert report["hook"] == "blocks.1.attn.hook_z" and len(report["heads"]) == 4
    with pytest.raises(SystemExit) as exit_info:
        main(["attn", "census", str(toy_sae_dir), "--n-windows", "2", "--top", "3", "--json",
              "--out", str(tmp_path / "census")])
    assert exit_info.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"]["n_latents"] == 64
    assert {p.name for p in (tmp_path / "census").iterdir()} == {"census.png", "census.html", "census.json"}
    with pytest.raises(SystemExit) as exit_info:
        main(["attn", "dfa", str(toy_sae_dir), "--prompt", "the cat sees the dog", "--feature", "3", "--json",
              "--out", str(tmp_path / "dfa")])
    assert exit_info.value.code == 0
    dfa = json.loads(capsys.readouterr().out)
    assert dfa["sum_by_source_plus_bias"] == pytest.approx(dfa["preactivation"], rel=1e-4, abs=1e-5)
    assert (tmp_path / "dfa" / "dfa.png").stat().st_size > 0
    with pytest.raises(SystemExit) as exit_info:
        main(["attn", "ioi", str(toy_sae_dir), "--n-prompts", "2", "--json", "--out", str(tmp_path / "ioi")])
    assert exit_info.value.code == 0
    assert "clean_logit_diff" in json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit) as exit_info:
        main(["attn", "dfa", str(toy_sae_dir), "--prompt", "the cat", "--feature", "999"])
    assert exit_info.value.code == 2
    assert "feature=999 is out of range" in capsys.readouterr().err


def test_induction_cli_on_toy(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["attn", "induction", "--model", "toy", "--n-seqs", "4", "--length", "8", "--max-prefix", "3",
              "--no-ablate", "--json", "--out", str(tmp_path)])
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["induction_scores"]) == 16 and report["prefix"]["prefix_lengths"] == [1, 2, 3]
    assert {p.name for p in tmp_path.iterdir()} == {"induction.png", "prefix.png", "induction.json"}


def test_folder_without_model_needs_model_flag(tmp_path):
    from saelab.sae import SAEConfig, make_sae, save_sae

    save_sae(make_sae(SAEConfig("relu", d_in=128, d_sae=8, hook_name="blocks.0.attn.hook_z")), tmp_path / "s")
    with pytest.raises(SaelabError, match="--model"):
        open_attention_sae(str(tmp_path / "s"))
