"""Held-out scores of a toy model on the toy tasks, and the gates the bundled model must pass.

Metrics (all on prompts drawn with ``seed``, by default ``EVAL_SEED``, never used in training;
every input starts with ``<bos>``):

- ``ioi.accuracy``: fraction of prompts whose top-1 next token (whole vocabulary) is the IO name;
  ``ioi.logit_diff``: mean logit(IO) - logit(S) at the last position.
- ``greater_than.prob_diff``: mean over prompts of sum P(YY' > YY) - sum P(YY' <= YY) over the
  two-digit tokens ``00``..``99``, at the second century token.
- ``docstring.accuracy``: top-1 is the next argument; ``docstring.logit_diff``: mean
  logit(answer) - max logit(the def's other arguments).
- ``induction.loss_ratio``: a random token sequence (uniform over the non-special vocabulary,
  ``INDUCTION_LEN`` tokens) is shown twice; mean loss on the second copy divided by mean loss on
  the first copy, skipping the first token of each copy (unpredictable in both).
- ``topic.loss_drop``: on purely topical documents (``<bos>`` + 127 tokens), mean loss on the first
  16 tokens minus mean loss on tokens 64..127 (positive when the model uses the document's topic).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from saelab.errors import ConfigError, CorruptFileError, check_range
from saelab.toy import vocabulary as V
from saelab.toy.corpus import make_document, random_span
from saelab.toy.tasks import generate_pairs
from saelab.toy.threads import using_threads

EVAL_SEED = 1_000_003
INDUCTION_LEN = 20
TOPIC_CONTEXT = 128
GATES: dict[str, tuple[str, float]] = {
    "ioi.accuracy": (">=", 0.95),
    "ioi.logit_diff": (">=", 2.0),
    "greater_than.prob_diff": (">=", 0.6),
    "docstring.accuracy": (">=", 0.9),
    "induction.loss_ratio": ("<=", 0.3),
    "topic.loss_drop": (">", 0.0),
}
MAX_PROMPTS = 100_000


def load_toy_model(model_dir: str | Path):
    """(model, tokenizer) from a Hugging Face folder; a clear error if the folder cannot be used."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    needed = ["config.json", "model.safetensors", "tokenizer.json"]
    if not path.is_dir():
        raise CorruptFileError(f"model folder {str(path)!r} does not exist or is not a folder; "
                               f"expected a Hugging Face folder with {', '.join(needed)}")
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise CorruptFileError(f"model folder {str(path)!r} lacks {', '.join(missing)}; "
                               f"expected a Hugging Face folder with {', '.join(needed)}")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises many types for unreadable folders
        raise CorruptFileError(f"model folder {str(path)!r} cannot be loaded: {exc}") from exc
    model.eval()
    return model, tokenizer


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """``<bos>`` + token ids of each text."""
    bos = tokenizer.bos_token_id
    return [[bos] + tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


@torch.no_grad()
def _last_logits(model, rows: list[list[int]], pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Logits at each row's last token [n_rows, vocab] (rows right-padded, so causal attention
    never sees the padding)."""
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(chunk):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits
        last = torch.tensor([len(r) - 1 for r in chunk])
        out.append(logits[torch.arange(len(chunk)), last].float())
    return torch.cat(out)


@torch.no_grad()
def _token_losses(model, ids: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Next-token loss at every position [batch, pos - 1] (entry t is the loss of token t + 1)."""
    out = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        logits = model(input_ids=chunk).logits[:, :-1].float()
        out.append(F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none"))
    return torch.cat(out)


def _ids(tokenizer, words: Sequence[str]) -> list[int]:
    return tokenizer.convert_tokens_to_ids(list(words))


def eval_ioi(model, tokenizer, n: int, seed: int) -> dict:
    pairs = generate_pairs("ioi", n, seed)
    logits = _last_logits(model, _encode(tokenizer, [p.clean.text for p in pairs]), tokenizer.pad_token_id)
    io = torch.tensor(_ids(tokenizer, [p.answers[0] for p in pairs]))
    s = torch.tensor(_ids(tokenizer, [p.wrong_answers[0] for p in pairs]))
    rows = torch.arange(n)
    return {"accuracy": (logits.argmax(-1) == io).float().mean().item(),
            "logit_diff": (logits[rows, io] - logits[rows, s]).mean().item()}


def eval_greater_than(model, tokenizer, n: int, seed: int) -> dict:
    pairs = generate_pairs("greater_than", n, seed)
    probs = _last_logits(model, _encode(tokenizer, [p.clean.text for p in pairs]), tokenizer.pad_token_id).softmax(-1)
    year_probs = probs[:, _ids(tokenizer, V.TWO_DIGITS)]  # [n, 100]
    yy = torch.tensor([int(p.clean.words[p.clean.positions["YY"]]) for p in pairs])
    greater = torch.arange(100)[None, :] > yy[:, None]
    diff = (year_probs * greater).sum(-1) - (year_probs * ~greater).sum(-1)
    return {"prob_diff": diff.mean().item(), "year_mass": year_probs.sum(-1).mean().item()}


def eval_docstring(model, tokenizer, n: int, seed: int) -> dict:
    pairs = generate_pairs("docstring", n, seed)
    logits = _last_logits(model, _encode(tokenizer, [p.clean.text for p in pairs]), tokenizer.pad_token_id)
    answer = torch.tensor(_ids(tokenizer, [p.answers[0] for p in pairs]))
    wrong = torch.tensor([_ids(tokenizer, p.wrong_answers) for p in pairs])
    rows = torch.arange(n)
    return {"accuracy": (logits.argmax(-1) == answer).float().mean().item(),
            "logit_diff": (logits[rows, answer] - logits.gather(1, wrong).max(-1).values).mean().item()}


def eval_induction(model, tokenizer, n: int, seed: int) -> dict:
    rng = random.Random(f"saelab.toy.eval.induction:{seed}")
    rows = []
    for _ in range(n):
        words = random_span(rng, INDUCTION_LEN).words
        rows.append([tokenizer.bos_token_id] + _ids(tokenizer, words) * 2)
    losses = _token_losses(model, torch.tensor(rows))  # [n, 2 * INDUCTION_LEN]
    first = losses[:, 1:INDUCTION_LEN].mean()  # predicts copy-1 tokens 1..L-1
    second = losses[:, INDUCTION_LEN + 1:].mean()  # predicts copy-2 tokens 1..L-1
    return {"loss_ratio": (second / first).item(), "first_copy_loss": first.item(),
            "second_copy_loss": second.item()}


def eval_topic(model, tokenizer, n: int, seed: int) -> dict:
    rows = []
    for index in range(n):
        doc = make_document(seed, index, prose_only=True)
        rows.append([tokenizer.bos_token_id] + _ids(tokenizer, doc.words[: TOPIC_CONTEXT - 1]))
    losses = _token_losses(model, torch.tensor(rows))  # [n, 127]; entry t predicts doc token t
    early, late = losses[:, :16].mean(), losses[:, 63:].mean()
    return {"loss_drop": (early - late).item(), "early_loss": early.item(), "late_loss": late.item()}


def evaluate_toy_model(model_dir: str | Path | None = None, *, n_prompts: int = 300,
                       seed: int = EVAL_SEED, model=None, tokenizer=None, threads: int | None = 1) -> dict:
    """Scores of the model in ``model_dir`` (default: the bundled one), or of an already loaded
    ``model``/``tokenizer``; nested dict ``{"ioi": {"accuracy": ...}, ..., "gates": ..., "passed"}``.
    ``threads``: torch CPU threads while scoring (None keeps the current setting)."""
    check_range("n_prompts", n_prompts, 1, MAX_PROMPTS, integer=True)
    check_range("seed", seed, 0, None, integer=True)
    with using_threads(threads):
        return _evaluate(model_dir, n_prompts, seed, model, tokenizer)


def _evaluate(model_dir, n_prompts: int, seed: int, model, tokenizer) -> dict:
    from saelab.toy import bundled_model_path

    if model is None:
        model_dir = Path(model_dir) if model_dir is not None else bundled_model_path()
        model, tokenizer = load_toy_model(model_dir)
    context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 0)
    if context < TOPIC_CONTEXT:
        raise ConfigError(f"the model's context is {context} tokens; toy eval needs at least {TOPIC_CONTEXT} "
                          "(topic.loss_drop reads tokens 64..127)")
    n_topic = max(1, n_prompts // 4)
    scores = {
        "ioi": eval_ioi(model, tokenizer, n_prompts, seed),
        "greater_than": eval_greater_than(model, tokenizer, n_prompts, seed),
        "docstring": eval_docstring(model, tokenizer, n_prompts, seed),
        "induction": eval_induction(model, tokenizer, n_prompts, seed),
        "topic": eval_topic(model, tokenizer, n_topic, seed),
    }
    gates = {}
    for name, (op, threshold) in GATES.items():
        task, metric = name.split(".")
        value = scores[task][metric]
        passed = {">=": value >= threshold, "<=": value <= threshold, ">": value > threshold}[op]
        gates[name] = {"value": value, "op": op, "threshold": threshold, "passed": bool(passed)}
    return {"model": str(model_dir) if model_dir is not None else None, "n_prompts": n_prompts,
            "seed": seed, **scores, "gates": gates, "passed": all(g["passed"] for g in gates.values())}
