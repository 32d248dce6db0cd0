"""Evaluation: fidelity and sparsity by splicing, frontier sweeps, feature recovery in the toy world.

Public API::

    result = evaluate_sae(lm, sae, source="toy:1000003", config=EvalConfig(tokens=32768))
    result.metrics        # dict: l0 l1 mse fvu explained_variance cosine l2_ratio relative_reconstruction_bias
                          #   ce_clean ce_spliced delta_loss ce_zero_ablation ce_mean_ablation ce_loss_recovered
                          #   ce_loss_recovered_mean_ablation kl kl_zero_ablation kl_mean_ablation kl_recovered
                          #   kl_recovered_mean_ablation ce_with_error kl_with_error error_term_max_logit_diff
                          #   n_dead dead_fraction n_dense dense_fraction density_histogram warnings ...
    result.latent_frequency                     # [d_sae]
    results = evaluate_saes(lm, [sae_a, sae_b])  # one pass over the data; shared clean run and baselines
    sweep = run_sweep(lm, SweepConfig(hook=..., archs=("relu", "topk", "jumprelu"), points=3), out_dir)
    report = feature_recovery(lm, sae_or_saes, RecoveryConfig(tokens=32768))
    spliced_logits(lm, sae, input_ids, add_error=False)           # [batch, pos, d_vocab]
    plot_density_histogram(metrics, path); plot_frontier(rows, "delta_loss", path)   # PNG paths
    format_eval(metrics); format_sweep(sweep); format_recovery(report)               # Markdown text

Definitions: ``saelab.eval.metrics`` (reconstruction), ``saelab.eval.downstream`` (CE/KL),
``saelab.eval.latents`` (firing), ``saelab.eval.recovery`` (planted variables). CLI: ``saelab eval``,
``saelab sweep``, ``saelab recovery`` (``saelab.eval.commands``).
"""

from saelab.eval.evaluate import (
    DEFAULT_EVAL_SEED,
    DEFAULT_EVAL_SOURCE,
    EmptyEvaluationSetError,
    EvalConfig,
    EvalResult,
    evaluate_sae,
    evaluate_saes,
)
from saelab.eval.plots import plot_density_histogram, plot_frontier
from saelab.eval.recovery import NotToyModelError, RecoveryConfig, feature_recovery, planted_variables
from saelab.eval.report import format_eval, format_recovery, format_sweep
from saelab.eval.sweep import SweepConfig, matched_l0, run_sweep
from saelab.splicing import SAEModelMismatchError, check_sae_fits, spliced_logits

__all__ = [
    "DEFAULT_EVAL_SEED", "DEFAULT_EVAL_SOURCE", "EmptyEvaluationSetError", "EvalConfig", "EvalResult",
    "NotToyModelError", "RecoveryConfig", "SAEModelMismatchError", "SweepConfig", "check_sae_fits",
    "evaluate_sae", "evaluate_saes", "feature_recovery", "format_eval", "format_recovery", "format_sweep",
    "matched_l0", "planted_variables", "plot_density_histogram", "plot_frontier", "run_sweep", "spliced_logits",
]
