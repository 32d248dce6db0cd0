"""Errors that reach users, and the small validators every typed config uses.

Every message names what was wrong, the value given and what would be accepted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class SaelabError(ValueError):
    """An error caused by the user's input or files; the CLI prints its message without a traceback."""


class ConfigError(SaelabError):
    """A configuration field has a value that cannot be used."""


class CorruptFileError(SaelabError):
    """A file on disk is truncated, corrupted or not of the expected format."""


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> None:
    """Refuse ``value`` unless it is one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise ConfigError(f"{field}={value!r} is not accepted; choose one of: {', '.join(map(str, options))}")


def check_range(field: str, value: float, lo: float | None = None, hi: float | None = None,
                *, integer: bool = False, lo_open: bool = False) -> None:
    """Refuse ``value`` outside [lo, hi] (or (lo, hi] with ``lo_open``), NaN, and non-integers when ``integer``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field}={value!r} must be a number")
    if integer and not float(value).is_integer():
        raise ConfigError(f"{field}={value!r} must be a whole number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{field}={value!r} must be finite")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and value > hi
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        raise ConfigError(f"{field}={value!r} is out of range; accepted: {left}{lo}, {hi}]")
