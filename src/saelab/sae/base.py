"""The shared base of every coder architecture: parameters, input checks, decoder-norm handling,
and the facts each architecture declares about itself.

A coder reads ``x [..., d_in]`` and predicts ``y [..., d_out]`` (an SAE: y = x). Shapes: latents
``acts [..., d_sae]``; ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ``b_enc [d_sae]``,
``b_dec [d_out]``; a skip transcoder adds ``W_skip [d_in, d_out]`` (zero at init).

``encode``/``decode`` are inference: they use no training state (no dead-latent mask, BatchTopK uses
its learned threshold). ``forward(x, y)`` is the training pass and returns an ``SAEOutput`` with the
prediction, the latents and the named, already-weighted loss terms (their sum is the loss).

An architecture is one module: its class (a subclass of ``SAE``) with its ``Options`` dataclass and
the class attributes below, registered once in ``saelab.sae.registry``. Nothing else names it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saelab.errors import ConfigError, SaelabError
from saelab.sae.config import ArchOptions, NoOptions, SAEConfig
from saelab.sae.dense import Workspace, column_counts, effective_bias
from saelab.sae.sparse import SparsePattern


class InputShapeError(SaelabError):
    """Activations whose last dimension does not match the SAE's d_in."""


@dataclass
class SAEOutput:
    """The result of a training forward pass on ``x [batch, d_in]`` with target ``y [batch, d_out]``.

    x_hat: [batch, d_out] prediction of the target (an SAE's reconstruction). losses: named loss terms, each already multiplied by its
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
    def mse(self) -> Tensor:
        """[] the unweighted mean over the batch of ‖y − ŷ‖² (a metric; the loss terms may weight it)."""
        return self.extras.get("mse", self.losses["mse"])

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
    """Base class. Subclasses set the class attributes and implement ``encode_flat`` and ``training_forward``.

    Facts an architecture declares (class attributes):
    architecture: its name. Options: the dataclass of its own config fields (``saelab.sae.config``).
    sparsity_option, sweep_range: the option a frontier sweep varies and its (sparsest, densest) values.
    fixed_unit_norm: decoder rows are always unit norm; otherwise ``default_unit_norm`` is the default.
    has_b_dec: has a decoder bias (else a zero buffer). has_encoder_weights: W_enc is its own parameter.
    supports_transcoding: may read one site and predict another.
    dense_at_init: about half the latents fire at init (the encoder init scale is reduced).
    uses_dead_mask: the training pass takes the dead-latent mask (AuxK).
    resamples_dead_latents: the trainer may re-initialise dead latents (``resample_dead_every``).
    saelens_names: SAELens' architecture name per kind ("sae", "transcoder", "skip_transcoder"), the
        kinds SAELens has; saelens_native: SAELens' class of that name is this architecture (so a
        SAELens folder of that name loads as this one). Tensors beyond the shared ones: ``saelens_tensors``.
    """

    architecture: ClassVar[str] = ""
    Options: ClassVar[type[ArchOptions]] = NoOptions
    sparsity_option: ClassVar[str] = ""
    sweep_range: ClassVar[tuple[float, float]] = (0.0, 0.0)
    fixed_unit_norm: ClassVar[bool] = True
    default_unit_norm: ClassVar[bool] = True
    has_b_dec: ClassVar[bool] = True
    has_encoder_weights: ClassVar[bool] = True
    supports_transcoding: ClassVar[bool] = True
    dense_at_init: ClassVar[bool] = False
    uses_dead_mask: ClassVar[bool] = False
    resamples_dead_latents: ClassVar[bool] = False
    saelens_names: ClassVar[dict[str, str]] = {}
    saelens_native: ClassVar[bool] = True
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
        b_dec = torch.zeros(cfg.d_out, dtype=cfg.torch_dtype)
        if self.has_b_dec:
            self.b_dec = nn.Parameter(b_dec)
        else:
            self.register_buffer("b_dec", b_dec, persistent=False)
        self.init_encoder(generator)
        if cfg.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_out, dtype=cfg.torch_dtype))

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The config fields this architecture accepts beyond the shared core."""
        return cls.Options.field_names()

    # ----- construction -----
    def _unit_rows(self, n_cols: int, norm: float, generator: torch.Generator | None) -> Tensor:
        """[d_sae, n_cols] He-uniform directions with rows of norm ``norm``."""
        bound = (6.0 / n_cols) ** 0.5
        W = torch.rand(self.cfg.d_sae, n_cols, generator=generator, dtype=torch.float64) * 2 - 1  # noqa: N806
        W *= bound
        W *= norm / W.norm(dim=1, keepdim=True)
        return W.to(self.cfg.torch_dtype)

    def init_decoder(self, generator: torch.Generator | None) -> Tensor:
        """[d_sae, d_out] He-uniform directions with rows of norm ``decoder_init_norm``."""
        return self._unit_rows(self.cfg.d_out, self.cfg.decoder_init_norm, generator)

    def initial_encoder(self, generator: torch.Generator | None) -> Tensor:
        """[d_in, d_sae]: encoder_init_scale · W_decᵀ when d_in = d_out, else an independent draw with
        columns of the decoder rows' norm."""
        if self.cfg.d_in == self.cfg.d_out:
            W = self.W_dec.detach().t()  # noqa: N806
        else:
            W = self._unit_rows(self.cfg.d_in, self.cfg.decoder_init_norm, generator).t()  # noqa: N806
        return W.contiguous() * self.cfg.encoder_init_scale

    def init_encoder(self, generator: torch.Generator | None) -> None:
        """W_enc (``initial_encoder``) and b_enc = 0 (subclasses add their own parameters)."""
        self.W_enc = nn.Parameter(self.initial_encoder(generator))
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.cfg.torch_dtype))

    # ----- shapes -----
    def check_input(self, x: Tensor, what: str = "activations") -> None:
        """Refuse ``x`` unless it is ``[..., d_in]``, naming both shapes and the hook."""
        self._check_width(x, self.cfg.d_in, "d_in", self.cfg.hook_name, what)

    def _check_width(self, x: Tensor, width: int, label: str, hook: str, what: str) -> None:
        if x.ndim == 0 or x.shape[-1] != width:
            at = f" from hook {hook!r}" if hook else ""
            raise InputShapeError(
                f"{what}{at} have shape {tuple(x.shape)} but SAE {self.cfg.name!r} expects "
                f"[..., {label}={width}]; train or load an SAE for this hook's width, or pass the "
                f"activations of the hook it was trained on")

    def _flat(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return x.reshape(-1, self.cfg.d_in).to(self.W_dec.dtype)

    def _flat_target(self, y: Tensor, n_rows: int) -> Tensor:
        self._check_width(y, self.cfg.d_out, "d_out", self.cfg.hook_name_out, "targets")
        flat = y.reshape(-1, self.cfg.d_out).to(self.W_dec.dtype)
        if flat.shape[0] != n_rows:
            raise InputShapeError(f"targets have {flat.shape[0]} rows but the inputs have {n_rows}; give one "
                                  f"target per input token (SAE {self.cfg.name!r})")
        return flat

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

    def decode(self, acts: Tensor, x: Tensor | None = None) -> Tensor:
        """[..., d_sae] -> [..., d_out] prediction. A skip transcoder adds ``x @ W_skip`` and needs the
        input ``x [..., d_in]`` the latents came from."""
        flat = self._check_acts(acts)
        out = self.decode_flat(flat)
        if self.cfg.skip_connection:
            if x is None:
                raise InputShapeError(f"SAE {self.cfg.name!r} is a skip transcoder: decode(acts, x=...) needs the "
                                      "input activations for its skip term x @ W_skip")
            out = self.add_skip(out, self._flat(x))
        return out.reshape(*acts.shape[:-1], self.cfg.d_out)

    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(encode(x), x): [..., d_in] -> [..., d_out]."""
        return self.decode(self.encode(x), x)

    @abstractmethod
    def encode_flat(self, x: Tensor) -> Tensor:
        """[n, d_in] -> [n, d_sae]."""

    def linear_encoder(self) -> tuple[Tensor, Tensor]:
        """(W [d_in, d_sae], bias [d_sae]): the affine map whose output the activation function
        thresholds, on inputs already centred by b_dec when ``apply_b_dec_to_input``."""
        return self.W_enc, self.b_enc

    def decode_flat(self, acts: Tensor) -> Tensor:
        """[n, d_sae] -> [n, d_out], without the skip term."""
        return torch.addmm(self.b_dec, acts, self.W_dec)

    def add_skip(self, out: Tensor, x: Tensor) -> Tensor:
        """out + x @ W_skip for a skip transcoder (flat ``out [n, d_out]``, ``x [n, d_in]``), else out."""
        return torch.addmm(out, x, self.W_skip) if self.cfg.skip_connection else out

    # ----- training -----
    def forward(self, x: Tensor, y: Tensor | None = None, *, sparsity_scale: float = 1.0,
                dead_mask: Tensor | None = None) -> SAEOutput:
        """Training pass on ``x [batch, d_in]`` predicting ``y [batch, d_out]`` (default: y = x, an SAE).

        sparsity_scale: multiplies the sparsity coefficient (warm-up from 0 to 1).
        dead_mask: [d_sae] bool, latents counted as dead (used by the AuxK loss).
        """
        flat = self._flat(x)
        if y is None:
            if self.cfg.is_transcoder:
                raise InputShapeError(f"SAE {self.cfg.name!r} is a transcoder ({self.cfg.hook_name!r} -> "
                                      f"{self.cfg.hook_name_out!r}): its training pass needs the target y")
            target = flat
        else:
            target = self._flat_target(y, flat.shape[0])
        return self.training_forward(flat, target, sparsity_scale, dead_mask)

    @abstractmethod
    def training_forward(self, x: Tensor, y: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> SAEOutput:
        """The training pass on flat ``x [batch, d_in]`` with target ``y [batch, d_out]``."""

    @staticmethod
    def mse(y: Tensor, y_hat: Tensor) -> Tensor:
        """mean over the batch of ‖y − ŷ‖²."""
        return (y_hat - y).pow(2).sum(-1).mean()

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

    def logged_values(self) -> dict[str, float]:
        """Architecture-specific figures for the training log (e.g. a threshold); read at logging steps."""
        return {}

    # ----- weights for folders -----
    @torch.no_grad()
    def fold_scales_(self, in_factor: float, out_factor: float | None = None) -> None:
        """Make a coder trained on ``x / c_in`` predicting ``y / c_out`` work on raw activations, same latents.

        (x/c_in − b_dec) W_enc = (x − c_in·b_dec)(W_enc / c_in) (b_dec enters the input only when
        c_in = c_out), and c_out·ŷ = acts (c_out·W_dec) + c_out·b_dec + x (c_out/c_in · W_skip).
        """
        out_factor = in_factor if out_factor is None else out_factor
        check_scale_factor(in_factor)
        check_scale_factor(out_factor)
        self.W_enc.div_(in_factor)
        self.W_dec.mul_(out_factor)
        self.b_dec.mul_(out_factor)
        if self.cfg.skip_connection:
            self.W_skip.mul_(out_factor / in_factor)

    def fold_input_scale_(self, factor: float) -> None:
        """``fold_scales_`` with one factor for input and target (an SAE)."""
        self.fold_scales_(factor, factor)

    def saelens_tensors(self) -> dict[str, Tensor]:
        """The tensors of this architecture beyond W_enc, W_dec, b_dec (and W_skip), SAELens names."""
        return {"b_enc": self.b_enc}

    @classmethod
    def saelens_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """Shapes of ``saelens_tensors`` for ``cfg``."""
        return {"b_enc": (cfg.d_sae,)}

    @classmethod
    def state_from_saelens(cls, cfg: SAEConfig, tensors: dict[str, Tensor], where: str) -> dict[str, Tensor]:
        """SAELens-named tensors (shapes checked) -> this architecture's ``state_dict`` entries."""
        return tensors

    @classmethod
    def saelens_cfg_fields(cls, cfg: SAEConfig) -> dict[str, Any]:
        """Extra fields of SAELens' cfg.json for this architecture (e.g. ``k``)."""
        return {}

    @classmethod
    def options_from_saelens(cls, core: dict[str, Any]) -> dict[str, Any]:
        """This architecture's config options read from a SAELens cfg.json (e.g. ``k``)."""
        return {}

    def extra_repr(self) -> str:
        c = self.cfg
        hooks = repr(c.hook_name) if not c.is_transcoder else f"{c.hook_name!r} -> {c.hook_name_out!r}"
        return f"name={c.name!r}, hook={hooks}, d_in={c.d_in}, d_out={c.d_out}, d_sae={c.d_sae}"
