"""Architecture name -> SAE class, and ``make_sae``."""

from __future__ import annotations

import torch

from saelab.errors import check_choice
from saelab.sae.base import SAE
from saelab.sae.batchtopk import BatchTopKSAE
from saelab.sae.config import ARCHITECTURES, SAEConfig
from saelab.sae.gated import GatedSAE
from saelab.sae.jumprelu import JumpReLUSAE
from saelab.sae.relu import ReLUSAE
from saelab.sae.tied import TiedSAE
from saelab.sae.topk import TopKSAE

SAE_CLASSES: dict[str, type[SAE]] = {cls.architecture: cls for cls in (
    ReLUSAE, TiedSAE, GatedSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE)}
assert tuple(SAE_CLASSES) == ARCHITECTURES


def sae_class(architecture: str) -> type[SAE]:
    check_choice("architecture", architecture, SAE_CLASSES)
    return SAE_CLASSES[architecture]


def make_sae(cfg: SAEConfig, generator: torch.Generator | None = None, seed: int | None = None) -> SAE:
    """Build the SAE for ``cfg``, initialised from ``generator`` (or a fresh one seeded with ``seed``)."""
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    return sae_class(cfg.architecture)(cfg, generator)
