"""Meta-SAE structure: the variance-explained formula by hand, planted decoder rows (sparse
combinations of a few meta-directions) against random rows, the report, and refused inputs."""

from __future__ import annotations

import json

import pytest
import torch

from saelab.errors import ConfigError
from saelab.eval.meta_sae import (
    MetaSAEConfig,
    meta_sae_on_rows,
    meta_sae_structure,
    reconstruction_figures,
    top_meta_latents,
    unit_decoder_rows,
)
from saelab.models.tiny import torch_threads
from saelab.sae import SAEConfig, make_sae

D, N_PLANTED, N_ROWS = 32, 8, 512
FIT = MetaSAEConfig(d_meta=12, k=2, steps=400, batch_size=256, lr=3e-3, seed=0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def planted_rows(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [N_ROWS, D]: each a positive combination of 2 of the planted directions, unit norm;
    planted directions [N_PLANTED, D])."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(N_PLANTED, D, generator=g), dim=1)
    active = torch.rand(N_ROWS, N_PLANTED, generator=g).topk(2, dim=1).indices
    codes = torch.zeros(N_ROWS, N_PLANTED).scatter_(1, active, 0.5 + torch.rand(N_ROWS, 2, generator=g))
    return torch.nn.functional.normalize(codes @ directions, dim=1), directions


def sae_with_decoder(rows: torch.Tensor) -> object:
    sae = make_sae(SAEConfig("relu", d_in=rows.shape[1], d_sae=rows.shape[0], name="planted"), seed=0)
    with torch.no_grad():
        sae.W_dec.copy_(rows)
    return sae


def test_variance_explained_by_hand():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    rows_hat = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.5, 1.0]])
    acts = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.5, 1.0]])
    # mean row (2/3, 2/3); Σ‖r − r̄‖² = (1/9 + 4/9) + (4/9 + 1/9) + (1/9 + 1/9) = 12/9
    # Σ‖r − r̂‖² = 0 + 0.25 + 0.25 = 0.5 -> FVU = 0.5 / (12/9) = 0.375
    figures = reconstruction_figures(rows, rows_hat, acts)
    assert figures["fvu"] == pytest.approx(0.375)
    assert figures["explained_variance"] == pytest.approx(0.625)
    assert figures["l0"] == pytest.approx(4 / 3)  # 1 + 1 + 2 active meta-latents over 3 rows
    assert figures["mse"] == pytest.approx(0.5 / 6)


def test_planted_directions_recovered_and_random_rows_explained_less():
    rows, directions = planted_rows()
    scale = 0.2 + torch.rand(N_ROWS, 1, generator=torch.Generator().manual_seed(5)) * 3
    decoder = rows * scale
    decoder[[3, 100]] = 0.0  # rows without a direction are left out and counted
    result = meta_sae_structure(sae_with_decoder(decoder), cfg=FIT)
    assert result.n_rows == N_ROWS - 2 and result.n_zero_rows == 2 and result.d_sae == N_ROWS
    assert 3 not in result.latents.tolist() and 100 not in result.latents.tolist()
    assert result.variance_explained > 0.97
    meta_directions = torch.nn.functional.normalize(result.meta_sae.W_dec.detach(), dim=1)
    best = (meta_directions @ directions.T).max(0).values                     # [N_PLANTED]
    assert best.min() > 0.9, best
    assert result.l0 == pytest.approx(2, abs=0.3) and N_PLANTED <= result.n_used <= FIT.d_meta
    assert result.meta_sae.b_dec.abs().max() == 0  # a row is a sum of meta-directions, no bias
    # the figure is the meta-SAE's own reconstruction of the unit rows
    kept, _ = unit_decoder_rows(sae_with_decoder(decoder))
    acts = result.meta_sae.encode(kept)
    again = reconstruction_figures(kept, result.meta_sae.decode(acts), acts)
    assert again["explained_variance"] == pytest.approx(result.variance_explained, rel=1e-5)

    g = torch.Generator().manual_seed(1)
    noise = torch.nn.functional.normalize(torch.randn(N_ROWS, D, generator=g), dim=1)
    random = meta_sae_on_rows(noise, FIT, name="random")
    assert random.variance_explained < 0.5
    assert result.variance_explained - random.variance_explained > 0.45


def test_report_lists_latents_of_top_meta_latents():
    rows, _ = planted_rows(seed=2)
    result = meta_sae_on_rows(rows, MetaSAEConfig(d_meta=12, k=2, steps=150, batch_size=256, lr=3e-3, n_top=3,
                                                  n_loadings=4))
    out = result.to_dict()
    json.dumps(out)
    assert "acts" not in out and "meta_sae" not in out and out["d_meta"] == 12
    top = out["top_meta_latents"]
    assert len(top) == 3 and [t["n_rows"] for t in top] == sorted((t["n_rows"] for t in top), reverse=True)
    for entry in top:
        column = result.acts[:, entry["meta_latent"]]
        assert entry["n_rows"] == int((column > 0).sum())
        assert len(entry["latents"]) == 4
        assert [x["activation"] for x in entry["latents"]] == sorted(column.tolist(), reverse=True)[:4]
        assert all(-1 <= x["cosine"] <= 1 for x in entry["latents"])
    assert out["n_rows_unexplained"] == int((~(result.acts > 0).any(1)).sum())


def test_top_meta_latents_by_hand():
    acts = torch.tensor([[0.0, 2.0, 0.0], [1.0, 3.0, 0.0], [0.5, 0.0, 0.0]])
    rows = torch.eye(3)
    directions = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    top = top_meta_latents(acts, torch.tensor([10, 11, 12]), rows, directions, n_top=5, n_loadings=1)
    # meta-latents 0 and 1 are on two rows each (1 has more activation); 2 is never active
    assert [t["meta_latent"] for t in top] == [1, 0]
    assert top[0]["latents"] == [{"latent": 11, "activation": 3.0, "cosine": 1.0}]
    assert top[1]["latents"] == [{"latent": 11, "activation": 1.0, "cosine": 0.0}]


def test_refused_inputs():
    small = make_sae(SAEConfig("relu", d_in=16, d_sae=8, name="small"), seed=0)
    with pytest.raises(ConfigError, match=r"'small' has 8 decoder rows .* too few for d_meta=8"):
        meta_sae_structure(small, d_meta=8, k=2, steps=5)
    with pytest.raises(ConfigError, match="too few for d_meta=4"):
        meta_sae_structure(make_sae(SAEConfig("relu", d_in=16, d_sae=4, name="tiny"), seed=0), k=4, steps=5)
    with pytest.raises(ConfigError, match="k=6 is out of range for d_meta=4"):
        meta_sae_structure(small, d_meta=4, k=6, steps=5)
    with torch.no_grad():
        small.W_dec.zero_()
    with pytest.raises(ConfigError, match="no decoder row with a direction"):
        meta_sae_structure(small, d_meta=2, k=1, steps=5)
    with pytest.raises(ConfigError, match="width_ratio"):
        MetaSAEConfig(width_ratio=0)
    with pytest.raises(ConfigError, match="steps"):
        MetaSAEConfig(steps=0)
