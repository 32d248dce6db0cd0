"""PNG plot of the feature-patching experiment: KL against components patched, one line per basis."""

from __future__ import annotations

import os
from pathlib import Path

from saelab.plotting import pyplot, save_png

BASIS_STYLES = {"sae": ("tab:red", "o"), "pca": ("tab:blue", "s"), "ica": ("tab:green", "^"),
                "neuron": ("tab:gray", "v"), "random_rotation": ("tab:purple", "d")}


#: a basis whose FVU on the prompts is above this does not reconstruct them exactly: its floor is drawn
INEXACT_FVU = 1e-4


def plot_patching_curves(result: dict, path: str | os.PathLike) -> Path:
    """``result`` from ``run_patching_experiment``; KL on a log axis (floored at 1e-6), the unpatched KL
    as a dashed line; for each basis that does not reconstruct the prompts exactly (an SAE), its FVU in
    the legend and its KL floor (every component patched) as a dotted line. Returns the PNG path."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, curve in result["curves"].items():
        color, marker = BASIS_STYLES.get(name, (None, "x"))
        points = sorted({(p["n_patched"], p["kl"]) for p in curve["points"]})
        inexact = curve["fvu_prompts"] > INEXACT_FVU
        fvu = f", FVU {curve['fvu_prompts']:.3g}" if inexact else ""
        line, = ax.plot([n for n, _ in points], [max(kl, 1e-6) for _, kl in points], marker=marker, ms=3, lw=1.2,
                        color=color, label=f"{name} ({curve['n_differing']} differ{fvu})")
        if inexact:
            ax.axhline(max(curve["kl_floor"], 1e-6), ls=":", color=line.get_color(), lw=1.0,
                       label=f"{name} floor {curve['kl_floor']:.3g} (all patched)")
    ax.axhline(result["kl_unpatched"], ls="--", color="black", lw=0.8, label="nothing patched")
    ax.set_xlabel("components patched from the counterfactual")
    ax.set_ylabel("KL(counterfactual ‖ patched), final token")
    ax.set_yscale("log")
    title = f"Feature patching at {result['hook']} ({result['n_prompts']} prompt pairs)"
    if "sae" in result:
        note = result["sae"]
        k = f", k={note['k']}" if "k" in note else ""
        title += f"\nSAE: {note['architecture']}, {note['d_sae']} latents{k} ({note['source']})"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)
