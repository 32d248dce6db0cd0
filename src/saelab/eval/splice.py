"""Splicing: replacing a hook's activations inside the model's forward pass.

An SAE reads the hook's value flattened per token (``[batch, pos, d_in]``; for ``attn.hook_z``
``d_in = n_heads * d_head``). A splice edit flattens the value the model hands over (TransformerLens
shape, e.g. ``[batch, pos, n_heads, d_head]``), replaces it at the chosen positions and reshapes it
back. Replacements, as functions ``[n, d_in] -> [n, d_in]``:

- ``sae_replacement(sae)``: the reconstruction x̂ = decode(encode(x)).
- ``sae_with_error_replacement(sae)``: x̂ + (x − x̂), the SAE plus its error term, which must
  reproduce the clean run (a check that the splice itself changes nothing else).
- ``zero_replacement()``, ``mean_replacement(mean)``: the ablation baselines of CE loss recovered.

Positions holding special tokens (BOS/EOS/PAD) are left unchanged by default: SAEs are trained
without them, and their activations are outliers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from saelab.errors import SaelabError
from saelab.models import LoadedModel
from saelab.models.hook_points import ATTN_PATTERN
from saelab.models.hooking import EditFn
from saelab.sae.base import SAE

Replacement = Callable[[Tensor], Tensor]


class SAEModelMismatchError(SaelabError):
    """An SAE that cannot be spliced into a model: unknown hook, or a width that does not match."""


def check_sae_fits(lm: LoadedModel, sae: SAE, hook: str | None = None) -> str:
    """Return the hook ``sae`` is spliced at (``hook`` or the SAE's own), refusing a hook the model
    lacks and an SAE whose ``d_in`` differs from the hook's width."""
    name = hook or sae.cfg.hook_name
    if not name:
        raise SAEModelMismatchError(f"SAE {sae.cfg.name!r} records no hook_name; give the hook it reads "
                                    "(e.g. --hook blocks.1.attn.hook_z)")
    point = lm.parse_hooks([name])[0]
    if point.kind == ATTN_PATTERN:
        raise SAEModelMismatchError(f"hook {name!r} holds attention patterns, which SAEs do not read; choose a "
                                    "residual, attention (q/k/v/z/attn_out) or MLP hook")
    width = lm.hook_d_in(name)
    if width != sae.cfg.d_in:
        shape = "x".join(map(str, lm.hook_shape(name)))
        raise SAEModelMismatchError(
            f"SAE {sae.cfg.name!r} reads d_in={sae.cfg.d_in} values per token, but hook {name!r} of model "
            f"{lm.name!r} has {width} (shape {shape} per token); this SAE was trained on another hook or "
            "model: evaluate it on the model and hook it was trained on")
    return name


def flat_per_token(value: Tensor) -> Tensor:
    """``[batch, pos, ...]`` -> ``[batch, pos, d_in]`` (a view when possible)."""
    return value.reshape(*value.shape[:2], -1)


def splice_edit(replace: Replacement, positions: Tensor | None = None) -> EditFn:
    """An edit function for ``LoadedModel.run_with_hooks``: the hook's value, flattened per token, is
    replaced by ``replace(flat)`` where ``positions [batch, pos]`` is True (everywhere if None)."""

    def edit(value: Tensor) -> Tensor:
        flat = flat_per_token(value)
        n = flat.shape[0] * flat.shape[1]
        new = replace(flat.reshape(n, -1)).reshape(flat.shape).to(flat.dtype)
        if positions is not None:
            if tuple(positions.shape) != tuple(flat.shape[:2]):
                raise SaelabError(f"splice positions have shape {tuple(positions.shape)}; the hook's value has "
                                  f"[batch, pos] = {tuple(flat.shape[:2])}")
            new = torch.where(positions.to(flat.device)[..., None], new, flat)
        return new.reshape(value.shape)

    return edit


def sae_replacement(sae: SAE) -> Replacement:
    """x -> x̂ (computed in the SAE's dtype and device, returned like x)."""

    def replace(x: Tensor) -> Tensor:
        return sae.reconstruct(x.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)).to(x)

    return replace


def sae_with_error_replacement(sae: SAE) -> Replacement:
    """x -> x̂ + (x − x̂): the SAE's output with its reconstruction error added back."""
    reconstruct = sae_replacement(sae)

    def replace(x: Tensor) -> Tensor:
        x_hat = reconstruct(x)
        return x_hat + (x - x_hat)

    return replace


def zero_replacement() -> Replacement:
    return torch.zeros_like


def mean_replacement(mean: Tensor) -> Replacement:
    """x -> the constant ``mean [d_in]`` at every token."""

    def replace(x: Tensor) -> Tensor:
        return mean.to(x).expand_as(x)

    return replace


@torch.no_grad()
def spliced_logits(lm: LoadedModel, sae: SAE, input_ids: Tensor, positions: Tensor | None = None,
                   add_error: bool = False, attention_mask: Tensor | None = None) -> Tensor:
    """Logits ``[batch, pos, d_vocab]`` with ``sae`` spliced at its hook (at ``positions [batch, pos]``,
    default every non-special token), with the error term added back when ``add_error``."""
    hook = check_sae_fits(lm, sae)
    ids = lm.as_input_ids(input_ids)
    if positions is None:
        positions = ordinary_token_mask(ids, lm.special_token_ids)
    replace = sae_with_error_replacement(sae) if add_error else sae_replacement(sae)
    return lm.run_with_hooks(ids, {hook: splice_edit(replace, positions)}, attention_mask=attention_mask)


def ordinary_token_mask(input_ids: Tensor, special_ids: list[int]) -> Tensor:
    """``[batch, pos]`` bool: True where the token is not one of ``special_ids`` (BOS/EOS/PAD)."""
    if not special_ids:
        return torch.ones_like(input_ids, dtype=torch.bool)
    special = torch.as_tensor(special_ids, dtype=input_ids.dtype, device=input_ids.device)
    return ~torch.isin(input_ids, special)
