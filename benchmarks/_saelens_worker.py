"""SAELens side of ``bench_vs_saelens.py``: train one SAELens SAE on saved activations, print one JSON line.

Run with the SAELens venv's python (``bench_vs_saelens.py`` does that; saelab is not importable
there and this file imports nothing from it)::

    .bench/saelens-venv/bin/python benchmarks/_saelens_worker.py --config '{"activations": ..., ...}'

The per-step work is SAELens' own: ``SAETrainer.step`` (``training_forward_pass``, firing statistics,
``loss.backward()``, ``clip_grad_norm_(1.0)``, ``Adam.step``, ``zero_grad``, the LR and coefficient
schedulers), called in the order ``SAETrainer.fit`` calls it (``maybe_reset_sparsity``, ``step``,
``_checkpoint_if_needed``, ``n_training_steps += 1``), without wandb logging and the progress bar.
The batches are views of a tensor loaded before the loop, so no data loading is timed.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import statistics
import sys
import time


def tune_allocator() -> bool:
    """The same glibc settings as saelab's ``tune_cpu_allocator`` (only with ``tune_allocator`` in the config)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    return libc.mallopt(-3, 1 << 30) == 1 and libc.mallopt(-1, -1) == 1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def build_sae(cfg: dict, torch):  # noqa: ANN001
    """SAELens' training SAE for ``cfg["arch"]`` (relu = SAELens "standard")."""
    import sae_lens

    common = {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "dtype": "float32", "device": "cpu",
              "apply_b_dec_to_input": True, "normalize_activations": "none"}
    arch = cfg["arch"]
    if arch == "relu":
        sae_cfg = sae_lens.StandardTrainingSAEConfig(**common, l1_coefficient=cfg["l1_coefficient"])
        sae = sae_lens.StandardTrainingSAE(sae_cfg)
    elif arch == "topk":
        sae_cfg = sae_lens.TopKTrainingSAEConfig(**common, k=cfg["k"], aux_loss_coefficient=cfg["aux_coefficient"],
                                                 use_sparse_activations=cfg.get("sparse_activations", False),
                                                 rescale_acts_by_decoder_norm=cfg.get("rescale_acts_by_decoder_norm", True))
        sae = sae_lens.TopKTrainingSAE(sae_cfg)
    elif arch == "jumprelu":
        sae_cfg = sae_lens.JumpReLUTrainingSAEConfig(**common, l0_coefficient=cfg["l0_coefficient"],
                                                     jumprelu_bandwidth=cfg["bandwidth"],
                                                     jumprelu_init_threshold=cfg["init_threshold"])
        sae = sae_lens.JumpReLUTrainingSAE(sae_cfg)
    else:
        raise SystemExit(f"unknown arch {arch!r}; accepted: relu, topk, jumprelu")
    if cfg.get("b_dec_init") is not None:
        with torch.no_grad():
            sae.b_dec.copy_(cfg["b_dec_init"])
    return sae, sae_cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON object (see bench_vs_saelens.py)")
    cfg = json.loads(parser.parse_args(argv).config)
    tuned = tune_allocator() if cfg.get("tune_allocator") else False

    import sae_lens
    import torch
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from safetensors.torch import load_file

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    clock = time.thread_time if cfg["clock"] == "cpu" else time.perf_counter
    tensors = load_file(cfg["activations"])
    train, heldout = tensors["train"], tensors["heldout"]
    cfg["b_dec_init"] = tensors.get("b_dec_init")
    sae, _ = build_sae(cfg, torch)

    batch, steps = cfg["batch"], cfg["steps"]
    n_batches = train.shape[0] // batch

    def batches():
        i = 0
        while True:
            start = (i % n_batches) * batch
            yield train[start:start + batch]
            i += 1

    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch, train_batch_size_samples=batch, lr=cfg["lr"],
        lr_end=cfg["lr"] / 10, lr_scheduler_name="constant", adam_beta1=cfg["adam_betas"][0], adam_beta2=cfg["adam_betas"][1],
        device="cpu", autocast=False, dead_feature_window=cfg["dead_window_steps"],
        feature_sampling_window=10**9, n_checkpoints=0, save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False))
    data = batches()
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data)

    times, dead = [], []
    for i in range(steps):
        x = next(data)
        start = clock()
        trainer.maybe_reset_sparsity()
        trainer.step(x)
        trainer._checkpoint_if_needed()
        trainer.n_training_steps += 1
        elapsed = clock() - start
        if i >= cfg["warmup"]:
            times.append(elapsed)
        if (i + 1) % max(1, steps // 4) == 0 or i + 1 == steps:
            dead.append([i + 1, int(trainer.dead_neurons.sum())])

    sae.eval()
    with torch.no_grad():
        sq_err, l0 = 0.0, 0.0
        for start in range(0, heldout.shape[0], batch):
            x = heldout[start:start + batch]
            acts = sae.encode(x)
            x_hat = sae.decode(acts)
            if acts.is_sparse:
                acts = acts.to_dense()
            sq_err += float((x_hat - x).double().pow(2).sum())
            l0 += float((acts != 0).sum())
        centred = heldout.double() - heldout.double().mean(0)
        fvu = sq_err / float(centred.pow(2).sum())
        l0 /= heldout.shape[0]
    timed = len(times)
    print(json.dumps({
        "library": "saelens", "version": sae_lens.__version__, "torch": torch.__version__, "arch": cfg["arch"],
        "variant": cfg.get("variant", cfg["arch"]), "threads": torch.get_num_threads(), "allocator_tuned": tuned,
        "timed_steps": timed, "seconds": sum(times), "median_step_s": statistics.median(times),
        "tokens_per_s": batch * timed / sum(times), "fvu": fvu, "l0": l0, "dead_latents": dead,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
