"""Activations to fit patching bases on, and the SAE trained for the experiment when none is given.

    x = hook_activations(lm, hook, source="toy", n_windows=256)   # [n_tokens, d_in], special tokens out
    sae, info = default_sae(lm, hook, SAETrainSpec(), out_dir)      # TopK SAE streamed from the source

The default SAE is a TopK SAE (Gao et al. 2024: AuxK on dead latents, unit-norm decoder, inputs scaled
to E‖x‖² = 1) trained by saelab's trainer on ``tokens`` activations streamed from the text source
(one shuffle buffer of windows, special tokens left out). On the toy model's residual stream the
defaults (1024 latents, k 32, 2M tokens) reach FVU ≈ 0.01 on the fit windows. Its run folder is named
after its hook and settings (``out_dir/sae/blocks.2.hook_resid_post/topk-d1024-k32-2000k-b1024-
lr0.003-toy-c64-seed0``); a finished folder with the same settings and the same model is reused
instead of trained again, an unfinished one is resumed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from saelab.errors import SaelabError, check_choice, check_range
from saelab.models import LoadedModel
from saelab.sae.base import SAE
from saelab.splicing import flat_per_token

TRAINED_ARCHITECTURES = ("topk", "batchtopk")


@torch.no_grad()
def hook_activations(lm: LoadedModel, hook: str, source: str = "toy", n_windows: int = 256, context: int = 64,
                     batch_size: int = 32) -> Tensor:
    """``[n_tokens, d_in]`` float32 activations at ``hook`` over ``n_windows`` windows of ``source``
    (``saelab.data.open_source`` spec), BOS/EOS/PAD positions left out."""
    from saelab.attention.corpus import source_windows

    lm.parse_hooks([hook])
    windows = source_windows(lm, source, n_windows=n_windows, context=context)
    rows = []
    for start in range(0, windows.ids.shape[0], batch_size):
        ids = windows.ids[start:start + batch_size]
        _, cache = lm.run_with_cache(ids, [hook], stop_at_layer="auto")
        rows.append(flat_per_token(cache[hook]).float()[~windows.special[start:start + batch_size]].cpu())
    return torch.cat(rows)


@dataclass
class SAETrainSpec:
    """The SAE trained when the experiment is given none: ``architecture`` (topk or batchtopk) with
    ``d_sae`` latents and ``k`` active per token, ``tokens`` activations of ``source`` in windows of
    ``context`` tokens, batches of ``batch_size``, Adam at ``lr`` (warm-up 5%, linear decay over the
    last 20%), AuxK dead window ``dead_window_tokens``."""

    architecture: str = "topk"
    d_sae: int = 1024
    k: int = 32
    tokens: int = 2_000_000
    batch_size: int = 1024
    lr: float = 3e-3
    dead_window_tokens: int = 200_000
    source: str = "toy"
    context: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("sae architecture", self.architecture, TRAINED_ARCHITECTURES)
        check_range("d_sae", self.d_sae, 1, integer=True)
        check_range("k", self.k, 1, self.d_sae, integer=True)
        check_range("sae tokens", self.tokens, 1, integer=True)
        check_range("sae batch_size", self.batch_size, 1, integer=True)
        check_range("sae lr", self.lr, 0, lo_open=True)
        check_range("dead_window_tokens", self.dead_window_tokens, 1, integer=True)
        check_range("context", self.context, 2, integer=True)
        check_range("seed", self.seed, 0, integer=True)

    @property
    def run_name(self) -> str:
        """The run folder's name: every setting that changes the SAE."""
        return (f"{self.architecture}-d{self.d_sae}-k{self.k}-{self.tokens // 1000}k-b{self.batch_size}-"
                f"lr{self.lr:g}-{self.source.replace(':', '_').replace('/', '_')}-c{self.context}-seed{self.seed}")


def default_sae(lm: LoadedModel, hook: str, spec: SAETrainSpec, out_dir: str | Path,
                progress: bool = True) -> tuple[SAE, dict]:
    """The SAE ``spec`` describes at ``hook``, trained under ``out_dir/sae/<hook>/<spec.run_name>`` (or
    reused from there); returns it (raw activation units) and a JSON-able note of what it is."""
    from saelab.data.store import TextSpec
    from saelab.sae import load_sae_with_info
    from saelab.train import DataSpec, ModelSpec, RunSpec, TrainConfig, train_run

    run_dir = Path(out_dir) / "sae" / hook / spec.run_name
    folder = run_dir / "saes" / "sae"
    steps = -(-spec.tokens // spec.batch_size)
    note = {"source": "trained", "path": str(folder), "architecture": spec.architecture, "d_sae": spec.d_sae,
            "k": spec.k, "train_tokens": steps * spec.batch_size, "train_source": spec.source}
    started = time.perf_counter()
    if (folder / "cfg.json").exists():
        sae, info = load_sae_with_info(folder, device=lm.device)
        recorded = info.saelab.get("model_fingerprint") or info.metadata.get("model_fingerprint")
        if sae.cfg.hook_name != hook:
            raise SaelabError(f"{folder} holds an SAE of hook {sae.cfg.hook_name!r}, not {hook!r}; remove it or "
                              "choose another output folder")
        if recorded is not None and recorded != lm.fingerprint():
            raise SaelabError(f"{folder} holds an SAE trained on another model than {lm.name} (fingerprints "
                              "differ); choose another output folder, or pass an SAE with --sae")
        return sae, note | {"source": "reused", "train_s": 0.0}
    train = TrainConfig(steps=steps, batch_size=spec.batch_size, lr=spec.lr, lr_warmup_steps=steps // 20,
                        lr_decay_steps=steps // 5, seed=spec.seed, log_every=max(1, steps // 20),
                        dead_window_tokens=spec.dead_window_tokens, device=str(lm.device))
    data = DataSpec(TextSpec(source=spec.source, context_size=spec.context), seed=spec.seed)
    entry = {"architecture": spec.architecture, "hook_name": hook, "d_sae": spec.d_sae, "k": spec.k, "name": "sae"}
    resume = (run_dir / "run.json").exists()
    model = ModelSpec(lm.name, str(lm.dtype).removeprefix("torch."), str(lm.device))
    run = RunSpec.load(run_dir) if resume else RunSpec.create([entry], train, run_dir, model=model, data=data, lm=lm)
    if not resume:
        run.save()
    sae = train_run(run, resume=resume, progress=progress, lm=lm)["sae"]
    return sae, note | {"train_s": round(time.perf_counter() - started, 2)}
