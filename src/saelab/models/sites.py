"""Where a hook point lives in a Hugging Face module tree, and how to read and write it there.

A *site* turns PyTorch module hooks into a TransformerLens-shaped value and back. Installing a site
with a callback ``on_value(value) -> replacement | None`` registers plain ``torch.nn.Module`` hooks
that hand the callback the value in TransformerLens shape and feed a returned replacement (or an
in-place modification of the value) back into the forward pass; ``read_only`` callbacks only
record, which lets sites skip the bookkeeping writes need.

- ``InputSite``: the first input of a module (e.g. ``hook_z`` is the input of the attention output
  projection, ``hook_resid_pre`` the input of a block).
- ``OutputSite``: the output of a module, or one element of a tuple output (``hook_attn_out``).
- ``ResidMidSite``: the residual stream after attention, ``resid_pre + attn_contribution``. It is
  read and written at the module whose output is added to the residual: a replacement ``m'`` is
  written as the new contribution ``m' - resid_pre``, so the block's own addition gives ``m'`` (up
  to one float rounding; an unchanged value is passed through bit for bit).

Every site's ``view`` maps the raw tensor to a TransformerLens-shaped *view* of it (no copy), so
in-place edits of per-head values reach the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from saelab.errors import SaelabError

OnValue = Callable[[torch.Tensor], "torch.Tensor | None"]
View = Callable[[torch.Tensor], torch.Tensor]


def identity_view(raw: torch.Tensor) -> torch.Tensor:
    return raw


def heads_view(n_heads: int, d_head: int) -> View:
    """``[batch, pos, n_heads * d_head]`` -> ``[batch, pos, n_heads, d_head]`` (a view)."""

    def view(raw: torch.Tensor) -> torch.Tensor:
        return raw.unflatten(-1, (n_heads, d_head))

    return view


def slice_heads_view(start: int, n_heads: int, d_head: int) -> View:
    """A contiguous slice ``raw[..., start : start + n_heads * d_head]`` viewed per head
    (GPT-2's fused ``c_attn`` output, laid out ``[q | k | v]``)."""

    def view(raw: torch.Tensor) -> torch.Tensor:
        return raw[..., start:start + n_heads * d_head].unflatten(-1, (n_heads, d_head))

    return view


def interleaved_heads_view(part: int, n_parts: int, n_heads: int, d_head: int) -> View:
    """Part ``part`` of a per-head interleaved projection ``[.., n_heads * n_parts * d_head]``
    laid out ``head -> (q, k, v) -> d_head`` (GPT-NeoX's fused ``query_key_value``)."""

    def view(raw: torch.Tensor) -> torch.Tensor:
        per_head = raw.unflatten(-1, (n_heads, n_parts * d_head))
        return per_head[..., part * d_head:(part + 1) * d_head]

    return view


def check_replacement(name: str, value: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``new`` cast like ``value``, or a ``SaelabError`` if it is not a tensor of ``value``'s shape."""
    if not isinstance(new, torch.Tensor):
        raise SaelabError(f"the edit function of hook {name!r} returned {type(new).__name__}; "
                          "return a tensor of the hook's shape or None")
    if new.shape != value.shape:
        raise SaelabError(f"the edit function of hook {name!r} returned shape {tuple(new.shape)}; "
                          f"the hook's value has shape {tuple(value.shape)}")
    return new.to(dtype=value.dtype, device=value.device)


def write_back(raw: torch.Tensor, view: View, new: torch.Tensor) -> torch.Tensor:
    """A tensor like ``raw`` whose ``view`` equals ``new``."""
    if view is identity_view:
        return new
    out = raw.clone()
    view(out).copy_(new)
    return out


def apply_callback(name: str, raw: torch.Tensor, view: View, on_value: OnValue) -> torch.Tensor | None:
    """Run ``on_value`` on the view of ``raw``; return the raw tensor to use instead, or None to keep it."""
    value = view(raw)
    new = on_value(value)
    if new is None or new is value:
        return None  # unchanged, or edited in place through the view
    return write_back(raw, view, check_replacement(name, value, new))


@dataclass
class InputSite:
    """The first input (positional or ``arg_name`` keyword) of ``module``."""

    module: nn.Module
    view: View = identity_view
    arg_name: str = "hidden_states"

    def install(self, name: str, on_value: OnValue, read_only: bool = False) -> list[RemovableHandle]:
        def pre_hook(module, args, kwargs):
            if args:
                new = apply_callback(name, args[0], self.view, on_value)
                return None if new is None else ((new, *args[1:]), kwargs)
            new = apply_callback(name, kwargs[self.arg_name], self.view, on_value)
            return None if new is None else (args, {**kwargs, self.arg_name: new})

        return [self.module.register_forward_pre_hook(pre_hook, with_kwargs=True)]


@dataclass
class OutputSite:
    """The output of ``module``; element 0 of it when the module returns a tuple."""

    module: nn.Module
    view: View = identity_view

    def install(self, name: str, on_value: OnValue, read_only: bool = False) -> list[RemovableHandle]:
        def hook(module, args, output):
            if isinstance(output, tuple):
                new = apply_callback(name, output[0], self.view, on_value)
                return None if new is None else (new, *output[1:])
            return apply_callback(name, output, self.view, on_value)

        return [self.module.register_forward_hook(hook)]


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@dataclass
class ResidMidSite:
    """``resid_pre + contribution``, where ``contribution`` is the output of ``contribution_module``
    (what the block adds to its input after attention) and ``resid_pre`` the input of ``block``."""

    block: nn.Module
    contribution_module: nn.Module

    def install(self, name: str, on_value: OnValue, read_only: bool = False) -> list[RemovableHandle]:
        stash: dict[str, torch.Tensor] = {}

        def remember_resid_pre(module, args, kwargs):
            stash["resid_pre"] = block_input(args, kwargs)

        def hook(module, args, output):
            contribution = output[0] if isinstance(output, tuple) else output
            resid_pre = stash.pop("resid_pre")
            mid = resid_pre + contribution
            new = on_value(mid)
            if read_only:
                return None
            if new is None:
                new = mid  # in-place edits of ``mid`` count
            elif new is not mid:
                new = check_replacement(name, mid, new)
            if torch.equal(new, resid_pre + contribution):
                return None
            new_contribution = new - resid_pre
            return (new_contribution, *output[1:]) if isinstance(output, tuple) else new_contribution

        return [
            self.block.register_forward_pre_hook(remember_resid_pre, with_kwargs=True),
            self.contribution_module.register_forward_hook(hook),
        ]


@dataclass
class PatternSite:
    """The attention probabilities of ``attention_module``; see ``saelab.models.attention_pattern``."""

    attention_module: nn.Module

    def install(self, name: str, on_value: OnValue, read_only: bool = False) -> list[RemovableHandle]:
        from saelab.models.attention_pattern import add_pattern_handler

        return [add_pattern_handler(self.attention_module, name, on_value, read_only)]


Site = InputSite | OutputSite | ResidMidSite | PatternSite
