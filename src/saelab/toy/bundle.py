"""``toy build``: train the toy model and write it as a Hugging Face folder with tokenizer and card.

The folder holds config.json, model.safetensors, generation_config.json, tokenizer.json,
tokenizer_config.json, README.md (the model card with recipe and measured scores),
build_info.json and metrics.jsonl; the training checkpoint lives in ``checkpoint/`` until the run
has finished (removed then unless ``keep_checkpoint``).
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

import torch

from saelab.errors import check_range
from saelab.fileio import atomic_write, atomic_write_json
from saelab.toy.corpus import SEGMENT_WEIGHTS
from saelab.toy.evaluation import GATES, MAX_PROMPTS, evaluate_toy_model
from saelab.toy.tokenizer import save_tokenizer
from saelab.toy.training import CHECKPOINT_DIR, ToyBuildConfig, train_toy_model


def reproduce_command(cfg: ToyBuildConfig, out: str = "DIR") -> str:
    """The ``saelab toy build`` command line that rebuilds a model with ``cfg``."""
    default = ToyBuildConfig()
    parts = ["saelab toy build", f"--out {out}", f"--seed {cfg.seed}"]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name != "seed" and value != getattr(default, f.name):
            parts.append(f"--{f.name.replace('_', '-')} {value}")
    return " ".join(parts)


def save_model_folder(model, out: Path, context: int) -> None:
    """Write the model's Hugging Face files and the tokenizer into ``out``, each file atomically."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".save-") as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tmp, model_max_length=context)
        for item in Path(tmp).iterdir():
            if item.is_file():
                os.replace(item, out / item.name)


def _score_rows(scores: dict) -> str:
    lines = ["| metric | value | gate | passed |", "|---|---|---|---|"]
    for name, gate in scores["gates"].items():
        lines.append(f"| `{name}` | {gate['value']:.4f} | {gate['op']} {gate['threshold']} | "
                     f"{'yes' if gate['passed'] else 'NO'} |")
    return "\n".join(lines)


def model_card(cfg: ToyBuildConfig, scores: dict, info: dict, n_params: int, size_bytes: int) -> str:
    """The README.md of a built toy model: what it is, how it was trained, what it scores."""
    minutes = info["train_seconds"] / 60
    mix = ", ".join(f"{k} {v:.2f}" for k, v in SEGMENT_WEIGHTS.items())
    recipe = "\n".join(f"- `{k}`: {v}" for k, v in asdict(cfg).items())
    return f"""---
library_name: transformers
tags: [saelab, toy, gpt2, interpretability]
---
# saelab toy model

A {cfg.n_layer}-layer GPT-2 (`GPT2LMHeadModel`, d_model {cfg.d_model}, {cfg.n_head} heads of
{cfg.d_model // cfg.n_head}, context {cfg.context}, tied embeddings, no dropout) trained from scratch
by saelab's own loop on the synthetic toy corpus (`saelab.toy.corpus`), whose every token carries
ground-truth labels (topic, syntactic role, induction, task positions). It is saelab's embedded
default (spec name `toy`): load it like any hub model.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from saelab.toy import bundled_model_path
model = AutoModelForCausalLM.from_pretrained(bundled_model_path())
tokenizer = AutoTokenizer.from_pretrained(bundled_model_path())
ids = [tokenizer.bos_token_id] + tokenizer("When Mary and John went to the store, John gave a book to")["input_ids"]
```

The tokenizer is word-level (one token per word, punctuation character or two-digit number;
`1732` -> `17`, `32`) with `<bos>`, `<eos>`, `<pad>`, `<unk>`; it adds no special tokens itself.
Every training sequence started with `<bos>`, so prepend it.

- parameters: {n_params:,}
- model.safetensors: {size_bytes / 1e6:.2f} MB (float32)
- training: {info['step']} steps x {cfg.batch_size} sequences x {cfg.context} tokens
  ({info['step'] * cfg.batch_size * cfg.context / 1e6:.1f}M tokens), {minutes:.1f} min of training on
  {cfg.threads} CPU thread(s) of a {os.cpu_count()}-core {platform.machine()} machine (torch {torch.__version__})

## Training recipe

Data: documents of `saelab.toy.corpus.iter_documents(seed)` (batch `s` = documents
`s*batch_size ...`), each as `<bos>` + its first {cfg.context - 1} tokens. Segment mix per document:
{mix}. AdamW (betas 0.9, 0.98; weight decay on matrices only), linear warm-up then cosine decay to
`min_lr_ratio * lr`, gradient clipping, next-token cross-entropy on every position.

{recipe}

Reproduce (same machine, same seed -> same weights):

```
{reproduce_command(cfg)}
```

## Held-out task scores

Measured by `saelab toy eval` ({scores['n_prompts']} prompts per task, evaluation seed {scores['seed']},
different from the training seed; definitions in `saelab.toy.evaluation`):

{_score_rows(scores)}

Other figures: docstring logit diff
{scores['docstring']['logit_diff']:.2f}; greater-than probability mass on two-digit tokens
{scores['greater_than']['year_mass']:.3f}; induction loss first copy {scores['induction']['first_copy_loss']:.2f},
second copy {scores['induction']['second_copy_loss']:.2f}; topic loss first 16 tokens
{scores['topic']['early_loss']:.3f}, tokens 64-127 {scores['topic']['late_loss']:.3f}.
"""


def build_toy_model(out_dir: str | os.PathLike, cfg: ToyBuildConfig, *, resume: bool = True,
                    stop_after: int | None = None, progress: bool = True, eval_prompts: int = 300,
                    keep_checkpoint: bool = False) -> dict:
    """Train (resuming from ``out_dir/checkpoint`` when present), then write the model folder,
    evaluate it and write its card. Returns build info; with ``stop_after`` before the last step,
    only the checkpoint is written and ``info["finished"]`` is False."""
    check_range("eval_prompts", eval_prompts, 1, MAX_PROMPTS, integer=True)
    out = Path(out_dir)
    model, info = train_toy_model(out, cfg, resume=resume, stop_after=stop_after, progress=progress)
    finished = info["step"] >= cfg.steps
    if not finished:
        return {**info, "finished": False}
    save_model_folder(model, out, cfg.context)
    scores = evaluate_toy_model(out, n_prompts=eval_prompts, threads=cfg.threads)
    n_params = sum(p.numel() for p in model.parameters())
    size = (out / "model.safetensors").stat().st_size
    card = model_card(cfg, scores, info, n_params, size)
    atomic_write(out / "README.md", lambda tmp: Path(tmp).write_text(card))
    build_info = {"finished": True, "step": info["step"], "train_seconds": info["train_seconds"],
                  "n_params": n_params, "model_bytes": size, "config": asdict(cfg), "scores": scores,
                  "reproduce": reproduce_command(cfg), "gates": {k: list(v) for k, v in GATES.items()}}
    atomic_write_json(out / "build_info.json", build_info)
    if not keep_checkpoint:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return build_info
