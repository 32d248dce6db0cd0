"""Forward passes that skip work nobody reads.

- ``handing_on``: blocks ``0..start-1`` compute nothing and hand on a given residual stream (the
  stream entering block ``start``), so a run that changes nothing below block ``start`` pays only for
  the blocks above it.
- ``at_positions``: a position-wise module (the last block's MLP) runs only at chosen positions, e.g.
  each prompt's last token when only the last token is unembedded.
- ``forwards_replaced`` / ``returning``: the mechanism, swapping modules' forwards within a block.

Used by the ACDC engines, per-head patching, and feature patching at residual-stream sites.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def forwards_replaced(replacements: dict) -> Iterator[None]:
    """Within the block, each module of ``replacements`` (module -> ``make(original_forward) ->
    forward``) runs the forward that ``make`` returns; the original, including one set on the
    instance (e.g. by accelerate), is put back afterwards."""
    saved = [(module, vars(module).get("forward")) for module in replacements]
    try:
        for module, make in replacements.items():
            vars(module)["forward"] = make(module.forward)
        yield
    finally:
        for module, forward in saved:
            if forward is None:
                vars(module).pop("forward", None)
            else:
                vars(module)["forward"] = forward


def returning(value):
    """``make`` for ``forwards_replaced``: a forward that computes nothing and returns ``value``."""
    return lambda original: lambda *args, **kwargs: value


def at_positions(rows: torch.Tensor, cols: torch.Tensor):
    """``make`` for ``forwards_replaced`` on a position-wise module (an MLP): it runs only at positions
    ``(rows[i], cols[i])`` of its ``[batch, pos, d]`` input; its output is zero elsewhere."""
    def make(original):
        def forward(hidden_states, *args, **kwargs):
            picked = original(hidden_states[rows, cols][:, None], *args, **kwargs)[:, 0]
            out = picked.new_zeros(hidden_states.shape[:-1] + picked.shape[-1:])
            out[rows, cols] = picked
            return out
        return forward
    return make


def blocks_return_tuples(lm) -> bool:
    """Whether ``lm``'s blocks return tuples (transformers 4) or tensors (transformers 5): one
    one-token forward pass, watched at block 0."""
    returns: list[bool] = []
    handle = lm.adapter.blocks()[0].register_forward_hook(
        lambda module, args, out: returns.append(isinstance(out, tuple)))
    try:
        with torch.no_grad():
            lm.run_with_cache(lm.as_input_ids(torch.zeros(1, 1, dtype=torch.long)), ["blocks.0.hook_resid_post"],
                              stop_at_layer="auto")
    finally:
        handle.remove()
    return bool(returns[0])


def lower_blocks_skipped(lm, resid: torch.Tensor | None, start: int, tuple_blocks: bool,
                         ends: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Replacements for ``forwards_replaced``: blocks ``0..start-1`` hand on ``resid [batch, pos,
    d_model]`` (the stream entering block ``start``; unused when ``start`` is 0) and, with ``ends =
    (rows, cols)``, the last block's MLP runs only at those positions."""
    blocks = lm.adapter.blocks()
    replacements = {}
    if start:
        value = (resid,) if tuple_blocks else resid
        replacements = {blocks[layer]: returning(value) for layer in range(start)}
    if ends is not None and hasattr(blocks[-1], "mlp"):
        replacements[blocks[-1].mlp] = at_positions(*ends)
    return replacements


@contextmanager
def handing_on(lm, resid: torch.Tensor | None, start: int, tuple_blocks: bool,
               ends: tuple[torch.Tensor, torch.Tensor] | None = None) -> Iterator[None]:
    """Within the block, ``lm``'s forward passes skip blocks ``0..start-1`` (see
    ``lower_blocks_skipped``)."""
    with forwards_replaced(lower_blocks_skipped(lm, resid, start, tuple_blocks, ends)):
        yield
