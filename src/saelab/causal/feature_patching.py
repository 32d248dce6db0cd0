"""The feature-patching experiment end to end: fit the bases, run the greedy curves, write JSON + PNG.

    result = feature_patching(lm, "blocks.2.hook_resid_post", task_prompts(lm, "ioi", 8), out_dir)

When no SAE is given, a TopK SAE is trained at the hook on activations streamed from the fit source
(``quick_sae.default_sae``; reused from ``out_dir/sae/<hook>/`` when trained there with the same settings);
the linear baselines are fitted on windows of the same source, special tokens left out. The result
names the SAE (``result["sae"]``: given, trained or reused; architecture, width, training tokens) with
its FVU on the fit activations and on the prompts' activations, and its KL floor (the KL with every
latent patched, which the kept reconstruction error allows). Writes ``out_dir/patching.json`` and
``out_dir/patching.png``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from saelab.causal.bases import Basis, SAEBasis, fit_ica, fit_pca, neuron_basis, random_rotation
from saelab.causal.patching_experiment import PatchingConfig, run_patching_experiment
from saelab.causal.plots import plot_patching_curves
from saelab.causal.prompts import PromptPairs
from saelab.causal.quick_sae import SAETrainSpec, default_sae, hook_activations
from saelab.errors import ConfigError, check_choice, check_range
from saelab.fileio import atomic_write_json
from saelab.models import LoadedModel
from saelab.sae.base import SAE
from saelab.splicing import check_sae_fits

BASIS_NAMES = ("sae", "pca", "ica", "neuron", "random_rotation")
DEFAULT_IOI_HOOK = "blocks.2.hook_resid_post"


@dataclass
class FitConfig:
    """Activations the linear bases are fitted on (``n_windows`` windows of ``context`` tokens of
    ``source``) and the SAE trained when none is given (``sae``; its text source is its own field)."""

    source: str = "toy"
    n_windows: int = 256
    context: int = 64
    seed: int = 0
    sae: SAETrainSpec = field(default_factory=SAETrainSpec)

    def __post_init__(self) -> None:
        check_range("n_windows", self.n_windows, 1, integer=True)
        check_range("context", self.context, 2, integer=True)
        if not isinstance(self.sae, SAETrainSpec):
            raise ConfigError(f"FitConfig.sae must be an SAETrainSpec, got {type(self.sae).__name__}")


def describe_sae(sae: SAE) -> dict:
    """What the SAE is: architecture, width, hook, and its sparsity setting (k, if it has one)."""
    note = {"architecture": sae.cfg.architecture, "d_sae": sae.cfg.d_sae, "hook": sae.cfg.hook_name}
    k = getattr(getattr(sae.cfg, "options", None), "k", None)
    return note | ({"k": int(k)} if k is not None else {})


@torch.no_grad()
def sae_fit_stats(sae: SAE, x: torch.Tensor, max_tokens: int = 4096) -> dict:
    """FVU (Σ‖x − x̂‖² / Σ‖x − mean‖²) and mean L0 of ``sae`` on the first ``max_tokens`` rows of ``x [n, d_in]``."""
    x = x[:max_tokens].to(sae.W_dec)
    residual = (x - sae.reconstruct(x)).pow(2).sum()
    return {"fvu_fit": float(residual / (x - x.mean(0)).pow(2).sum()),
            "l0_fit": float((sae.encode(x) != 0).float().sum(-1).mean())}


def fit_bases(lm: LoadedModel, hook: str, names: tuple[str, ...], fit: FitConfig, out_dir: Path,
              sae: SAE | None = None, progress: bool = True, sae_source: str | None = None) -> tuple[dict[str, Basis], dict]:
    """The requested bases at ``hook`` (training or reusing the default SAE if ``sae`` is None) and a
    JSON-able note (``note["sae"]``: what the SAE is, given from ``sae_source`` or trained, and its fit stats)."""
    for name in names:
        check_choice("basis", name, BASIS_NAMES)
    if not names:
        raise ConfigError(f"no bases requested; choose from {', '.join(BASIS_NAMES)}")
    x = hook_activations(lm, hook, fit.source, fit.n_windows, fit.context)
    info: dict = {"fit_tokens": int(x.shape[0]), "fit_source": fit.source}
    if "sae" in names:
        if sae is None:
            sae, sae_note = default_sae(lm, hook, fit.sae, out_dir, progress)
        else:
            sae_note = {"source": "given", "path": sae_source}
        info["sae"] = sae_note | describe_sae(sae) | sae_fit_stats(sae, x)
    builders = {"sae": lambda: SAEBasis(sae), "pca": lambda: fit_pca(x), "ica": lambda: fit_ica(x, seed=fit.seed),
                "neuron": lambda: neuron_basis(x.shape[1]), "random_rotation": lambda: random_rotation(x.shape[1], fit.seed)}
    return {name: builders[name]() for name in names}, info


def feature_patching(lm: LoadedModel, hook: str, prompts: PromptPairs, out_dir: str | Path, sae: SAE | None = None,
                     bases: tuple[str, ...] = BASIS_NAMES, cfg: PatchingConfig | None = None,
                     fit: FitConfig | None = None, progress: bool = True, sae_source: str | None = None) -> dict:
    """Run the experiment for ``bases`` at ``hook`` on ``prompts``; returns the result (also in
    ``out_dir/patching.json``, with its plot in ``out_dir/patching.png``). ``sae_source``: where a given
    ``sae`` came from (a folder), recorded in ``result["sae"]``."""
    out_dir = Path(out_dir)
    cfg, fit = cfg or PatchingConfig(), fit or FitConfig()
    if sae is not None:
        check_sae_fits(lm, sae, hook)
    started = time.perf_counter()
    fitted, info = fit_bases(lm, hook, tuple(bases), fit, out_dir, sae, progress, sae_source)
    fit_s = time.perf_counter() - started
    result = run_patching_experiment(lm, hook, prompts, fitted, cfg, progress)
    if "sae" in info:
        curve = result["curves"]["sae"]
        info["sae"] |= {"fvu_prompts": curve["fvu_prompts"], "l0_prompts": curve["l0_prompts"],
                        "kl_floor": curve["kl_floor"], "below_floor": result["below_floor"]["sae"]}
        result["sae"] = info.pop("sae")
    result["fit"] = info | {"fit_s": round(fit_s, 2)}
    result["config"] = asdict(cfg)
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["plot"] = str(plot_patching_curves(result, out_dir / "patching.png"))
    atomic_write_json(out_dir / "patching.json", result)
    return result


def fewest_components_table(result: dict) -> list[dict]:
    """Rows ``{basis, fvu, kl_floor, differing, KL<=...: n}``: each basis's FVU on the prompts'
    activations, its KL floor (every component patched) and the fewest components reaching each KL
    level ("below floor": never reached, and under the floor; "never": never reached)."""
    rows = []
    for name, fewest in result["fewest_components"].items():
        curve = result["curves"][name]
        row = {"basis": name, "fvu": round(curve["fvu_prompts"], 4) + 0.0,  # + 0.0: no "-0" for a KL of -1e-8
               "kl_floor": round(curve["kl_floor"], 4) + 0.0, "differing": curve["n_differing"]}
        for fraction, n in fewest.items():
            unreached = "below floor" if fraction in result["below_floor"][name] else "never"
            row[f"KL<={float(fraction) * result['kl_unpatched']:.3g}"] = unreached if n is None else n
        rows.append(row)
    return rows


def describe_sae_line(note: dict) -> str:
    """One line naming the SAE of a result (``result["sae"]``) with its FVU and KL floor."""
    where = {"given": f"given ({note.get('path') or 'in memory'})", "trained": f"trained here ({note['path']})",
             "reused": f"reused from {note['path']}"}[note["source"]]
    tokens = f", {note['train_tokens']:,} training tokens" if "train_tokens" in note else ""
    k = f", k={note['k']}" if "k" in note else ""
    return (f"SAE: {note['architecture']}, {note['d_sae']} latents{k}{tokens}; {where}. FVU {note['fvu_prompts']:.4f} "
            f"on the prompts' activations ({note['fvu_fit']:.4f} on the fit windows), L0 {note['l0_prompts']:.1f}; "
            f"KL floor (all latents patched) {note['kl_floor']:.4g}")
