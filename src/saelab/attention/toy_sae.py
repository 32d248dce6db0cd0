"""Train a small ``hook_z`` SAE on the toy model with saelab's ordinary trainer (for tests, the demo
and toy-world measurements). The activation stream flattens ``hook_z`` to ``[n_heads * d_head]``.

    path = train_toy_attention_sae("/tmp/toy_attn_sae")            # layer 3 -> the SAE folder

Which layer: the bundled toy model's induction heads are 3.1 and 3.2 (``saelab attn induction``;
zero-ablating 3.1 alone takes ``induction.loss_ratio`` from about 0.03 to about 1.5), and its heads
at the IOI end position (3.0, 3.2, 3.3 read S2; 3.1 reads both earlier names) are in layer 3 too, so
the default is layer 3 (census, DFA, induction latents). The IOI ablation at S2 needs an earlier
layer (what layer 3 writes at S2 never reaches the end position): use ``layer=2`` (or 0, 1) for it.
"""

from __future__ import annotations

from pathlib import Path

from saelab.errors import check_range

DEFAULT_LAYER = 3


def toy_sae_folder(out_dir: str | Path, layer: int = DEFAULT_LAYER, d_sae: int = 512) -> Path:
    """Where ``train_toy_attention_sae`` leaves the SAE folder under ``out_dir``."""
    return Path(out_dir) / "saes" / f"toy_attn_L{layer}_{d_sae}"


def train_toy_attention_sae(out_dir: str | Path, layer: int = DEFAULT_LAYER, d_sae: int = 512, steps: int = 1500,
                            batch_size: int = 1024, l1_coefficient: float = 0.1, lr: float = 2e-3, n_docs: int = 256,
                            seed: int = 0, progress: bool = True, reuse: bool = True) -> Path:
    """Train a ReLU SAE (unit-norm decoder, L1) on ``blocks.{layer}.attn.hook_z`` of the toy model and
    return its folder. Activations of ``n_docs`` toy documents (corpus seed 0, BOS excluded) are read
    once, scaled to E‖x‖² = 1 and cycled by the trainer. With ``reuse`` a finished folder is returned."""
    import torch

    from saelab.attention.corpus import toy_windows
    from saelab.models import load_model
    from saelab.sae import SAEConfig
    from saelab.train import InMemorySource, TrainConfig, train_saes

    check_range("d_sae", d_sae, 1, integer=True)
    folder = toy_sae_folder(out_dir, layer, d_sae)
    if reuse and (folder / "cfg.json").exists() and (folder / "sae_weights.safetensors").exists():
        return folder
    lm = load_model("toy")
    hook = f"blocks.{layer}.attn.hook_z"
    windows = toy_windows(lm, n_docs=n_docs, seed=0)
    _, cache = lm.run_with_cache(windows.ids, [hook], stop_at_layer="auto")
    x = cache[hook].reshape(*windows.ids.shape, -1)[~windows.special].float()
    x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))]
    factor = float(x.pow(2).sum(-1).mean().sqrt())
    source = InMemorySource({hook: x / factor}, batch_size, normalization_factors={hook: factor},
                            metadata={"model_name": "toy", "context_size": 128, "dataset_path": "toy:0",
                                      "prepend_bos": True})
    cfg = SAEConfig("relu", d_in=lm.hook_d_in(hook), d_sae=d_sae, hook_name=hook, name=folder.name,
                    l1_coefficient=l1_coefficient, unit_norm_decoder=True)
    train = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, sparsity_warmup_steps=steps // 5,
                        lr_decay_steps=steps // 5, seed=seed, log_every=max(1, steps // 10))
    train_saes([cfg], source, train, out_dir, progress=progress, extra_meta={"model": {"spec": "toy"}})
    return folder
