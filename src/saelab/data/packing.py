"""Packing documents into fixed context windows, and the special-token mask.

The documents are concatenated into one token stream, with a separator token before each document
(``separator="bos"``, the default: every document starts with BOS, as most models were trained) or
after it (``"eos"``), or none. The stream is cut into windows of ``context_size`` tokens; with
``prepend_bos`` every window starts with BOS, so a document that continues from the previous window
gets a BOS in front (never two BOS in a row). A final incomplete window is dropped.

Activations at special tokens (BOS, EOS, PAD) are excluded from training data by default: their
norms are outliers and they carry no text. ``special_token_mask`` marks them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

from saelab.errors import ConfigError, check_choice, check_range

SEPARATORS = ("bos", "eos", "none")


@dataclass(frozen=True)
class PackingConfig:
    """How documents become windows: ``context_size`` tokens each, BOS first when ``prepend_bos``,
    ``separator`` (``bos``/``eos``/``none``) between documents."""

    context_size: int = 128
    prepend_bos: bool = True
    separator: str = "bos"

    def __post_init__(self) -> None:
        check_range("context_size", self.context_size, 2, 1 << 20, integer=True)
        check_choice("separator", self.separator, SEPARATORS)
        if not isinstance(self.prepend_bos, bool):
            raise ConfigError(f"prepend_bos={self.prepend_bos!r} must be true or false")

    def to_dict(self) -> dict:
        return asdict(self)


def _separated_stream(documents: Iterable[np.ndarray], separator: str, bos_id: int | None,
                      eos_id: int | None) -> Iterator[np.ndarray]:
    if separator == "none":
        yield from documents
        return
    token = bos_id if separator == "bos" else eos_id
    if token is None:
        raise ConfigError(f"separator={separator!r} needs a {separator.upper()} token, but the tokenizer has none; "
                          "use separator='none' or another separator")
    mark = np.array([token], dtype=np.int64)
    for doc in documents:
        if len(doc):
            yield from ((mark, doc) if separator == "bos" else (doc, mark))


def pack_windows(documents: Iterable[np.ndarray], config: PackingConfig, bos_id: int | None,
                 eos_id: int | None = None, continuous: bool = False) -> Iterator[np.ndarray]:
    """Windows ``[context_size]`` (int64) from token documents; ``continuous`` when the documents are
    pieces of one stream (no separators inserted)."""
    if config.prepend_bos and bos_id is None:
        raise ConfigError("prepend_bos=True needs a BOS token, but the tokenizer has none; set prepend_bos=False")
    pieces = _separated_stream(documents, "none" if continuous else config.separator, bos_id, eos_id)
    size = config.context_size
    window = np.empty(size, dtype=np.int64)
    filled = 0
    for piece in pieces:
        start = 0
        while start < len(piece):
            if filled == 0 and config.prepend_bos and piece[start] != bos_id:
                window[0] = bos_id
                filled = 1
            take = min(size - filled, len(piece) - start)
            window[filled:filled + take] = piece[start:start + take]
            filled += take
            start += take
            if filled == size:
                yield window.copy()
                filled = 0


def iter_windows(source, tokenizer, config: PackingConfig, bos_id: int | None,
                 eos_id: int | None = None) -> Iterator[np.ndarray]:
    """The window stream of ``source`` (its ready-made windows when it stores them)."""
    ready = source.iter_ready_windows(config.context_size)
    if ready is not None:
        return ready
    return pack_windows(source.iter_token_documents(tokenizer), config, bos_id, eos_id,
                        continuous=getattr(source, "continuous", False))


def special_token_mask(tokens: np.ndarray, special_ids: Iterable[int]) -> np.ndarray:
    """Boolean array shaped like ``tokens``: True at special tokens (BOS/EOS/PAD ids given)."""
    ids = np.asarray(sorted(set(special_ids)), dtype=np.int64)
    return np.isin(tokens, ids)
