"""Attention-output SAEs (Kissane et al. 2024, arXiv 2406.17759): SAEs on ``blocks.L.attn.hook_z``
(all heads concatenated), read head by head.

    asae = bind_attention_sae(lm, sae)                          # or reports.open_attention_sae(folder)
    head_attribution(asae.decoder_by_head())                    # [d_sae, n_heads], rows sum to 1
    direct_feature_attribution(asae, prompt, feature, position) # by head and by source position
    recursive_dfa(asae, upstream_sae, prompt, feature, dest, src)
    build_census(asae, windows, acts); classify_latents(acts, labels)
    induction_scores(lm); prefix_induction(lm); head_ablation_loss_ratios(lm)
    ioi_latent_ablation(asae, toy_ioi_prompts(asae))
    train_toy_attention_sae(out_dir)                            # a small hook_z SAE on the toy model

Reports (JSON-able) and their views: ``saelab.attention.reports``, ``saelab.attention.views``.
"""

from saelab.attention.census import CensusConfig, build_census
from saelab.attention.dfa import direct_feature_attribution
from saelab.attention.families import classify_latents, family_counts
from saelab.attention.geometry import AttentionSAE, NotAttentionSAEError, bind_attention_sae, head_attribution
from saelab.attention.induction import head_ablation_loss_ratios, induction_scores, prefix_induction
from saelab.attention.ioi import ioi_latent_ablation, toy_ioi_prompts
from saelab.attention.recursive import recursive_dfa
from saelab.attention.toy_sae import train_toy_attention_sae

__all__ = [
    "AttentionSAE", "CensusConfig", "NotAttentionSAEError", "bind_attention_sae", "build_census", "classify_latents",
    "direct_feature_attribution", "family_counts", "head_ablation_loss_ratios", "head_attribution",
    "induction_scores", "ioi_latent_ablation", "prefix_induction", "recursive_dfa", "toy_ioi_prompts",
    "train_toy_attention_sae",
]
