"""Feature data: streaming top-k, one-pass gathering against brute force, logit effects, neighbours."""

import numpy as np
import pytest
import torch

from saelab.data import PackingConfig, ToySource, iter_windows
from saelab.interp import (
    FeatureDataConfig,
    FeatureIndexError,
    build_feature_data,
    decoder_neighbors,
    logit_effects,
    parse_features,
    prompt_features,
)
from saelab.interp.neighbors import CorrelationStats
from saelab.interp.site import encode_windows
from saelab.interp.streaming import StreamingTopK
from saelab.models import load_model
from saelab.sae import SAEConfig, make_sae


@pytest.fixture(scope="module")
def lm():
    return load_model("toy")


def make(hook, d_sae=64, seed=0):
    torch.manual_seed(seed)
    return make_sae(SAEConfig("topk", d_in=128, d_sae=d_sae, k=8, hook_name=hook))


def test_parse_features_ranges_and_errors():
    assert parse_features("0-3, 7,2", 10) == [0, 1, 2, 3, 7]
    assert parse_features([5, 1], 10) == [1, 5]
    with pytest.raises(FeatureIndexError, match=r"out of range: 10, 12.*d_sae=10.*0\.\.9"):
        parse_features("8-10,12", 10)
    with pytest.raises(FeatureIndexError, match="not a latent index"):
        parse_features("a-b", 10)
    with pytest.raises(FeatureIndexError, match="backwards"):
        parse_features("5-2", 10)
    with pytest.raises(FeatureIndexError, match="selects no latent"):
        parse_features("", 10)


def test_streaming_topk_matches_full_sort():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(500, 6, generator=g)
    data[data < 0.5] = float("-inf")
    tk = StreamingTopK(6, 7)
    for start in range(0, 500, 64):
        tk.update(data[start:start + 64], torch.arange(start, min(start + 64, 500)))
    for col in range(6):
        keys, ids, values = tk.column(col)
        finite = torch.isfinite(data[:, col])
        expected = data[finite, col].sort(descending=True).values[:7]
        assert torch.allclose(keys, expected) and torch.allclose(values, expected)
        assert torch.equal(data[ids, col], keys)


def test_correlation_stats_match_numpy():
    g = torch.Generator().manual_seed(1)
    acts = torch.relu(torch.randn(300, 8, generator=g))
    stats = CorrelationStats([1, 4], 8)
    stats.update(acts[:100])
    stats.update(acts[100:])
    expected = np.corrcoef(acts.numpy().T)[[1, 4]]
    assert np.allclose(stats.correlations().numpy(), expected, atol=1e-6)
    assert all(i != 1 for i, _ in stats.neighbors(3)[0])


def test_decoder_neighbors_finds_planted_duplicate():
    sae = make("blocks.1.hook_resid_post")
    with torch.no_grad():
        sae.W_dec[9] = sae.W_dec[3] * 2.0
    near = decoder_neighbors(sae, [3], k=2)[0]
    assert near[0][0] == 9 and near[0][1] == pytest.approx(1.0, abs=1e-5)


def test_gather_matches_brute_force(lm):
    hook = "blocks.1.hook_resid_post"
    sae = make(hook)
    cfg = FeatureDataConfig(n_tokens=1024, context_size=64, n_top=5, n_quantiles=3, per_quantile=2,
                            reservoir_size=16, n_random=4, progress=False, model_batch_size=8)
    data = build_feature_data(lm, sae, hook, ToySource(seed=3), [0, 5, 63], cfg)
    windows = np.stack([w for _, w in zip(range(16), iter_windows(ToySource(seed=3), lm.tokenizer,
                                                                   PackingConfig(64), lm.bos_token_id), strict=False)])
    acts = encode_windows(lm, sae, hook, windows)                                 # [16, 64, d_sae]
    valid = ~np.isin(windows, lm.special_token_ids)
    assert data.meta["n_tokens"] == int(valid.sum())
    for record in data.features:
        col = acts[:, :, record.index][torch.as_tensor(valid)]
        assert record.n_fires == int((col > 0).sum())
        assert record.density == pytest.approx(float((col > 0).float().mean()))
        expected_top = col.sort(descending=True).values[:5]
        expected_top = expected_top[expected_top > 0]
        got = torch.tensor([e.act for e in record.top_examples])
        assert torch.allclose(got, expected_top, atol=1e-3)
        for ex in record.top_examples:                                            # contexts line up
            assert ex.acts[ex.mark] == pytest.approx(float(acts[ex.window, ex.pos, record.index]), abs=1e-3)
            assert ex.tokens[ex.mark] == lm.tokenizer.decode([int(windows[ex.window, ex.pos])])
        if record.n_fires:
            assert sum(record.hist["counts"]) == pytest.approx(record.n_fires, abs=0.1)
            highs = [g["hi"] for g in record.quantile_groups]
            assert highs == sorted(highs, reverse=True) and record.quantile_groups[-1]["lo"] > 0
        assert len(record.random_examples) == 4 and all(e.mark == -1 for e in record.random_examples)
        assert len(record.neighbors_cosine) == 5 and len(record.neighbors_correlation) == 5


def test_logit_effects_resid_and_hook_z(lm):
    hook = "blocks.2.hook_resid_post"
    sae = make(hook)
    eff = logit_effects(lm, sae, hook, [4], k=3)[0]
    d = sae.W_dec[4].detach().float()
    d = d - d.mean()
    W, _ = lm.folded_W_U()
    expected = d @ W
    assert [t for t, _ in eff["top"]] == expected.topk(3).indices.tolist()
    assert [t for t, _ in eff["bottom"]] == (-expected).topk(3).indices.tolist()
    assert sum(eff["hist"]["counts"]) == lm.d_vocab

    z_hook = "blocks.1.attn.hook_z"
    z_sae = make(z_hook)
    via_z = logit_effects(lm, z_sae, z_hook, [2], k=3)[0]
    # the same direction written through W_O by hand, as a resid SAE
    dz = torch.einsum("hd,hdm->m", z_sae.W_dec[2].detach().reshape(lm.n_heads, lm.d_head), lm.W_O(1))
    resid_sae = make(hook)
    with torch.no_grad():
        resid_sae.W_dec[2] = dz
    assert [t for t, _ in via_z["top"]] == [t for t, _ in logit_effects(lm, resid_sae, hook, [2], k=3)[0]["top"]]
    assert logit_effects(lm, make("blocks.1.attn.hook_q"), "blocks.1.attn.hook_q", [0]) == [None]


def test_prompt_features(lm):
    hook = "blocks.1.hook_resid_post"
    sae = make(hook)
    rows = prompt_features(lm, sae, hook, "John gave a book to Mary .", k=3)
    assert rows[0]["latents"] == []                                               # BOS excluded
    assert [r["token"] for r in rows[1:3]] == ["John", "gave"]
    assert all(1 <= len(r["latents"]) <= 3 for r in rows[1:])
