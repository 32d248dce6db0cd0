"""``ActivationStore``: shuffled training batches of many hooks, generated on the fly.

::

    store = ActivationStore(lm, ToySource(seed=0), ["blocks.1.attn.hook_z", "blocks.2.hook_resid_pre"],
                            StoreConfig(batch_size=4096, seed=0))
    store.normalization_factors      # {hook: factor}: batches are x / factor, E||x / factor||^2 = 1
    for batch in store.iter_batches(start_batch=0):
        batch["blocks.1.attn.hook_z"]  # [batch_size, n_heads * d_head]

Windows are taken from the source in order and grouped into shuffle buffers of ``buffer_windows``
windows (``saelab.data.shuffle``: rows mixed within a buffer, seeded per buffer). One forward pass
per ``model_batch_size`` windows feeds every hook, and the same rows (tokens) are delivered for all
hooks of a batch. The stream is deterministic given the source, the config and the model, and
``iter_batches(start_batch=N)`` resumes exactly at batch N: earlier buffers are skipped by counting
their tokens (tokenization only, no forward pass).

Normalisation (``normalization="unit_mean_squared_norm"``, the default): each hook's activations are
*divided* by ``factor = sqrt(E||x||^2)`` (the root-mean-square norm), estimated on the first
``normalization_tokens`` kept tokens of the stream, so that E||x / factor||^2 = 1 (the convention
of Gemma Scope's JumpReLU recipe, and what ``saelab.train`` expects of ``normalization_factors``:
"the batches were divided by these"). ``normalization_factors`` holds them either way (with
``normalization="none"`` the batches are raw and the factors are only recorded); pass
``normalization_factors`` in the config to reuse recorded ones (e.g. when resuming) instead of
estimating. The trainer folds the factor into the SAE after training.

Under torch.distributed (``torchrun``; ``split_across_ranks``, the default) every rank reads the same
windows, runs the model on its contiguous share of each buffer's windows and all-gathers the
activations, so every rank holds the same buffer (the same batches as one process would deliver, up
to float rounding of the forward pass) while the model runs once per window overall.

Device and precision (the GPU fast path): the shuffle buffer lives on ``buffer_device``; "auto" puts
it on the delivery device (``device``, default the model's) when it fits there (on CUDA: at most half
of the free memory, ``buffer_bytes`` counts the buffer, its shuffled copy and the carried-over
rows), so activations never leave the GPU between the forward pass and the SAE step; otherwise it
stays in (pinned) host memory and each batch is copied over. ``model_autocast="bfloat16"`` runs the
forward passes under ``torch.autocast`` (matmuls in bf16, weights as loaded); to hold the weights
themselves in bf16, load the model with ``dtype=torch.bfloat16`` (``--model-dtype bfloat16``).
``model_batch_size`` sets the windows per forward pass: raise it on a GPU (e.g. 128 windows). The
forward pass stops after the last block any hook needs (``stop_at_layer="auto"``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from saelab.data.activations import ActivationExtractor
from saelab.data.packing import PackingConfig, iter_windows
from saelab.data.shuffle import Chunk, shuffled_batches
from saelab.data.sources import Source, open_source
from saelab.errors import ConfigError, check_choice, check_range
from saelab.models import LoadedModel
from saelab.parallel import active_world, all_gather_rows

NORMALIZATIONS = ("unit_mean_squared_norm", "none")
TXT_SPLITS = ("paragraph", "line", "file")
AUTOCAST_DTYPES = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
BUFFER_COPIES = 3  # a buffer's activations, their shuffled copy, and up to one buffer of carried-over rows
FREE_MEMORY_SHARE = 0.5  # "auto" keeps the buffer on a GPU when it needs at most this share of the free memory


@dataclass
class TextSpec:
    """A text source by name and how it is packed into windows (what ``--source`` and its options say).

    source: an ``open_source`` spec (``toy``, ``toy:SEED``, ``hf:NAME[:CONFIG]``, a path); source_seed:
    the toy source's seed; text_column, split: of .jsonl/.parquet/hf sources; txt_split: one document
    of a .txt source (paragraph, line, file); context_size, prepend_bos, separator: ``PackingConfig``.
    """

    source: str = "toy"
    source_seed: int = 0
    text_column: str = "text"
    split: str = "train"
    txt_split: str = "paragraph"
    context_size: int = 128
    prepend_bos: bool = True
    separator: str = "bos"

    def __post_init__(self) -> None:
        for name in ("source", "text_column", "split"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a non-empty string")
        check_range("source_seed", self.source_seed, 0, None, integer=True)
        check_choice("txt_split", self.txt_split, TXT_SPLITS)
        self.packing()  # validates context_size, prepend_bos and separator

    def open_source(self) -> Source:
        return open_source(self.source, text_column=self.text_column, split=self.split, txt_split=self.txt_split,
                           seed=self.source_seed)

    def packing(self) -> PackingConfig:
        return PackingConfig(self.context_size, prepend_bos=self.prepend_bos, separator=self.separator)


@dataclass
class StoreConfig:
    """Settings of an ``ActivationStore`` (validated at construction)."""

    packing: PackingConfig = field(default_factory=PackingConfig)
    batch_size: int = 4096            # activation rows (tokens) per training batch
    model_batch_size: int = 16        # windows per forward pass
    buffer_windows: int = 256         # windows mixed in one shuffle buffer; a multiple of model_batch_size
    seed: int = 0                     # shuffling seed
    device: str | None = None         # where batches are delivered (default: the model's device)
    dtype: str = "float32"            # dtype of buffered and delivered activations
    exclude_special_tokens: bool = True
    normalization: str = "unit_mean_squared_norm"
    normalization_tokens: int = 32768
    normalization_factors: dict[str, float] | None = None
    repeat: bool = False              # start the source again when it ends (else the stream ends)
    split_across_ranks: bool = True   # under torch.distributed: each rank runs the model on 1/world of the windows
    buffer_device: str = "auto"       # where the shuffle buffer lives: "auto" (delivery device if it fits) or a device
    model_autocast: str = "none"      # run the model's forward under torch.autocast: none, bfloat16 or float16

    def __post_init__(self) -> None:
        if isinstance(self.packing, dict):
            self.packing = PackingConfig(**self.packing)
        check_range("batch_size", self.batch_size, 1, None, integer=True)
        check_range("model_batch_size", self.model_batch_size, 1, None, integer=True)
        check_range("buffer_windows", self.buffer_windows, 1, None, integer=True)
        if self.buffer_windows % self.model_batch_size:
            raise ConfigError(f"buffer_windows={self.buffer_windows} must be a multiple of "
                              f"model_batch_size={self.model_batch_size}")
        check_range("seed", self.seed, 0, None, integer=True)
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        check_range("normalization_tokens", self.normalization_tokens, 1, None, integer=True)
        check_choice("dtype", self.dtype, ("float32", "float16", "bfloat16", "float64"))
        check_choice("model_autocast", self.model_autocast, tuple(AUTOCAST_DTYPES))
        if self.buffer_device != "auto":
            try:
                torch.device(self.buffer_device)
            except (RuntimeError, TypeError) as exc:
                raise ConfigError(f"buffer_device={self.buffer_device!r} is not accepted; give 'auto' or a torch "
                                  "device such as 'cpu' or 'cuda:0'") from exc
        if self.normalization_factors is not None:
            for name, value in self.normalization_factors.items():
                check_range(f"normalization_factors[{name!r}]", value, 0, None, lo_open=True)

    def to_dict(self) -> dict:
        return asdict(self)


class ActivationStore:
    """Shuffled batches ``{hook: Tensor[batch_size, d_in]}`` of ``hooks`` on ``source``; see module doc."""

    def __init__(self, lm: LoadedModel, source: Source, hooks: Iterable[str] | str,
                 config: StoreConfig | None = None):
        self.lm, self.source = lm, source
        self.config = config or StoreConfig()
        cfg = self.config
        self.device = torch.device(cfg.device) if cfg.device is not None else lm.device
        self.extractor = ActivationExtractor(lm, hooks, model_batch_size=cfg.model_batch_size,
                                             exclude_special_tokens=cfg.exclude_special_tokens,
                                             dtype=cfg.dtype, device=self.device)
        self.hooks = self.extractor.hooks
        self.d_in = dict(self.extractor.d_in)
        self.buffer_device = self._choose_buffer_device()
        self.extractor.device = self.buffer_device
        self._factors = dict(cfg.normalization_factors) if cfg.normalization_factors is not None else None
        if self._factors is not None and set(self._factors) != set(self.hooks):
            raise ConfigError(f"normalization_factors has hooks {sorted(self._factors)}, the store has "
                              f"{sorted(self.hooks)}; give one factor per hook")

    # --- the window stream -----------------------------------------------------------------------
    def iter_windows(self) -> Iterator[np.ndarray]:
        """The packed windows ``[context_size]`` in stream order (repeated if ``config.repeat``)."""
        passes = itertools.count() if self.config.repeat else range(1)
        for _ in passes:
            empty = True
            for window in iter_windows(self.source, self.lm.tokenizer, self.config.packing,
                                       self.lm.bos_token_id, self.lm.eos_token_id):
                empty = False
                yield window
            if empty:
                return

    def _buffers(self) -> Iterator[np.ndarray]:
        windows = self.iter_windows()
        while True:
            group = list(itertools.islice(windows, self.config.buffer_windows))
            if not group:
                return
            yield np.stack(group)

    # --- where the buffer lives ----------------------------------------------------------------------
    def buffer_bytes(self) -> int:
        """Bytes the shuffle buffer needs at its peak (``BUFFER_COPIES`` copies of one buffer of rows)."""
        cfg = self.config
        row_bytes = sum(self.d_in.values()) * torch.empty((), dtype=getattr(torch, cfg.dtype)).element_size()
        return BUFFER_COPIES * cfg.buffer_windows * cfg.packing.context_size * row_bytes

    def _choose_buffer_device(self) -> torch.device:
        if self.config.buffer_device != "auto":
            return torch.device(self.config.buffer_device)
        if self.device.type != "cuda":
            return self.device  # host memory is the delivery device's own memory
        free, _total = torch.cuda.mem_get_info(self.device)
        return self.device if buffer_fits(self.buffer_bytes(), free) else torch.device("cpu")

    # --- normalisation -----------------------------------------------------------------------------
    @property
    def normalization_factors(self) -> dict[str, float]:
        """``{hook: sqrt(E||x||^2)}`` on the estimation sample (estimated once); batches are divided by it."""
        if self._factors is None:
            self._factors = self.estimate_normalization_factors(self.config.normalization_tokens)
        return dict(self._factors)

    def estimate_normalization_factors(self, n_tokens: int) -> dict[str, float]:
        """``sqrt(mean ||x||^2)`` per hook over the first ``n_tokens`` kept tokens of the stream."""
        sums = dict.fromkeys(self.hooks, 0.0)
        count = 0
        windows = self.iter_windows()
        while count < n_tokens:
            group = list(itertools.islice(windows, self.config.model_batch_size))
            if not group:
                break
            acts = self._run(np.stack(group))
            for name, x in acts.items():
                sums[name] += float(x.double().pow(2).sum())
            count += len(next(iter(acts.values())))
        if count == 0:
            raise ConfigError(f"source {self.source.describe()} yielded no tokens to estimate normalisation on")
        return {name: math.sqrt(s / count) if s > 0 else 1.0 for name, s in sums.items()}

    def _run(self, windows: np.ndarray) -> dict[str, torch.Tensor]:
        """``{hook: [n_valid, d_in]}`` of ``windows [n, context_size]``; under torch.distributed the forward
        passes are split between the ranks and the rows all-gathered (same order as one process)."""
        rank, world = active_world()
        if world == 1 or not self.config.split_across_ranks:
            return self._forward(windows)
        shares = np.array_split(np.arange(len(windows)), world)
        counts = [int(self.extractor.valid_mask(windows[share]).sum()) for share in shares]
        mine = self._forward(windows[shares[rank]])
        return {name: all_gather_rows(x, counts) for name, x in mine.items()}

    def _forward(self, windows: np.ndarray) -> dict[str, torch.Tensor]:
        dtype = AUTOCAST_DTYPES[self.config.model_autocast]
        with torch.autocast(self.lm.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return self.extractor.run(windows)

    # --- batches ---------------------------------------------------------------------------------
    def _chunks(self) -> Iterator[Chunk]:
        factors = self.normalization_factors if self.config.normalization != "none" else None
        for windows in self._buffers():
            def load(windows=windows) -> dict[str, torch.Tensor]:
                acts = self._run(windows)
                if factors is not None:
                    acts = {name: x.div_(factors[name]) for name, x in acts.items()}
                return acts

            yield Chunk(int(self.extractor.valid_mask(windows).sum()), load)

    def iter_batches(self, start_batch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches ``{hook: Tensor[batch_size, d_in]}`` from batch ``start_batch`` on; identical to the
        batches an uninterrupted iteration yields at those indices."""
        check_range("start_batch", start_batch, 0, None, integer=True)
        batches = shuffled_batches(self._chunks(), self.config.batch_size, self.config.seed, start_batch)
        if self.buffer_device == self.device:
            return batches
        pin = self.buffer_device.type == "cpu" and self.device.type == "cuda"  # pinned: asynchronous copies
        return ({name: (x.pin_memory() if pin else x).to(self.device, non_blocking=True) for name, x in batch.items()}
                for batch in batches)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iter_batches()

    @property
    def metadata(self) -> dict:
        """What the trainer stores in SAE folders about the data (JSON-able)."""
        packing = self.config.packing
        return {"model_name": self.lm.name, "context_size": packing.context_size,
                "dataset_path": self.source.dataset_path, "prepend_bos": packing.prepend_bos,
                "exclude_special_tokens": self.config.exclude_special_tokens, "source": self.source.describe()}

    def state(self) -> dict:
        """A JSON-able record of what this store delivers (for checkpoints and run logs)."""
        return {"model": self.lm.name, "hooks": self.hooks, "d_in": self.d_in, "source": self.source.describe(),
                "config": {**self.config.to_dict(), "normalization_factors": self.normalization_factors}}


def buffer_fits(buffer_bytes: int, free_bytes: int) -> bool:
    """Whether a shuffle buffer of ``buffer_bytes`` may live in memory with ``free_bytes`` free."""
    return buffer_bytes <= FREE_MEMORY_SHARE * free_bytes
