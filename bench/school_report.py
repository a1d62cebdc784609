"""The gateway-class benchmark's table (bench/school.py): the figures against the goals,
then the levels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.report import fixed_table, num
from bench.school_setup import CpuCap
from bench.stats import figure_row, median

if TYPE_CHECKING:
    from bench.school import Params, SchoolRun

PEAK_GOAL = 300.0  # events/s: a big school's peak (issue #14)
ALARM_GOAL_MS = 250.0  # alarm sample -> PUBACK p99 at the peak (issue #14)


# The rows the combined table (bench/summary.py) takes: (figure, unit, SchoolRun attribute).
FIGURES = (
    ("highest sustained rate, backlog flat", "events/s", "sustained_per_s"),
    ("peak: events committed", "events/s", "peak_committed_per_s"),
    ("peak: alarm sample -> PUBACK p99, broker up", "ms", "alarm_p99_ms"),
    ("peak: card read -> PUBACK p99, broker up", "ms", "card_p99_ms"),
    ("events lost (seq at the checker)", "events", "lost"),
    ("agent CPU at the peak", "% of a core", "peak_cpu_percent"),
)

NAME = {attr: figure for figure, _, attr in FIGURES}  # the table's rows use the same names


def figures(runs: list[SchoolRun]) -> list[dict[str, Any]]:
    """The headline figures, one row each (median, min-max over the runs)."""
    return [figure_row(f, u, [getattr(r, a) for r in runs], digits=1) for f, u, a in FIGURES]


def table(runs: list[SchoolRun], p: Params, cap: CpuCap) -> str:
    def m(name: str) -> float | None:
        return median(getattr(r, name) for r in runs)

    def ratio(v: float | None, goal: float, lower_is_better: bool) -> str:
        if v is None:
            return "-"
        return f"{v / goal:.2f}" if lower_is_better or goal else "-"

    rows = [
        (NAME["sustained_per_s"], "events/s", m("sustained_per_s"),
         f">= {PEAK_GOAL:g}", ratio(m("sustained_per_s"), PEAK_GOAL, False)),
        (NAME["peak_committed_per_s"], "events/s", m("peak_committed_per_s"), "-", "-"),
        (NAME["alarm_p99_ms"], "ms", m("alarm_p99_ms"),
         f"< {ALARM_GOAL_MS:g}", ratio(m("alarm_p99_ms"), ALARM_GOAL_MS, True)),
        ("peak: alarm sample -> PUBACK p50", "ms", m("alarm_p50_ms"), "-", "-"),
        ("peak: alarm p99 incl. the broker restart", "ms", m("alarm_p99_all_ms"), "-", "-"),
        (NAME["card_p99_ms"], "ms", m("card_p99_ms"), "-", "-"),
        ("card read -> PUBACK p99 incl. restart", "ms", m("card_p99_all_ms"), "-", "-"),
        ("  of which dedup_window hold", "ms", 1000 * p.dedup, "-", "-"),
        (NAME["lost"], "events", m("lost"), "0", "-"),
        (NAME["peak_cpu_percent"], "% of a core", m("peak_cpu_percent"),
         f"<= {p.cap:g} (cap)", ratio(m("peak_cpu_percent"), p.cap, True)),
        ("CFS periods throttled at the peak", "periods", m("throttled_periods"), "-", "-"),
        ("agent RSS peak", "MiB", m("rss_peak_mib"), "-", "-"),
    ]  # fmt: skip
    body = [(f, u, num(v), g, q) for f, u, v, g, q in rows]
    out = fixed_table(("figure (median of runs)", "unit", "value", "goal", "ratio"), body, (0, 1))
    lv_rows = []
    for k, interval in enumerate(p.intervals()):
        lvs = [r.levels[k] for r in runs if k < len(r.levels)]
        lv_rows.append(
            (
                f"{interval:g}",
                num(median(lv.committed_per_s for lv in lvs)),
                num(median(lv.acked_per_s for lv in lvs)),
                num(median(lv.backlog_slope_per_s for lv in lvs)),
                f"{sum(lv.flat for lv in lvs)}/{len(lvs)}",
                num(median(lv.cpu_percent for lv in lvs)),
            )
        )
    head = ("Modbus poll [s]", "committed/s", "acked/s", "backlog slope/s", "flat", "CPU %")
    r0 = runs[-1]
    return (
        f"{out}\n\nlevels (median of runs):\n{fixed_table(head, lv_rows, ())}\n\n"
        f"CPU cap: {cap.describe()}\nlatencies from: {r0.latency_from}; last run: "
        f"{r0.alarms} fence alarms, {r0.storm_alarms} storm alarm events, cards "
        f"{r0.cards_delivered}/{r0.cards_sent}, class-board swipes taken {r0.swipes_taken}, "
        f"last seq {r0.last_seq}" + "".join(f"\nnote: {n}" for n in r0.extra["notes"])
    )
