"""The peer benchmark's results: a phase's figures, its table, and its rows in the combined
table (bench/summary.py reads them through `figures` from older result files too)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bench.report import fixed_table


@dataclass
class Steady:
    window_s: float
    values_per_s: float
    asked_values_per_s: float
    cpu_percent: float
    cpu_per_1000_values_s: float
    rss_mib_peak: float
    rss_mib_end: float
    threads_max: int
    threads_end: int
    simulator_requests_per_s: float
    simulator_cpu_percent: float
    broker_cpu_percent: float
    period_median_s: float | None


@dataclass
class Life:
    """What one process of the system polled and what of it was delivered, exactly.

    `polled` comes from the simulators' own request counts, read while the process polled
    nothing any more (killed, or the simulators stopped): complete polls per unit x 10.
    `delivered` is the distinct values of that process's polls the subscriber received
    (stamped within the process's life) by the end of the test.
    """

    name: str  # "A: steady + outage", "B: until the SIGKILL", "C: after the restart"
    seconds: float
    values_polled: int
    values_delivered: int
    values_lost: int  # polled - delivered
    devices_with_loss: int
    lost_polls_per_device: dict[str, int]  # {polled - delivered polls: devices}; "0" = none


@dataclass
class Outage:
    kind: str  # "outage" or "sigkill"
    outage_s: float
    backlog_delivered_after_s: float | None  # broker return -> last outage value delivered
    first_value_after_s: float | None  # broker return -> first value (any stamp) delivered
    values_stamped_in_outage: int  # distinct values stamped during the outage, delivered
    duplicates: int  # values delivered again (new publishes) from the outage to the end
    duplicates_broker_redelivery: int  # DUP-flagged redeliveries broker -> bench (harness)
    backlog_timed_out: bool
    t_down: float  # epoch seconds
    killed_at_s: float | None = None  # into the outage
    restarted_at_s: float | None = None
    restart_to_first_poll_s: float | None = None  # restart -> first poll stamp after it
    lives: list[Life] = field(default_factory=list)


@dataclass
class Phase:
    system: str
    devices: int
    steady: Steady
    outages: list[Outage]
    totals: dict[str, Any]
    loopback: dict[str, Any]
    exit_codes: list[int | None]
    notes: list[str]


def outage_line(o: Outage) -> str:
    """What an outage did, in one line of the progress output."""
    parts = [f"{o.kind} {o.outage_s:.0f} s:"]
    for life in o.lives:
        parts.append(
            f"[{life.name}] polled {life.values_polled:,}, delivered "
            f"{life.values_delivered:,}, lost {life.values_lost:,} "
            f"({life.devices_with_loss} devices);"
        )
    parts.append(f"duplicates {o.duplicates:,}")
    if o.duplicates_broker_redelivery:
        parts.append(f"(+{o.duplicates_broker_redelivery:,} broker redeliveries)")
    if o.kind == "sigkill":
        parts.append(f"; restart -> first poll {_num(o.restart_to_first_poll_s)} s")
    parts.append(
        f"; first value {_num(o.first_value_after_s)} s and backlog delivered "
        f"{_num(o.backlog_delivered_after_s)} s after the broker's return"
    )
    if o.backlog_timed_out:
        parts.append("(TIMED OUT)")
    return " ".join(parts)


def _num(x: float | None, fmt: str = ".1f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, fmt)


ROWS: list[tuple[str, str, str]] = [
    # (label, path in the phase document, format)
    ("values/s delivered (subscriber)", "steady.values_per_s", ",.0f"),
    ("values/s asked (devices x 10 / interval)", "steady.asked_values_per_s", ",.0f"),
    ("CPU (% of one core)", "steady.cpu_percent", ".1f"),
    ("CPU per 1 000 values/s (% of a core)", "steady.cpu_per_1000_values_s", ".2f"),
    ("RSS peak (MiB)", "steady.rss_mib_peak", ".1f"),
    ("threads (max)", "steady.threads_max", "d"),
    ("Modbus requests/s (simulator)", "steady.simulator_requests_per_s", ",.0f"),
    ("poll period median (s)", "steady.period_median_s", ".3f"),
    ("simulators CPU (%)", "steady.simulator_cpu_percent", ".1f"),
    ("mosquitto CPU (%)", "steady.broker_cpu_percent", ".1f"),
    ("outage: first value after broker return (s)", "outage.first_value_after_s", ".1f"),
    ("outage: backlog delivered after return (s)", "outage.backlog_delivered_after_s", ".1f"),
    ("outage: values stamped in it, delivered", "outage.values_stamped_in_outage", ",d"),
    ("outage: process A values polled", "outage.lives.0.values_polled", ",d"),
    ("outage: process A values delivered", "outage.lives.0.values_delivered", ",d"),
    ("outage: process A values lost", "outage.lives.0.values_lost", ",d"),
    ("outage: duplicates", "outage.duplicates", ",d"),
    ("SIGKILL: first value after broker return (s)", "sigkill.first_value_after_s", ".1f"),
    ("SIGKILL: backlog delivered after return (s)", "sigkill.backlog_delivered_after_s", ".1f"),
    ("SIGKILL: restart -> first poll stamp (s)", "sigkill.restart_to_first_poll_s", ".1f"),
    ("SIGKILL: killed process B values polled", "sigkill.lives.0.values_polled", ",d"),
    ("SIGKILL: killed process B values lost", "sigkill.lives.0.values_lost", ",d"),
    ("SIGKILL: devices that lost values in B", "sigkill.lives.0.devices_with_loss", ",d"),
    ("SIGKILL: restarted process C values polled", "sigkill.lives.1.values_polled", ",d"),
    ("SIGKILL: restarted process C values lost", "sigkill.lives.1.values_lost", ",d"),
    ("SIGKILL: duplicates", "sigkill.duplicates", ",d"),
    ("bench: broker redeliveries (DUP, not counted)", "totals.duplicates_broker_redelivery", ",d"),
    ("values matching no simulator case", "totals.bad_values", ",d"),
    ("sockets beyond loopback (/proc samples)", "loopback.beyond_loopback_count", ",d"),
    ("connections refused by the launcher guard", "loopback.launcher_blocked_count", ",d"),
]


def _lookup(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        if part in ("outage", "sigkill"):
            found = [o for o in node["outages"] if o["kind"] == part]
            node = found[0] if found else None
        elif part.isdigit():
            node = node[int(part)] if len(node) > int(part) else None
        else:
            node = node.get(part)
        if node is None:
            return None
    return node


def table(phases: list[dict[str, Any]]) -> str:
    """One column per phase (system and size), one row per figure of ROWS."""
    head = ("figure", *(f"{d['system']} {d['devices']}" for d in phases))
    body = [(label, *(_num(_lookup(d, path), fmt) for d in phases)) for label, path, fmt in ROWS]
    return fixed_table(head, body)


def _single(figure: str, unit: str, value: float | None, **extra: Any) -> dict[str, Any]:
    """A figure row (the shape of bench/summary.py) for ONE measurement: median=min=max."""
    if isinstance(value, float) and not math.isfinite(value):
        value = None
        extra.setdefault("note", "no values delivered in the steady window")
    return {
        "figure": figure,
        "unit": unit,
        "median": value,
        "min": value,
        "max": value,
        "ceiling_median": None,
        "reference": None,
        "reference_kind": "",
        "ratio": None,
        "runs": 1,
        **extra,
    }


def _steady_of(phase: dict[str, Any] | None, key: str) -> Any:
    return ((phase or {}).get("steady") or {}).get(key)


def _outage_of(phase: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((o for o in phase.get("outages") or [] if o.get("kind") == kind), None)


def figures(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline rows of a peer result document, for the combined table (bench/summary.py).

    Per device count N present: "N dev: <system> <figure>" for CPU per 1000 values/s, RSS
    peak, threads, backlog delivered after the broker's return (plain outage), values lost
    after the SIGKILL (processes B and C), duplicates after each outage. Each is ONE run
    ("runs": 1, median = min = max). The agent's CPU row carries the peer's as `reference`
    (reference_kind "peer") and ratio = agent / peer. A missing system, phase or outage
    skips its rows; a backlog that did not finish within --backlog-timeout gives no value;
    an agent phase whose processes ran different sources (agent_sources_sha256) has a note.
    """
    by: dict[tuple[int, str], dict[str, Any]] = {}
    for ph in doc.get("phases") or []:
        by.setdefault((int(ph.get("devices", 0)), str(ph.get("system"))), ph)
    rows: list[dict[str, Any]] = []
    mixed_code = ""  # per size, below: the agent's processes ran different sources

    def add(figure: str, unit: str, value: float | None, **extra: Any) -> None:
        if value is not None or "note" in extra:  # absent from the document: no row
            rows.append(_single(figure, unit, value, **extra))
            if " agent " in figure and mixed_code:
                rows[-1].setdefault("note", mixed_code)

    for n in sorted({n for n, _ in by}):
        peer, agent = by.get((n, "peer")), by.get((n, "agent"))
        systems = [(name, ph) for name, ph in (("agent", agent), ("peer", peer)) if ph]
        digests = set(((agent or {}).get("totals") or {}).get("agent_sources_sha256") or [])
        mixed_code = (
            f"the agent's sources changed between its processes: {sorted(digests)}"
            if len(digests) > 1
            else ""
        )
        cpu_key = "cpu_per_1000_values_s"
        for name, ph in systems:
            value = _steady_of(ph, cpu_key)
            extra: dict[str, Any] = {}
            ref = _steady_of(peer, cpu_key) if name == "agent" else None
            if isinstance(ref, int | float) and math.isfinite(ref) and ref > 0:
                extra = {"reference": ref, "reference_kind": "peer"}
                if isinstance(value, int | float) and math.isfinite(value):
                    extra["ratio"] = round(value / ref, 3)
            add(f"{n} dev: {name} CPU per 1000 values/s", "%", value, **extra)
        for name, ph in systems:
            add(f"{n} dev: {name} RSS peak", "MiB", _steady_of(ph, "rss_mib_peak"))
        for name, ph in systems:
            add(f"{n} dev: {name} threads", "", _steady_of(ph, "threads_max"))
        for name, ph in systems:
            o = _outage_of(ph, "outage")
            if o is None:
                continue
            label = f"{n} dev: {name} backlog delivered after broker return"
            if o.get("backlog_timed_out"):
                note = "backlog not complete within --backlog-timeout"
                add(label, "s", None, note=note)
            else:
                add(label, "s", o.get("backlog_delivered_after_s"))
        for name, ph in systems:
            o = _outage_of(ph, "sigkill")
            if o is None or not o.get("lives"):
                continue
            lost = sum(int(life.get("values_lost", 0)) for life in o["lives"])
            add(f"{n} dev: {name} values lost after SIGKILL", "values", lost)
        for kind, when in (("outage", "broker outage"), ("sigkill", "SIGKILL")):
            for name, ph in systems:
                o = _outage_of(ph, kind)
                if o is None:
                    continue
                label = f"{n} dev: {name} duplicates after {when}"
                add(label, "values", o.get("duplicates"))
    return rows
