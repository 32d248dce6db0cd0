"""Dead latents are counted over a stated window (``EvalConfig.dead_window_tokens``): shorter than the
evaluation set, or longer (the rest of the source is read to the hook only), reported in the metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saelab.data.sources import TokenArraySource
from saelab.errors import ConfigError
from saelab.eval.evaluate import EvalConfig, evaluate_sae
from saelab.eval.latents import LatentStats
from saelab.models import LoadedModel
from saelab.sae import SAEConfig, make_sae

HOOK = "blocks.0.hook_resid_pre"
CONTEXT = 20
N_ROWS = 1500                      # 30,000 ordinary tokens
RARE_ROW, RARE_POS = 400, 7        # the rare token's only occurrence: ordinary token 8,007

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(tiny_gpt2_with_toy_tokenizer) -> LoadedModel:
    return tiny_gpt2_with_toy_tokenizer


@pytest.fixture(scope="module")
def planted(lm, tmp_path_factory):
    """(source, SAE): latent 0 fires on one token of the 30k (the rare token's only occurrence), latent 1
    on every token."""
    rng = np.random.default_rng(0)
    common, rare = np.arange(3, 40), 50
    ids = rng.choice(common, size=(N_ROWS, CONTEXT)).astype(np.int64)
    ids[RARE_ROW, RARE_POS] = rare
    path = tmp_path_factory.mktemp("dead_window") / "ids.npy"
    np.save(path, ids)
    _, cache = lm.run_with_cache(torch.from_numpy(ids), [HOOK], stop_at_layer="auto")
    x = cache[HOOK].reshape(-1, lm.hook_d_in(HOOK)).float()                    # [tokens, d_model]
    is_rare = torch.from_numpy((ids == rare).reshape(-1))
    u = x[is_rare][0] - x[~is_rare].mean(0)
    scores = x @ u
    below, above = float(scores[~is_rare].max()), float(scores[is_rare].min())
    assert below < above                                                       # the rare token is separable
    sae = make_sae(SAEConfig("relu", lm.hook_d_in(HOOK), 2, hook_name=HOOK), seed=0)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = u
        sae.b_enc.copy_(torch.tensor([-(below + above) / 2, 1.0]))
        sae.b_dec.zero_()
    return TokenArraySource(path), sae.eval()


def evaluate(lm, planted, **changes):
    source, sae = planted
    cfg = EvalConfig(**{**dict(tokens=2000, context_size=CONTEXT, batch_size=25, check_error_term=False,
                               progress=False), **changes})
    return evaluate_sae(lm, sae, source, cfg)


def test_a_latent_firing_once_in_10k_tokens_is_dead_in_a_1k_window_and_alive_in_a_20k_one(lm, planted):
    default = evaluate(lm, planted)
    short = evaluate(lm, planted, dead_window_tokens=1000)
    long = evaluate(lm, planted, dead_window_tokens=20_000)
    for result in (default, short):  # the rare token sits past the first 2,000 tokens
        assert result.metrics["n_dead"] == 1 and result.metrics["dead_fraction"] == 0.5
    assert default.metrics["dead_window_tokens"] == default.metrics["n_tokens"] == 2000
    assert short.metrics["dead_window_tokens"] == 1000 and short.metrics["n_tokens"] == 2000
    m = json.loads(json.dumps(long.metrics))  # the window travels with the metrics JSON
    assert m["dead_window_tokens"] == 20_000 and m["n_dead"] == 0 and m["dead_fraction"] == 0.0
    assert m["n_dense"] == 1 and m["dense_fraction"] == 0.5                     # latent 1: every token
    assert long.latent_frequency.tolist() == [1 / 20_000, 1.0]
    assert m["n_tokens"] == 2000 and m["warnings"] == []
    for key in ("fvu", "mse", "l0", "ce_clean", "ce_spliced", "kl"):           # fidelity: the evaluation set only
        assert long.metrics[key] == pytest.approx(short.metrics[key], rel=1e-9, abs=1e-12)


def test_a_window_past_the_end_of_the_source_is_counted_and_flagged(lm, planted):
    m = evaluate(lm, planted, dead_window_tokens=50_000).metrics
    assert m["dead_window_tokens"] == N_ROWS * CONTEXT and m["n_dead"] == 0
    assert any("counted over those, not the 50000 asked for" in w for w in m["warnings"])


def test_latent_stats_window_caps_the_count_and_bad_windows_are_refused():
    stats = LatentStats(2, window=5)
    acts = torch.zeros(8, 2)
    acts[6, 0] = 1.0                                                           # the 7th token: past the window
    acts[:, 1] = 1.0
    stats.update(acts[:3])
    assert not stats.full
    stats.update(acts[3:])
    assert stats.full and stats.n_tokens == 5 and stats.fires.tolist() == [0, 5]
    assert stats.result()["dead_window_tokens"] == 5 and stats.result()["n_dead"] == 1
    with pytest.raises(ConfigError, match="dead_window_tokens"):
        EvalConfig(dead_window_tokens=0)
    with pytest.raises(ConfigError, match="dead_window_tokens"):
        LatentStats(3, window=2.5)
