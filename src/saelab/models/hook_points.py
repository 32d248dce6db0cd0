"""TransformerLens hook names: parsing, validation and the error that lists the valid ones.

A hook name is ``blocks.{L}.<kind>`` with ``kind`` one of ``HOOK_KINDS``. Shapes (TransformerLens
conventions, ``n_kv`` = key/value heads, equal to ``n_heads`` without grouped-query attention):

- ``hook_resid_pre|hook_resid_mid|hook_resid_post``, ``hook_attn_out``, ``hook_mlp_out``:
  ``[batch, pos, d_model]``
- ``ln1.hook_normalized``, ``hook_mlp_in``, ``ln2.hook_normalized``: ``[batch, pos, d_model]``, the
  sub-layer inputs transcoders read. ``ln1.hook_normalized`` is the output of the norm before attention
  (what q/k/v are projected from); ``hook_mlp_in`` the input of the norm before the MLP (resid_mid,
  or resid_pre where attention and MLP run in parallel, GPT-NeoX's ``use_parallel_residual``);
  ``ln2.hook_normalized`` that norm's output, exactly what the MLP reads (Gemma 2/3:
  ``pre_feedforward_layernorm``). Both norms' outputs include their weights and biases (the Hugging
  Face module's output; TransformerLens with ``fold_ln`` puts the weightless ``normalize(x)`` there).
  Editing ``hook_mlp_in`` or ``ln2.hook_normalized`` changes only what the MLP sees (not the residual
  stream its output is added to), ``ln1.hook_normalized`` only what attention sees.
- ``attn.hook_q`` and ``attn.hook_z``: ``[batch, pos, n_heads, d_head]``;
  ``attn.hook_k`` and ``attn.hook_v``: ``[batch, pos, n_kv, d_head]`` (queries and keys before
  rotary embeddings, as in TransformerLens)
- ``attn.hook_pattern``: ``[batch, n_heads, query_pos, key_pos]`` (softmax probabilities)
- ``mlp.hook_post``: ``[batch, pos, d_mlp]`` (the input of the MLP's output projection)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from saelab.errors import SaelabError

RESID_PRE = "hook_resid_pre"
RESID_MID = "hook_resid_mid"
RESID_POST = "hook_resid_post"
ATTN_Q = "attn.hook_q"
ATTN_K = "attn.hook_k"
ATTN_V = "attn.hook_v"
ATTN_Z = "attn.hook_z"
ATTN_PATTERN = "attn.hook_pattern"
ATTN_OUT = "hook_attn_out"
MLP_POST = "mlp.hook_post"
MLP_OUT = "hook_mlp_out"
LN1_NORMALIZED = "ln1.hook_normalized"
MLP_IN = "hook_mlp_in"
LN2_NORMALIZED = "ln2.hook_normalized"

HOOK_KINDS: tuple[str, ...] = (
    RESID_PRE, RESID_MID, RESID_POST, ATTN_Q, ATTN_K, ATTN_V, ATTN_Z, ATTN_PATTERN, ATTN_OUT, MLP_POST, MLP_OUT,
    LN1_NORMALIZED, MLP_IN, LN2_NORMALIZED,
)
HEAD_KINDS = frozenset({ATTN_Q, ATTN_K, ATTN_V, ATTN_Z})


class UnknownHookError(SaelabError):
    """A hook name that the loaded model does not have."""


@dataclass(frozen=True, order=True)
class HookPoint:
    """One parsed hook name: the block index and the kind (an entry of ``HOOK_KINDS``)."""

    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.kind}"

    @property
    def stop_layer(self) -> int:
        """The smallest ``stop_at_layer`` whose truncated forward still computes this hook."""
        return self.layer if self.kind == RESID_PRE else self.layer + 1


def all_hook_names(n_layers: int) -> list[str]:
    """Every hook name of a model with ``n_layers`` blocks, block by block (``HOOK_KINDS`` order within one)."""
    return [f"blocks.{layer}.{kind}" for layer in range(n_layers) for kind in HOOK_KINDS]


def _valid_names_message(n_layers: int) -> str:
    patterns = ", ".join(f"blocks.{{L}}.{kind}" for kind in HOOK_KINDS)
    return f"valid hook names are {patterns} with L in 0..{n_layers - 1}"


def parse_hook_name(name: str, n_layers: int, model_name: str = "this model") -> HookPoint:
    """Parse ``blocks.{L}.<kind>``; raise ``UnknownHookError`` naming the valid names otherwise."""
    if not isinstance(name, str):
        raise UnknownHookError(f"hook name {name!r} must be a string; {_valid_names_message(n_layers)}")
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in HOOK_KINDS:
        layer = int(parts[1])
        if layer < n_layers:
            return HookPoint(layer, parts[2])
        raise UnknownHookError(
            f"hook {name!r}: layer {layer} does not exist in {model_name}, which has {n_layers} blocks; "
            f"{_valid_names_message(n_layers)}"
        )
    close = difflib.get_close_matches(name, all_hook_names(n_layers), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UnknownHookError(f"unknown hook name {name!r} for {model_name}{hint}; {_valid_names_message(n_layers)}")


def parse_hook_list(names: list[str] | tuple[str, ...] | str, n_layers: int,
                    model_name: str = "this model") -> list[HookPoint]:
    """Parse a list (or comma-separated string) of hook names, refusing duplicates and empty lists."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if not names:
        raise UnknownHookError(f"no hook names given; {_valid_names_message(n_layers)}")
    points = [parse_hook_name(n, n_layers, model_name) for n in names]
    seen: set[str] = set()
    for p in points:
        if p.name in seen:
            raise UnknownHookError(f"hook {p.name!r} is listed twice; give each hook once")
        seen.add(p.name)
    return points
