"""Reconstruction, latent and downstream metrics against independent computations on hand-made data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saelab.errors import ConfigError, SaelabError
from saelab.eval.downstream import (
    LossSums,
    ScoredRun,
    downstream_metrics,
    kl_divergence,
    next_token_log_probs,
    score_runs,
    scored_predictions,
)
from saelab.eval.latents import LatentStats
from saelab.eval.metrics import ReconstructionStats


def stats_of(x, x_hat, acts, splits=(None,)):
    """ReconstructionStats fed ``x`` in pieces cut at ``splits``."""
    stats = ReconstructionStats(x.shape[1])
    bounds = [0, *[s for s in splits if s is not None], len(x)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        stats.update(x[a:b], x_hat[a:b], acts[a:b])
    return stats.result()


def test_fvu_is_zero_for_a_perfect_reconstruction_and_one_for_the_mean_predictor():
    gen = torch.Generator().manual_seed(0)
    # batches with very different means: a per-batch variance would differ from the whole-set one
    x = torch.cat([torch.randn(50, 6, generator=gen) + 5, torch.randn(70, 6, generator=gen) - 3])
    acts = torch.rand(120, 10, generator=gen)
    perfect = stats_of(x, x.clone(), acts, splits=(50,))
    assert perfect["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert perfect["explained_variance"] == pytest.approx(1.0)
    mean_predictor = x.double().mean(0).float().expand_as(x)
    assert stats_of(x, mean_predictor, acts, splits=(50,))["fvu"] == pytest.approx(1.0, abs=1e-6)
    # predicting each batch's own mean is far better than the whole-set mean: FVU well below 1
    per_batch_mean = torch.cat([x[:50].mean(0).expand(50, 6), x[50:].mean(0).expand(70, 6)])
    assert stats_of(x, per_batch_mean, acts, splits=(50,))["fvu"] < 0.2


def test_every_reconstruction_metric_matches_numpy_and_does_not_depend_on_batching():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(97, 8)) * 3 + 1
    x_hat = x * 0.7 + rng.normal(size=x.shape)
    acts = np.where(rng.random((97, 12)) < 0.3, rng.random((97, 12)), 0.0)
    expected = {
        "l0": (acts != 0).sum(1).mean(),
        "l1": np.abs(acts).sum(1).mean(),
        "mse": ((x - x_hat) ** 2).mean(),
        "fvu": ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(),
        "cosine": ((x * x_hat).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(x_hat, axis=1)).mean(),
        "l2_ratio": (np.linalg.norm(x_hat, axis=1) / np.linalg.norm(x, axis=1)).mean(),
        "relative_reconstruction_bias": (x_hat ** 2).sum() / (x * x_hat).sum(),
    }
    t = [torch.tensor(a, dtype=torch.float64) for a in (x, x_hat, acts)]
    whole = stats_of(*t)
    pieces = stats_of(*t, splits=(1, 30, 31, 80))
    for key, value in expected.items():
        assert whole[key] == pytest.approx(value, rel=1e-9), key
        assert pieces[key] == pytest.approx(value, rel=1e-9), key


def test_shrunken_reconstruction_has_bias_half_and_unit_cosine():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(2))
    result = stats_of(x, 0.5 * x, torch.ones(40, 3))
    assert result["relative_reconstruction_bias"] == pytest.approx(0.5, rel=1e-6)
    assert result["l2_ratio"] == pytest.approx(0.5, rel=1e-6)
    assert result["cosine"] == pytest.approx(1.0, rel=1e-6)
    assert result["l0"] == 3


def test_undefined_ratios_are_none_not_nan():
    x = torch.ones(10, 4)  # zero variance
    result = stats_of(x, torch.zeros(10, 4), torch.zeros(10, 6))  # a dead SAE reconstructing zero
    assert result["fvu"] is None and result["explained_variance"] is None
    assert result["relative_reconstruction_bias"] is None
    assert result["cosine"] == 0.0 and result["l0"] == 0.0
    assert all(v is None or math.isfinite(v) for v in result.values())
    with pytest.raises(SaelabError, match="empty"):
        ReconstructionStats(4).result()
    with pytest.raises(SaelabError, match=r"\[n, 4\]"):
        ReconstructionStats(4).update(torch.zeros(3, 5), torch.zeros(3, 5), torch.zeros(3, 2))


def test_latent_frequencies_dead_dense_and_histogram():
    acts = torch.zeros(1000, 5)
    acts[:, 0] = 1.0          # fires on every token: dense
    acts[:200, 1] = 2.0       # 0.2: dense
    acts[:10, 2] = 0.5        # 0.01
    acts[:1, 3] = 0.1         # 0.001
    stats = LatentStats(5)    # latent 4 never fires: dead
    stats.update(acts[:400])
    stats.update(acts[400:])
    assert torch.allclose(stats.frequency(), torch.tensor([1.0, 0.2, 0.01, 0.001, 0.0], dtype=torch.float64))
    result = stats.result(dense_threshold=0.1)
    assert (result["n_dead"], result["dead_fraction"], result["n_dense"], result["dense_fraction"]) == (1, 0.2, 2, 0.4)
    hist = result["density_histogram"]
    assert hist["edges"][0] == -3.0 and hist["edges"][-1] == 0.0
    assert sum(hist["counts"]) == 4  # live latents only
    assert result["mean_log10_density"] == pytest.approx(np.mean(np.log10([1.0, 0.2, 0.01, 0.001])))
    dead = LatentStats(3)
    dead.update(torch.zeros(50, 3))
    assert dead.result()["dead_fraction"] == 1.0 and dead.result()["mean_log10_density"] is None
    with pytest.raises(ConfigError, match="dense_threshold"):
        stats.result(dense_threshold=2.0)


@pytest.mark.parametrize("chunk_values", [11, 33, 1 << 20])  # 1 and 3 predictions per chunk, or all at once
def test_chunked_scoring_of_ce_kl_and_the_scored_mask_match_torch(chunk_values):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 6, 11, generator=gen)
    other = torch.randn(2, 6, 11, generator=gen)
    ids = torch.randint(0, 11, (2, 6), generator=gen)
    lp, lp_other = next_token_log_probs(logits), next_token_log_probs(other)
    expected_ce = F.cross_entropy(other[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1), reduction="none")
    expected_kl = F.kl_div(lp_other, lp, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl_divergence(lp, lp_other), expected_kl, atol=1e-6)
    assert torch.all(kl_divergence(lp, lp) == 0)
    ordinary = torch.tensor([[False, True, True, False, True, True], [True, True, True, True, True, True]])
    scored = scored_predictions(ordinary)
    assert scored.tolist() == [[False, True, False, False, True], [True] * 5]
    # the "residual" is the logits themselves and the unembedding an identity: scoring must equal torch
    clean, sums = LossSums(), LossSums()
    score_runs(lambda r: r, 11, ids, scored, logits, clean, [ScoredRun(other, sums, track_logit_diff=True)],
               chunk_values=chunk_values)
    clean_ce = F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1), reduction="none")
    flat = scored.reshape(-1)
    assert sums.n == clean.n == 7
    assert sums.mean_ce == pytest.approx(float(expected_ce[flat].mean()), rel=1e-6)
    assert clean.mean_ce == pytest.approx(float(clean_ce[flat].mean()), rel=1e-6) and clean.kl == 0
    assert sums.mean_kl == pytest.approx(float(expected_kl[scored].mean()), rel=1e-5)
    diff = (other - logits)[:, :-1].abs().amax(-1)[scored].max()
    assert sums.max_logit_diff == pytest.approx(float(diff))


def losses(ce, kl=0.0):
    sums = LossSums()
    sums.ce, sums.kl, sums.n = ce * 4, kl * 4, 4
    return sums


def test_recovered_fractions_follow_their_definitions():
    m = downstream_metrics(losses(2.0), losses(2.5, 0.2), losses(4.0, 1.0), losses(3.0, 0.6), losses(2.0, 0.0))
    assert m["delta_loss"] == pytest.approx(0.5)
    assert m["ce_loss_recovered"] == pytest.approx(0.75)
    assert m["ce_loss_recovered_mean_ablation"] == pytest.approx(0.5)
    assert m["kl_recovered"] == pytest.approx(0.8)
    assert m["kl_recovered_mean_ablation"] == pytest.approx(1 - 0.2 / 0.6)
    assert m["ce_with_error"] == 2.0
    # an ablation that changes nothing leaves the fractions undefined: None, not NaN or inf
    flat = downstream_metrics(losses(2.0), losses(2.5, 0.2), losses(2.0, 0.0), losses(2.0, 0.0))
    assert flat["ce_loss_recovered"] is None and flat["kl_recovered"] is None
    assert "ce_with_error" not in flat
