"""``hook_pattern`` under any attention implementation.

Fused kernels (``sdpa``, flash attention) never materialise the attention probabilities, so while
a pattern hook is active the model is switched to ``saelab_pattern``: an attention function
registered with transformers' ``AttentionInterface`` (and, for the masks, with
``AttentionMaskInterface``, using eager's additive masks) that calls the model family's *own*
eager attention (``eager_attention_forward`` of its modeling file: scaling, soft-capping, grouped
keys and values, sliding windows exactly as the family defines them), hands the probabilities
``[batch, n_heads, query_pos, key_pos]`` to the pattern hooks of that attention module and, when a
hook replaces them, recomputes the output ``pattern @ v``. The previous implementation is restored
when the hooks are removed. Logits therefore differ from an ``sdpa`` run only by float rounding
(and not at all for a model loaded with ``eager``; GPT-2's optional ``reorder_and_upcast_attn``
eager variant is not used on this path). Checked here with ``sdpa``, ``eager`` and, on CPU,
``flex_attention``.

Transformers 5.x dispatches attention through ``config._attn_implementation`` at every forward
(``ALL_ATTENTION_FUNCTIONS.get_interface``) and builds masks with
``ALL_MASK_ATTENTION_FUNCTIONS[config._attn_implementation]``, which is what makes the switch
possible without touching the model's modules.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable

import torch
from torch import nn

from saelab.errors import SaelabError

IMPLEMENTATION = "saelab_pattern"

# attention module -> [(hook name, callback, read_only)], in installation order
_HANDLERS: weakref.WeakKeyDictionary[nn.Module, list[tuple[str, Callable, bool]]] = weakref.WeakKeyDictionary()
# id(config) -> [implementation before the switch, number of active pattern hooks]
_SWITCHED: dict[int, list] = {}


def family_eager_attention(module: nn.Module) -> Callable:
    """The ``eager_attention_forward`` defined next to ``module``'s class in its modeling file."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise SaelabError(f"hook_pattern is not available for {type(module).__name__}: its modeling file "
                          "defines no eager_attention_forward")
    return fn


def _run_handlers(module: nn.Module, weights: torch.Tensor) -> torch.Tensor:
    from saelab.models.sites import check_replacement

    current = weights
    for name, on_value, read_only in _HANDLERS.get(module, ()):
        if read_only:
            on_value(current)
            continue
        given = current.clone()
        new = on_value(given)
        new = given if new is None or new is given else check_replacement(name, given, new)
        current = new
    return current


def pattern_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, **kwargs):
    """The family's eager attention with pattern hooks; query ``[batch, n_heads, q, d_head]``,
    key/value ``[batch, n_kv, k, d_head]``; returns (``[batch, q, n_heads, d_head]``, pattern)."""
    output, weights = family_eager_attention(module)(module, query, key, value, attention_mask, **kwargs)
    if module not in _HANDLERS:
        return output, weights
    new = _run_handlers(module, weights)
    if new is weights or torch.equal(new, weights):
        return output, weights
    groups = new.shape[1] // value.shape[1]
    values = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    output = torch.matmul(new.to(values.dtype), values).transpose(1, 2).contiguous()
    return output, new


def _register() -> None:
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, pattern_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)


_register()


def _config_of(module: nn.Module):
    config = getattr(module, "config", None)
    if config is None:
        raise SaelabError(f"hook_pattern needs the attention module {type(module).__name__} to carry its config")
    return config


class PatternHandle:
    """Like ``torch.utils.hooks.RemovableHandle``: ``remove()`` uninstalls one pattern hook."""

    def __init__(self, remove: Callable[[], None]):
        self.remove = remove


def add_pattern_handler(module: nn.Module, name: str, on_value: Callable, read_only: bool) -> PatternHandle:
    """Route ``module``'s attention through ``pattern_attention_forward`` and call ``on_value`` with
    its probabilities; removing the returned handle undoes both."""
    config = _config_of(module)
    entry = _SWITCHED.get(id(config))
    if entry is None:
        entry = _SWITCHED[id(config)] = [config._attn_implementation, 0]
        config._attn_implementation = IMPLEMENTATION
    entry[1] += 1
    handler = (name, on_value, read_only)
    _HANDLERS.setdefault(module, []).append(handler)
    def remove() -> None:
        handlers = _HANDLERS.get(module, [])
        if handler in handlers:
            handlers.remove(handler)
            if not handlers:
                del _HANDLERS[module]
            entry[1] -= 1
            if entry[1] == 0:
                config._attn_implementation = entry[0]
                _SWITCHED.pop(id(config), None)

    return PatternHandle(remove)
