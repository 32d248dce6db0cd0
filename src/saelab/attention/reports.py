"""The attention analyses as plain functions from inputs to JSON-able reports (used by the CLI and the
demo). Views of each report: ``saelab.attention.views``.

    asae = open_attention_sae(sae_dir, model=None)         # the SAE folder's recorded model by default
    build_census_report(asae, source="toy", n_windows=64)  # head census: roles (+ families on the toy world)
    build_dfa_report(asae, prompt, feature, position=-1, upstream=None)
    build_induction_report(lm, n_seqs=32, length=20, max_prefix=9, ablate=True)
    build_ioi_report(asae, n_prompts=64)
"""

from __future__ import annotations

from saelab.attention.census import CensusConfig, build_census
from saelab.attention.corpus import latent_activations, source_windows, toy_windows
from saelab.attention.dfa import direct_feature_attribution
from saelab.attention.geometry import AttentionSAE, bind_attention_sae
from saelab.attention.induction import (
    head_ablation_loss_ratios,
    induction_scores,
    prefix_induction,
    top_heads,
)
from saelab.attention.ioi import ioi_latent_ablation, toy_ioi_prompts
from saelab.errors import SaelabError
from saelab.models import LoadedModel, load_model

INDUCTION_THRESHOLD = 0.3


def model_spec_of(info) -> str | None:
    """The model an SAE folder records (saelab's ``model.spec``, else SAELens' ``model_name``)."""
    model = info.saelab.get("model") if isinstance(info.saelab, dict) else None
    if isinstance(model, dict) and model.get("spec"):
        return str(model["spec"])
    name = info.metadata.get("model_name") if isinstance(info.metadata, dict) else None
    return str(name) if name else None


def open_attention_sae(sae_dir: str, model: str | LoadedModel | None = None) -> AttentionSAE:
    """Load the SAE folder and its model (``model`` overrides the recorded one) and check they fit."""
    from saelab.sae import load_sae_with_info

    sae, info = load_sae_with_info(sae_dir)
    if model is None:
        model = model_spec_of(info)
        if model is None:
            raise SaelabError(f"SAE folder {sae_dir!r} records no model; pass --model (e.g. --model toy)")
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    return bind_attention_sae(lm, sae)


def build_census_report(asae: AttentionSAE, source: str = "toy", n_windows: int = 64, context: int = 128,
                        config: CensusConfig | None = None, progress: bool = False) -> dict:
    """Head census on ``n_windows`` windows of ``source`` ("toy": labelled toy documents, so the family
    criterion is judged beside the role one; see ``saelab.attention.census``)."""
    context = min(context, int(getattr(asae.lm.config, "max_position_embeddings", None)
                               or getattr(asae.lm.config, "n_positions", context)))
    windows = (toy_windows(asae.lm, n_windows, context=context) if source == "toy"
               else source_windows(asae.lm, source, n_windows, context))
    acts = latent_activations(asae, windows.ids, progress=progress)
    census = build_census(asae, windows, acts, config)
    return {"hook": asae.hook_name, "source": source, "n_windows": n_windows, **census.to_json()}


def build_dfa_report(asae: AttentionSAE, prompt: str, feature: int, position: int = -1, upstream=None,
                     src: int | None = None) -> dict:
    """DFA by head and source of ``feature`` at ``position``; with an upstream SAE, recursive DFA too."""
    result = direct_feature_attribution(asae, prompt, feature, position)
    report = {"hook": asae.hook_name, "prompt": prompt, "tokens": result.tokens, **result.to_json(),
              "by_source_head": [[float(x) for x in row] for row in result.by_source]}
    if upstream is not None:
        from saelab.attention.recursive import recursive_dfa

        report["recursive"] = recursive_dfa(asae, upstream, prompt, feature, result.position, src).to_json()
    return report


def build_induction_report(lm: LoadedModel, n_seqs: int = 32, length: int = 20, max_prefix: int = 9,
                           ablate: bool = True, seed: int = 0, progress: bool = False) -> dict:
    """Induction scores, the prefix-length experiment and (``ablate``) per-head ablation loss ratios."""
    scores = induction_scores(lm, n_seqs, length, seed)
    prefix = prefix_induction(lm, range(1, max_prefix + 1), n_seqs, seed, progress=progress)
    report = {"model": lm.name, "n_seqs": n_seqs, "length": length,
              "induction_scores": {f"{L}.{h}": round(float(scores[L, h]), 4)
                                   for L in range(lm.n_layers) for h in range(lm.n_heads)},
              "induction_heads": top_heads(scores, INDUCTION_THRESHOLD), "induction_threshold": INDUCTION_THRESHOLD,
              "prefix": prefix.to_json()}
    if ablate:
        clean, ablated = head_ablation_loss_ratios(lm, n_seqs, length, seed, progress=progress)
        report["loss_ratio"] = round(clean, 4)
        report["ablated_loss_ratio"] = {f"{L}.{h}": round(float(ablated[L, h]), 4)
                                        for L in range(lm.n_layers) for h in range(lm.n_heads)}
        harm = sorted(report["ablated_loss_ratio"].items(), key=lambda kv: -kv[1])
        report["most_harmful_ablations"] = [head for head, _ in harm[:3]]
    return report


def build_ioi_report(asae: AttentionSAE, n_prompts: int = 64, seed: int = 0, min_effect: float = 0.1,
                     progress: bool = False) -> dict:
    """Latent ablation at S2 on toy IOI prompts (see ``saelab.attention.ioi``)."""
    result = ioi_latent_ablation(asae, toy_ioi_prompts(asae, n_prompts, seed), min_effect, progress=progress)
    return {"hook": asae.hook_name, "n_prompts": n_prompts, **result.to_json()}
