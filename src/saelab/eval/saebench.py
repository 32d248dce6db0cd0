"""SAEBench's core-eval result JSON from ``saelab eval``'s metrics (``saelab eval --format saebench``).

    out = core_eval_output(result.metrics, result.latent_frequency, sae, batch_size=16)
    out["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"]

The structure is SAEBench's ``CoreEvalOutput`` (adamkarvonen/SAEBench ``sae_bench/evals/core/
eval_output.py``, ``eval_config.py`` and ``sae_bench/evals/base_eval_output.py``): ``eval_type_id``
"core", ``eval_config`` (``CoreEvalConfig``), ``eval_id``, ``datetime_epoch_millis``,
``eval_result_metrics`` (the groups of ``CORE_METRICS``), ``eval_result_details`` (empty: no
per-feature rows), ``sae_bench_commit_hash`` / ``sae_lens_version`` (null: neither ran),
``sae_lens_id`` / ``sae_lens_release_id`` (null unless given), ``sae_cfg_dict`` (the SAE's cfg.json in
SAELens' layout) and ``eval_result_unstructured`` (saelab's own metrics, and what was left out).

Mapping: the KL/CE scores are saelab's zero-ablation recovered fractions (``kl_recovered``,
``ce_loss_recovered``), as SAEBench's core eval uses zero ablation; ``misc_metrics`` come from
the per-latent firing frequency and the SAE's weights. Not measured, so left out:
``shrinkage.l2_norm_in`` and ``l2_norm_out``, and ``eval_config``'s batch counts
(``n_eval_reconstruction_batches``, ``n_eval_sparsity_variance_batches``). An undefined ratio
(saelab's null) is written as -1, SAEBench's own stand-in for NaN (``replace_nans_with_negative_one``
in its ``evals/core/main.py``). Definitions differ in two places, stated in the output: saelab's
``mse`` is per element and ``explained_variance`` is 1 − FVU over the whole evaluation set, where
SAEBench averages per-token ratios.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saelab.data.sources import dataset_path_of
from saelab.fileio import atomic_write_bytes
from saelab.sae.base import SAE

EVAL_TYPE_ID_CORE = "core"
UNDEFINED = -1  # SAEBench writes NaN metrics as -1

#: SAEBench ``CoreMetricCategories``: group -> field -> (type, saelab metric it takes, or None when
#: computed here from frequencies/weights or not measured)
CORE_METRICS: dict[str, dict[str, tuple[type, str | None]]] = {
    "model_behavior_preservation": {
        "kl_div_score": (float, "kl_recovered"), "kl_div_with_ablation": (float, "kl_zero_ablation"),
        "kl_div_with_sae": (float, "kl")},
    "model_performance_preservation": {
        "ce_loss_score": (float, "ce_loss_recovered"), "ce_loss_with_ablation": (float, "ce_zero_ablation"),
        "ce_loss_with_sae": (float, "ce_spliced"), "ce_loss_without_sae": (float, "ce_clean")},
    "reconstruction_quality": {
        "explained_variance": (float, "explained_variance"), "mse": (float, "mse"), "cossim": (float, "cosine")},
    "shrinkage": {
        "l2_norm_in": (float, None), "l2_norm_out": (float, None), "l2_ratio": (float, "l2_ratio"),
        "relative_reconstruction_bias": (float, "relative_reconstruction_bias")},
    "sparsity": {"l0": (float, "l0"), "l1": (float, "l1")},
    "token_stats": {
        "total_tokens_eval_reconstruction": (int, "n_tokens"),
        "total_tokens_eval_sparsity_variance": (int, "n_tokens")},
    "misc_metrics": {
        "freq_over_1_percent": (float, None), "freq_over_10_percent": (float, None),
        "normalized_freq_over_1_percent": (float, None), "normalized_freq_over_10_percent": (float, None),
        "average_max_encoder_cosine_sim": (float, None), "average_max_decoder_cosine_sim": (float, None),
        "frac_alive": (float, None)},
}

#: SAEBench ``CoreEvalConfig`` fields and their types (all have defaults there)
CORE_EVAL_CONFIG: dict[str, type] = {
    "model_name": str, "llm_dtype": str, "batch_size_prompts": int, "n_eval_reconstruction_batches": int,
    "n_eval_sparsity_variance_batches": int, "dataset": str, "context_size": int, "compute_kl": bool,
    "compute_ce_loss": bool, "compute_l2_norms": bool, "compute_sparsity_metrics": bool,
    "compute_variance_metrics": bool, "compute_featurewise_density_statistics": bool,
    "compute_featurewise_weight_based_metrics": bool, "exclude_special_tokens_from_reconstruction": bool,
    "verbose": bool,
}

#: top-level fields of SAEBench's ``CoreEvalOutput``, in its order
OUTPUT_FIELDS = ("eval_type_id", "eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics",
                 "eval_result_details", "sae_bench_commit_hash", "sae_lens_id", "sae_lens_release_id",
                 "sae_lens_version", "sae_cfg_dict", "eval_result_unstructured")

NOT_MEASURED = ("shrinkage.l2_norm_in", "shrinkage.l2_norm_out", "eval_config.n_eval_reconstruction_batches",
                "eval_config.n_eval_sparsity_variance_batches", "eval_result_details")


def max_cosine(rows: Tensor, chunk: int = 1024) -> Tensor:
    """``[n, d] -> [n]``: each row's largest cosine similarity with any other row (chunked, so no [n, n])."""
    unit = torch.nn.functional.normalize(rows.detach().float().cpu(), dim=1)
    n = unit.shape[0]
    out = torch.empty(n)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sims = unit[start:stop] @ unit.T                                          # [chunk, n]
        sims[torch.arange(stop - start), torch.arange(start, stop)] = float("-inf")
        out[start:stop] = sims.max(1).values
    return out


def misc_metrics(metrics: dict, frequency: Tensor | None = None, sae: SAE | None = None) -> dict[str, float]:
    """SAEBench's ``misc_metrics`` from per-latent firing ``frequency [d_sae]`` and the SAE's weights;
    without them only ``frac_alive`` (from saelab's dead fraction)."""
    out: dict[str, float] = {"frac_alive": 1.0 - metrics["dead_fraction"]}
    if frequency is not None:
        freq = frequency.double().cpu()
        total = float(freq.sum())
        for pct, line in ((1, 0.01), (10, 0.1)):
            out[f"freq_over_{pct}_percent"] = float((freq > line).double().mean())
            out[f"normalized_freq_over_{pct}_percent"] = float(freq[freq > line].sum()) / total if total > 0 else 0.0
        out["frac_alive"] = float((freq > 0).double().mean())
    if sae is not None and sae.cfg.d_sae > 1:
        with torch.no_grad():
            out["average_max_encoder_cosine_sim"] = float(max_cosine(sae.linear_encoder()[0].T).mean())
            out["average_max_decoder_cosine_sim"] = float(max_cosine(sae.W_dec).mean())
    return out


def _value(kind: type, value: Any) -> float | int:
    return kind(UNDEFINED if value is None else value)


def core_eval_output(metrics: dict, frequency: Tensor | None = None, sae: SAE | None = None, *,
                     batch_size: int | None = None, llm_dtype: str | None = None, sae_lens_id: str | None = None,
                     sae_lens_release_id: str | None = None, eval_id: str | None = None,
                     epoch_millis: int | None = None) -> dict[str, Any]:
    """The SAEBench ``CoreEvalOutput`` dict of one ``saelab eval`` result (see the module docstring)."""
    misc = misc_metrics(metrics, frequency, sae)
    groups: dict[str, dict[str, float | int]] = {}
    left_out = list(NOT_MEASURED)
    undefined = []
    for group, fields in CORE_METRICS.items():
        groups[group] = {}
        for name, (kind, key) in fields.items():
            if key is not None:
                groups[group][name] = _value(kind, metrics.get(key))
                if metrics.get(key) is None:
                    undefined.append(f"{group}.{name}")
            elif group == "misc_metrics" and name in misc:
                groups[group][name] = misc[name]
            elif f"{group}.{name}" not in left_out:
                left_out.append(f"{group}.{name}")
    config: dict[str, Any] = {
        "model_name": metrics["model"], "dataset": dataset_path_of(metrics["source"]),
        "context_size": metrics["context_size"], "compute_kl": True, "compute_ce_loss": True,
        "compute_l2_norms": True, "compute_sparsity_metrics": True, "compute_variance_metrics": True,
        "compute_featurewise_density_statistics": frequency is not None,
        "compute_featurewise_weight_based_metrics": sae is not None,
        "exclude_special_tokens_from_reconstruction": True, "verbose": False}
    if llm_dtype is not None:
        config["llm_dtype"] = llm_dtype
    if batch_size is not None:
        config["batch_size_prompts"] = batch_size
    cfg_dict = None
    if sae is not None:
        from saelab.sae.saelens_format import to_saelens

        cfg_dict = to_saelens(sae)[0]
    unstructured = {
        "producer": "saelab eval", "saelab_metrics": metrics, "not_measured": left_out, "undefined": undefined,
        "definitions": {"mse": "mean over tokens and dimensions of (x - x_hat)^2",
                        "explained_variance": "1 - FVU, with the variance about the whole evaluation set's mean",
                        "kl_div_score, ce_loss_score": "zero-ablation recovered fractions"}}
    return {
        "eval_type_id": EVAL_TYPE_ID_CORE, "eval_config": config, "eval_id": eval_id or str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000) if epoch_millis is None else int(epoch_millis),
        "eval_result_metrics": groups, "eval_result_details": [], "sae_bench_commit_hash": None,
        "sae_lens_id": sae_lens_id, "sae_lens_release_id": sae_lens_release_id, "sae_lens_version": None,
        "sae_cfg_dict": cfg_dict, "eval_result_unstructured": unstructured,
    }


def saebench_result_json(result, sae: SAE, batch_size: int, llm_dtype: str, out_dir: str | None = None) -> str:
    """``saelab eval --format saebench``: the JSON text of ``core_eval_output`` of an ``EvalResult``;
    also written to ``out_dir/{sae}_eval_results.json`` (SAEBench's file name) when given."""
    output = core_eval_output(result.metrics, result.latent_frequency, sae, batch_size=batch_size,
                              llm_dtype=llm_dtype)
    text = json.dumps(output, indent=2, allow_nan=False, default=str)
    if out_dir:
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in (sae.cfg.name or "sae"))
        atomic_write_bytes(Path(out_dir) / f"{name}_eval_results.json", (text + "\n").encode())
    return text
