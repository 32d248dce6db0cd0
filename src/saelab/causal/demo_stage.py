"""The causal stage of ``saelab demo``: a steering example and the feature-patching plot.

    summary = causal_demo_stage(lm, sae, out_dir / "causal", section, small=False, sae_dir=demo_sae_dir)

Steering: the latent most active at the final token of IOI prompts, added at its hook with a scale of
4x its largest activation there, continuing an IOI prompt (greedy, with and without steering).
Patching: ``feature_patching`` at the SAE's hook on toy IOI pairs, all five bases, with the SAE the
demo already trained (so nothing is trained here); the report names it with its FVU and KL floor.
"""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.causal.feature_patching import (
    FitConfig,
    describe_sae_line,
    feature_patching,
    fewest_components_table,
)
from saelab.causal.patching_experiment import PatchingConfig
from saelab.causal.prompts import task_prompts
from saelab.causal.steering import steer_generate
from saelab.models import LoadedModel
from saelab.report import Section
from saelab.sae.base import SAE
from saelab.splicing import hook_latents

STEERING_PROMPT = "When Mary and John went to the store , John gave a drink to"


def causal_demo_stage(lm: LoadedModel, sae: SAE, out_dir: Path, section: Section, small: bool = False,
                      sae_dir: str | Path | None = None) -> dict:
    """Run both parts, add them to ``section`` and return a JSON-able summary (``sae_dir``: where ``sae``
    was saved, named in the report)."""
    out_dir = Path(out_dir)
    prompts = task_prompts(lm, "ioi", 2 if small else 8, seed=1, counterfactual="io")
    acts = hook_latents(lm, sae, prompts.clean_ids)[torch.arange(prompts.n), prompts.final]
    feature = int(acts.mean(0).argmax())
    scale = 4.0 * float(acts[:, feature].max())
    steering = steer_generate(lm, sae, feature, scale, STEERING_PROMPT, max_new_tokens=6 if small else 12)
    section.paragraph(f"Steering: latent {feature} (the most active at the IOI final token) added at "
                      f"{sae.cfg.hook_name} with scale {scale:.3g}, greedy decoding.")
    section.table([{"prompt": STEERING_PROMPT, "without steering": steering.baseline_text,
                    "with steering": steering.steered_text}])
    cfg = PatchingConfig(n_thresholds=3 if small else 10, min_threshold=1e-3 if small else 1e-5, chunk=32)
    fit = FitConfig(n_windows=8 if small else 128)
    result = feature_patching(lm, sae.cfg.hook_name, prompts, out_dir, sae=sae, cfg=cfg, fit=fit, progress=False,
                              sae_source=None if sae_dir is None else str(sae_dir))
    section.paragraph(f"Feature patching (Cunningham et al. 2023) at {result['hook']} on {result['n_prompts']} IOI "
                      "pairs (counterfactual: the indirect object replaced by a third name): components of each "
                      "basis patched from the counterfactual run, residual kept; greedy un-patching over "
                      f"thresholds. KL(counterfactual ‖ clean) = {result['kl_unpatched']:.3g}. "
                      f"{describe_sae_line(result['sae'])}: KL levels under the floor are out of the SAE's reach. "
                      "Fewest components reaching each KL level:")
    section.table(fewest_components_table(result))
    section.image(Path(result["plot"]), alt="KL against components patched, per basis")
    return {"steering": steering.to_json(), "patching_hook": result["hook"], "kl_unpatched": result["kl_unpatched"],
            "fewest_components": result["fewest_components"], "below_floor": result["below_floor"],
            "sae": result["sae"], "plot": result["plot"], "patching_seconds": result["seconds"]}
