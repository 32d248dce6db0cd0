"""Architecture name -> coder class, and ``make_sae``.

Registering an architecture is one line here: its module (one file, the class and its ``Options``)
carries every fact the rest of saelab asks about it.
"""

from __future__ import annotations

import torch

from saelab.errors import check_choice
from saelab.sae.base import SAE
from saelab.sae.batchtopk import BatchTopKSAE
from saelab.sae.config import SAEConfig
from saelab.sae.gated import GatedSAE
from saelab.sae.jumprelu import JumpReLUSAE
from saelab.sae.matryoshka import MatryoshkaBatchTopKSAE
from saelab.sae.relu import ReLUSAE
from saelab.sae.tied import TiedSAE
from saelab.sae.topk import TopKSAE

SAE_CLASSES: dict[str, type[SAE]] = {}


def register(cls: type[SAE]) -> type[SAE]:
    """Add an architecture class (usable as a decorator); its ``architecture`` name must be new."""
    if not cls.architecture or cls.architecture in SAE_CLASSES:
        raise ValueError(f"cannot register {cls.__name__}: architecture name {cls.architecture!r} is empty or taken")
    SAE_CLASSES[cls.architecture] = cls
    return cls


for _cls in (ReLUSAE, TiedSAE, GatedSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, MatryoshkaBatchTopKSAE):
    register(_cls)
ARCHITECTURES: tuple[str, ...] = tuple(SAE_CLASSES)


def architectures() -> tuple[str, ...]:
    """The registered architecture names, in registration order (including any registered later)."""
    return tuple(SAE_CLASSES)


def sae_class(architecture: str) -> type[SAE]:
    check_choice("architecture", architecture, SAE_CLASSES)
    return SAE_CLASSES[architecture]


def make_sae(cfg: SAEConfig, generator: torch.Generator | None = None, seed: int | None = None) -> SAE:
    """Build the coder for ``cfg``, initialised from ``generator`` (or a fresh one seeded with ``seed``)."""
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    return sae_class(cfg.architecture)(cfg, generator)
