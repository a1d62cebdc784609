"""The soak's report: the table it prints, and the JSON pieces of its runs and faults.

bench/README.md ("soak") explains every line of the table. Formatting only: the figures are
computed in bench/soak_account.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from bench.report import pairs_table
from bench.soak_schedule import FaultRecord, Run


def run_json(r: Run, t0: float) -> dict[str, Any]:
    """One agent run for the report, its times relative to the soak's start."""
    return {
        **asdict(r),
        "started": round(r.started - t0, 2),
        "ready": None if r.ready is None else round(r.ready - t0, 2),
        "ended": None if r.ended is None else round(r.ended - t0, 2),
    }


def fault_json(r: FaultRecord, t0: float) -> dict[str, Any]:
    """One fault for the report, its times relative to the soak's start."""

    def rel(iv: list[tuple[float, float]]) -> list[list[float]]:
        return [[round(a - t0, 2), round(b - t0, 2)] for a, b in iv]

    return {
        "kind": r.kind,
        "start": round(r.start - t0, 2),
        "end": round(r.end - t0, 2),
        "broker_down": rel(r.broker_down),
        "agent_down": rel(r.agent_down),
        "cable_out": rel(r.cable_out),
        **r.detail,
    }


def log_errors(lines: list[str]) -> dict[str, int]:
    """ERROR lines of the agent's logs by message (the part before the first '='/':')."""
    out: Counter[str] = Counter()
    for ln in lines:
        name, _, text = ln.split(" ERROR ", 1)[-1].partition(": ")
        out[f"{name}: {text.split('=', 1)[0][:70]}"] += 1
    return dict(out)


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} s"


def table(rep: dict[str, Any]) -> str:
    ev, al, run, st = rep["events"], rep["alarms"], rep["run"], rep["store"]
    evicted = ", ".join(f"{k} {v}" for k, v in ev["evicted"].items() if v) or "0"
    faults = ", ".join(f"{k} {n}" for k, n in rep["faults"]["by_kind"].items())
    cable = [x for x in run["cable_recovery_s"] if x is not None]
    rows = [
        ("faults", faults),
        (
            "broker down / agent down (total)",
            f"{rep['outages_s']['broker_down']} s / {rep['outages_s']['agent_down']} s",
        ),
        (
            "store: max used / cap",
            f"{st['used_bytes_max']} / {st['max_size']} bytes (max backlog {st['backlog_max']})",
        ),
        ("events: last seq committed", ev["last_seq"]),
        ("received (unique seq)", ev["received_unique"]),
        ("still stored at the end", ev["still_stored"]),
        ("evicted (status, by class)", evicted),
        ("missing seqs", ev["missing"]),
        ("EVENTS LOST outside eviction", ev["lost"]),
        ("  of which: missing - evicted", ev["lost_by_count"]),
        ("  of which: gaps outside any backlog window", ev["unexplained_missing"]),
        ("  seq given to two events", len(ev["seq_reused"])),
        ("evicted yet delivered (at most)", ev["evicted_but_delivered_max"]),
        ("duplicates delivered (same id)", f"{ev['duplicates']} ({ev['duplicate_ratio']:.2%})"),
        ("out of order within device+kind", ev["out_of_order"]),
        ("alarms received", al["received"]),
        ("ALARMS LOST", al["lost"]),
        ("  committed (seen in store) never received", len(al["committed_not_received"])),
        ("  active/cleared alternation breaks", len(al["alternation_breaks"])),
        ("  evicted alarms", al["evicted"]),
        (
            "fence edges missed while the agent ran",
            f"{al['fence_edges_missed']} of {al['fence_edges_expected']}",
        ),
        ("alarm delay max (raw)", _s(al["delay_max_s"])),
        ("alarm delay max excl. broker/agent down", _s(al["delay_max_excl_outages_s"])),
        (
            "alarm delay steady: max / p50",
            f"{_s(al['delay_steady_max_s'])} / {_s(al['delay_steady_p50_s'])}",
        ),
        ("alarm delay p50 / p99 (all)", f"{_s(al['delay_p50_s'])} / {_s(al['delay_p99_s'])}"),
        ("cable back -> Modbus online", ", ".join(f"{x:g} s" for x in cable) or "-"),
        (
            "agent: SIGTERM exit / died by itself",
            f"{run['agent_exit_code']} / {len(run['agent_unexpected_exits'])}",
        ),
        ("verdict", "PASS" if rep["ok"] else "FAIL"),
    ]
    head = (
        f"soak: {run['seconds_asked']:g} s of faults (seed {run['seed']}), "
        f"{run['rate_asked']:g} env events/s asked ({run['events_per_s']:g} committed/s), "
        f"store cap {run['store_cap']}, {run['total_seconds']:g} s in all"
    )
    return f"{head}\n{pairs_table(rows)}"
