"""Interventions on graph nodes in the real model: ablating the planted path's features removes the target
logit as the graph predicts, steering them raises it, and scale 1 changes nothing."""

from __future__ import annotations

import pytest
import torch

from saelab.errors import ConfigError
from saelab.graphs.attribution import build_graph
from saelab.graphs.interventions import intervene, predicted_logit_change, real_logits_with_features_scaled
from saelab.graphs.replacement import ReplacementModel
from saelab.models import LoadedModel
from saelab.models.tiny import tiny_model
from saelab.sae import SAEConfig, make_sae
from test_graphs_attribution import planted_model, planted_prompt, prompt_ids


@pytest.fixture(scope="module")
def planted(one_torch_thread):
    lm, transcoders, facts = planted_model()
    model = ReplacementModel(lm, transcoders, planted_prompt(lm), dtype=torch.float64)
    return model, build_graph(model), facts


def test_ablating_the_planted_path_removes_the_target_as_predicted(planted):
    model, graph, facts = planted
    last = model.n_pos - 1
    for node in (f"feature:0:{last}:0", f"feature:1:{last}:0"):
        result = intervene(model, graph, [node], scale=0.0)
        k = result.tokens.tolist().index(facts["target"])
        assert result.real[k] < -5 and result.predicted[k] < -5
        # frozen norms make the graph overshoot a little: the real model renormalises the smaller residual
        assert result.predicted[k] == pytest.approx(float(result.real[k]), rel=0.25)
        assert result.probs[k] < 0.05 < 0.9 < result.clean_probs[k]
    f1 = intervene(model, graph, [f"feature:0:{last}:0"], 0.0)
    assert abs(float(f1.direct[0])) < 0.1 * abs(float(f1.predicted[0]))  # f1 acts through f2, not directly
    summary = f1.summary(["John"])
    assert summary["logits"][0]["token"] == "John" and summary["nodes"] == [f"feature:0:{last}:0"]


def test_steering_raises_the_target_and_scale_one_is_a_no_op(planted):
    model, graph, facts = planted
    last = model.n_pos - 1
    up = intervene(model, graph, [f"feature:1:{last}:0"], scale=1.5)
    assert up.real[0] > 0 and up.predicted[0] > 0
    same = intervene(model, graph, [f"feature:1:{last}:0"], scale=1.0)
    assert float(same.real.abs().max()) < 1e-9 and float(same.predicted.abs().max()) == 0.0


def exact_transcoders(lm):
    """ReLU transcoders that are a ReLU GPT-2's MLPs (no error anywhere but at BOS)."""
    out = []
    for layer, block in enumerate(lm.model.transformer.h):
        cfg = SAEConfig("relu", lm.d_model, lm.d_mlp, hook_name=f"blocks.{layer}.ln2.hook_normalized",
                        hook_name_out=f"blocks.{layer}.hook_mlp_out", dtype="float64")
        sae = make_sae(cfg)
        with torch.no_grad():
            for mine, theirs in ((sae.W_enc, block.mlp.c_fc.weight), (sae.b_enc, block.mlp.c_fc.bias),
                                 (sae.W_dec, block.mlp.c_proj.weight), (sae.b_dec, block.mlp.c_proj.bias)):
                mine.copy_(theirs)
        out.append(sae)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_small_steps_match_the_graph_to_first_order(one_torch_thread, seed):
    """With transcoders that are the MLPs, a small change of a feature moves the real model's logits as
    the graph predicts, up to what freezing attention patterns and norm scales leaves out."""
    lm = LoadedModel.from_hf(tiny_model("gpt2", seed=seed, activation_function="relu").double(), name="relu-gpt2")
    model = ReplacementModel(lm, exact_transcoders(lm), prompt_ids(8, seed=4), dtype=torch.float64)
    graph = build_graph(model)
    layout = graph.layout
    strongest = graph.adjacency[layout.logit_start:, :layout.n_features].abs().sum(0).argsort(descending=True)[:3]
    eps = 1e-4
    for index in strongest.tolist():
        features, acts = layout.features[[index]], layout.activations[[index]]
        real = real_logits_with_features_scaled(model, features, acts, 1 + eps)[-1] - model.real_logits[-1]
        real = (real[layout.logit_tokens] - real.mean()) / eps
        predicted = predicted_logit_change(graph, torch.tensor([index]), 1 + eps)[0].double() / eps
        # the final norm's scale also moves in the real model, shifting the top logits alike: compare shapes
        assert torch.corrcoef(torch.stack([real, predicted]))[0, 1] > 0.9


def test_bad_nodes_are_refused(planted):
    model, graph, _ = planted
    with pytest.raises(ConfigError, match="not a feature node"):
        intervene(model, graph, ["embedding:0"])
    with pytest.raises(ConfigError, match="at least one"):
        intervene(model, graph, [])
