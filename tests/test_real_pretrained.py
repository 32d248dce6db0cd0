"""Gemma 3 270M and a Gemma Scope 2 release (``real`` marker; needs ``scripts/get_real_*.sh``).

A JumpReLU SAE trained by saelab on ``blocks.6.hook_resid_post`` is written as Gemma Scope 2 files
(``params.safetensors`` + ``config.json``) into a Hugging Face cache, loaded back offline by release
and id, and spliced into the model: the same CE loss recovered as the SAE it came from.
"""

from __future__ import annotations

import pytest
import torch

from saelab.cli import main
from saelab.eval import EvalConfig, evaluate_saes
from saelab.models import load_model
from saelab.pretrained import load_sae_with_info, release_info, write_sae
from saelab.sae import load_sae
from test_real_gemma3 import CORPUS, FOLDER, THREADS, need

pytestmark = pytest.mark.real

RELEASE, SAE_ID = "gemma-scope-2-270m-pt-res-all", "layer_6_width_16k_l0_small"



def test_a_gemma_scope_2_folder_from_a_saelab_sae_loads_by_release_and_splices_the_same(tmp_path, offline_cache,
                                                                                       capsys):
    entry = release_info(RELEASE, SAE_ID)
    out = tmp_path / "run"
    args = ["train", "--model", str(need(FOLDER)), "--hook", entry.hook_name, "--arch", "jumprelu",
            "--d-sae", str(entry.d_sae), "--tokens", "51200", "--batch-size", "1024",
            "--text", str(need(CORPUS / "train.txt")), "--out", str(out), "--threads", THREADS, "--no-progress", "--json"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    capsys.readouterr()
    trained = load_sae(next((out / "saes").iterdir()))

    commit = "0" * 40
    repo = offline_cache / f"models--{entry.repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    write_sae(trained, repo / "snapshots" / commit / entry.path, "gemma_scope_safetensors")
    loaded, info = load_sae_with_info(RELEASE, SAE_ID)
    assert loaded.cfg.architecture == "jumprelu" and loaded.cfg.hook_name == entry.hook_name

    lm = load_model(str(FOLDER))
    x = torch.randn(64, entry.d_in, generator=torch.Generator().manual_seed(0)) * 40
    torch.testing.assert_close(loaded.reconstruct(x), trained.reconstruct(x), rtol=1e-4, atol=1e-3)
    config = EvalConfig(tokens=2048, batch_size=8, check_error_term=False, progress=False)
    original, converted = evaluate_saes(lm, [trained, loaded], str(CORPUS / "heldout.txt"), config)
    a, b = original.metrics, converted.metrics
    assert a["ce_loss_recovered"] > 0.3, a
    assert b["ce_loss_recovered"] == pytest.approx(a["ce_loss_recovered"], abs=1e-4)
    assert b["l0"] == pytest.approx(a["l0"], rel=1e-3)
