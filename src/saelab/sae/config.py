"""The typed, validated configuration of one coder: a shared core plus its architecture's own options.

A coder reads activations ``x [d_in]`` at ``hook_name`` and predicts ``y [d_out]`` at ``hook_name_out``:
an SAE predicts its own input (``hook_name_out = hook_name``, ``d_out = d_in``, the default); a
transcoder predicts another site (e.g. ``blocks.L.hook_resid_mid`` -> ``blocks.L.hook_mlp_out``), and
a skip transcoder adds a linear term ``x @ W_skip`` (``skip_connection``).

The core fields are those every architecture shares. Each architecture class (``saelab.sae.<arch>``)
declares its own ``Options`` dataclass (sparsity knob, auxiliary losses, ...) and the facts the core
validation needs (``fixed_unit_norm``, ``has_b_dec``, ...); ``SAEConfig`` looks them up in the registry,
so this file names no architecture. Flat dicts (``to_dict``/``from_dict``, sweep files, cfg.json) hold
core and option fields side by side, and option fields read as attributes (``cfg.k``).

Coefficient defaults assume inputs scaled so that E‖x‖² = 1 (the normalisation the trainer's batch
sources apply; see ``saelab.train``), with the reconstruction loss ``mean_batch ‖y − ŷ‖²``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from saelab.errors import ConfigError, check_choice, check_range

if TYPE_CHECKING:
    from saelab.sae.base import SAE

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
CORE_FIELDS = ("architecture", "d_in", "d_sae", "hook_name", "name", "hook_name_out", "d_out", "skip_connection",
               "unit_norm_decoder", "apply_b_dec_to_input", "decoder_init_norm", "encoder_init_scale", "lr", "dtype")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def default_k_aux(d_in: int, d_sae: int) -> int:
    """Gao et al.: a power of two near d_in / 2, capped at d_sae."""
    power = 1 << max(0, round(math.log2(max(1, d_in // 2))))
    return min(power, d_sae)


@dataclass
class ArchOptions:
    """Base of an architecture's own settings. ``resolve`` fills defaults that depend on the core
    (``cfg.d_in``, ``cfg.d_sae``) and validates, raising ``ConfigError`` that names field and value."""

    def resolve(self, cfg: SAEConfig) -> None:
        """Fill derived defaults and validate (subclasses extend)."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


@dataclass
class NoOptions(ArchOptions):
    """An architecture without settings of its own."""


class SAEConfig:
    """One coder to build (or train).

    architecture: a registered architecture (``saelab.sae.ARCHITECTURES``).
    d_in, d_sae: input width and number of latents. d_out: output width (default d_in).
    hook_name: the site it reads (TransformerLens name); hook_name_out: the site it predicts (default
        hook_name: an SAE). name: unique within a run and the folder name; default from hooks/arch/width.
    skip_connection: add a zero-initialised linear skip term ``x @ W_skip [d_in, d_out]`` (transcoders only).
    unit_norm_decoder: architectures with ``fixed_unit_norm`` always keep unit-norm decoder rows; the
        others choose (their class gives the default; e.g. relu False with L1 weighted by decoder norms).
    apply_b_dec_to_input: subtract b_dec before encoding (default True for SAEs with a decoder bias;
        refused for transcoders, whose b_dec lives in the output space).
    decoder_init_norm: row norm at init (default 1 with unit-norm decoders, 0.1 otherwise).
    encoder_init_scale: W_enc = scale · W_decᵀ at init (when d_in = d_out; else an independent draw of
        the same norm). Default 1 (Gao et al., Gemma Scope), except for architectures whose latents are
        dense at init (``dense_at_init``) with unit-norm decoder rows: there min(1, 2·d_in/d_sae), so the
        first reconstruction has the input's scale instead of d_sae/(2·d_in) times it.
    lr: this coder's learning rate when trained (default: the run's TrainConfig.lr).
    dtype: parameter dtype.
    **options: the architecture's own fields (its ``Options`` dataclass), e.g. ``k`` for topk.
    """

    def __init__(self, architecture: str, d_in: int, d_sae: int, hook_name: str = "", name: str = "", *,
                 hook_name_out: str = "", d_out: int | None = None, skip_connection: bool = False,
                 unit_norm_decoder: bool | None = None, apply_b_dec_to_input: bool | None = None,
                 decoder_init_norm: float | None = None, encoder_init_scale: float | None = None,
                 lr: float | None = None, dtype: str = "float32", **options: Any):
        from saelab.sae.registry import sae_class

        cls = sae_class(architecture)
        self.architecture = architecture
        check_range("d_in", d_in, 1, integer=True)
        check_range("d_sae", d_sae, 1, integer=True)
        self.d_in, self.d_sae = int(d_in), int(d_sae)
        if d_out is not None:
            check_range("d_out", d_out, 1, integer=True)
        self.d_out = int(d_out) if d_out is not None else self.d_in
        check_choice("dtype", dtype, DTYPES)
        self.dtype = dtype
        if lr is not None:
            check_range("lr", lr, 0, lo_open=True)
        self.lr = lr
        for field_name, value in (("hook_name", hook_name), ("hook_name_out", hook_name_out), ("name", name)):
            if not isinstance(value, str):
                raise ConfigError(f"{field_name}={value!r} must be a string (or empty for the default)")
        self.hook_name = hook_name
        self.hook_name_out = hook_name_out or hook_name
        for flag, value in (("unit_norm_decoder", unit_norm_decoder), ("apply_b_dec_to_input", apply_b_dec_to_input),
                            ("skip_connection", skip_connection)):
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{flag}={value!r} must be true or false (or unset for the default)")
        self.skip_connection = skip_connection
        if skip_connection and not self.is_transcoder:
            raise ConfigError("skip_connection=True needs a transcoder (hook_name_out or d_out different from the "
                              "input's); an SAE with a linear skip term could learn the identity")
        if self.is_transcoder and not cls.supports_transcoding:
            raise ConfigError(f"architecture {architecture!r} reads and writes one site (its encoder is its decoder's "
                              "transpose), so it cannot be a transcoder; leave hook_name_out and d_out unset")
        self._check_options(cls, options)
        self.options: ArchOptions = cls.Options(**options)
        self._resolve_core(cls, unit_norm_decoder, apply_b_dec_to_input, decoder_init_norm, encoder_init_scale)
        self.options.resolve(self)
        self.name = name or default_name(self)
        if not _NAME_RE.match(self.name):
            raise ConfigError(f"name={self.name!r} is not accepted; use letters, digits and . _ - + = "
                              "(it names a folder), starting with a letter or digit")

    def _check_options(self, cls: type[SAE], options: dict[str, Any]) -> None:
        from saelab.sae.registry import architectures, sae_class

        accepted = cls.option_names()
        for key, value in options.items():
            if key in accepted:
                continue
            users = [a for a in architectures() if key in sae_class(a).option_names()]
            if users:
                raise ConfigError(f"{key}={value!r} is not used by architecture {self.architecture!r}; it applies "
                                  f"to: {', '.join(users)}")
            raise ConfigError(f"unknown SAE config key {key!r}; accepted: {', '.join((*CORE_FIELDS, *accepted))}")

    def _resolve_core(self, cls: type[SAE], unit_norm: bool | None, apply_b_dec: bool | None,
                      init_norm: float | None, init_scale: float | None) -> None:
        arch = self.architecture
        if cls.fixed_unit_norm:
            if unit_norm is False:
                raise ConfigError(f"unit_norm_decoder=False is not accepted for architecture {arch!r}; accepted: "
                                  "True (or leave it unset); only architectures with a free decoder norm "
                                  "(e.g. relu, gated) may train with one")
            self.unit_norm_decoder = True
        else:
            self.unit_norm_decoder = cls.default_unit_norm if unit_norm is None else unit_norm
        if not cls.has_b_dec or self.is_transcoder:
            if apply_b_dec:
                why = ("it has no decoder bias" if not cls.has_b_dec
                       else "a transcoder's b_dec lives in the output space")
                raise ConfigError(f"apply_b_dec_to_input=True is not accepted for this {arch!r} coder: {why}; "
                                  "accepted: False (or leave it unset)")
            self.apply_b_dec_to_input = False
        else:
            self.apply_b_dec_to_input = True if apply_b_dec is None else apply_b_dec
        self.decoder_init_norm = _default(init_norm, 1.0 if self.unit_norm_decoder else 0.1)
        check_range("decoder_init_norm", self.decoder_init_norm, 0, lo_open=True)
        if self.unit_norm_decoder and self.decoder_init_norm != 1.0:
            raise ConfigError(f"decoder_init_norm={self.decoder_init_norm!r} is not accepted with a unit-norm "
                              "decoder; accepted: 1.0 (or leave it unset)")
        dense = cls.dense_at_init and self.unit_norm_decoder
        self.encoder_init_scale = _default(init_scale, min(1.0, 2 * self.d_in / self.d_sae) if dense else 1.0)
        check_range("encoder_init_scale", self.encoder_init_scale, 0, lo_open=True)
        if not cls.has_encoder_weights and self.encoder_init_scale != 1.0:
            raise ConfigError(f"encoder_init_scale={self.encoder_init_scale!r} is not accepted for architecture "
                              f"{arch!r} (its encoder is the decoder's transpose); accepted: 1.0 (or leave it unset)")

    # ----- what kind of coder -----
    @property
    def is_transcoder(self) -> bool:
        """Whether it predicts another site (or width) than the one it reads."""
        return self.hook_name_out != self.hook_name or self.d_out != self.d_in

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def __getattr__(self, key: str) -> Any:
        options = self.__dict__.get("options")
        if options is not None and key in options.field_names():
            return getattr(options, key)
        raise AttributeError(f"SAEConfig of architecture {self.__dict__.get('architecture')!r} has no field {key!r}")

    # ----- dicts -----
    def to_dict(self) -> dict[str, Any]:
        """All fields, core then options (defaults resolved), JSON-serialisable."""
        core = {key: getattr(self, key) for key in CORE_FIELDS}
        return {**core, **dataclasses.asdict(self.options)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Build from a flat dict (a sweep file entry, cfg.json); unknown keys are refused with the accepted list."""
        if not isinstance(data, dict):
            raise ConfigError(f"an SAE config must be a JSON object, got {type(data).__name__}")
        for required in ("architecture", "d_in", "d_sae"):
            if required not in data:
                raise ConfigError(f"SAE config is missing {required!r}; required: architecture, d_in, d_sae")
        return cls(**data)

    def replace(self, **changes: Any) -> SAEConfig:
        """A copy with some fields changed (validated again)."""
        return SAEConfig.from_dict({**self.to_dict(), **changes})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SAEConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"SAEConfig({fields})"


def default_name(cfg: SAEConfig) -> str:
    """``{hook}.{arch}.{d_sae}`` for an SAE, ``{hook}.to.{hook_out}.{arch}[.skip].{d_sae}`` for a transcoder."""
    hook = _folder_safe(cfg.hook_name) or "sae"
    if cfg.is_transcoder:
        hook = f"{hook}.to.{_folder_safe(cfg.hook_name_out) or cfg.d_out}"
    skip = ".skip" if cfg.skip_connection else ""
    return f"{hook}.{cfg.architecture}{skip}.{cfg.d_sae}"


def _folder_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text).strip("._-")


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value
