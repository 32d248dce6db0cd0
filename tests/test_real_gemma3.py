"""Gemma 3 270M, the real pretrained model (``real`` marker; deselected by default).

Needs ``bash scripts/get_real_model.sh`` and ``bash scripts/get_real_corpus.sh`` first (files under
``real/``, or ``$SAELAB_REAL_DIR``); run with ``python -m pytest -m real``. ``.ci/run`` does all three.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from saelab.attention.dfa import direct_feature_attribution, run_attention
from saelab.attention.geometry import bind_attention_sae
from saelab.cli import main
from saelab.models import LoadedModel, UnknownHookError, load_model
from saelab.sae import SAEConfig, make_sae

pytestmark = pytest.mark.real

REAL = Path(os.environ.get("SAELAB_REAL_DIR", Path(__file__).resolve().parents[1] / "real"))
FOLDER, GGUF, CORPUS = REAL / "gemma-3-270m", REAL / "gemma-3-270m-q4_k_m.gguf", REAL / "corpus"
PROMPT = "When Mary and John went to the store, John gave a drink to"
#: ``--threads`` of the commands these tests run: this process's share of the cores (tests/conftest.py
#: divides them among pytest-xdist workers), so that two workers do not each take every core
THREADS = str(torch.get_num_threads())


def need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: run bash scripts/get_real_model.sh and bash scripts/get_real_corpus.sh "
                    "(or set SAELAB_REAL_DIR)")
    return path


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return load_model(str(need(FOLDER)))


@pytest.fixture(scope="module")
def prompt_ids(lm) -> torch.Tensor:
    return lm.tokenize(PROMPT)[0]


def test_the_model_is_gemma3_270m_and_knows_the_indirect_object(lm, prompt_ids):
    assert (lm.adapter.family, lm.n_layers, lm.d_model, lm.n_heads, lm.n_kv_heads, lm.d_head, lm.d_vocab) == (
        "gemma3", 18, 640, 4, 1, 256, 262144)
    assert lm.logit_softcap is None and lm.config.layer_types[5] == "full_attention"
    assert lm.tokenizer.convert_ids_to_tokens(prompt_ids[0].tolist())[:3] == ["<bos>", "When", "▁Mary"]
    logits = lm.model(prompt_ids).logits
    assert lm.tokenizer.decode(int(logits[0, -1].argmax())) == " Mary"


def test_every_layers_heads_add_up_to_hook_attn_out_and_capture_changes_nothing(lm, prompt_ids):
    plain = lm.model(prompt_ids).logits
    logits, cache = lm.run_with_cache(prompt_ids, lm.hook_names())
    torch.testing.assert_close(logits, plain, rtol=1e-4, atol=1e-4)  # hook_pattern runs eager attention
    for layer in range(lm.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"]  # [1, pos, 4, 256]
        heads = torch.einsum("bphd,hdm->bpm", z, lm.W_O(layer)) + lm.b_O(layer)
        attn_out = cache[f"blocks.{layer}.hook_attn_out"]
        rel = (lm.attn_out_norm(layer)(heads) - attn_out).norm() / attn_out.norm()
        assert rel < 1e-5, (layer, float(rel))
        q_norm, k_norm = lm.qk_norm(layer)
        assert cache[f"blocks.{layer}.attn.hook_q"].shape == (1, prompt_ids.shape[1], 4, 256)
        assert cache[f"blocks.{layer}.attn.hook_k"].shape == (1, prompt_ids.shape[1], 1, 256)
        assert q_norm.scale.shape == k_norm.scale.shape == (256,)
    for name in ("blocks.6.hook_resid_post", "blocks.6.attn.hook_z", "blocks.6.attn.hook_pattern"):
        replaced = lm.run_with_hooks(prompt_ids, {name: lambda x: x.clone()})
        torch.testing.assert_close(replaced, plain, rtol=1e-4, atol=1e-4)
    resid, _ = lm.run_to_unembed(prompt_ids)
    assert torch.equal(lm.unembed(resid), plain)
    with pytest.raises(UnknownHookError, match="blocks.18"):
        lm.run_with_cache(prompt_ids, ["blocks.18.hook_resid_post"])


def test_dfa_is_exact_on_a_real_attention_layer(lm, prompt_ids):
    sae = make_sae(SAEConfig("relu", 1024, 64, hook_name="blocks.6.attn.hook_z"), seed=0)
    asae = bind_attention_sae(lm, sae)
    run = run_attention(asae, prompt_ids[0])
    for feature in (0, 7):
        r = direct_feature_attribution(asae, prompt_ids[0], feature, run=run)
        total = float(r.by_source.sum()) + r.bias + r.b_dec_term
        assert abs(total - r.preactivation) <= 1e-4 * max(1.0, float(r.by_head.abs().sum()))
        assert r.reconstructed_z_error < 1e-4


def test_the_gguf_file_loads_to_the_same_weights_as_the_folder(lm, prompt_ids):
    direct = load_model(str(need(GGUF)))
    assert direct.fingerprint() == lm.fingerprint()
    assert torch.equal(direct.model(prompt_ids).logits, lm.model(prompt_ids).logits)


@pytest.mark.slow
def test_train_topk_on_the_real_corpus_recovers_most_of_the_ce_loss(tmp_path, capsys):
    """The real-model issue's acceptance run, trimmed for CI, then ``saelab eval``. The issue's command
    took 200k tokens at batch 1,024 (196 steps, CE loss recovered 0.871, docs/REAL_MODEL.md); this one
    takes the same number of steps at batch 512, half the tokens (0.855 over 5,922 evaluation tokens
    when measured). At the default batch of 4,096 tokens, 200k tokens are only 49 steps (0.743)."""
    out = tmp_path / "run"
    args = ["train", "--model", str(need(FOLDER)), "--hook", "blocks.6.hook_resid_post", "--arch", "topk",
            "--k", "32", "--d-sae", "4096", "--tokens", "102400", "--batch-size", "512", "--text", str(need(CORPUS / "train.txt")),
            "--out", str(out), "--threads", THREADS, "--no-progress", "--json"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    capsys.readouterr()
    sae_dir = next((out / "saes").iterdir())
    with pytest.raises(SystemExit) as done:
        main(["eval", str(sae_dir), "--tokens", "2048", "--threads", THREADS, "--no-progress", "--json"])
    assert done.value.code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["source"]["path"].endswith("heldout.txt")  # the held-out split beside train.txt
    assert metrics["l0"] == pytest.approx(32, abs=0.5)
    assert metrics["ce_loss_recovered"] > 0.8, metrics
    assert metrics["error_term_max_logit_diff"] < 1e-2
