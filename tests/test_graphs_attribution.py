"""Attribution graphs on hand-built and tiny random models: the planted path is found, every edge is the
effect of removing its source in the frozen replacement model, the error nodes make the replacement
exact in every model family, and bad transcoder sets and prompts are refused clearly."""

from __future__ import annotations

import pytest
import torch

from saelab.graphs.attribution import GraphConfig, build_graph, salient_logits
from saelab.graphs.graph_json import node_id
from saelab.graphs.paths import top_paths
from saelab.graphs.prune import PruneConfig, graph_scores, prune_graph
from saelab.graphs.replacement import PromptError, ReplacementModel
from saelab.graphs.transcoders import TranscoderSetError, check_transcoders, training_entries
from saelab.models import LoadedModel
from saelab.models.tiny import tiny_model
from saelab.sae import SAEConfig, make_sae

PLANT_A, PLANT_TARGET = "Mary", "John"  # the token feature f1 reads, the logit feature f2 writes to


def planted_model() -> tuple[LoadedModel, list, dict]:
    """A 2-block GPT-2 (ReLU MLPs, attention switched off) over the toy vocabulary in which MLP 0's neuron 0
    (f1) fires on token A and writes direction u, MLP 1's neuron 0 (f2) reads u and writes w, and w is the
    target token's unembedding. Its transcoders are the MLPs themselves (exact), so the graph of a prompt
    ending in A must be: embedding(A) -> f1 -> f2 -> logit(target). Returns (model, transcoders, facts)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from saelab.toy.tokenizer import build_hf_tokenizer

    tokenizer = build_hf_tokenizer()
    d, n_mlp = 16, 8
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=d, n_layer=2, n_head=2, n_positions=32, n_inner=n_mlp,
                        activation_function="relu", tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).double().eval()
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(d, d, generator=gen, dtype=torch.float64)
    basis[:, 0] = 1.0
    Q, _ = torch.linalg.qr(basis)  # noqa: N806  Q[:, 0] is along the all-ones vector (LayerNorm removes it)
    e_a, u, w, rest = Q[:, 1], Q[:, 2], Q[:, 3], Q[:, 4:]
    a_id, t_id = tokenizer.convert_tokens_to_ids(PLANT_A), tokenizer.convert_tokens_to_ids(PLANT_TARGET)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif ".attn." in name or "wpe" in name:
                p.zero_()
        wte = torch.randn(len(tokenizer), rest.shape[1], generator=gen, dtype=torch.float64) @ rest.T
        wte[a_id] = 4 * e_a
        model.transformer.wte.weight.copy_(wte)
        model.lm_head.weight.copy_(0.1 * torch.randn(len(tokenizer), rest.shape[1], generator=gen,
                                                     dtype=torch.float64) @ rest.T)
        model.lm_head.weight[t_id] = 5 * w
        for layer, (reads, writes) in enumerate(((2 * e_a, 1.5 * u), (2 * u, 2 * w))):
            mlp = model.transformer.h[layer].mlp
            mlp.c_fc.weight.copy_(0.5 * rest @ torch.randn(rest.shape[1], n_mlp, generator=gen, dtype=torch.float64))
            mlp.c_fc.weight[:, 0] = reads
            mlp.c_fc.bias.fill_(0.0)
            mlp.c_fc.bias[0] = -0.5
            mlp.c_proj.weight.copy_(0.3 * torch.randn(n_mlp, rest.shape[1], generator=gen, dtype=torch.float64) @ rest.T)
            mlp.c_proj.weight[0] = writes
            mlp.c_proj.bias.zero_()
    lm = LoadedModel.from_hf(model, tokenizer, name="planted")
    transcoders = []
    for layer in range(2):
        cfg = SAEConfig("relu", d, n_mlp, hook_name=f"blocks.{layer}.ln2.hook_normalized",
                        hook_name_out=f"blocks.{layer}.hook_mlp_out", dtype="float64", name=f"mlp{layer}-transcoder")
        sae = make_sae(cfg)
        mlp = model.transformer.h[layer].mlp
        with torch.no_grad():
            sae.W_enc.copy_(mlp.c_fc.weight)
            sae.b_enc.copy_(mlp.c_fc.bias)
            sae.W_dec.copy_(mlp.c_proj.weight)
            sae.b_dec.copy_(mlp.c_proj.bias)
        transcoders.append(sae)
    return lm, transcoders, {"a": a_id, "target": t_id}


def planted_prompt(lm: LoadedModel) -> torch.Tensor:
    return lm.tokenize(f"the war lasted from the year {PLANT_A}")[0][0]


def random_transcoders(lm: LoadedModel, *, skip_layers: tuple[int, ...] = (), kind: str = "ln2.hook_normalized",
                       architecture: str = "topk", d_sae: int = 64):
    """Untrained transcoders of every block (k 8 of 64 latents), in float64; skip terms where asked."""
    out = []
    for layer in range(lm.n_layers):
        options = {"k": 8} if architecture == "topk" else {}
        cfg = SAEConfig(architecture, lm.d_model, d_sae, hook_name=f"blocks.{layer}.{kind}",
                        hook_name_out=f"blocks.{layer}.hook_mlp_out", skip_connection=layer in skip_layers,
                        dtype="float64", **options)
        sae = make_sae(cfg, torch.Generator().manual_seed(layer))
        with torch.no_grad():
            sae.b_enc.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(100 + layer))
            if cfg.skip_connection:
                sae.W_skip.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(200 + layer))
        out.append(sae)
    return out


def tiny(family: str) -> LoadedModel:
    return LoadedModel.from_hf(tiny_model(family).double(), name=f"tiny-{family}")


def prompt_ids(n: int = 9, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(3, 90, (n,), generator=torch.Generator().manual_seed(seed))
    ids[0] = 0  # BOS
    return ids


@pytest.fixture(scope="module")
def planted(one_torch_thread):
    lm, transcoders, facts = planted_model()
    model = ReplacementModel(lm, transcoders, planted_prompt(lm), dtype=torch.float64)
    graph = build_graph(model)
    return lm, model, graph, facts


# ------------------------------------------------------------------------------- the planted path
def test_the_graph_finds_the_planted_path(planted):
    lm, model, graph, facts = planted
    last = model.n_pos - 1
    pruned = prune_graph(graph)
    ids = {node_id(graph.layout, i): i for i in range(graph.layout.n_nodes)}
    path = [f"embedding:{last}", f"feature:0:{last}:0", f"feature:1:{last}:0", f"logit:{facts['target']}"]
    assert int(graph.layout.logit_tokens[0]) == facts["target"]
    for node in path:
        assert pruned.node_mask[ids[node]], f"{node} was pruned"
    for source, target in zip(path, path[1:], strict=False):
        assert pruned.edge_mask[ids[target], ids[source]], f"edge {source} -> {target} was pruned"
        assert graph.adjacency[ids[target], ids[source]] > 1.0
    best = top_paths(graph, pruned, k=3)[0]
    assert [node_id(graph.layout, i) for i in best.nodes] == path
    # the transcoders are the MLPs: no error but at BOS (no features there), so the tokens reach the logit
    # through features only
    assert float(model.errors[:, 1:].abs().max()) < 1e-10
    assert graph_scores(graph).replacement > 0.999


def test_the_direct_effects_into_a_node_sum_to_its_value(planted):
    _, model, graph, facts = planted
    layout, last = graph.layout, model.n_pos - 1
    f2 = [i for i in range(layout.n_features) if layout.features[i].tolist() == [1, last, 0]][0]
    sites = model.run(model.embeddings[None], [w[None] for w in model.clean_writes()])
    W, b = model.encoder(1)  # noqa: N806
    preact = float(sites[1][0, last] @ W[:, 0] + b[0])
    zeros = [model.decode(sae, torch.zeros_like(a))[None] for sae, a in zip(model.transcoders, model.acts, strict=True)]
    bias_only = model.run(torch.zeros_like(model.embeddings)[None], zeros)
    bias_share = float(bias_only[1][0, last] @ W[:, 0] + b[0])
    assert float(graph.adjacency[f2].sum()) + bias_share == pytest.approx(preact, abs=1e-5)


# ------------------------------------------------------------- edges equal interventions in the frozen model
def target_values(model: ReplacementModel, layout, sites) -> torch.Tensor:
    """``[n_features + n_logits]`` the feature nodes' pre-activations and the logit nodes' demeaned logits."""
    values = []
    for layer, pos, feat in layout.features.tolist():
        W, b = model.encoder(layer)  # noqa: N806
        values.append(sites[layer][0, pos] @ W[:, feat] + b[feat])
    W_U = model.W_U  # noqa: N806
    vectors = W_U[:, layout.logit_tokens].T - W_U.mean(1)
    return torch.cat([torch.stack(values), vectors @ sites[-1][0, -1]])


@pytest.mark.parametrize("family", ["gpt2", "gemma3"])
def test_every_edge_is_the_effect_of_removing_its_source(one_torch_thread, family):
    """Removing one source (its write set to 0) in the frozen replacement model changes every target by
    exactly that edge's weight: the whole adjacency matrix, checked column by column."""
    lm = tiny(family)
    model = ReplacementModel(lm, random_transcoders(lm, skip_layers=(1,)), prompt_ids(8), dtype=torch.float64)
    graph = build_graph(model, GraphConfig(batch_size=13))
    layout = graph.layout
    rows = torch.cat([torch.arange(layout.n_features), torch.arange(layout.logit_start, layout.n_nodes)])
    writes = model.clean_writes()

    def values(embeddings, writes):
        return target_values(model, layout, model.run(embeddings[None], [w[None] for w in writes]))

    with torch.no_grad():
        clean = values(model.embeddings, writes)
        for s in range(layout.n_sources):
            kind, (layer, pos) = layout.kind(s), layout.layer_position(s)
            embeddings, changed = model.embeddings, [w.clone() for w in writes]
            if kind == "feature":
                feat = int(layout.features[s, 2])
                changed[layer][pos] -= layout.activations[s] * model.decoder_rows(layer, torch.tensor([feat]))[0]
            elif kind == "error":
                changed[layer][pos] -= model.errors[layer, pos]
            else:
                embeddings = embeddings.clone()
                embeddings[pos] = 0
            effect = clean - values(embeddings, changed)
            assert torch.allclose(effect.float(), graph.adjacency[rows, s], atol=1e-4, rtol=1e-4), (kind, layer, pos)


def test_logit_nodes_cover_the_probability_mass():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    tokens, probs = salient_logits(logits, max_logits=10, prob_mass=0.9)
    assert tokens.tolist() == [0, 1, 2] and float(probs.sum()) == pytest.approx(0.95)
    assert salient_logits(logits, max_logits=2, prob_mass=0.99)[0].tolist() == [0, 1]
    assert salient_logits(logits, prob_mass=0.4)[0].tolist() == [0]


def test_a_feature_budget_keeps_the_most_influential_features(one_torch_thread):
    lm = tiny("gpt2")
    model = ReplacementModel(lm, random_transcoders(lm), prompt_ids(8), dtype=torch.float64)
    full = build_graph(model, GraphConfig(max_feature_nodes=None))
    small = build_graph(model, GraphConfig(max_feature_nodes=20, batch_size=5, update_interval=1))
    assert small.layout.n_features == 20 and small.n_active_features == full.n_active_features
    ids = {tuple(f): i for i, f in enumerate(full.layout.features.tolist())}
    kept = [ids[tuple(f)] for f in small.layout.features.tolist()]
    # the kept features' rows and the logit rows are the full graph's, on the kept columns
    columns = torch.tensor(kept + list(range(full.layout.n_features, full.layout.n_nodes)))
    assert torch.allclose(small.adjacency[:20], full.adjacency[kept][:, columns], atol=1e-6)
    assert torch.allclose(small.adjacency[small.layout.logit_start:], full.adjacency[full.layout.logit_start:][:, columns],
                          atol=1e-6)
    # the features ranked by influence on the logits: the top ones of the full graph are among them
    influence = prune_graph(full, PruneConfig()).node_influence[:full.layout.n_features]
    top5 = influence.argsort(descending=True)[:5].tolist()
    assert set(top5) <= set(kept)


# ----------------------------------------------------------------------- exactness in every family
@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "gpt_neox_sequential", "llama", "gemma2", "gemma3"])
def test_error_nodes_make_the_replacement_exact(one_torch_thread, family):
    lm = tiny(family)
    kind = "hook_mlp_in" if family == "gpt_neox" else "ln2.hook_normalized"
    ids = prompt_ids(10, seed=1)
    model = ReplacementModel(lm, random_transcoders(lm, skip_layers=(0, 2), kind=kind), ids, dtype=torch.float64)
    real = lm.run_with_hooks(ids[None], {})[0]
    replaced = model.forward_logits()
    assert torch.allclose(replaced, real, atol=1e-5), float((replaced - real).abs().max())
    assert model.max_logit_error < 1e-5
    model.errors = torch.zeros_like(model.errors)
    without_errors = model.forward_logits()
    assert float((without_errors - real).abs().max()) > 1e-2  # the transcoders alone are far from the MLPs


def test_transcoders_reading_the_residual_also_work(one_torch_thread):
    lm = tiny("gpt2")
    ids = prompt_ids(7, seed=2)
    model = ReplacementModel(lm, random_transcoders(lm, kind="hook_resid_mid", skip_layers=(1,)), ids,
                             dtype=torch.float64)
    assert torch.allclose(model.forward_logits(), lm.run_with_hooks(ids[None], {})[0], atol=1e-8)


def test_special_tokens_carry_no_features(planted):
    _, model, graph, _ = planted
    assert not model.ordinary[0]  # BOS
    assert not (graph.layout.features[:, 1] == 0).any()
    assert all(float(a[0].abs().sum()) == 0 for a in model.acts)


# ------------------------------------------------------------------------------------ bad input
def test_bad_transcoder_sets_are_refused(one_torch_thread):
    lm = tiny("gpt2")
    good = random_transcoders(lm)
    assert check_transcoders(lm, list(reversed(good))) == good  # any order, sorted by block
    with pytest.raises(TranscoderSetError, match=r"block\(s\) 1 "):
        check_transcoders(lm, [good[0], good[2]])
    with pytest.raises(TranscoderSetError, match="both replace the MLP of block 2"):
        check_transcoders(lm, [*good, good[2]])
    crossed = make_sae(SAEConfig("topk", 32, 64, hook_name="blocks.0.ln2.hook_normalized",
                                 hook_name_out="blocks.1.hook_mlp_out", k=8))
    with pytest.raises(TranscoderSetError, match="does not replace one MLP"):
        check_transcoders(lm, [crossed, *good[1:]])
    residual = make_sae(SAEConfig("topk", 32, 64, hook_name="blocks.0.hook_resid_pre",
                                  hook_name_out="blocks.0.hook_mlp_out", k=8))
    with pytest.raises(TranscoderSetError, match="must write blocks.L.hook_mlp_out and read"):
        check_transcoders(lm, [residual, *good[1:]])
    plain = make_sae(SAEConfig("topk", 32, 64, hook_name="blocks.0.hook_mlp_out", k=8))
    with pytest.raises(TranscoderSetError, match="not a transcoder"):
        check_transcoders(lm, [plain, *good[1:]])
    wide = make_sae(SAEConfig("topk", 48, 64, hook_name="blocks.0.ln2.hook_normalized",
                              hook_name_out="blocks.0.hook_mlp_out", d_out=32, k=8))
    with pytest.raises(Exception, match="d_in=48"):
        check_transcoders(lm, [wide, *good[1:]])
    neox = tiny("gpt_neox")
    with pytest.raises(TranscoderSetError, match="hook_resid_mid"):
        check_transcoders(neox, random_transcoders(neox, kind="hook_resid_mid"))
    with pytest.raises(Exception, match="input kind"):
        training_entries(neox, input_kind="hook_resid_mid")


def test_bad_prompts_are_refused(one_torch_thread):
    lm = tiny("gpt2")  # context 64
    transcoders = random_transcoders(lm)
    with pytest.raises(PromptError, match="at most 64"):
        ReplacementModel(lm, transcoders, torch.randint(3, 90, (65,)))
    with pytest.raises(PromptError, match="batch of 2"):
        ReplacementModel(lm, transcoders, torch.randint(3, 90, (2, 5)))


def test_bad_settings_are_refused():
    with pytest.raises(Exception, match="prob_mass"):
        GraphConfig(prob_mass=1.5)
    with pytest.raises(Exception, match="max_logits"):
        GraphConfig(max_logits=0)
    with pytest.raises(Exception, match="node_threshold"):
        PruneConfig(node_threshold=1.2)
