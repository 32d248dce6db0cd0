"""Surprisal scoring (Paulo et al. 2024, arXiv 2410.13928; delphi's ``surprisal`` scorer): does reading
the explanation make a causal LM less surprised by the contexts where the latent fires than by those
where it does not?

Per example: ``reduction = loss(example | generic prefix) − loss(example | explanation prefix)``, the
loss being the mean cross-entropy (nats per token) of the example's tokens after the prefix. Prefixes
fill ``template`` with the explanation or with ``generic`` (an explanation of nothing in particular).
Score = ROC AUC of the reduction, activating examples (positives) against non-activating ones; the
mean reduction of each class is reported beside it. A good explanation lowers the loss of the
contexts it describes more than of the others: AUC near 1; a useless one: near 0.5.

The scorer LM is anything with a ``name`` and ``losses(prefix, texts) -> [mean loss per text]``;
``CausalLMScorer`` wraps a ``saelab.models.LoadedModel`` (the bundled toy model, any Hugging Face
causal LM saelab loads). It re-tokenises the examples' text with its own tokenizer, so it need not be
the model the SAE reads, and keeps every loss it computed (the generic-prefix losses of the random
contexts that all latents share are computed once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from saelab.errors import ConfigError, check_range
from saelab.interp.embedding import example_text
from saelab.interp.gather import Example
from saelab.interp.scoring import check_explanation, roc_auc
from saelab.models import LoadedModel

TEMPLATE = "The following text is an example of {explanation}\n\n"
GENERIC = "various unrelated text."


class SurprisalLM(Protocol):
    """``losses(prefix, texts)``: per text, the mean cross-entropy of its tokens after ``prefix``."""

    name: str

    def losses(self, prefix: str, texts: list[str]) -> list[float]: ...


@dataclass
class SurprisalResult:
    """``auc`` (None when a class is empty) and the mean reduction per class (None when empty)."""

    auc: float | None
    reduction_activating: float | None
    reduction_non_activating: float | None


def check_template(template: str) -> None:
    if not isinstance(template, str) or "{explanation}" not in template:
        raise ConfigError(f"surprisal template={template!r} is not accepted; it must contain '{{explanation}}' "
                          f"where the explanation goes, e.g. {TEMPLATE!r}")


def surprisal_score(lm: SurprisalLM | None, explanation: str, positives: list[Example], negatives: list[Example],
                    template: str = TEMPLATE, generic: str = GENERIC) -> SurprisalResult:
    """The module docstring's score of ``explanation`` on ``positives`` (activating) and ``negatives``."""
    if lm is None:
        raise ConfigError("surprisal scoring needs a causal LM to read the explanation and the examples; pass a "
                          "scorer LM (saelab.interp.surprisal.CausalLMScorer(load_model('toy')), or --surprisal-lm)")
    check_explanation(explanation)
    check_template(template)
    check_explanation(generic)
    texts = [example_text(ex) for ex in positives + negatives]
    if not texts:
        return SurprisalResult(None, None, None)
    base = np.asarray(lm.losses(template.format(explanation=generic), texts), dtype=float)
    told = np.asarray(lm.losses(template.format(explanation=explanation), texts), dtype=float)
    reduction = base - told
    pos, neg = reduction[:len(positives)], reduction[len(positives):]
    return SurprisalResult(roc_auc(pos.tolist(), neg.tolist()), float(pos.mean()) if len(pos) else None,
                           float(neg.mean()) if len(neg) else None)


class CausalLMScorer:
    """Mean next-token cross-entropy of texts after a prefix under ``lm`` (``[BOS] prefix text``, BOS
    where the tokenizer has one), ``batch_size`` sequences per forward pass; logits are formed only at
    the texts' tokens (``run_to_unembed`` + ``unembed``). ``name``: the model's name and a prefix of its
    weight fingerprint, so results of other weights never pass for these."""

    def __init__(self, lm: LoadedModel, batch_size: int = 16):
        if lm.tokenizer is None:
            raise ConfigError(f"surprisal scorer LM {lm.name} was loaded without a tokenizer; it must read text")
        check_range("surprisal batch_size", batch_size, 1, None, integer=True)
        self.lm, self.batch_size = lm, batch_size
        self.name = f"{lm.name}@{lm.fingerprint()[:12]}"
        self.context_length = lm.adapter.context_length
        self._known: dict[tuple[str, str], float] = {}

    def _ids(self, texts: list[str], prepend_bos: bool) -> list[list[int]]:
        ids, mask = self.lm.tokenize(texts, prepend_bos=prepend_bos)
        return [row[m.bool()].tolist() for row, m in zip(ids.cpu(), mask.cpu(), strict=True)]

    def losses(self, prefix: str, texts: list[str]) -> list[float]:
        todo = sorted({t for t in texts if (prefix, t) not in self._known})
        if todo:
            head = self._ids([prefix], prepend_bos=True)[0]
            if not head:
                raise ConfigError(f"the surprisal prefix {prefix!r} gives no token and {self.lm.name} has no BOS; "
                                  "use a template with text")
            bodies = self._ids(todo, prepend_bos=False)
            for text, body in zip(todo, bodies, strict=True):
                if not body:
                    raise ConfigError(f"the surprisal scorer's tokenizer gives no token for the example {text!r}")
                if len(head) + len(body) > self.context_length:
                    raise ConfigError(f"prefix + example are {len(head) + len(body)} tokens, beyond {self.lm.name}'s "
                                      f"context of {self.context_length}; use a shorter explanation or examples")
            for start in range(0, len(todo), self.batch_size):
                chunk = list(range(start, min(start + self.batch_size, len(todo))))
                for i, loss in zip(chunk, self._batch_losses(head, [bodies[i] for i in chunk]), strict=True):
                    self._known[(prefix, todo[i])] = loss
        return [self._known[(prefix, t)] for t in texts]

    @torch.no_grad()
    def _batch_losses(self, head: list[int], bodies: list[list[int]]) -> list[float]:
        """Mean cross-entropy of each body after ``head`` in one right-padded batch."""
        width = len(head) + max(len(b) for b in bodies)
        ids = torch.zeros(len(bodies), width, dtype=torch.long)
        mask = torch.zeros(len(bodies), width, dtype=torch.long)
        rows, cols, targets = [], [], []
        for r, body in enumerate(bodies):
            seq = head + body
            ids[r, :len(seq)] = torch.as_tensor(seq)
            mask[r, :len(seq)] = 1
            rows += [r] * len(body)
            cols += range(len(head) - 1, len(seq) - 1)        # the position that predicts each body token
            targets += body
        resid, _ = self.lm.run_to_unembed(ids, attention_mask=mask)             # [batch, pos, d_model]
        logits = self.lm.unembed(resid[torch.as_tensor(rows), torch.as_tensor(cols)]).float()  # [n_tok, d_vocab]
        ce = F.cross_entropy(logits, torch.as_tensor(targets, device=logits.device), reduction="none").cpu()
        owner = torch.as_tensor(rows)
        return [float(ce[owner == r].mean()) for r in range(len(bodies))]
