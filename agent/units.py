"""Parsing of the human-written quantities in config files: durations and sizes.

Accepts exactly the forms DESIGN.md shows ("500ms", "10s", "5min", "2h", "512MiB", "64kB");
never guesses a unit for a bare string.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

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


def parse_duration(value: object) -> float:
    """Return seconds for '500ms', '10s', '5min', '2h', '1d' (or a plain number of seconds)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '500ms' or '10s'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as '500ms' or '10s'")
    m = _DURATION.match(value)
    if not m:
        raise ValueError(
            f"{value!r} is not a duration; write a number and a unit: ms, s, min, h or d "
            "(e.g. '500ms', '10s')"
        )
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


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
            f"{value!r} is not a size; write a number and a unit: B, kB, KiB, MB, MiB, GB or GiB "
            "(e.g. '512MiB')"
        )
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


# The field types every config, profile and driver model uses for these quantities.
Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
