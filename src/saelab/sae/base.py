"""The shared base of every SAE architecture: parameters, input checks, decoder-norm handling.

Shapes: inputs ``x [..., d_in]``; latents ``acts [..., d_sae]``; ``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]``.

``encode``/``decode`` are inference: they use no training state (no dead-latent mask, BatchTopK uses
its learned threshold). ``forward(x)`` is the training pass and returns an ``SAEOutput`` with the
reconstruction, the latents and the named, already-weighted loss terms (their sum is the loss).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from saelab.errors import ConfigError, SaelabError
from saelab.sae.config import SAEConfig
from saelab.sae.dense import Workspace, column_counts, effective_bias
from saelab.sae.sparse import SparsePattern


class InputShapeError(SaelabError):
    """Activations whose last dimension does not match the SAE's d_in."""


@dataclass
class SAEOutput:
    """The result of a training forward pass on ``x [batch, d_in]``.

    x_hat: [batch, d_in] reconstruction. losses: named loss terms, each already multiplied by its
    coefficient (``loss`` is their sum). Latents are dense (``dense_acts [batch, d_sae]``) or sparse
    (``pattern`` + ``values [nnz]``); ``acts`` always gives the dense form.
    """

    x_hat: Tensor
    losses: dict[str, Tensor]
    dense_acts: Tensor | None = None
    pattern: SparsePattern | None = None
    values: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> Tensor:
        return sum(self.losses.values())  # type: ignore[return-value]

    @property
    def acts(self) -> Tensor:
        """[batch, d_sae] latent activations."""
        if self.dense_acts is not None:
            return self.dense_acts
        return self.pattern.scatter(self.values)

    @torch.no_grad()
    def fire_counts(self) -> Tensor:
        """[d_sae] int64: on how many tokens of the batch each latent was non-zero (computed once)."""
        if "fire_counts" not in self.extras:
            if self.dense_acts is not None:
                counts = column_counts(self.dense_acts.detach())
            else:
                active = self.pattern.cols[self.values != 0]
                counts = torch.bincount(active, minlength=self.pattern.n_cols)
            self.extras["fire_counts"] = counts
        return self.extras["fire_counts"]

    @property
    def n_tokens(self) -> int:
        return self.x_hat.shape[0]


def check_scale_factor(factor: float) -> None:
    """Refuse a normalisation factor that is not a positive finite number."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise ConfigError(f"normalization factor={factor!r} is not accepted; accepted: a positive finite number")


class SAE(nn.Module, ABC):
    """Base class. Subclasses set ``architecture`` and implement ``encode_flat`` and ``training_forward``."""

    architecture: ClassVar[str] = ""
    has_b_dec: ClassVar[bool] = True
    cfg: SAEConfig

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__()
        if cfg.architecture != self.architecture:
            raise ConfigError(f"architecture={cfg.architecture!r} cannot build a {type(self).__name__}; "
                              f"it needs architecture={self.architecture!r} (use saelab.sae.make_sae)")
        self.cfg = cfg
        self.workspace: Workspace | None = None  # reusable training buffers; set by the trainer
        W_dec = self.init_decoder(generator)  # noqa: N806
        self.W_dec = nn.Parameter(W_dec)
        b_dec = torch.zeros(cfg.d_in, dtype=cfg.torch_dtype)
        if self.has_b_dec:
            self.b_dec = nn.Parameter(b_dec)
        else:
            self.register_buffer("b_dec", b_dec, persistent=False)
        self.init_encoder()

    # ----- construction -----
    def init_decoder(self, generator: torch.Generator | None) -> Tensor:
        """[d_sae, d_in] He-uniform directions with rows of norm ``decoder_init_norm``."""
        bound = (6.0 / self.cfg.d_in) ** 0.5
        W = torch.rand(self.cfg.d_sae, self.cfg.d_in, generator=generator, dtype=torch.float64) * 2 - 1  # noqa: N806
        W *= bound
        W *= self.cfg.decoder_init_norm / W.norm(dim=1, keepdim=True)
        return W.to(self.cfg.torch_dtype)

    def init_encoder(self) -> None:
        """W_enc = encoder_init_scale · W_decᵀ and b_enc = 0 (subclasses add their own parameters)."""
        self.W_enc = nn.Parameter(self.W_dec.detach().t().contiguous() * self.cfg.encoder_init_scale)
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.cfg.torch_dtype))

    # ----- shapes -----
    def check_input(self, x: Tensor, what: str = "activations") -> None:
        """Refuse ``x`` unless it is ``[..., d_in]``, naming both shapes and the hook."""
        if x.ndim == 0 or x.shape[-1] != self.cfg.d_in:
            hook = f" from hook {self.cfg.hook_name!r}" if self.cfg.hook_name else ""
            raise InputShapeError(
                f"{what}{hook} have shape {tuple(x.shape)} but SAE {self.cfg.name!r} expects "
                f"[..., d_in={self.cfg.d_in}]; train or load an SAE for this hook's width, or pass the "
                f"activations of the hook it was trained on")

    def _flat(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return x.reshape(-1, self.cfg.d_in).to(self.W_dec.dtype)

    def _check_acts(self, acts: Tensor) -> Tensor:
        if acts.ndim == 0 or acts.shape[-1] != self.cfg.d_sae:
            raise InputShapeError(f"latents have shape {tuple(acts.shape)} but SAE {self.cfg.name!r} expects "
                                  f"[..., d_sae={self.cfg.d_sae}]")
        return acts.reshape(-1, self.cfg.d_sae).to(self.W_dec.dtype)

    def _centered(self, x: Tensor) -> Tensor:
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def preacts(self, x: Tensor) -> Tensor:
        """[n, d_sae] encoder pre-activations (x − b_dec) @ W_enc + b_enc of flat ``x [n, d_in]``."""
        return torch.addmm(self.b_enc, self._centered(x), self.W_enc)

    def training_preacts(self, x: Tensor) -> Tensor:
        """``preacts`` as x @ W_enc + (b_enc − b_dec @ W_enc): the same values, but the backward pass
        forms no gradient for the centred input (a full extra matmul)."""
        return torch.addmm(effective_bias(self.b_enc, self.b_dec, self.W_enc, self.cfg.apply_b_dec_to_input),
                           x, self.W_enc)

    # ----- inference -----
    def encode(self, x: Tensor) -> Tensor:
        """[..., d_in] -> [..., d_sae] latent activations."""
        flat = self._flat(x)
        return self.encode_flat(flat).reshape(*x.shape[:-1], self.cfg.d_sae)

    def decode(self, acts: Tensor) -> Tensor:
        """[..., d_sae] -> [..., d_in] reconstruction."""
        flat = self._check_acts(acts)
        return self.decode_flat(flat).reshape(*acts.shape[:-1], self.cfg.d_in)

    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(encode(x))."""
        return self.decode(self.encode(x))

    @abstractmethod
    def encode_flat(self, x: Tensor) -> Tensor:
        """[n, d_in] -> [n, d_sae]."""

    def decode_flat(self, acts: Tensor) -> Tensor:
        return torch.addmm(self.b_dec, acts, self.W_dec)

    # ----- training -----
    def forward(self, x: Tensor, *, sparsity_scale: float = 1.0, dead_mask: Tensor | None = None) -> SAEOutput:
        """Training pass on ``x [batch, d_in]``.

        sparsity_scale: multiplies the sparsity coefficient (warm-up from 0 to 1).
        dead_mask: [d_sae] bool, latents counted as dead (used by TopK/BatchTopK's AuxK loss).
        """
        return self.training_forward(self._flat(x), sparsity_scale, dead_mask)

    @abstractmethod
    def training_forward(self, x: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> SAEOutput:
        """The training pass on flat ``x [batch, d_in]``."""

    @staticmethod
    def mse(x: Tensor, x_hat: Tensor) -> Tensor:
        """mean over the batch of ‖x − x̂‖²."""
        return (x_hat - x).pow(2).sum(-1).mean()

    def decoder_norms(self) -> Tensor:
        """[d_sae] row norms of W_dec."""
        return self.W_dec.norm(dim=1)

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """For unit-norm decoders: drop the gradient component parallel to each decoder row."""
        if not self.cfg.unit_norm_decoder or self.W_dec.grad is None:
            return
        W, g = self.W_dec, self.W_dec.grad  # noqa: N806
        parallel = torch.linalg.vecdot(g, W, dim=1)
        g.addcmul_(W, parallel[:, None], value=-1)

    @torch.no_grad()
    def after_step_(self, out: SAEOutput | None = None) -> None:
        """Called after each optimiser step: renormalise unit-norm decoder rows (subclasses add more)."""
        if self.cfg.unit_norm_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    # ----- weights for folders -----
    @torch.no_grad()
    def fold_input_scale_(self, factor: float) -> None:
        """Make an SAE trained on ``x / factor`` work on raw ``x`` with the same latents.

        (x/c − b_dec) W_enc = (x − c·b_dec)(W_enc / c), and c·x̂ = acts (c·W_dec) + c·b_dec.
        """
        check_scale_factor(factor)
        self.W_enc.div_(factor)
        self.W_dec.mul_(factor)
        self.b_dec.mul_(factor)

    def extra_repr(self) -> str:
        c = self.cfg
        return f"name={c.name!r}, hook={c.hook_name!r}, d_in={c.d_in}, d_sae={c.d_sae}"
