"""The polling table of `python -m bench modbus`: its figures from the runs, and one line a run.

Each figure row: the median of the runs, min-max, and what it is measured against: what
was asked (devices x points / interval), the raw pymodbus ceiling of the same runs, or a
goal of the issue; the ratio is the median of the per-run ratios.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.modbus_devices import BENCH_POINTS, bench_blocks
from bench.report import fixed_table, ratio_text
from bench.stats import median_ratio, spread

if TYPE_CHECKING:
    from bench.modbus import AgentRun, CeilingRun, Params

GOAL_RSS_MIB = 60.0  # later issue: RSS < 60 MB at 200 devices
GOAL_CPU_PER_100_EVENTS = 5.0  # later issue: CPU <= 5 % of a core at 100 events/s


@dataclass
class Figure:
    """One row of the polling table."""

    figure: str
    unit: str
    values: Sequence[float | None]
    reference: float | None = None  # what was asked, the ceiling or a goal
    reference_kind: str = ""  # "asked", "ceiling", "goal <", "goal <="
    ratio: float | None = None

    def row(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "unit": self.unit,
            **spread(self.values),
            "reference": self.reference,
            "reference_kind": self.reference_kind,
            "ratio": self.ratio,
        }


def figures(ceilings: list[CeilingRun], agents: list[AgentRun], p: Params) -> list[dict[str, Any]]:
    blocks = len(bench_blocks())
    asked_points = p.devices * len(BENCH_POINTS) / p.interval
    asked_requests = p.devices * blocks / p.interval
    asked_events = p.devices / p.interval
    ceil = [c.requests_per_s for c in ceilings]

    def a(attr: str) -> list[float]:
        return [float(getattr(r, attr)) for r in agents]

    def opt(attr: str) -> list[float | None]:
        return [getattr(r, attr) for r in agents]

    cpu_per_100 = [
        r.cpu_percent * 100 / r.acked_per_s if r.acked_per_s else math.inf for r in agents
    ]
    rows = [
        Figure("ceiling: raw pymodbus requests/s", "req/s", list(ceil)),
        Figure(
            "ceiling: simulator CPU (% of one core)",
            "%",
            [c.simulator_cpu_percent for c in ceilings],
        ),
        Figure(
            "ceiling: raw client CPU (% of one core)",
            "%",
            [c.client_cpu_percent for c in ceilings],
        ),
        Figure(
            "agent: points polled/s",
            "points/s",
            a("points_per_s"),
            asked_points,
            "asked",
            median_ratio(a("points_per_s"), [asked_points] * len(agents)),
        ),
        Figure(
            "agent: requests/s (driver counters)",
            "req/s",
            a("requests_per_s"),
            round(statistics.median(ceil), 1),
            "ceiling",
            median_ratio(a("requests_per_s"), ceil),
        ),
        Figure(
            "agent: requests/s (simulator counts)",
            "req/s",
            a("server_requests_per_s"),
            asked_requests,
            "asked",
            median_ratio(a("server_requests_per_s"), [asked_requests] * len(agents)),
        ),
        Figure(
            "agent: events acked/s",
            "events/s",
            a("acked_per_s"),
            asked_events,
            "1 per poll",
            median_ratio(a("acked_per_s"), [asked_events] * len(agents)),
        ),
        Figure("agent: events received/s (subscriber)", "events/s", a("received_per_s")),
        Figure("agent: CPU (% of one core)", "%", a("cpu_percent")),
        Figure(
            "agent: CPU per 100 events/s",
            "%",
            [round(x, 2) for x in cpu_per_100],
            GOAL_CPU_PER_100_EVENTS,
            "goal <=",
        ),
        Figure("agent: RSS peak", "MiB", a("rss_mib_peak"), GOAL_RSS_MIB, "goal <"),
        Figure(
            "agent: poll period median",
            "s",
            opt("period_median_s"),
            p.interval,
            "asked",
            median_ratio([x or 0.0 for x in opt("period_median_s")], [p.interval] * len(agents)),
        ),
        Figure("agent: poll period p95", "s", opt("period_p95_s"), p.interval, "asked"),
        Figure("agent: poll period max", "s", opt("period_max_s"), p.interval, "asked"),
        Figure(
            "agent: poll period (devices / polls/s)",
            "s",
            a("period_from_rate_s"),
            p.interval,
            "asked",
        ),
        Figure("agent: read errors (window)", "errors", a("errors")),
        Figure("simulators: CPU (% of one core)", "%", a("simulator_cpu_percent")),
        Figure("mosquitto: CPU (% of one core)", "%", a("broker_cpu_percent")),
    ]
    return [r.row() for r in rows]


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    if unit == "s":
        return f"{x:.3f}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10 or x == int(x):
        return f"{x:,.1f}"
    return f"{x:,.3g}"


def polling_table(rows: list[dict[str, Any]]) -> str:
    head = ("figure", "median", "min-max", "reference", "ratio")
    body = [
        (
            f"{r['figure']} [{r['unit']}]",
            _num(r["median"], r["unit"]),
            f"{_num(r['min'], r['unit'])}-{_num(r['max'], r['unit'])}",
            f"{r['reference_kind']} {_num(r['reference'], r['unit'])}"
            if r["reference"] is not None
            else "-",
            ratio_text(r["ratio"]),
        )
        for r in rows
    ]
    return fixed_table(head, body)


def summary(c: CeilingRun, a: AgentRun) -> str:
    """One line per run."""
    parts = [
        f"ceiling {c.requests_per_s:,.0f} req/s (simulators {c.simulator_cpu_percent:.0f}% CPU);",
        f"agent {a.points_per_s:,.0f} points/s, {a.requests_per_s:,.0f} req/s,",
        f"{a.acked_per_s:,.0f} events/s, CPU {a.cpu_percent:.1f}%, RSS {a.rss_mib_peak:.1f} MiB,",
        f"period p50 {_num(a.period_median_s, 's')} s p95 {_num(a.period_p95_s, 's')} s,",
        f"errors {a.errors}, simulators {a.simulator_cpu_percent:.0f}% CPU",
    ]
    return " ".join(parts)
