"""Clean / counterfactual prompt pairs for patching, as equal-length token batches.

- ``task_prompts(lm, task, n, seed, templates=...)``: pairs of the tasks ioi, greater_than, docstring,
  tokenized by the model's own tokenizer: ``templates="toy"`` (default for the toy model) draws the toy
  world's (``saelab.toy.tasks``; pairs of unequal length are dropped and counted), ``"natural"``
  (default otherwise) the published templates checked against the model's tokenizer
  (``saelab.causal.templates``: single-token names, equal lengths), so a real model can run them.
- ``pair_prompts(lm, pairs)``: your own ``(clean, counterfactual)`` texts; every pair must tokenize
  to the same length. ``read_pairs_file(path)``: such pairs from a JSON-lines file with fields
  ``clean`` and ``counterfactual`` (or ``corrupted``).

Rows are right-padded; ``final [n]`` is each row's last real position, where the next-token
distributions are compared.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from saelab.errors import CorruptFileError, SaelabError, check_choice, check_range
from saelab.models import LoadedModel


@dataclass
class PromptPairs:
    """clean_ids / counterfactual_ids / mask: ``[n, pos]``; final: ``[n]``; dropped / kept: pairs left out
    (token lengths differ) / indices of those kept; answer_ids / wrong_ids: ``[n]`` first tokens of the task's answer and wrong answer (toy tasks)."""

    clean_ids: Tensor
    counterfactual_ids: Tensor
    mask: Tensor
    final: Tensor
    dropped: int = 0
    kept: Tensor | None = None
    answer_ids: Tensor | None = None
    wrong_ids: Tensor | None = None

    @property
    def n(self) -> int:
        return self.clean_ids.shape[0]


def pair_prompts(lm: LoadedModel, pairs: list[tuple[str, str]], drop_mismatched: bool = False) -> PromptPairs:
    """Tokenize ``(clean, counterfactual)`` pairs (BOS first when the tokenizer has one)."""
    if not pairs:
        raise SaelabError("no prompt pairs given; patching needs at least one (clean, counterfactual) pair")
    clean_ids, clean_mask = lm.tokenize([c for c, _ in pairs])
    cf_ids, cf_mask = lm.tokenize([c for _, c in pairs])
    width = max(clean_ids.shape[1], cf_ids.shape[1])
    clean_ids, cf_ids = _pad_to(clean_ids, width), _pad_to(cf_ids, width)
    clean_mask, cf_mask = _pad_to(clean_mask, width, 0), _pad_to(cf_mask, width, 0)
    lengths, cf_lengths = clean_mask.sum(1), cf_mask.sum(1)
    same = lengths == cf_lengths
    if not bool(same.all()) and not drop_mismatched:
        i = int((~same).nonzero()[0])
        raise SaelabError(f"prompt pair {i} tokenizes to different lengths: clean {int(lengths[i])} tokens "
                          f"({pairs[i][0]!r}), counterfactual {int(cf_lengths[i])} ({pairs[i][1]!r}); patching "
                          "needs pairs of the same token length")
    if not bool(same.any()):
        raise SaelabError(f"none of the {len(pairs)} prompt pairs tokenizes to equal lengths with {lm.name}'s "
                          "tokenizer; give pairs whose clean and counterfactual prompts have the same token count")
    keep = same.nonzero().squeeze(1)
    return PromptPairs(clean_ids[keep], cf_ids[keep], clean_mask[keep], lengths[keep] - 1, int((~same).sum()),
                       keep)


def first_token_ids(lm: LoadedModel, words: list[str]) -> Tensor:
    """``[len(words)]`` the first token of each word as it follows a space."""
    rows = lm.tokenizer([" " + w for w in words], add_special_tokens=False, verbose=False)["input_ids"]
    if any(not row for row in rows):
        raise SaelabError(f"{lm.name}'s tokenizer gives no token for some of the answers {words[:5]}")
    return torch.tensor([row[0] for row in rows], dtype=torch.long)


def _pad_to(t: Tensor, width: int, value: int | None = None) -> Tensor:
    if t.shape[1] == width:
        return t
    fill = t[:, -1:] if value is None else torch.full_like(t[:, -1:], value)
    return torch.cat([t, fill.expand(-1, width - t.shape[1])], 1)


COUNTERFACTUALS = ("task", "io")


def io_counterfactual(pair, rng: random.Random) -> str:
    """The clean IOI prompt with its indirect object replaced by a third name (Cunningham et al. 2023's
    counterfactual: the answer changes to the new name)."""
    from saelab.toy import vocabulary

    io = pair.clean.words[pair.clean.positions["IO"]]
    names = set(pair.answers) | set(pair.wrong_answers)
    new = rng.choice([name for name in vocabulary.NAMES if name not in names])
    text, count = re.subn(rf"\b{re.escape(io)}\b", new, pair.clean.text)
    if count != 1:
        raise SaelabError(f"IOI prompt {pair.clean.text!r} names its indirect object {io!r} {count} times, not once")
    return text


PROMPT_TEMPLATES = ("toy", "natural")


def task_prompts(lm: LoadedModel, task: str, n: int = 16, seed: int = 0, counterfactual: str = "task",
                 templates: str | None = None) -> PromptPairs:
    """``n`` clean/counterfactual pairs of ``task``. ``counterfactual``: ``"task"``, the task's own
    corruption (IOI: ABC, S2 becomes a third name; greater-than: "01"; docstring: random argument
    names), or ``"io"`` (IOI only): the indirect object becomes a third name. ``templates``: ``"toy"``
    (the toy world's prompts; default for the toy model) or ``"natural"`` (the published templates
    checked against ``lm``'s tokenizer; default for every other model)."""
    check_range("n prompts", n, 1, 100_000, integer=True)
    check_choice("counterfactual", counterfactual, COUNTERFACTUALS)
    templates = ("toy" if lm.name == "toy" else "natural") if templates is None else templates
    check_choice("templates", templates, PROMPT_TEMPLATES)
    if counterfactual == "io" and task != "ioi":
        raise SaelabError(f"counterfactual 'io' replaces the indirect object of IOI prompts; task {task!r} has "
                          "none: use counterfactual 'task'")
    if templates == "natural":
        return _natural_prompts(lm, task, n, seed, counterfactual)
    from saelab.toy.tasks import generate_pairs

    pairs = generate_pairs(task, n, seed)
    if counterfactual == "io":
        rng = random.Random(f"saelab.causal.io_counterfactual:{seed}")
        texts = [(p.clean.text, io_counterfactual(p, rng)) for p in pairs]
    else:
        texts = [(p.clean.text, p.corrupted.text) for p in pairs]
    prompts = pair_prompts(lm, texts, drop_mismatched=True)
    kept = prompts.kept.tolist()
    prompts.answer_ids = first_token_ids(lm, [pairs[i].answers[0] for i in kept])
    prompts.wrong_ids = first_token_ids(lm, [pairs[i].wrong_answers[0] for i in kept])
    return prompts


def _natural_prompts(lm: LoadedModel, task: str, n: int, seed: int, counterfactual: str) -> PromptPairs:
    """The published templates' pairs, checked against ``lm``'s tokenizer (every pair kept: equal lengths
    are guaranteed); answer_ids / wrong_ids: the first answer and wrong answer as single tokens."""
    from saelab.causal.templates import check_answer_ids, natural_text_pairs

    if lm.tokenizer is None:
        raise SaelabError(f"{lm.name} was loaded without a tokenizer; task prompts need one")
    pairs = natural_text_pairs(task, n, seed, lm.tokenizer, ioi_counterfactual="io" if counterfactual == "io" else "abc")
    prompts = pair_prompts(lm, [(p.clean, p.corrupted) for p in pairs])
    prompts.answer_ids = torch.tensor([check_answer_ids(lm.tokenizer, p, p.answers[:1])[0] for p in pairs])
    prompts.wrong_ids = torch.tensor([check_answer_ids(lm.tokenizer, p, p.wrong[:1])[0] for p in pairs])
    return prompts


def read_pairs_file(path: str | Path) -> list[tuple[str, str]]:
    """``(clean, counterfactual)`` texts from JSON lines ``{"clean": ..., "counterfactual": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise SaelabError(f"prompt-pairs file {str(path)!r} does not exist")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{path}:{number} is not JSON ({exc.msg})") from None
        cf = row.get("counterfactual", row.get("corrupted")) if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(row.get("clean"), str) or not isinstance(cf, str):
            raise CorruptFileError(f"{path}:{number} needs string fields 'clean' and 'counterfactual' (or 'corrupted')")
        pairs.append((row["clean"], cf))
    if not pairs:
        raise CorruptFileError(f"{path} holds no prompt pairs")
    return pairs
