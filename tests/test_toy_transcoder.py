"""Transcoders on the bundled toy model: layer 1's MLP input (``hook_resid_mid``) -> its output
(``hook_mlp_out``), trained with the ordinary trainer, then spliced with CE loss recovered."""

from __future__ import annotations

import pytest
import torch

from saelab.attention.corpus import toy_windows
from saelab.eval import EvalConfig, evaluate_saes
from saelab.models import load_model
from saelab.sae import SAEConfig
from saelab.train import InMemorySource, TrainConfig, train_saes

SOURCE, TARGET = "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"
HELD_OUT = 4096


@pytest.fixture(scope="module")
def trained(one_torch_thread, tmp_path_factory):
    """A TopK transcoder and a skip transcoder (k 32, 512 latents), and held-out (x, y)."""
    lm = load_model("toy")
    windows = toy_windows(lm, n_docs=192, seed=0)
    _, cache = lm.run_with_cache(windows.ids, [SOURCE, TARGET], stop_at_layer="auto")
    acts = {h: cache[h].reshape(*windows.ids.shape, -1)[~windows.special].float() for h in (SOURCE, TARGET)}
    order = torch.randperm(acts[SOURCE].shape[0], generator=torch.Generator().manual_seed(0))
    held, train = order[:HELD_OUT], order[HELD_OUT:]
    factors = {h: float(a[train].pow(2).sum(-1).mean().sqrt()) for h, a in acts.items()}
    source = InMemorySource({h: a[train] / factors[h] for h, a in acts.items()}, 1024, normalization_factors=factors)
    cfgs = [SAEConfig("topk", 128, 512, hook_name=SOURCE, hook_name_out=TARGET, k=32, name="transcoder"),
            SAEConfig("topk", 128, 512, hook_name=SOURCE, hook_name_out=TARGET, k=32, skip_connection=True,
                      name="skip_transcoder")]
    saes = train_saes(cfgs, source, TrainConfig(steps=150, batch_size=1024, lr=2e-3, lr_decay_steps=30),
                      tmp_path_factory.mktemp("transcoders"), progress=False)
    return lm, saes, acts[SOURCE][held], acts[TARGET][held]


@pytest.mark.parametrize("name", ["transcoder", "skip_transcoder"])
def test_toy_transcoders_predict_the_mlp_output(trained, name):
    _, saes, x, y = trained
    sae = saes[name]
    with torch.no_grad():
        latents = sae.encode(x)
        y_hat = sae.decode(latents, x)
    fvu = float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    l0 = float((latents > 0).sum(-1).float().mean())
    assert l0 <= 32.0
    assert fvu < 0.2, f"{name}: FVU {fvu:.3f} at L0 {l0:.1f}"


@pytest.mark.parametrize("name", ["transcoder", "skip_transcoder"])
def test_spliced_toy_transcoders_recover_the_loss(trained, name):
    lm, saes, _, _ = trained
    (result,) = evaluate_saes(lm, [saes[name]], "toy:1", EvalConfig(tokens=4096, batch_size=16, progress=False))
    m = result.metrics
    assert m["fvu"] < 0.2
    # The error term puts the clean run back; the splice alone recovers most of what ablating the MLP loses.
    assert m["ce_loss_recovered"] > 0.9, m
    assert m["ce_spliced"] >= m["ce_clean"] - 1e-3
