"""Circuit tasks as token batches: clean (positive) and corrupted (negative) prompts and a metric.

Prompt families per task (``TASKS``: ``ioi``, ``greater_than``, ``docstring``; ``TEMPLATE_FAMILIES``):

- ``toy``: the toy world's prompts from ``saelab.toy.tasks.generate_pairs``;
- ``natural``: the published templates (Wang et al. 2022 IOI, Hanna et al. 2023 greater-than, Heimersheim
  & Janiak 2023 docstring) for any Hugging Face tokenizer, checked against it
  (``saelab.causal.templates``): names and argument names filtered to its single tokens (too few left: a
  ``TokenizationError`` naming the task and the words), years as one token each or digit by digit, and
  every pair's clean and corrupted prompts of the same token length;
- ``gpt2``: the former name of ``natural`` (same prompts; on GPT-2's tokenizer nothing is filtered).

Metrics, per prompt at its last token (``TaskBatch.metric``): IOI logit(IO) - logit(S); greater-than
sum P(YY' > YY) - sum P(YY' <= YY); docstring logit(correct) - max logit(wrong). Clean and corrupted
prompts of a pair have the same length; batches are right-padded (causal attention never sees pads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saelab.causal.templates import (
    DOC_ARGS,
    DOC_TEMPLATE,
    DOC_WORDS,
    GT_NOUNS,
    IOI_TEMPLATES,
    NAMES,
    OBJECTS,
    PLACES,
    TASKS,
    TextPair,
    TokenizationError,
    natural_text_pairs,
    single_token_id,
)
from saelab.errors import ConfigError, check_choice, check_range

TEMPLATE_FAMILIES = ("toy", "natural", "gpt2")
METRICS = {"ioi": "logit_diff", "greater_than": "prob_diff", "docstring": "logit_minus_max_wrong"}
# the published word lists under their former names
GPT2_NAMES, GPT2_PLACES, GPT2_OBJECTS, GPT2_IOI_TEMPLATES = NAMES, PLACES, OBJECTS, IOI_TEMPLATES
GPT2_GT_NOUNS, GPT2_DOC_ARGS, GPT2_DOC_WORDS, GPT2_DOC_TEMPLATE = GT_NOUNS, DOC_ARGS, DOC_WORDS, DOC_TEMPLATE
__all__ = ["METRICS", "TASKS", "TEMPLATE_FAMILIES", "TaskBatch", "TextPair", "TokenizationError", "build_batch",
           "default_templates", "gpt2_text_pairs", "kl_from_clean", "single_token_id", "task_batch", "text_pairs",
           "toy_text_pairs"]


@dataclass
class TaskBatch:
    """Tokenised pairs of one task.

    ``clean_ids``/``corrupted_ids``/``mask``: ``[n, pos]`` (right-padded, BOS first when the tokenizer
    has one); ``end``: ``[n]`` index of each prompt's last token; ``answers``/``wrong``: ``[n, d_vocab]``
    boolean masks of the answer and wrong-answer tokens.
    """

    task: str
    clean_ids: torch.Tensor
    corrupted_ids: torch.Tensor
    mask: torch.Tensor
    end: torch.Tensor
    answers: torch.Tensor
    wrong: torch.Tensor

    def __len__(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def metric_name(self) -> str:
        return METRICS[self.task]

    def subset(self, index: slice | torch.Tensor | list[int]) -> TaskBatch:
        """The pairs at ``index`` (padding trimmed to the longest kept prompt)."""
        rows = torch.arange(len(self))[index]
        width = int(self.end[rows].max()) + 1
        return TaskBatch(self.task, self.clean_ids[rows, :width], self.corrupted_ids[rows, :width],
                         self.mask[rows, :width], self.end[rows], self.answers[rows], self.wrong[rows])

    def end_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[n, pos, d_vocab]`` -> ``[n, d_vocab]`` at each prompt's last token (float32)."""
        return logits[torch.arange(len(self), device=logits.device), self.end.to(logits.device)].float()

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """The task metric per prompt ``[n]`` from logits ``[n, pos, d_vocab]``."""
        last = self.end_logits(logits)
        answers, wrong = self.answers.to(last.device), self.wrong.to(last.device)
        if self.task == "greater_than":
            probs = last.softmax(-1)
            return (probs * answers).sum(-1) - (probs * wrong).sum(-1)
        if self.task == "ioi":
            return (last * answers).sum(-1) / answers.sum(-1) - (last * wrong).sum(-1) / wrong.sum(-1)
        best_wrong = last.masked_fill(~wrong, float("-inf")).max(-1).values
        return (last * answers).sum(-1) / answers.sum(-1) - best_wrong


def kl_from_clean(batch: TaskBatch, clean_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(clean || run) of the next-token distributions at each prompt's last token: ``[n]``."""
    p_log = batch.end_logits(clean_logits).log_softmax(-1)
    q_log = batch.end_logits(logits).log_softmax(-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


# --- prompt texts -----------------------------------------------------------------------------------
def toy_text_pairs(task: str, n: int, seed: int) -> list[TextPair]:
    """``n`` toy-world pairs of ``task`` (``saelab.toy.tasks.generate_pairs``)."""
    from saelab.toy.tasks import generate_pairs

    return [TextPair(p.clean.text, p.corrupted.text, p.answers, p.wrong_answers)
            for p in generate_pairs(task, n, seed)]


def gpt2_text_pairs(task: str, n: int, seed: int) -> list[TextPair]:
    """``n`` pairs of ``task`` in the published templates with the published word lists, unchecked (answers
    carry GPT-2's leading space); ``natural_text_pairs`` with a tokenizer checks them."""
    return natural_text_pairs(task, n, seed)


def text_pairs(task: str, n: int, seed: int = 0, templates: str = "toy", tokenizer=None) -> list[TextPair]:
    """``n`` pairs of ``task`` from the ``templates`` family (``toy``, or ``natural``/``gpt2`` checked
    against ``tokenizer`` when given)."""
    check_choice("task", task, TASKS)
    check_choice("templates", templates, TEMPLATE_FAMILIES)
    check_range("n", n, 1, None, integer=True)
    if templates == "toy":
        return toy_text_pairs(task, n, seed)
    return natural_text_pairs(task, n, seed, tokenizer)


def default_templates(lm) -> str:
    """``toy`` for the bundled toy model, ``natural`` for every other model."""
    return "toy" if lm.name == "toy" else "natural"


# --- tokenisation -----------------------------------------------------------------------------------
def build_batch(lm, task: str, pairs: list[TextPair]) -> TaskBatch:
    """Tokenise ``pairs`` with ``lm``'s tokenizer (BOS prepended when it has one) into a ``TaskBatch``."""
    if not pairs:
        raise ConfigError("a task batch needs at least one prompt pair")
    clean_ids, mask = lm.tokenize([p.clean for p in pairs])
    corrupted_ids, corrupted_mask = lm.tokenize([p.corrupted for p in pairs])
    if corrupted_ids.shape != clean_ids.shape or not torch.equal(mask, corrupted_mask):
        bad = next(i for i in range(len(pairs)) if corrupted_ids.shape != clean_ids.shape
                   or not torch.equal(mask[i], corrupted_mask[i]))
        raise TokenizationError(f"clean and corrupted prompts must have the same number of tokens; pair {bad} "
                                f"does not ({pairs[bad].clean!r} vs {pairs[bad].corrupted!r}): a task word is "
                                f"split by this tokenizer")
    answers = torch.zeros(len(pairs), lm.d_vocab, dtype=torch.bool)
    wrong = torch.zeros_like(answers)
    cache: dict[tuple[str, str], int] = {}
    for i, pair in enumerate(pairs):
        context = pair.clean.rsplit(" ", 1)[-1]  # answers are read as the token after the prompt's last word
        for target, words in ((answers, pair.answers), (wrong, pair.wrong)):
            for word in words:
                if (context, word) not in cache:
                    cache[context, word] = single_token_id(lm.tokenizer, word, context)
                target[i, cache[context, word]] = True
    end = mask.sum(-1) - 1
    return TaskBatch(task, clean_ids, corrupted_ids, mask, end.cpu(), answers, wrong)


def task_batch(lm, task: str, n: int, seed: int = 0, templates: str | None = None) -> TaskBatch:
    """``n`` tokenised pairs of ``task``; ``templates`` defaults to ``default_templates(lm)`` (``toy`` for
    the toy model, ``natural``, checked against the model's tokenizer, otherwise)."""
    templates = default_templates(lm) if templates is None else templates
    tokenizer = None if templates == "toy" else lm.tokenizer
    return build_batch(lm, task, text_pairs(task, n, seed, templates, tokenizer))
