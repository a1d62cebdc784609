"""Parsing of the human-written quantities in config files: durations and sizes, and their ranges.

Accepts exactly the forms DESIGN.md shows ("500ms", "10s", "5min", "2h", "512MiB", "64kB");
never guesses a unit for a bare string. Every config field of these types states the range
it accepts and why (`duration_range`, `size_range`): a value outside it is refused with that
reason, never passed on to crash or spin the agent later.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|KiB|MB|MiB|GB|GiB)\s*$")
_SIZE_UNITS = {
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
KiB = 1024
MiB = 1024**2
TiB = 1024**4


def parse_duration(value: object) -> float:
    """Return seconds for '500ms', '10s', '5min', '2h', '1d' (or a plain number of seconds)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '500ms' or '10s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(
                f"{_short(value)} is not a duration; write a number and a unit: ms, s, min, h or d "
                "(e.g. '500ms', '10s')"
            )
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError("expected a duration such as '500ms' or '10s'")
    if not math.isfinite(seconds):
        raise ValueError(f"{_short(value)} is not a finite duration; write e.g. '10s'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Return bytes for '512MiB', '64kB', '1GiB' (or a plain integer number of bytes)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '512MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as '512MiB'")
    m = _SIZE.match(value)
    if not m:
        raise ValueError(
            f"{_short(value)} is not a size; write a number and a unit: B, kB, KiB, MB, MiB, GB "
            "or GiB (e.g. '512MiB')"
        )
    size = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if not math.isfinite(size):
        raise ValueError(f"{_short(value)} is not a finite size; write e.g. '512MiB'")
    return int(size)


def _short(value: object) -> str:
    """A value for a message: its repr, cut to a line's worth."""
    text = repr(value)
    return text if len(text) <= 40 else text[:36] + "...'"


def format_duration(seconds: float) -> str:
    """60 -> '1min', 0.01 -> '10ms', 64800 -> '18h': the largest unit that reads well."""
    if seconds == 0:
        return "0s"
    for unit, scale in (("d", DAY), ("h", HOUR), ("min", MINUTE), ("s", 1.0)):
        if seconds >= scale:
            return f"{seconds / scale:.4g}{unit}"
    return f"{seconds * 1000:.4g}ms"


def format_size(size: float) -> str:
    """1048576 -> '1MiB', 1536 -> '1.5KiB'."""
    for unit, scale in (("TiB", TiB), ("GiB", 1024**3), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            return f"{size / scale:.4g}{unit}"
    return f"{size:.4g}B"


def duration_check(
    lo: float, hi: float, why: str, *, off: bool = False
) -> Callable[[float], float]:
    """A check of a duration against lo..hi (and 0, meaning off, when `off`): returns the value
    or raises ValueError saying the range and `why`."""
    zero = " or 0 (off)" if off else ""

    def check(v: float) -> float:
        if (off and v == 0) or lo <= v <= hi:
            return v
        raise ValueError(
            f"{format_duration(v)} is out of range: use {format_duration(lo)} to "
            f"{format_duration(hi)}{zero} ({why})"
        )

    return check


def duration_range(lo: float, hi: float, why: str, *, off: bool = False) -> AfterValidator:
    """A Duration field's range, for Annotated: `Annotated[Duration, duration_range(...)]`."""
    return AfterValidator(duration_check(lo, hi, why, off=off))


def size_range(lo: int, hi: int, why: str) -> AfterValidator:
    """A Size field's range lo..hi bytes; `why` ends the message a refused value gets."""

    def check(v: int) -> int:
        if lo <= v <= hi:
            return v
        raise ValueError(
            f"{format_size(v)} is out of range: use {format_size(lo)} to {format_size(hi)} ({why})"
        )

    return AfterValidator(check)


def number_range(lo: float, hi: float, why: str) -> AfterValidator:
    """A plain number's range lo..hi (a rate, a count); NaN and infinities are out of it."""

    def check(v: float) -> float:
        if lo <= v <= hi:
            return v
        raise ValueError(f"{v} is out of range: use {lo:g} to {hi:g} ({why})")

    return AfterValidator(check)


# The field types every config, profile and driver model uses for these quantities.
Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
