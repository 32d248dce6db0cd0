"""Steering: generate text with decoder directions added to a hook's value.

    result = steer_generate(lm, sae, feature=42, scale=8.0, prompt="When Mary and John", max_new_tokens=12)
    result.steered_text, result.baseline_text

The SAE is spliced with its error term, so the only change to the hook's value is
``scale * W_dec[feature]`` at every position (prompt and generated tokens); scale 0 changes nothing.
Decoding is greedy, so the baseline and the steered continuation differ only through the steering.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from saelab.causal.edits import steer
from saelab.errors import SaelabError, check_range
from saelab.models import LoadedModel
from saelab.sae.base import SAE
from saelab.splicing import Splice, spliced


@dataclass
class SteeringResult:
    prompt: str
    feature: int
    scale: float
    hook: str
    baseline_text: str
    steered_text: str
    baseline_ids: list[int]
    steered_ids: list[int]

    def to_json(self) -> dict:
        return asdict(self)


@torch.no_grad()
def greedy_generate(lm: LoadedModel, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """``[1, pos + max_new_tokens]`` ids: greedy continuation of ``input_ids [1, pos]``."""
    pad = lm.eos_token_id if lm.eos_token_id is not None else 0
    return lm.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)


def steer_generate(lm: LoadedModel, sae: SAE, feature: int, scale: float, prompt: str, max_new_tokens: int = 16,
                   hook: str | None = None) -> SteeringResult:
    """Greedy continuations of ``prompt`` without and with ``scale * W_dec[feature]`` added at the SAE's hook."""
    check_range("feature", feature, 0, sae.cfg.d_sae - 1, integer=True)
    check_range("scale", scale)
    check_range("max_new_tokens", max_new_tokens, 1, 4096, integer=True)
    if not prompt:
        raise SaelabError("the steering prompt is empty; give some text to continue")
    ids, _ = lm.tokenize([prompt])
    splice = Splice(sae, add_error=True, edits=[steer(feature, scale)], hook=hook)
    baseline = greedy_generate(lm, ids, max_new_tokens)
    with spliced(lm, [splice]):
        steered = greedy_generate(lm, ids, max_new_tokens)
    n = ids.shape[1]
    decode = lm.tokenizer.decode
    return SteeringResult(prompt, int(feature), float(scale), hook or sae.cfg.hook_name,
                          decode(baseline[0, n:].tolist()), decode(steered[0, n:].tolist()),
                          baseline[0, n:].tolist(), steered[0, n:].tolist())
