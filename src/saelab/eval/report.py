"""Readable text of evaluation results: the tables ``saelab eval|sweep|recovery`` print without
``--json``, in Markdown so that ``saelab demo`` can paste them into its report unchanged."""

from __future__ import annotations

from collections.abc import Sequence

EVAL_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reconstruction", ("l0", "l1", "mse", "fvu", "explained_variance", "cosine", "l2_ratio",
                        "relative_reconstruction_bias")),
    ("downstream (splicing)", ("ce_clean", "ce_spliced", "delta_loss", "ce_zero_ablation", "ce_mean_ablation",
                               "ce_loss_recovered", "ce_loss_recovered_mean_ablation", "kl", "kl_zero_ablation",
                               "kl_mean_ablation", "kl_recovered", "kl_recovered_mean_ablation", "ce_with_error",
                               "kl_with_error", "error_term_max_logit_diff")),
    ("latents", ("n_dead", "dead_fraction", "n_dense", "dense_fraction", "dense_threshold", "mean_log10_density")),
)


def fmt(value) -> str:
    """A number in 4 significant digits (integers as is); None as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def format_eval(metrics: dict) -> str:
    """One SAE's evaluation: what was evaluated, then a table per section."""
    site = metrics["hook"]
    if metrics.get("hook_out") and metrics["hook_out"] != metrics["hook"]:
        site = f"{site} -> {metrics['hook_out']} (transcoder)"
    head = (f"SAE {metrics['sae']} ({metrics['architecture']}, d_sae {metrics['d_sae']}) at {site} of "
            f"{metrics['model']}; {metrics['n_tokens']} tokens, {metrics['n_predictions']} scored predictions")
    parts = [head]
    for title, keys in EVAL_SECTIONS:
        rows = [(k, metrics[k]) for k in keys if k in metrics]
        parts.append(f"\n{title}\n" + markdown_table(("metric", "value"), rows))
    return "\n".join(parts)


def format_sweep(result: dict) -> str:
    """The sweep table (one row per SAE, by architecture and L0) and the matched-L0 comparison."""
    rows = sorted(result["rows"], key=lambda r: (r["architecture"], r["l0"] or 0))
    seeds = result.get("seeds")

    def cell(r: dict, metric: str):
        value = r.get(metric)
        if not seeds or value is None:
            return value
        return f"{value:.4g} ± {r.get(f'{metric}_std', 0):.2g}"

    table = markdown_table(
        ("SAE", "arch", "L0", "FVU", "delta loss", "CE recovered", "KL", "dead", "dense"),
        [(r["name"], r["architecture"], *[cell(r, m) for m in ("l0", "fvu", "delta_loss", "ce_loss_recovered", "kl",
                                                              "dead_fraction", "dense_fraction")]) for r in rows])
    spread = f", mean ± sd over seeds {','.join(map(str, seeds))}" if seeds else ""
    parts = [f"{result['model']} {result['hook']}: {len(rows)} SAEs{spread}", table]
    matched = result.get("matched_l0") or []
    archs = list(dict.fromkeys(r["architecture"] for r in result["rows"]))
    if matched:
        header = ("L0", *[f"{a} delta loss" for a in archs], "order (best first)")
        body = []
        for entry in matched:
            values = entry["values"]
            order = " < ".join(entry.get("order_by_delta_loss", []))
            if seeds:
                order += f" (same order in {entry['order_agreement']:.0%} of seeds)"
            body.append((entry["l0"], *[cell(values[a], "delta_loss") if a in values else None for a in archs],
                         order))
        parts.append("\nmatched L0 (interpolated in log L0; n/a outside an architecture's range)\n"
                     + markdown_table(header, body))
    return "\n".join(parts)


def format_recovery(report: dict, per_variable: bool = True) -> str:
    """Summary per unit set, then (``per_variable``) each variable's best F1 per unit set and the SAE's
    best latent with its precision and recall."""
    sets = report["unit_sets"]
    groups = list(sets[0]["mean_best_f1_by_group"])
    summary = markdown_table(
        ("units", "n", f"recovered (F1 >= {report['f1_threshold']:g})", "mean best F1", *groups, "threshold rule"),
        [(s["name"], s["n_units"], f"{s['recovered']}/{s['n_variables']}", s["mean_best_f1"],
          *[s["mean_best_f1_by_group"][g] for g in groups], s["threshold_rule"]) for s in sets])
    parts = [f"feature recovery on {report['n_tokens']} held-out toy tokens (seed {report['seed']}) of "
             f"{report['model']}", summary]
    if report["skipped_variables"]:
        skipped = ", ".join(f"{v['variable']} ({v['positives']})" for v in report["skipped_variables"])
        parts.append(f"skipped (too few positive tokens): {skipped}")
    if per_variable:
        saes = [s for s in sets if s["kind"] == "sae"]
        others = [s for s in sets if s["kind"] != "sae"]
        header = ["variable", "positives"]
        for s in saes:
            header += [f"{s['name']} latent", "P", "R", "F1"]
        header += [f"F1 {s['name']}" for s in others]
        body = []
        for i, var in enumerate(report["variables"]):
            row: list = [var["variable"], var["positives"]]
            for s in saes:
                best = s["per_variable"][i]
                row += [best["unit"], best["precision"], best["recall"], best["f1"]]
            row += [s["per_variable"][i]["f1"] for s in others]
            body.append(row)
        parts.append("\n" + markdown_table(header, body))
    return "\n".join(parts)
