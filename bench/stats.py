"""The arithmetic of the benchmarks' figures: quantiles, medians, rounding, spreads, ratios.

Every function takes measurements that may be missing (None) and says "no figure" (None)
rather than raise when nothing is left to compute it from.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any


def quantile(xs: list[float], q: float) -> float | None:
    """The nearest-rank q-quantile (q=0.99: the smallest value >= 99 % of them)."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def present(xs: Iterable[float | None]) -> list[float]:
    """The measurements that are there."""
    return [x for x in xs if x is not None]


def median(xs: Iterable[float | None]) -> float | None:
    """The median of the measurements that are there; None without any."""
    vals = present(xs)
    return statistics.median(vals) if vals else None


def rounded(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def ms(seconds: float | None, digits: int) -> float | None:
    """Seconds as milliseconds, rounded."""
    return None if seconds is None else round(1000 * seconds, digits)


def since(t: float | None, t0: float, digits: int = 2) -> float | None:
    """Seconds from `t0` to `t` (None: `t` never came), rounded."""
    return None if t is None else round(t - t0, digits)


def spread(xs: Iterable[float | None], digits: int = 3) -> dict[str, float | None]:
    """A figure row's `median`, `min` and `max` over the runs that measured it, rounded."""
    vals = present(xs)
    if not vals:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(vals), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
    }


def median_ratio(
    xs: Iterable[float | None], refs: Iterable[float | None], digits: int = 3
) -> float | None:
    """The median of the per-run ratios x / ref (runs without either, or with ref 0, left out)."""
    pairs = [x / r for x, r in zip(xs, refs, strict=True) if x is not None and r]
    return round(statistics.median(pairs), digits) if pairs else None


def figure_row(
    figure: str,
    unit: str,
    xs: Iterable[float | None],
    ceilings: list[float] | None = None,
    *,
    digits: int = 3,
    ceiling_digits: int = 1,
) -> dict[str, Any]:
    """A figure row: median and min-max over the runs that measured it; with `ceilings` (one
    per run, measured in the same run), their median and the median of the per-run ratios."""
    xs = list(xs)
    row: dict[str, Any] = {"figure": figure, "unit": unit, **spread(xs, digits)}
    row.update(ceiling_median=None, ratio=None)
    if ceilings and present(xs):
        row["ceiling_median"] = round(statistics.median(ceilings), ceiling_digits)
        row["ratio"] = median_ratio(xs, ceilings)
    return row
