"""Splicing: running a model with coders (SAEs, transcoders) in place of a hook's activations.

    splices = [Splice(sae, add_error=True, edits=[zero_ablate([3, 17], positions=[-1])]),
               Splice(transcoder, edits=[steer(42, scale=8.0)])]
    logits = run_spliced(lm, ids, splices)               # [batch, pos, d_vocab]
    with spliced(lm, splices):                           # any forward inside, e.g. generate
        out = lm.model.generate(ids, max_new_tokens=10)
    lm.run_to_unembed(ids, splice_edits(lm, splices, positions))   # the hook-name -> EditFn mapping

A coder reads ``x [batch, pos, d_in]`` at its *source* hook (``cfg.hook_name``) and predicts
``y [batch, pos, d_out]`` at its *target* hook (``cfg.hook_name_out``; an SAE: the same hook). Hook
values are flattened per token (``flat_per_token``: ``attn.hook_z`` ``[batch, pos, n_heads, d_head]``
-> ``[batch, pos, n_heads * d_head]``). A transcoder splice reads A and writes B in one forward: an
edit on A records x and changes nothing, an edit on B (later in forward order) replaces y. At a
spliced position the target's value y becomes (``Splice``; ``acts = encode(x)``, ``edited`` the
latents after the splice's ``edits``, ``saelab.causal.edits``, applied in order)

- ``decode(edited, x)`` without the error term (the coder's prediction, edited);
- ``y + decode(edited, x) − decode(acts, x)`` with it (``add_error``): ŷ' + (y − ŷ), written so that
  with no edit the value is y exactly (splicing with the error term changes nothing);
- ``decode(edited, x) + error`` when ``Splice.error`` gives another run's error term
  ``[batch, pos, d_out]`` (``hook_latents_and_errors``), e.g. to patch a counterfactual's error too.

Positions (``Splice.positions``: a ``[batch, pos]`` bool mask or a list of ints) default to every
position in ``spliced`` and to every non-special token (``ordinary_token_mask``: not BOS/EOS/PAD,
which SAEs are trained without) in ``run_spliced``; other positions keep their value.

Single-hook replacements ``[n, d] -> [n, d]`` (``splice_edit``): ``sae_replacement`` (x̂),
``sae_with_error_replacement`` (x̂ + (x − x̂), an SAE only), and the ablation baselines of CE loss
recovered, ``zero_replacement`` and ``mean_replacement``, which apply at the coder's target hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from saelab.errors import SaelabError
from saelab.models import LoadedModel
from saelab.models.hook_points import ATTN_PATTERN, HookPoint
from saelab.models.hooking import FORWARD_ORDER, EditFn, HookSession
from saelab.sae.base import SAE

Positions = Sequence[int] | Tensor | None
Replacement = Callable[[Tensor], Tensor]
Write = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x [batch, pos, d_in], y [batch, pos, d_out], where) -> y'


class SAEModelMismatchError(SaelabError):
    """A coder that cannot be spliced into a model: unknown hook, wrong width, target before source."""


class InterventionError(SaelabError):
    """An intervention that cannot be applied: positions out of range, shapes that do not match."""


# ----------------------------------------------------------------------------------------- sites
class SpliceSites(NamedTuple):
    """Where a coder is spliced: the hook it reads (``source``) and the hook it writes (``target``)."""

    source: str
    target: str

    @property
    def hooks(self) -> list[str]:
        """The distinct hooks, source first (what to capture)."""
        return list(dict.fromkeys(self))


def target_hook(sae: SAE, hook: str | None = None) -> str:
    """The hook ``sae``'s decoder writes: a transcoder's ``hook_name_out``, else the hook it reads
    (``hook`` or ``cfg.hook_name``)."""
    return sae.cfg.hook_name_out if sae.cfg.is_transcoder else (hook or sae.cfg.hook_name)


def _order(point: HookPoint) -> tuple[int, int]:
    return point.layer, FORWARD_ORDER[point.kind]


def _check_width(lm: LoadedModel, sae: SAE, hook: str, width: int, role: str) -> None:
    have = lm.hook_d_in(hook)
    if have == width:
        return
    cfg, shape = sae.cfg, "x".join(map(str, lm.hook_shape(hook)))
    label, fix = (("reads d_in", "this SAE was trained on another hook or model: evaluate it on the model and "
                   "hook it was trained on") if role == "source" else
                  ("writes d_out", "it was trained to predict another hook or model: check its hook_name_out, "
                   "or splice it into the model it was trained on"))
    raise SAEModelMismatchError(
        f"SAE {cfg.name!r} {label}={width} values per token, but hook {hook!r} of model {lm.name!r} has {have} "
        f"(shape {shape} per token); {fix}")


def check_sae_fits(lm: LoadedModel, sae: SAE, hook: str | None = None, hook_out: str | None = None) -> SpliceSites:
    """The hooks ``sae`` is spliced at (``hook``/``hook_out`` or its own), refusing hooks the model lacks,
    attention patterns, widths other than ``d_in`` at the source and ``d_out`` at the target, and a
    target the forward pass computes before the source."""
    cfg = sae.cfg
    source = hook or cfg.hook_name
    if not source:
        raise SAEModelMismatchError(f"SAE {cfg.name!r} records no hook_name; give the hook it reads "
                                    "(e.g. --hook blocks.1.attn.hook_z)")
    target = hook_out or target_hook(sae, source)
    src, dst = lm.parse_hooks([source])[0], lm.parse_hooks([target])[0]
    for point in (src, dst):
        if point.kind == ATTN_PATTERN:
            raise SAEModelMismatchError(f"hook {point.name!r} holds attention patterns, which SAEs do not read or "
                                        "write; choose a residual, attention (q/k/v/z/attn_out) or MLP hook")
    if src != dst and _order(dst) <= _order(src):
        raise SAEModelMismatchError(
            f"transcoder {cfg.name!r} reads {src.name!r} and writes {dst.name!r}, but the forward pass computes "
            f"{dst.name!r} first, so it cannot be written from {src.name!r}; a transcoder must write a hook after "
            "the one it reads: check hook_name and hook_name_out (swapped?)")
    _check_width(lm, sae, src.name, cfg.d_in, "source")
    if dst != src or cfg.d_out != cfg.d_in:
        _check_width(lm, sae, dst.name, cfg.d_out, "target")
    return SpliceSites(src.name, dst.name)


# ------------------------------------------------------------------------------------- positions
def flat_per_token(value: Tensor) -> Tensor:
    """``[batch, pos, ...]`` -> ``[batch, pos, d]`` (a view when possible)."""
    return value.reshape(*value.shape[:2], -1)


def ordinary_token_mask(input_ids: Tensor, special_ids: list[int]) -> Tensor:
    """``[batch, pos]`` bool: True where the token is not one of ``special_ids`` (BOS/EOS/PAD)."""
    if not special_ids:
        return torch.ones_like(input_ids, dtype=torch.bool)
    special = torch.as_tensor(special_ids, dtype=input_ids.dtype, device=input_ids.device)
    return ~torch.isin(input_ids, special)


def position_mask(positions: Positions, batch: int, seq_len: int, device=None) -> Tensor:
    """``[batch, pos]`` bool mask of ``positions`` (None: all), refusing positions out of range."""
    if positions is None:
        return torch.ones(batch, seq_len, dtype=torch.bool, device=device)
    if isinstance(positions, Tensor):
        if positions.dtype != torch.bool or tuple(positions.shape) != (batch, seq_len):
            raise InterventionError(f"a position mask must be a bool tensor of shape [batch, pos] = {(batch, seq_len)}; "
                                    f"got {positions.dtype} {tuple(positions.shape)}")
        return positions.to(device)
    bad = [p for p in positions if not -seq_len <= p < seq_len]
    if bad:
        raise InterventionError(f"positions {bad} are out of range for a prompt of {seq_len} tokens; accepted: "
                                f"{-seq_len}..{seq_len - 1}")
    mask = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
    mask[:, [p % seq_len for p in positions]] = True
    return mask


# ---------------------------------------------------------------------------------------- splices
@runtime_checkable
class LatentEditLike(Protocol):
    """What a splice edit provides (``saelab.causal.edits.LatentEdit``)."""

    def check(self, d_sae: int) -> None:
        """Refuse operands that do not fit ``d_sae`` latents."""

    def apply(self, acts: Tensor, spliced: Tensor) -> Tensor:
        """``acts [batch, pos, d_sae]`` edited where ``spliced [batch, pos]`` is True."""


def as_coder(sae: SAE, t: Tensor) -> Tensor:
    """``t`` on the coder's device, in its dtype."""
    return t.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)


@dataclass
class Splice:
    """One coder spliced from ``hook`` (default ``cfg.hook_name``) to ``hook_out`` (default: a
    transcoder's ``cfg.hook_name_out``, an SAE's own hook), with ``edits`` on its latents; see the
    module docstring for ``add_error``, ``error`` and ``positions``."""

    sae: SAE
    add_error: bool = False
    edits: Sequence[LatentEditLike] = field(default_factory=tuple)
    positions: Positions = None
    hook: str | None = None
    error: Tensor | None = None
    hook_out: str | None = None

    def __post_init__(self) -> None:
        if self.error is not None and not self.add_error:
            raise InterventionError("Splice(error=...) replaces the error term, so it needs add_error=True")
        for edit in self.edits:
            if not isinstance(edit, LatentEditLike):
                raise InterventionError(f"splice edits must be LatentEdit objects (see saelab.causal.edits); "
                                        f"got {type(edit).__name__}")
            edit.check(self.sae.cfg.d_sae)

    def apply(self, x: Tensor, y: Tensor, where: Tensor | None = None) -> Tensor:
        """The target's new value ``[batch, pos, d_out]`` (coder dtype, every position) from the source's
        ``x [batch, pos, d_in]`` and the target's ``y [batch, pos, d_out]``; edits act where
        ``where [batch, pos]`` (default everywhere). Without edits any ``[..., d]`` rows work."""
        sae = self.sae
        x = as_coder(sae, x)
        acts = sae.encode(x)
        edited = acts
        if self.edits:
            spliced = position_mask(None, *acts.shape[:2]) if where is None else where
            for edit in self.edits:
                edited = edit.apply(edited, spliced.to(acts.device))
        if self.error is not None:
            if tuple(self.error.shape) != tuple(y.shape):
                raise InterventionError(f"the error term given has shape {tuple(self.error.shape)} but the target "
                                        f"hook's value is [batch, pos, d_out] = {tuple(y.shape)}; it must come from "
                                        "prompts of the same batch size and token length")
            return sae.decode(edited, x) + as_coder(sae, self.error)
        if self.add_error:
            return as_coder(sae, y) + (sae.decode(edited, x) - sae.decode(acts, x))
        return sae.decode(edited, x)


class _SourceRecord:
    """The flattened value of a splice's source hook, recorded by an edit on that hook in this forward."""

    def __init__(self, hook: str, target: str):
        self.hook, self.target, self.value = hook, target, None

    def record(self, value: Tensor) -> None:
        self.value = flat_per_token(value)

    def take(self, batch_pos: tuple[int, ...]) -> Tensor:
        x, self.value = self.value, None
        if x is None:
            raise InterventionError(f"the splice writing {self.target!r} reads {self.hook!r}, which did not run before "
                                    "it in this forward pass; splice it in a full forward pass of the model")
        if tuple(x.shape[:2]) != tuple(batch_pos):
            raise InterventionError(f"{self.hook!r} held [batch, pos] = {tuple(x.shape[:2])} but {self.target!r} "
                                    f"holds {tuple(batch_pos)}")
        return x


def _write_edit(write: Write, positions: Positions = None, source: _SourceRecord | None = None) -> EditFn:
    """An edit of a target hook: its value, flattened per token (``y [batch, pos, d_out]``), becomes
    ``write(x, y, where)`` where ``where [batch, pos]`` (``positions``; None: everywhere) is True;
    ``x`` is the source's recorded value (``source``) or y itself."""

    def edit(value: Tensor) -> Tensor:
        y = flat_per_token(value)
        x = y if source is None else source.take(y.shape[:2])
        where = position_mask(positions, *y.shape[:2], device=y.device)
        new = write(x, y, where).to(y)
        return torch.where(where[..., None], new, y).reshape(value.shape)

    return edit


def _chain(write: EditFn | None, reads: list[Callable[[Tensor], None]]) -> EditFn:
    """One hook's edit: its writing splice first, then the splices reading the value it leaves."""
    if not reads:
        return write

    def edit(value: Tensor) -> Tensor | None:
        new = write(value) if write is not None else None
        for read in reads:
            read(value if new is None else new)
        return new

    return edit


def splice_edits(lm: LoadedModel, splices: Splice | Sequence[Splice],
                 default_positions: Tensor | None = None) -> dict[str, EditFn]:
    """Hook name -> edit function for every splice (``default_positions [batch, pos]`` for splices
    without positions), refusing coders that do not fit and two splices writing one hook."""
    if isinstance(splices, Splice):
        splices = [splices]
    writes: dict[str, tuple[EditFn, Splice]] = {}
    reads: dict[str, list[Callable[[Tensor], None]]] = {}
    for splice in splices:
        sites = check_sae_fits(lm, splice.sae, splice.hook, splice.hook_out)
        if sites.target in writes:
            first = writes[sites.target][1].sae.cfg.name
            raise InterventionError(
                f"two splices at hook {sites.target!r} write its value (SAEs {first!r} and {splice.sae.cfg.name!r}); "
                "a hook takes one coder: merge their edits into one Splice, or splice one of them at another hook")
        positions = default_positions if splice.positions is None else splice.positions
        source = None
        if sites.source != sites.target:
            source = _SourceRecord(*sites)
            reads.setdefault(sites.source, []).append(source.record)
        writes[sites.target] = (_write_edit(splice.apply, positions, source), splice)
    hooks = dict.fromkeys([*writes, *reads])
    return {hook: _chain(writes[hook][0] if hook in writes else None, reads.get(hook, [])) for hook in hooks}


@contextmanager
def spliced(lm: LoadedModel, splices: Splice | Sequence[Splice]) -> Iterator[HookSession]:
    """Every forward of ``lm.model`` inside the block runs with ``splices`` (at every position unless a
    splice gives its own), e.g. ``lm.model.generate``."""
    with lm.hooks(edits=splice_edits(lm, splices)) as session:
        yield session


def run_spliced(lm: LoadedModel, input_ids: Tensor, splices: Splice | Sequence[Splice],
                attention_mask: Tensor | None = None, grad: bool = False) -> Tensor:
    """Logits ``[batch, pos, d_vocab]`` of ``input_ids [batch, pos]`` with ``splices`` (default positions:
    every non-special token)."""
    ids = lm.as_input_ids(input_ids)
    ordinary = ordinary_token_mask(ids, lm.special_token_ids)
    return lm.run_with_hooks(ids, splice_edits(lm, splices, ordinary), attention_mask=attention_mask, grad=grad)


def spliced_logits(lm: LoadedModel, sae: SAE, input_ids: Tensor, positions: Tensor | None = None,
                   add_error: bool = False, attention_mask: Tensor | None = None) -> Tensor:
    """Logits ``[batch, pos, d_vocab]`` with ``sae`` spliced (at ``positions [batch, pos]``, default
    every non-special token), with the error term added back when ``add_error``."""
    return run_spliced(lm, input_ids, [Splice(sae, add_error, positions=positions)], attention_mask)


# ----------------------------------------------------------------------------------- clean runs
def encode_value(sae: SAE, value: Tensor) -> tuple[Tensor, Tensor]:
    """A source hook's value (TransformerLens shape ``[batch, pos, ...]``) -> (x ``[batch, pos, d_in]``
    in the coder's dtype, latents ``[batch, pos, d_sae]``)."""
    x = as_coder(sae, flat_per_token(value))
    return x, sae.encode(x)


def coder_values(sae: SAE, cache: dict[str, Tensor], sites: SpliceSites) -> tuple[Tensor, Tensor]:
    """``x [batch, pos, d_in]`` at the source and ``y [batch, pos, d_out]`` at the target from a cache
    holding both hooks, in the coder's dtype and device (for an SAE, y is x)."""
    x = as_coder(sae, flat_per_token(cache[sites.source]))
    return x, (x if sites.target == sites.source else as_coder(sae, flat_per_token(cache[sites.target])))


@torch.no_grad()
def hook_latents(lm: LoadedModel, sae: SAE, input_ids: Tensor, hook: str | None = None,
                 attention_mask: Tensor | None = None) -> Tensor:
    """Latents ``[batch, pos, d_sae]`` of ``sae`` at its source hook on a clean run of ``input_ids``."""
    hook = check_sae_fits(lm, sae, hook).source
    _, cache = lm.run_with_cache(input_ids, [hook], stop_at_layer="auto", attention_mask=attention_mask)
    return encode_value(sae, cache[hook])[1]


@torch.no_grad()
def hook_latents_and_errors(lm: LoadedModel, sae: SAE, input_ids: Tensor, hook: str | None = None,
                            attention_mask: Tensor | None = None, hook_out: str | None = None) -> tuple[Tensor, Tensor]:
    """Latents ``[batch, pos, d_sae]`` and error terms y − ŷ ``[batch, pos, d_out]`` on a clean run."""
    sites = check_sae_fits(lm, sae, hook, hook_out)
    _, cache = lm.run_with_cache(input_ids, sites.hooks, stop_at_layer="auto", attention_mask=attention_mask)
    x, y = coder_values(sae, cache, sites)
    acts = sae.encode(x)
    return acts, y - sae.decode(acts, x)


# ------------------------------------------------------------------------------ replacements
def splice_edit(replace: Replacement, positions: Tensor | None = None) -> EditFn:
    """A single-hook edit for ``LoadedModel.run_with_hooks``: the hook's value, flattened per token,
    is replaced by ``replace(rows [n, d])`` where ``positions [batch, pos]`` is True (everywhere if None)."""

    def write(x: Tensor, y: Tensor, where: Tensor) -> Tensor:
        return replace(y.reshape(-1, y.shape[-1])).reshape(y.shape)

    return _write_edit(write, positions)


def _rows(splice: Splice) -> Replacement:
    def replace(x: Tensor) -> Tensor:
        return splice.apply(x, x).to(x)

    return replace


def sae_replacement(sae: SAE) -> Replacement:
    """x ``[n, d_in]`` -> the coder's prediction ŷ ``[n, d_out]`` (computed in its dtype, returned like x)."""
    return _rows(Splice(sae))


def sae_with_error_replacement(sae: SAE) -> Replacement:
    """x -> x̂ + (x − x̂), computed as x + (x̂ − x̂) = x: an SAE's output with its reconstruction error added back (a transcoder's error
    term needs its target's value: ``Splice(sae, add_error=True)``)."""
    if sae.cfg.is_transcoder:
        raise SAEModelMismatchError(f"SAE {sae.cfg.name!r} is a transcoder ({sae.cfg.hook_name!r} -> "
                                    f"{sae.cfg.hook_name_out!r}): its error term needs the target hook's value; "
                                    "splice it with Splice(sae, add_error=True) and splice_edits")
    return _rows(Splice(sae, add_error=True))


def zero_replacement() -> Replacement:
    """x -> 0 (the zero-ablation baseline, at a coder's target hook)."""
    return torch.zeros_like


def mean_replacement(mean: Tensor) -> Replacement:
    """x -> the constant ``mean [d]`` at every token (the mean-ablation baseline, at the target hook)."""

    def replace(x: Tensor) -> Tensor:
        return mean.to(x).expand_as(x)

    return replace
