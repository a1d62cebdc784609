"""What the benchmarks share in their reports: result files, numbers, fixed-width tables.

Each benchmark writes `results/<name><suffix>.json`: `-quick` after `--quick` and
`-profiled` after `--profile`, so that neither overwrites the figures we quote.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def timestamp() -> str:
    """Local time with its offset, as the result files' `started` and `written` give it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def result_suffix(quick: bool, profile: bool = False) -> str:
    """'-quick' for a smoke run, '-profiled' for a profiled one, '' for the figures we quote."""
    return "-quick" if quick else "-profiled" if profile else ""


def result_file(name: str, suffix: str = "") -> Path:
    return RESULTS / f"{name}{suffix}.json"


def write_json(
    path: Path,
    doc: dict[str, Any],
    *,
    indent: int = 2,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """`doc` as JSON in `path` (its folder created if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=indent, ensure_ascii=False, default=default)
    path.write_text(text + "\n")


def num(x: float | None) -> str:
    """A figure for a table: no decimals from 100, one from 10, else two; '-' for none."""
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def ratio_text(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def fixed_table(
    head: Sequence[str], body: Sequence[Sequence[str]], left: tuple[int, ...] = (0,)
) -> str:
    """Columns as wide as their widest cell, two spaces apart; `left`: the left-aligned ones."""
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i in left else '>'}{w}}}" for i, w in enumerate(widths)).format
    lines = [fmt(*head), fmt(*("-" * w for w in widths)), *(fmt(*line) for line in body)]
    return "\n".join(line.rstrip() for line in lines)


def pairs_table(rows: Sequence[tuple[str, Any]], value: Callable[[Any], str] = str) -> str:
    """Label and value, one pair a line, indented two spaces, the values in one column."""
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value(v)}" for label, v in rows)


def figure_cells(
    r: dict[str, Any], number: Callable[[float | None], str] = num
) -> tuple[str, str, str]:
    """A figure row's first cells: 'figure [unit]', median, min-max ('-' without a median)."""
    spread = "-" if r["median"] is None else f"{number(r['min'])}-{number(r['max'])}"
    return f"{r['figure']} [{r['unit']}]", number(r["median"]), spread


def ceiling_table(rows: list[dict[str, Any]], number: Callable[[float | None], str] = num) -> str:
    """Figure rows measured against a ceiling: figure, median, min-max, ceiling median, ratio."""
    head = ("figure", "median", "min-max", "ceiling median", "ratio")
    body = [
        (*figure_cells(r, number), number(r["ceiling_median"]), ratio_text(r["ratio"]))
        for r in rows
    ]
    return fixed_table(head, body)
