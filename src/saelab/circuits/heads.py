"""Attention heads as circuit nodes: names (``"L.H"``), per-head outputs ``z_h · W_O,h`` and caches,
and the position rules that reduce a prompt's per-head outputs to the discrete SAE's vectors.

A head's output in the residual basis is ``hook_z[..., h, :] @ W_O(L)[h]`` (``[d_model]``); the
attention output of a block is the sum of its heads' outputs plus ``b_O``.

Position rules (``POSITION_RULES``, described in ``POSITION_RULE_HELP``): ``mean`` is the paper's; in a
clean/corrupted pair only the changed tokens and the positions after them can differ (attention is
causal), so ``changed_end`` keeps the positions where the corruption enters and where the task's answer
is read (the end) instead of averaging them with the identical prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saelab.errors import ConfigError, SaelabError, check_choice


@dataclass(frozen=True, order=True)
class Head:
    """Attention head ``head`` of block ``layer``; written ``"L.H"``."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"{self.layer}.{self.head}"


def parse_head(text: str) -> Head:
    """``"9.6"`` -> ``Head(9, 6)``; a clear error for anything else."""
    parts = str(text).strip().split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"head {text!r} is not of the form LAYER.HEAD (e.g. '9.6')")
    return Head(int(parts[0]), int(parts[1]))


def all_heads(lm) -> list[Head]:
    """Every head of ``lm`` in forward order (layer-major); index ``layer * n_heads + head``."""
    return [Head(layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)]


def z_hooks(lm) -> list[str]:
    return [f"blocks.{layer}.attn.hook_z" for layer in range(lm.n_layers)]


@torch.no_grad()
def cache_z(lm, ids: torch.Tensor) -> list[torch.Tensor]:
    """``hook_z`` of every block for ``ids [batch, pos]``: a list of ``[batch, pos, n_heads, d_head]``."""
    _, cache = lm.run_with_cache(ids, z_hooks(lm), stop_at_layer="auto")
    return [cache[name].float() for name in z_hooks(lm)]


def output_weights(lm) -> list[torch.Tensor]:
    """``W_O`` of every block as float32: a list of ``[n_heads, d_head, d_model]``."""
    return [lm.W_O(layer).float() for layer in range(lm.n_layers)]


def head_outputs_from_z(z: list[torch.Tensor], W_O: list[torch.Tensor]) -> torch.Tensor:
    """Per-head outputs ``[batch, pos, n_layers * n_heads, d_model]`` from per-block ``z`` and ``W_O``."""
    outs = [torch.einsum("bphk,hkd->bphd", z_l, W_l) for z_l, W_l in zip(z, W_O, strict=True)]
    return torch.cat(outs, dim=2)


@torch.no_grad()
def head_outputs(lm, ids: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Per-head outputs ``z_h · W_O,h`` for ``ids [batch, pos]``: ``[batch, pos, n_layers * n_heads, d_model]``."""
    W_O = output_weights(lm)
    parts = [head_outputs_from_z(cache_z(lm, ids[i:i + batch_size]), W_O) for i in range(0, len(ids), batch_size)]
    return torch.cat(parts, dim=0)


POSITION_RULES = ("changed_end", "mean", "last", "changed", "positions")
POSITION_RULE_HELP = {
    "changed_end": "mean over the positions where the clean and corrupted prompts of a pair differ, and the end",
    "mean": "mean over all real positions, BOS included (the paper's rule, as in its public code)",
    "last": "the prompt's final position",
    "changed": "mean over the positions where the clean and corrupted prompts of a pair differ",
    "positions": "every real position separately: one vector (and later one code) per position",
}


@dataclass
class HeadVectors:
    """Per-head outputs of ``n`` prompts at ``slots`` reduced positions each: ``vectors [n, slots,
    n_heads_total, d_model]``, ``valid [n, slots]`` (bool; slots past a prompt's end, or outside the
    rule's positions, are not valid). Every rule but ``positions`` has one slot per prompt."""

    vectors: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def rows(self) -> torch.Tensor:
        """The valid vectors as rows ``[n_valid, n_heads_total, d_model]``."""
        return self.vectors[self.valid]

    def split(self, sizes: list[int]) -> list[HeadVectors]:
        return [HeadVectors(v, m) for v, m in zip(self.vectors.split(sizes), self.valid.split(sizes), strict=True)]


def position_weights(rule: str, mask: torch.Tensor, end: torch.Tensor,
                     changed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights [batch, slots, pos], valid [batch, slots])`` of a position rule (``POSITION_RULES``).

    ``mask [batch, pos]``: real tokens; ``end [batch]``: last token; ``changed [batch, pos]``: where a
    prompt's token differs from its pair's (needed by ``changed`` and ``changed_end``). Each slot's
    weights sum to 1 over positions; ``positions`` has one slot per position (identity weights)."""
    check_choice("position rule", rule, POSITION_RULES)
    batch, width = mask.shape
    mask = mask.bool()
    if rule == "positions":
        return torch.eye(width).expand(batch, width, width), mask
    if rule in ("changed", "changed_end"):
        if changed is None:
            raise ConfigError(f"position rule {rule!r} needs the positions where clean and corrupted prompts differ")
        chosen = changed.bool() & mask
        if rule == "changed":
            empty = torch.nonzero(~chosen.any(1)).flatten().tolist()
            if empty:
                raise ConfigError(f"position rule 'changed': prompts {empty[:5]} have the same tokens as their "
                                  f"pair, so no position is selected; use 'changed_end', 'last' or 'mean'")
        else:
            chosen = chosen | torch.nn.functional.one_hot(end, width).bool()
    elif rule == "last":
        chosen = torch.nn.functional.one_hot(end, width).bool()
    else:
        chosen = mask
    weights = chosen.float()
    return (weights / weights.sum(1, keepdim=True))[:, None], torch.ones(batch, 1, dtype=torch.bool)


class _AllHeadsSeen(Exception):
    """Stops the forward pass once the last block's ``hook_z`` has been read."""


@torch.no_grad()
def reduced_head_outputs(lm, ids: torch.Tensor, mask: torch.Tensor, end: torch.Tensor, rule: str,
                         changed: torch.Tensor | None = None, batch_size: int = 256) -> HeadVectors:
    """Per-head outputs ``z_h · W_O,h`` reduced over positions by ``rule`` (``position_weights``):
    ``vectors [batch, slots, n_layers * n_heads, d_model]``.

    The reduction is applied to ``z`` before ``W_O`` (both are linear, so the result equals reducing
    ``head_outputs``), and the forward pass stops right after the last block's ``hook_z`` (its MLP and
    the unembedding never run)."""
    W_O = output_weights(lm)
    weights, valid = position_weights(rule, mask, end, changed)
    parts = []
    for i in range(0, len(ids), batch_size):
        rows = slice(i, i + batch_size)
        reduced: list[torch.Tensor] = []

        def take(z: torch.Tensor, w=weights[rows], reduced=reduced) -> None:
            if rule == "positions":
                reduced.append(z.float())  # identity weights: every position is its own slot
            else:
                reduced.append(torch.einsum("bphk,bsp->bshk", z.float(), w.to(z.device)))
            if len(reduced) == lm.n_layers:
                raise _AllHeadsSeen

        try:
            with lm.hooks(edits={name: take for name in z_hooks(lm)}):
                lm.model(input_ids=lm.as_input_ids(ids[rows]), use_cache=False)
        except _AllHeadsSeen:
            pass
        if len(reduced) != lm.n_layers:
            raise SaelabError(f"{lm.name}: the forward pass reached {len(reduced)} of {lm.n_layers} hook_z points")
        parts.append(torch.cat([torch.einsum("bshk,hkd->bshd", z_l, W_l) for z_l, W_l in zip(reduced, W_O, strict=True)],
                               dim=2).cpu())
    return HeadVectors(torch.cat(parts, dim=0), valid)


def check_heads_exist(lm, heads: list[Head], what: str) -> None:
    """Refuse heads that ``lm`` does not have, naming them and the model's shape."""
    missing = [str(h) for h in heads if not (0 <= h.layer < lm.n_layers and 0 <= h.head < lm.n_heads)]
    if missing:
        raise ConfigError(f"{what} names heads {', '.join(missing)}, which {lm.name} does not have (it has "
                          f"{lm.n_layers} layers x {lm.n_heads} heads, i.e. heads 0.0 .. "
                          f"{lm.n_layers - 1}.{lm.n_heads - 1}); pick the ground truth made for this model")
