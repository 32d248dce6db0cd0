"""Causal interventions with SAE latents: splice, ablate, clamp, steer, patch; attribution patching;
the feature-patching experiment of Cunningham et al. 2023 against PCA/ICA/neuron/random bases.

    run_spliced(lm, ids, [Splice(sae, add_error=True, edits=[zero_ablate([3, 7])])])  # [batch, pos, d_vocab]
    with spliced(lm, [Splice(sae, add_error=True, edits=[steer(42, 8.0)])]): lm.model.generate(...)
    steer_generate(lm, sae, feature, scale, prompt)
    attribute_latents(lm, sae, clean_ids, cf_ids, metric); patch_effects(...)
    feature_patching(lm, hook, task_prompts(lm, "ioi", 8), out_dir)    # JSON + PNG; SAE FVU and KL floor
    natural_text_pairs("ioi", 64, tokenizer=lm.tokenizer)              # published templates, checked tokens
    causal_demo_stage(lm, sae, out_dir, section, small)                  # for saelab demo
"""

from saelab.causal.attribution import (
                                       Attribution,
                                       attribute_latents,
                                       logit_diff_metric,
                                       logprob_metric,
                                       patch_effects,
                                       spearman,
)
from saelab.causal.bases import Basis, LinearBasis, SAEBasis, fit_ica, fit_pca, neuron_basis, random_rotation
from saelab.causal.demo_stage import causal_demo_stage
from saelab.causal.edits import (
                                       InterventionError,
                                       LatentEdit,
                                       clamp,
                                       mean_ablate,
                                       patch_from,
                                       steer,
                                       zero_ablate,
)
from saelab.causal.feature_patching import FitConfig, feature_patching
from saelab.causal.patching_experiment import PatchingConfig, run_patching_experiment
from saelab.causal.prompts import PromptPairs, pair_prompts, read_pairs_file, task_prompts
from saelab.causal.quick_sae import SAETrainSpec
from saelab.causal.steering import SteeringResult, steer_generate
from saelab.causal.templates import TextPair, TokenizationError, natural_text_pairs
from saelab.splicing import Splice, hook_latents, hook_latents_and_errors, run_spliced, spliced

__all__ = [
    "Attribution", "Basis", "FitConfig", "InterventionError", "LatentEdit", "LinearBasis", "PatchingConfig",
    "PromptPairs", "SAEBasis", "SAETrainSpec", "Splice", "SteeringResult", "TextPair", "TokenizationError",
    "attribute_latents", "causal_demo_stage", "clamp", "feature_patching", "fit_ica", "fit_pca", "hook_latents",
    "hook_latents_and_errors", "logit_diff_metric", "logprob_metric", "mean_ablate", "natural_text_pairs",
    "neuron_basis", "pair_prompts", "patch_effects", "patch_from", "random_rotation", "read_pairs_file",
    "run_patching_experiment", "run_spliced", "spearman", "spliced", "steer", "steer_generate", "task_prompts",
    "zero_ablate",
]
