"""Induction heads: per-head induction scores on repeated random tokens, the long- versus
short-prefix experiment, and the induction loss ratio under head ablation.

- Induction score of head (L, h): a random sequence ``t_1..t_n`` is shown twice after BOS; the mean
  attention from each token of the second copy to the token *after* its earlier occurrence
  (query ``q = n + j`` to key ``j + 1``, ``j = 1..n``).
- Prefix experiment (Kissane et al. 2024): a prefix ``P`` of ``p`` random tokens followed by a token
  ``X`` appears once, random filler follows, then ``P`` again. The score is the attention from the
  last token of the second ``P`` to ``X``. Filler is padded so that the query and ``X`` sit at the
  same positions for every ``p`` (1..9 by default), and filler never reuses ``P``'s or ``X``'s tokens.
  A head *needs a long prefix* when its score at ``p = 1`` is below ``short_fraction`` (0.5) of its
  best score, among heads whose best score reaches ``min_score``.
- Loss ratio: mean next-token loss on the second copy over the first copy, skipping each copy's first
  token (the definition of the toy world's ``induction.loss_ratio``); with a head zero-ablated (its
  ``hook_z`` slice set to 0) it shows which heads the model's copying needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from saelab.errors import SaelabError, check_range
from saelab.models import LoadedModel

CONTROL_TOKEN = re.compile(r"^<[^<>\s]+>$")


def content_token_ids(lm: LoadedModel) -> np.ndarray:
    """Token ids random sequences draw from: the vocabulary without special tokens, the tokenizer's
    special ids and control/placeholder tokens spelt ``<...>``."""
    special = set(lm.special_token_ids)
    tok = lm.tokenizer
    if tok is not None:
        special |= set(getattr(tok, "all_special_ids", []) or [])
    n = min(lm.d_vocab, len(tok)) if tok is not None else lm.d_vocab
    names = tok.convert_ids_to_tokens(list(range(n))) if tok is not None else [""] * n
    # control and placeholder tokens written <...> (Gemma's 6k <unusedN>, <start_of_image>, ...) were
    # never trained as text: random sequences of them say nothing about induction
    ids = np.array([i for i, name in enumerate(names) if i not in special and not CONTROL_TOKEN.match(str(name))],
                   dtype=np.int64)
    if ids.size < 20:
        raise SaelabError(f"{lm.name} has only {ids.size} non-special tokens; induction tests need at least 20")
    return ids


def _bos(lm: LoadedModel) -> list[int]:
    return [lm.bos_token_id] if lm.bos_token_id is not None else []


def repeated_random_tokens(lm: LoadedModel, n_seqs: int, length: int, seed: int = 0) -> Tensor:
    """``[n_seqs, len(bos) + 2 * length]``: BOS (when the model has one) + a random sequence twice."""
    check_range("n_seqs", n_seqs, 1, integer=True)
    check_range("length", length, 2, integer=True)
    pool = content_token_ids(lm)
    rng = np.random.default_rng(seed)
    rows = [_bos(lm) + list(seq) * 2 for seq in (rng.choice(pool, length, replace=False) for _ in range(n_seqs))]
    return torch.tensor(rows, dtype=torch.long)


def _patterns(lm: LoadedModel, ids: Tensor, batch_size: int = 32) -> list[Tensor]:
    """Per layer ``[n_seqs, n_heads, dest, src]`` attention patterns."""
    names = [f"blocks.{L}.attn.hook_pattern" for L in range(lm.n_layers)]
    out: list[list[Tensor]] = [[] for _ in names]
    for start in range(0, ids.shape[0], batch_size):
        _, cache = lm.run_with_cache(ids[start:start + batch_size], names, stop_at_layer="auto")
        for i, name in enumerate(names):
            out[i].append(cache[name].float().cpu())
    return [torch.cat(chunks) for chunks in out]


@torch.no_grad()
def induction_scores(lm: LoadedModel, n_seqs: int = 32, length: int = 20, seed: int = 0) -> Tensor:
    """``[n_layers, n_heads]`` mean attention from the second copy to the token after the first occurrence."""
    ids = repeated_random_tokens(lm, n_seqs, length, seed)
    offset = len(_bos(lm))
    queries = torch.arange(offset + length, offset + 2 * length)  # second copy, t_1..t_n
    keys = queries - length + 1
    scores = [pattern[:, :, queries, keys].mean(dim=(0, 2)) for pattern in _patterns(lm, ids)]
    return torch.stack(scores)


@torch.no_grad()
def induction_loss_ratio(lm: LoadedModel, ids: Tensor, length: int, ablate: tuple[int, int] | None = None) -> float:
    """Loss on the second copy / loss on the first (each copy's first token skipped) on ``ids`` from
    ``repeated_random_tokens``; ``ablate=(layer, head)`` zero-ablates that head's ``hook_z``."""
    edits = {}
    if ablate is not None:
        layer, head = ablate

        def zero_head(z: Tensor) -> Tensor:
            z = z.clone()
            z[:, :, head] = 0
            return z

        edits[f"blocks.{layer}.attn.hook_z"] = zero_head
    logits = lm.run_with_hooks(ids, edits).float()
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(logits.device), reduction="none")
    offset = len(_bos(lm))  # losses[:, t] predicts token t + 1
    first = losses[:, offset:offset + length - 1].mean()  # copy-1 tokens 2..n
    second = losses[:, offset + length:offset + 2 * length - 1].mean()  # copy-2 tokens 2..n
    return float(second / first)


@torch.no_grad()
def head_ablation_loss_ratios(lm: LoadedModel, n_seqs: int = 32, length: int = 20, seed: int = 0,
                              progress: bool = False) -> tuple[float, Tensor]:
    """(clean loss ratio, ``[n_layers, n_heads]`` loss ratio with each head zero-ablated)."""
    ids = repeated_random_tokens(lm, n_seqs, length, seed)
    clean = induction_loss_ratio(lm, ids, length)
    out = torch.zeros(lm.n_layers, lm.n_heads)
    cells = [(L, h) for L in range(lm.n_layers) for h in range(lm.n_heads)]
    for L, h in tqdm(cells, desc="ablating heads", disable=not progress):  # noqa: N806
        out[L, h] = induction_loss_ratio(lm, ids, length, ablate=(L, h))
    return clean, out


def prefix_sequences(lm: LoadedModel, prefix_len: int, n_seqs: int, seed: int = 0, max_prefix: int = 9,
                     filler: int = 8) -> tuple[Tensor, int]:
    """``([n_seqs, pos], key_position)``: BOS, filler, P (``prefix_len``), X, filler, P. Filler is padded
    by ``max_prefix - prefix_len`` before each P so positions do not depend on ``prefix_len``."""
    check_range("prefix_len", prefix_len, 1, max_prefix, integer=True)
    pool = content_token_ids(lm)
    rng = np.random.default_rng([seed, prefix_len])
    pad = max_prefix - prefix_len
    rows = []
    for _ in range(n_seqs):
        marked = rng.choice(pool, prefix_len + 1, replace=False)
        prefix, x = list(marked[:-1]), int(marked[-1])
        rest = np.setdiff1d(pool, marked)
        fill = list(rng.choice(rest, 2 * (filler + pad), replace=True))
        first, second = fill[:filler + pad], fill[filler + pad:]
        rows.append(_bos(lm) + first + prefix + [x] + second + prefix)
    key = len(_bos(lm)) + filler + max_prefix
    return torch.tensor(rows, dtype=torch.long), key


@dataclass
class PrefixResult:
    """scores: ``[n_prefix, n_layers, n_heads]`` attention from the last repeated token to X, for each
    prefix length in ``prefix_lengths``."""

    prefix_lengths: list[int]
    scores: Tensor
    min_score: float
    short_fraction: float

    def head_kinds(self) -> dict[str, list[str]]:
        """Heads (``"L.h"``) that need a long prefix, and those that work with a short one."""
        best = self.scores.max(0).values
        first = self.scores[0]
        long_, short = [], []
        for L in range(best.shape[0]):  # noqa: N806
            for h in range(best.shape[1]):
                if best[L, h] < self.min_score:
                    continue
                (long_ if first[L, h] < self.short_fraction * best[L, h] else short).append(f"{L}.{h}")
        return {"long_prefix": long_, "short_prefix": short}

    def to_json(self) -> dict:
        n_layers, n_heads = self.scores.shape[1:]
        return {
            "prefix_lengths": self.prefix_lengths, "min_score": self.min_score,
            "short_fraction": self.short_fraction,
            "scores": {f"{L}.{h}": [round(float(s), 4) for s in self.scores[:, L, h]]
                       for L in range(n_layers) for h in range(n_heads)},
            **self.head_kinds(),
        }


@torch.no_grad()
def prefix_induction(lm: LoadedModel, prefix_lengths: list[int] | range = range(1, 10), n_seqs: int = 32,
                     seed: int = 0, min_score: float = 0.2, short_fraction: float = 0.5,
                     progress: bool = False) -> PrefixResult:
    """Run the prefix-length experiment (module docstring) for every head."""
    lengths = list(prefix_lengths)
    if not lengths:
        raise SaelabError("prefix_lengths is empty; give lengths in 1..9, e.g. 1..9")
    check_range("min_score", min_score, 0, 1)
    check_range("short_fraction", short_fraction, 0, 1)
    max_prefix = max(lengths)
    rows = []
    for p in tqdm(lengths, desc="prefix lengths", disable=not progress):
        ids, key = prefix_sequences(lm, p, n_seqs, seed, max_prefix=max_prefix)
        rows.append(torch.stack([pattern[:, :, -1, key].mean(0) for pattern in _patterns(lm, ids)]))
    return PrefixResult(lengths, torch.stack(rows), min_score, short_fraction)


def top_heads(scores: Tensor, threshold: float) -> list[dict]:
    """Heads of ``scores [n_layers, n_heads]`` at or above ``threshold``, best first."""
    flat = [(float(scores[L, h]), L, h) for L in range(scores.shape[0]) for h in range(scores.shape[1])]
    return [{"head": f"{L}.{h}", "score": round(s, 4)} for s, L, h in sorted(flat, reverse=True) if s >= threshold]
