"""Per-latent edits applied to an SAE's latents inside a splice (``saelab.splicing.Splice``).

Every edit acts on latents ``acts [batch, pos, d_sae]`` at chosen ``positions`` and on chosen
``latents`` (indices into d_sae; ``None`` means every latent):

- ``zero_ablate(latents)``: set them to 0.
- ``mean_ablate(latents, means)``: set them to ``means [d_sae]`` (e.g. their mean over a corpus).
- ``clamp(latents, value)``: set them to ``value``.
- ``steer(latents, scale)``: add ``scale`` to them; the decoder is affine, so the hook's value moves
  by ``scale * W_dec[f]`` for each latent ``f`` (steering along decoder directions).
- ``patch_from(source_acts, latents)``: replace them with ``source_acts [batch, pos, d_sae]``, the
  latents of another (counterfactual) prompt of the same length.

``positions``: ``None`` (every spliced position), a sequence of ints (the same positions in every
row; negative ones count from the end) or a ``[batch, pos]`` bool mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.errors import ConfigError, check_choice, check_range
from saelab.splicing import InterventionError, Positions, position_mask

EDIT_KINDS = ("zero", "mean", "clamp", "steer", "patch")


def _latent_tuple(latents: int | Sequence[int] | None) -> tuple[int, ...] | None:
    if latents is None:
        return None
    if isinstance(latents, int):
        latents = (latents,)
    latents = tuple(latents)
    for f in latents:
        check_range("latent", f, 0, None, integer=True)
    if not latents:
        raise ConfigError("latents=() is empty; give at least one latent index, or None for every latent")
    return tuple(int(f) for f in latents)


@dataclass(frozen=True)
class LatentEdit:
    """One edit: ``kind`` in EDIT_KINDS, the ``latents`` it touches, and its operand: ``value`` (clamp
    value or steering scale) or ``tensor`` (mean ablation: ``[d_sae]``; patching: ``[batch, pos, d_sae]``)."""

    kind: str
    latents: tuple[int, ...] | None = None
    value: float = 0.0
    tensor: Tensor | None = None
    positions: Positions = None

    def __post_init__(self) -> None:
        check_choice("edit kind", self.kind, EDIT_KINDS)
        if self.kind in ("clamp", "steer"):
            check_range(f"{self.kind} value", self.value)
        if self.kind in ("mean", "patch") and self.tensor is None:
            raise ConfigError(f"a {self.kind!r} edit needs its tensor (means [d_sae] or source latents "
                              "[batch, pos, d_sae])")
        if self.positions is not None and not isinstance(self.positions, Tensor):
            for p in self.positions:
                check_range("position", p, None, None, integer=True)

    def check(self, d_sae: int) -> None:
        """Refuse latent indices >= ``d_sae`` and operands of the wrong width."""
        bad = [f for f in self.latents or () if f >= d_sae]
        if bad:
            raise InterventionError(f"{self.kind} edit names latents {bad}, but the SAE has d_sae={d_sae} "
                                    f"(accepted: 0..{d_sae - 1})")
        if self.tensor is not None and self.tensor.shape[-1] != d_sae:
            raise InterventionError(f"{self.kind} edit has a tensor of shape {tuple(self.tensor.shape)}; the SAE "
                                    f"needs [..., d_sae={d_sae}]")

    def apply(self, acts: Tensor, spliced: Tensor) -> Tensor:
        """``acts [batch, pos, d_sae]`` with this edit applied where ``spliced [batch, pos]`` and the edit's
        positions are both True (a new tensor)."""
        where = position_mask(self.positions, *acts.shape[:2], device=acts.device) & spliced
        select = torch.zeros(acts.shape[-1], dtype=torch.bool, device=acts.device)
        select[list(self.latents) if self.latents is not None else slice(None)] = True
        cells = where[..., None] & select
        if self.kind == "zero":
            new = torch.zeros_like(acts)
        elif self.kind == "clamp":
            new = torch.full_like(acts, self.value)
        elif self.kind == "steer":
            new = acts + self.value
        elif self.kind == "mean":
            new = self.tensor.to(acts).expand_as(acts)
        else:
            if tuple(self.tensor.shape) != tuple(acts.shape):
                raise InterventionError(
                    f"patch source latents have shape {tuple(self.tensor.shape)} but the run has [batch, pos, d_sae] "
                    f"= {tuple(acts.shape)}; the source prompt must have the same batch size and length (token "
                    "count) as the prompt it is patched into")
            new = self.tensor.to(acts)
        return torch.where(cells, new, acts)


def zero_ablate(latents: int | Sequence[int] | None = None, positions: Positions = None) -> LatentEdit:
    return LatentEdit("zero", _latent_tuple(latents), positions=positions)


def mean_ablate(means: Tensor, latents: int | Sequence[int] | None = None, positions: Positions = None) -> LatentEdit:
    """Set ``latents`` to their values in ``means [d_sae]``."""
    return LatentEdit("mean", _latent_tuple(latents), tensor=means, positions=positions)


def clamp(latents: int | Sequence[int] | None, value: float, positions: Positions = None) -> LatentEdit:
    return LatentEdit("clamp", _latent_tuple(latents), value=value, positions=positions)


def steer(latents: int | Sequence[int], scale: float, positions: Positions = None) -> LatentEdit:
    """Add ``scale * W_dec[f]`` to the hook's value for each latent ``f`` (latent ``f`` += scale)."""
    return LatentEdit("steer", _latent_tuple(latents), value=scale, positions=positions)


def patch_from(source_acts: Tensor, latents: int | Sequence[int] | None = None,
               positions: Positions = None) -> LatentEdit:
    """Replace ``latents`` by those of another prompt, ``source_acts [batch, pos, d_sae]``."""
    return LatentEdit("patch", _latent_tuple(latents), tensor=source_acts, positions=positions)
