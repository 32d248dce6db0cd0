"""Train the toy GPT-2 on the toy corpus: deterministic for a seed, checkpointed and resumable.

Batch ``s`` holds documents ``s * batch_size ... (s + 1) * batch_size - 1`` of
``iter_documents(seed)``, each as ``<bos>`` + its first ``context - 1`` tokens, so the data order is
a function of (seed, step) and a resumed run sees exactly what an uninterrupted one would.
Dropout is off, so after initialisation nothing random happens: same seed, same machine, same
thread count -> same weights.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from saelab.errors import ConfigError, check_range
from saelab.fileio import atomic_write_bytes
from saelab.toy import vocabulary as V
from saelab.toy.checkpoint import load_checkpoint, save_checkpoint
from saelab.toy.corpus import DOC_MIN_WORDS, make_document
from saelab.toy.threads import using_threads

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class ToyBuildConfig:
    """Model shape and training recipe of the toy model (validated at construction).

    ``threads`` defaults to 1: on the shared 2-core build machine one thread ran a step in ~0.37 s
    while two threads took 0.75-4.6 s whenever another process held a core (two: ~0.2 s when alone).
    """

    seed: int = 0
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    context: int = 128
    batch_size: int = 32
    steps: int = 3500
    lr: float = 2e-3
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    log_every: int = 10
    threads: int = 1

    def __post_init__(self) -> None:
        check_range("seed", self.seed, 0, 2**63 - 1, integer=True)
        check_range("n_layer", self.n_layer, 1, 48, integer=True)
        check_range("d_model", self.d_model, 8, 4096, integer=True)
        check_range("n_head", self.n_head, 1, 64, integer=True)
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        check_range("context", self.context, 2, DOC_MIN_WORDS + 1, integer=True)
        check_range("batch_size", self.batch_size, 1, 4096, integer=True)
        check_range("steps", self.steps, 1, 10_000_000, integer=True)
        check_range("lr", self.lr, 0.0, 1.0, lo_open=True)
        check_range("warmup_steps", self.warmup_steps, 0, self.steps, integer=True)
        check_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("grad_clip", self.grad_clip, 0.0, None, lo_open=True)
        check_range("checkpoint_every", self.checkpoint_every, 1, None, integer=True)
        check_range("log_every", self.log_every, 1, None, integer=True)
        check_range("threads", self.threads, 1, 1024, integer=True)

    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps`` then cosine decay to ``min_lr_ratio * lr``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def gpt2_config(cfg: ToyBuildConfig):
    """The ``transformers.GPT2Config`` of the toy model (dropout off, tied embeddings)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(V.ALL_WORDS), n_positions=cfg.context, n_embd=cfg.d_model, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=4 * cfg.d_model, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=V.WORD_ID[V.BOS], eos_token_id=V.WORD_ID[V.EOS], pad_token_id=V.WORD_ID[V.PAD],
        tie_word_embeddings=True,
    )


def training_batch(seed: int, step: int, batch_size: int, context: int) -> torch.Tensor:
    """Token ids [batch, context] of training step ``step``: ``<bos>`` + document prefix per row."""
    rows = []
    for i in range(batch_size):
        doc = make_document(seed, step * batch_size + i)
        rows.append([V.WORD_ID[V.BOS]] + doc.token_ids[: context - 1])
    return torch.tensor(rows, dtype=torch.long)


def _make_optimizer(model: torch.nn.Module, cfg: ToyBuildConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)


def _check_same_config(saved: dict, cfg: ToyBuildConfig, folder: Path) -> None:
    current = asdict(cfg)
    for f in fields(cfg):
        if saved.get(f.name) != current[f.name]:
            raise ConfigError(
                f"the checkpoint in {folder} was made with {f.name}={saved.get(f.name)!r}, this run has "
                f"{f.name}={current[f.name]!r}; use the same settings, another --out, or --no-resume")


def _append_metrics(path: Path, rows: list[dict], keep_up_to_step: int | None = None) -> None:
    """Append rows to the JSON-lines log; when resuming, first drop lines past the checkpoint."""
    if keep_up_to_step is not None and path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= keep_up_to_step]
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())
    with open(path, "a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def train_toy_model(out_dir: str | os.PathLike, cfg: ToyBuildConfig, *, resume: bool = True,
                    stop_after: int | None = None, progress: bool = True):
    """Train (or resume) into ``out_dir``; returns ``(model, info)``, info with ``step`` and
    ``train_seconds``. ``stop_after`` ends the run early after that step, leaving a checkpoint."""
    if stop_after is not None:
        check_range("stop_after", stop_after, 1, None, integer=True)
    out = Path(out_dir)
    ckpt_dir = out / CHECKPOINT_DIR
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir()
        (out / METRICS_FILE).unlink(missing_ok=True)
    with using_threads(cfg.threads):
        return _train(out, ckpt_dir, cfg, stop_after, progress)


def _train(out: Path, ckpt_dir: Path, cfg: ToyBuildConfig, stop_after: int | None, progress: bool):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(gpt2_config(cfg))
    optimizer = _make_optimizer(model, cfg)
    info = load_checkpoint(ckpt_dir, model, optimizer)
    if info is not None:
        _check_same_config(info["config"], cfg, ckpt_dir)
    start = info["step"] if info else 0
    seconds = info["train_seconds"] if info else 0.0
    _append_metrics(out / METRICS_FILE, [], keep_up_to_step=start)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    model.train()
    pending: list[dict] = []
    bar = tqdm(range(start, end), desc="toy build", unit="step", disable=not progress, initial=start, total=cfg.steps)
    tic = time.perf_counter()
    for step in bar:
        batch = training_batch(cfg.seed, step, cfg.batch_size, cfg.context)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        logits = model(input_ids=batch).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == end:
            elapsed = seconds + time.perf_counter() - tic
            pending.append({"step": done, "loss": loss.item(), "lr": cfg.lr_at(step),
                            "grad_norm": grad_norm.item(), "train_seconds": round(elapsed, 2)})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if done % cfg.checkpoint_every == 0 or done == end:
            elapsed = seconds + time.perf_counter() - tic
            info = {"step": done, "train_seconds": elapsed, "config": asdict(cfg)}
            _append_metrics(out / METRICS_FILE, pending)
            pending = []
            save_checkpoint(ckpt_dir, model, optimizer, info)
    bar.close()
    if info is None:
        info = {"step": start, "train_seconds": seconds, "config": asdict(cfg)}
    model.eval()
    return model, info
