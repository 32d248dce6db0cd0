"""The feature-patching experiment end to end: fit the bases, run the greedy curves, write JSON + PNG.

    result = feature_patching(lm, "blocks.2.hook_resid_post", task_prompts(lm, "ioi", 8), out_dir)

When no SAE is given, a small ReLU SAE is trained at the hook (``quick_sae.train_quick_sae``) on the
same activations the baselines are fitted on (windows of ``fit_source``, special tokens left out).
Writes ``out_dir/patching.json`` and ``out_dir/patching.png``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from saelab.causal.bases import Basis, SAEBasis, fit_ica, fit_pca, neuron_basis, random_rotation
from saelab.causal.patching_experiment import PatchingConfig, run_patching_experiment
from saelab.causal.plots import plot_patching_curves
from saelab.causal.prompts import PromptPairs
from saelab.causal.quick_sae import hook_activations, train_quick_sae
from saelab.errors import ConfigError, check_choice, check_range
from saelab.fileio import atomic_write_json
from saelab.models import LoadedModel
from saelab.sae.base import SAE
from saelab.splicing import check_sae_fits

BASIS_NAMES = ("sae", "pca", "ica", "neuron", "random_rotation")
DEFAULT_IOI_HOOK = "blocks.2.hook_resid_post"


@dataclass
class FitConfig:
    """Activations the bases are fitted on and the quick SAE trained when none is given."""

    source: str = "toy"
    n_windows: int = 256
    context: int = 64
    d_sae: int = 512
    sae_steps: int = 1000
    l1_coefficient: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("n_windows", self.n_windows, 1, integer=True)
        check_range("context", self.context, 2, integer=True)
        check_range("d_sae", self.d_sae, 1, integer=True)
        check_range("sae_steps", self.sae_steps, 1, integer=True)
        check_range("l1_coefficient", self.l1_coefficient, 0, lo_open=True)


def fit_bases(lm: LoadedModel, hook: str, names: tuple[str, ...], fit: FitConfig, out_dir: Path,
              sae: SAE | None = None, progress: bool = True) -> tuple[dict[str, Basis], dict]:
    """The requested bases at ``hook`` (training the quick SAE if ``sae`` is None) and a JSON-able note."""
    for name in names:
        check_choice("basis", name, BASIS_NAMES)
    if not names:
        raise ConfigError(f"no bases requested; choose from {', '.join(BASIS_NAMES)}")
    x = hook_activations(lm, hook, fit.source, fit.n_windows, fit.context)
    info: dict = {"fit_tokens": int(x.shape[0]), "fit_source": fit.source}
    started = time.perf_counter()
    if "sae" in names and sae is None:
        sae = train_quick_sae(lm, hook, x, out_dir / "quick_sae", d_sae=fit.d_sae, steps=fit.sae_steps,
                              l1_coefficient=fit.l1_coefficient, seed=fit.seed, progress=progress)
        info["sae_trained"] = str(out_dir / "quick_sae" / "saes" / "quick_sae")
        info["sae_train_s"] = round(time.perf_counter() - started, 2)
    builders = {"sae": lambda: SAEBasis(sae), "pca": lambda: fit_pca(x), "ica": lambda: fit_ica(x, seed=fit.seed),
                "neuron": lambda: neuron_basis(x.shape[1]), "random_rotation": lambda: random_rotation(x.shape[1], fit.seed)}
    bases = {name: builders[name]() for name in names}
    if sae is not None:
        import torch

        with torch.no_grad():
            x_sae = x[:4096].to(sae.W_dec)
            residual = (x_sae - sae.reconstruct(x_sae)).pow(2).sum()
            info["sae_fvu"] = float(residual / (x_sae - x_sae.mean(0)).pow(2).sum())
            info["sae_l0"] = float((sae.encode(x_sae) != 0).float().sum(-1).mean())
    return bases, info


def feature_patching(lm: LoadedModel, hook: str, prompts: PromptPairs, out_dir: str | Path, sae: SAE | None = None,
                     bases: tuple[str, ...] = BASIS_NAMES, cfg: PatchingConfig | None = None,
                     fit: FitConfig | None = None, progress: bool = True) -> dict:
    """Run the experiment for ``bases`` at ``hook`` on ``prompts``; returns the result (also in
    ``out_dir/patching.json``, with its plot in ``out_dir/patching.png``)."""
    out_dir = Path(out_dir)
    cfg, fit = cfg or PatchingConfig(), fit or FitConfig()
    if sae is not None:
        check_sae_fits(lm, sae, hook)
    started = time.perf_counter()
    fitted, info = fit_bases(lm, hook, tuple(bases), fit, out_dir, sae, progress)
    fit_s = time.perf_counter() - started
    result = run_patching_experiment(lm, hook, prompts, fitted, cfg, progress)
    result["fit"] = info | {"fit_s": round(fit_s, 2)}
    result["config"] = asdict(cfg)
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["plot"] = str(plot_patching_curves(result, out_dir / "patching.png"))
    atomic_write_json(out_dir / "patching.json", result)
    return result


def fewest_components_table(result: dict) -> list[dict]:
    """Rows ``{basis, KL<=...: n}`` of the fewest components reaching each KL level (None: never)."""
    rows = []
    for name, fewest in result["fewest_components"].items():
        row = {"basis": name, "differing": result["curves"][name]["n_differing"],
               "kl_all_patched": round(result["curves"][name]["kl_all_patched"], 4)}
        for fraction, n in fewest.items():
            row[f"KL<={float(fraction) * result['kl_unpatched']:.3g}"] = "never" if n is None else n
        rows.append(row)
    return rows
