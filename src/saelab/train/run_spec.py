"""A training run as one typed object: ``RunSpec``, built once, saved once to ``run.json``, trained by ``train_run``.

::

    spec = RunSpec.create([{"architecture": "topk", "hook_name": "blocks.1.attn.hook_z", "k": 16}],
                          TrainConfig(tokens=2_000_000), "runs/x", model=ModelSpec("toy"))
    spec.save()                          # runs/x/run.json
    saes = train_run(spec)               # {name: SAE}; folders under runs/x/saes/
    saes = train_run(RunSpec.load("runs/x"), resume=True)   # continue an interrupted run

``create`` resolves partial SAE configs against the hooks' widths (``d_in``, ``d_out`` of a
transcoder's ``hook_name_out``, ``d_sae`` defaulting to 8·d_in) and records the data's normalisation
factors, so the saved spec alone reproduces the run's batches: a resumed run, or every rank of a
torchrun launch, loads it and sees the same data as the run that wrote it. ``saelab train`` turns its
command line into a ``RunSpec``; ``saelab demo`` builds one in code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from saelab.data.store import StoreConfig, TextSpec
from saelab.errors import ConfigError, SaelabError, check_range
from saelab.fileio import atomic_write_json
from saelab.sae.config import SAEConfig
from saelab.train.config import TrainConfig

if TYPE_CHECKING:
    from saelab.models import LoadedModel
    from saelab.sae.base import SAE

RUN_FILE = "run.json"
FORMAT = "saelab-run"
VERSION = 2
_T = TypeVar("_T")


@dataclass
class ModelSpec:
    """The model whose activations are trained on: a ``load_model`` spec, its dtype and device."""

    name: str = "toy"
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        for key in ("name", "dtype", "device"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"model.{key}={getattr(self, key)!r} must be a non-empty string")

    def load(self, device: str | None = None) -> LoadedModel:
        """The loaded model, on ``device`` (default: this spec's)."""
        from saelab.models import load_model

        return load_model(self.name, device=device or self.device, dtype=self.dtype)


@dataclass
class DataSpec:
    """Where a run's activations come from and how they are batched.

    text: the text source and packing (unused with ``cache``). cache: an activation cache folder read
    instead of running the model. include_special_tokens: keep BOS/EOS/PAD rows. model_batch_size:
    windows per forward pass; buffer_windows: windows mixed in one shuffle buffer (rounded down to a
    multiple of model_batch_size). seed: the data order.
    """

    text: TextSpec = field(default_factory=TextSpec)
    cache: str | None = None
    include_special_tokens: bool = False
    model_batch_size: int = 16
    buffer_windows: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.text, dict):
            self.text = _from_fields(TextSpec, self.text, "data.text")
        if self.cache is not None and (not isinstance(self.cache, str) or not self.cache):
            raise ConfigError(f"data.cache={self.cache!r} must be a folder path (or null)")
        if not isinstance(self.include_special_tokens, bool):
            raise ConfigError(f"include_special_tokens={self.include_special_tokens!r} must be true or false")
        check_range("model_batch_size", self.model_batch_size, 1, integer=True)
        check_range("buffer_windows", self.buffer_windows, 1, integer=True)
        check_range("seed", self.seed, 0, integer=True)

    def store_config(self, batch_size: int, factors: dict[str, float] | None = None,
                     split_across_ranks: bool = True) -> StoreConfig:
        """The ``ActivationStore`` settings of this data at ``batch_size`` rows per batch (repeating)."""
        mbs = self.model_batch_size
        return StoreConfig(packing=self.text.packing(), batch_size=batch_size, model_batch_size=mbs,
                           buffer_windows=max(mbs, self.buffer_windows - self.buffer_windows % mbs), seed=self.seed,
                           exclude_special_tokens=not self.include_special_tokens, normalization_factors=factors,
                           repeat=True, split_across_ranks=split_across_ranks)


@dataclass
class RunSpec:
    """Everything a training run is (see the module docstring).

    saes: the coders trained together (resolved configs). train: how. model, data: where the
    activations come from. out: the run folder (run.json, metrics, checkpoints, saes/).
    normalization_factors: ``{hook: factor}`` the batches are divided by (recorded by ``create``).
    """

    saes: list[SAEConfig]
    train: TrainConfig
    out: str
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    normalization_factors: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.saes, list) or not self.saes:
            raise ConfigError(f"saes={self.saes!r} must be a non-empty list of SAE configs")
        self.saes = [c if isinstance(c, SAEConfig) else SAEConfig.from_dict(c) for c in self.saes]
        names = [c.name for c in self.saes]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"SAE names must be unique within a run; repeated: {', '.join(repeated)}")
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        if isinstance(self.model, dict):
            self.model = _from_fields(ModelSpec, self.model, "model")
        if isinstance(self.data, dict):
            self.data = _from_fields(DataSpec, self.data, "data")
        self.out = str(self.out)
        if self.normalization_factors is not None:
            missing = sorted(set(self.hooks) - set(self.normalization_factors))
            if missing:
                raise ConfigError(f"normalization_factors has no factor for hook(s) {', '.join(missing)}")
            for hook, value in self.normalization_factors.items():
                check_range(f"normalization_factors[{hook!r}]", value, 0, lo_open=True)

    @property
    def hooks(self) -> list[str]:
        """Every hook the run reads: the SAEs' inputs and the transcoders' targets."""
        return _hooks(self.saes)

    @classmethod
    def create(cls, saes: list[dict[str, Any]], train: TrainConfig, out: str | Path, *,
               model: ModelSpec | None = None, data: DataSpec | None = None,
               lm: LoadedModel | None = None) -> RunSpec:
        """Resolve partial SAE configs (``hook_name`` required; ``d_in``/``d_out`` from the hooks' widths,
        ``d_sae`` default 8·d_in) and record the data's normalisation factors. ``lm``: the model, if loaded.

        Runs in one process (under torchrun: on rank 0 before the others load the saved spec)."""
        model, data = model or ModelSpec(), data or DataSpec()
        for i, entry in enumerate(saes):
            if not isinstance(entry, dict) or not isinstance(entry.get("hook_name"), str) or not entry["hook_name"]:
                raise ConfigError(f"SAE config {i} ({entry!r}) must be an object with a hook_name")
        acts = open_activations(model, data, _hooks(saes), train.batch_size, lm=lm, split_across_ranks=False)
        return cls([_resolve(entry, acts.widths) for entry in saes], train, str(out), model, data,
                   dict(acts.source.normalization_factors) or None)

    def on_device(self, device: str) -> RunSpec:
        """A copy running the model and the SAEs on ``device`` (this process's GPU under torchrun)."""
        return dataclasses.replace(self, model=dataclasses.replace(self.model, device=device),
                                   train=TrainConfig.from_dict({**self.train.to_dict(), "device": device}))

    def lengthened(self, *, steps: int | None = None, tokens: int | None = None,
                   parallel: str | None = None) -> RunSpec:
        """A copy with a new run length (``steps`` or ``tokens``) and/or parallel mode: what a resume may change."""
        changes: dict[str, Any] = {}
        if steps is not None or tokens is not None:
            changes.update(steps=steps, tokens=tokens)
        if parallel is not None:
            changes["parallel"] = parallel
        return dataclasses.replace(self, train=TrainConfig.from_dict({**self.train.to_dict(), **changes}))

    # ----- run.json -----
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "out": self.out,
                "model": dataclasses.asdict(self.model), "data": dataclasses.asdict(self.data),
                "saes": [c.to_dict() for c in self.saes], "train": self.train.to_dict(),
                "normalization_factors": self.normalization_factors}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """Build from ``to_dict``'s form; an older or newer run.json is refused with what to do."""
        if not isinstance(data, dict):
            raise ConfigError(f"a run spec must be a JSON object, got {type(data).__name__}")
        if "format" not in data and "source" in data:
            raise ConfigError("this run.json was written by an older saelab (no format version; SAE widths "
                              "unresolved), which this version cannot resume; start the run again in a new folder")
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ConfigError(f"format={data.get('format')!r} version={data.get('version')!r} is not a run spec "
                              f"this saelab reads; accepted: format={FORMAT!r} version={VERSION}")
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        return _from_fields(cls, body, "run spec")

    def save(self, *, overwrite: bool = False) -> Path:
        """Write ``out/run.json`` atomically; refuses to replace another run's unless ``overwrite``."""
        path = Path(self.out) / RUN_FILE
        if not overwrite:
            refuse_existing_run(self.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: str | Path) -> RunSpec:
        """The spec saved in ``folder/run.json`` (``out`` set to ``folder``, wherever the run was started)."""
        path = Path(folder) / RUN_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SaelabError(f"{folder} holds no training run ({RUN_FILE} missing); start one first") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SaelabError(f"{path} is not a readable JSON run spec ({exc})") from exc
        try:
            spec = cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        return dataclasses.replace(spec, out=str(folder))


def refuse_existing_run(out: str | Path) -> None:
    """Refuse to start a new run in a folder that holds one."""
    if (Path(out) / RUN_FILE).exists():
        raise SaelabError(f"{out} already holds a training run; resume it (--resume, resume=True), or choose "
                          "another output folder")


def resume_spec(out: str | Path, *, steps: int | None = None, tokens: int | None = None,
                parallel: str | None = None) -> RunSpec:
    """The saved spec of the run in ``out``, lengthened and/or switched to ``parallel`` (saved when changed)."""
    spec = RunSpec.load(out)
    changed = spec.lengthened(steps=steps, tokens=tokens, parallel=parallel)
    if changed.train != spec.train:
        changed.save(overwrite=True)
    return changed


# ----------------------------------------------------------------------------- activations
@dataclass
class Activations:
    """An opened batch source, the width of each hook, and what SAE folders record of the data."""

    source: Any
    widths: dict[str, int]
    meta: dict[str, Any]


def open_activations(model: ModelSpec, data: DataSpec, hooks: list[str], batch_size: int, *,
                     factors: dict[str, float] | None = None, lm: LoadedModel | None = None,
                     split_across_ranks: bool = True) -> Activations:
    """The batches ``{hook: [batch_size, d]}`` of ``hooks``: from ``data.cache``, else from the model
    (``lm`` if given) on ``data.text``, divided by ``factors`` (estimated when None)."""
    if data.cache:
        from saelab.data.cache import ActivationCache

        cache = ActivationCache(data.cache, batch_size=batch_size, seed=data.seed)
        missing = sorted(set(hooks) - set(cache.hooks))
        if missing:
            raise ConfigError(f"the cache {data.cache!r} has no hook(s) {', '.join(missing)}; it holds "
                              f"{', '.join(cache.hooks)}")
        spec_name = cache.metadata["model_name"]
        meta = {"model_name": spec_name, "model": {"spec": spec_name}, "activation_cache": str(data.cache)}
        return Activations(cache, {h: cache.d_in[h] for h in hooks}, meta)
    from saelab.data.store import ActivationStore

    lm = lm if lm is not None else model.load()
    store = ActivationStore(lm, data.text.open_source(), hooks,
                            data.store_config(batch_size, factors, split_across_ranks))
    text = data.text
    meta = folder_meta(model.name, text.source, text.context_size, text.prepend_bos, lm.fingerprint())
    return Activations(store, {h: lm.hook_d_in(h) for h in hooks}, meta)


def folder_meta(model_spec: str, source: str, context_size: int, prepend_bos: bool,
                fingerprint: str | None = None) -> dict[str, Any]:
    """What an SAE folder records of where its activations came from (cfg.json ``saelab``/``metadata``);
    ``fingerprint`` (``LoadedModel.fingerprint()``) lets ``saelab eval`` warn about a model with other weights."""
    meta = {"model_name": model_spec, "model": {"spec": model_spec}, "context_size": context_size,
            "prepend_bos": prepend_bos, "dataset_path": source}
    if fingerprint:
        meta["model_fingerprint"] = fingerprint
    return meta


# ----------------------------------------------------------------------------- training
def train_run(spec: RunSpec, *, resume: bool = False, progress: bool = True,
              lm: LoadedModel | None = None) -> dict[str, SAE]:
    """Train the run ``spec`` describes (``resume``: from its newest checkpoint); ``{name: SAE}`` of the
    SAEs this process trained, saved under ``spec.out/saes/``. ``lm``: the model, if already loaded."""
    from saelab.train.trainer import train_saes

    acts = open_activations(spec.model, spec.data, spec.hooks, spec.train.batch_size,
                            factors=spec.normalization_factors, lm=lm)
    return train_saes(spec.saes, acts.source, spec.train, spec.out, resume=resume, progress=progress,
                      extra_meta=acts.meta)


def run_summary(spec: RunSpec, names: list[str] | None = None) -> dict[str, Any]:
    """Folders, length and skip counts of a finished run (of SAEs ``names``; default all), from what it saved."""
    names = [c.name for c in spec.saes] if names is None else names
    folders = {name: Path(spec.out) / "saes" / name for name in names}
    training = {name: json.loads((folder / "cfg.json").read_text())["saelab"]["training"]
                for name, folder in folders.items()}
    return {"out": spec.out, "saes": {name: str(folder) for name, folder in folders.items()},
            "steps": spec.train.total_steps, "tokens": spec.train.total_steps * spec.train.batch_size,
            "skipped_batches": max((t["skipped_batches"] for t in training.values()), default=0),
            "skipped_updates": {name: t["skipped_updates"] for name, t in training.items()}}


# ----------------------------------------------------------------------------- helpers
def _hooks(saes: list[SAEConfig] | list[dict[str, Any]]) -> list[str]:
    pairs = [(c.hook_name, c.hook_name_out) if isinstance(c, SAEConfig)
             else (c["hook_name"], c.get("hook_name_out") or c["hook_name"]) for c in saes]
    return sorted({hook for pair in pairs for hook in pair})


def _resolve(entry: dict[str, Any], widths: dict[str, int]) -> SAEConfig:
    d_in = widths[entry["hook_name"]]
    resolved = {**entry, "d_in": d_in, "d_sae": 8 * d_in if entry.get("d_sae") is None else entry["d_sae"]}
    target = entry.get("hook_name_out")
    if target and target != entry["hook_name"]:
        resolved["d_out"] = widths[target]
    return SAEConfig.from_dict(resolved)


def _from_fields(cls: type[_T], data: Any, what: str) -> _T:
    """``cls(**data)``, refusing a non-object or unknown keys with the accepted ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a JSON object, got {type(data).__name__}")
    accepted = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(accepted))
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    return cls(**data)
