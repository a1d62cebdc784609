"""The combined table: the headline figure of every benchmark against the goals of the issue.

Built from the latest result file of each benchmark (`results/<name>.json`, or the `-quick`
files after a `--quick` run), so `python -m bench --summary` rebuilds it without measuring
anything. Each row: figure, median of the runs, min-max, the ceiling measured in the same
run (when the goal is a ratio to it), the ratio, the goal, and pass / MISS judged on the
median (the ratio's median for a ratio goal). Written to `results/summary.json` with the
machine it ran on.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.peers import mosquitto_version
from bench.report import fixed_table, ratio_text, result_file, timestamp, write_json

# ---- the machine ---------------------------------------------------------------------------


def _read(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            name, sep, value = line.partition(":" if path.startswith("/proc") else "=")
            if sep and name.strip() == key:
                return value.strip().strip('"')
    except OSError:
        pass
    return None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def machine() -> dict[str, Any]:
    """The machine and the versions the figures were measured with."""
    mem = _read("/proc/meminfo", "MemTotal")
    flags = (_read("/proc/cpuinfo", "flags") or "").split()
    family, model = _read("/proc/cpuinfo", "cpu family"), _read("/proc/cpuinfo", "model")
    return {
        "cpu": _read("/proc/cpuinfo", "model name") or platform.processor() or "?",
        "cpu_family_model": f"{family}/{model}" if family else None,
        "cpu_mhz": _read("/proc/cpuinfo", "cpu MHz"),
        "virtual_machine": "hypervisor" in flags,
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem.split()[0]) / 1024**2, 1) if mem else None,
        "os": _read("/etc/os-release", "PRETTY_NAME") or platform.system(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "mosquitto": mosquitto_version(),
        "sqlite": sqlite3.sqlite_version,
        "paho_mqtt": _version("paho-mqtt"),
        "aiosqlite": _version("aiosqlite"),
        "orjson": _version("orjson"),
        "pydantic": _version("pydantic"),
        "pymodbus": _version("pymodbus"),
    }


def environment() -> dict[str, Any]:
    """What a benchmark's figures were measured with (its result file's `environment`)."""
    return {
        "python": platform.python_version(),
        "paho_mqtt": metadata.version("paho-mqtt"),
        "mosquitto": mosquitto_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
    }


class SystemLoad:
    """How busy the whole machine was over a window: /proc/stat, load average, PSI.

    The development machine is shared: a figure measured while something else used the
    cores or the disk is not the same figure. Each window records this next to it.
    """

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.cpu0 = self._cpu()

    @staticmethod
    def _cpu() -> list[int]:
        try:
            line = Path("/proc/stat").read_text().splitlines()[0]
        except OSError:
            return []
        return [int(x) for x in line.split()[1:]]

    @staticmethod
    def _psi(kind: str) -> float | None:
        """`some avg10` of /proc/pressure/<kind>: % of the last 10 s something waited."""
        try:
            text = Path(f"/proc/pressure/{kind}").read_text().splitlines()[0]
            return float(text.split()[1].split("=")[1])
        except (OSError, IndexError, ValueError):
            return None

    def result(self) -> dict[str, Any]:
        """Over the window: % of one core busy (all cores summed), iowait, steal; PSI now."""
        cpu1 = self._cpu()
        out: dict[str, Any] = {"seconds": round(time.monotonic() - self.t0, 2)}
        if self.cpu0 and cpu1:
            d = [b - a for a, b in zip(self.cpu0, cpu1, strict=False)]
            total = sum(d[:8]) or 1
            cores = os.cpu_count() or 1
            idle, iowait, steal = d[3], d[4], d[7] if len(d) > 7 else 0
            out["busy_percent"] = round(100 * cores * (total - idle - iowait) / total, 1)
            out["iowait_percent"] = round(100 * cores * iowait / total, 1)
            out["steal_percent"] = round(100 * cores * steal / total, 1)
        out["load_average_1m"] = round(os.getloadavg()[0], 2)
        out["psi_cpu_some_avg10"] = self._psi("cpu")
        out["psi_io_some_avg10"] = self._psi("io")
        return out


# ---- the goals -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """One headline figure of a benchmark and what the issue asks of it (None: shown only)."""

    benchmark: str
    figure: str  # as the benchmark names it in its `figures`
    op: str | None = None  # "ratio>=", "ratio<=", ">=", "<", "<=", "=="
    target: float | None = None
    text: str = ""

    @classmethod
    def of(cls, benchmark: str, figure: str, text: str) -> Goal:
        """The goal as the issue writes it, its test read from it: "< 250 ms" (the median
        below 250), "<= 0.2 x peer" (the median ratio at most 0.2), "0" (none), "" (no
        goal: the figure is shown only)."""
        if not text:
            return cls(benchmark, figure)
        if text == "0":
            return cls(benchmark, figure, "==", 0, text)
        op, target, *rest = text.split()
        return cls(benchmark, figure, ("ratio" if "x" in rest else "") + op, float(target), text)


def goals(benchmark: str, *figures: tuple[str, str]) -> list[Goal]:
    """A benchmark's goals: (figure, goal text as Goal.of reads it), in the table's order."""
    return [Goal.of(benchmark, figure, text) for figure, text in figures]


# The peer's figures, each an agent row with its goal then the peer's row, shown only.
# bench/peer.py: one run per size, not a median of 3; the peer's rows are for comparison.
# "{n}": each device count of the result file (100 and 200; 10 after --quick).
PEER_FIGURES: list[tuple[str, str]] = [
    ("CPU per 1000 values/s", "<= 0.25 x peer"),
    ("RSS peak", ""),
    ("threads", ""),
    ("backlog delivered after broker return", "< 2 s"),
    ("duplicates after broker outage", "0"),
    ("values lost after SIGKILL", ""),
    ("duplicates after SIGKILL", ""),
]

GOALS: list[Goal] = [
    *goals(
        "throughput",
        ("ceiling: raw paho QoS 1 PUBACKs/s", ""),
        ("agent: PUBACKs/s", ">= 0.6 x ceiling"),
        ("agent: committed/s", ""),
    ),
    *goals(
        "drain",
        ("ceiling: raw paho QoS 1 PUBACKs/s", ""),
        ("drain: PUBACKs/s", ">= 0.6 x ceiling"),
        ("alarm during drain: sample -> subscriber p99", "< 250 ms"),
        ("alarm during drain: sample -> subscriber max", ""),
        ("broker back -> first backlog event at subscriber", "< 2 s"),
        ("broker back -> backlog empty", ""),
        ("duplicates received", "0"),
        ("events missing", "0"),
    ),
    *goals(
        "latency",
        ("1000/s: sample -> PUBACK p50 (wire)", ""),
        ("1000/s: sample -> PUBACK p99 (wire)", "< 20 ms"),
        ("1000/s: sample -> subscriber p50", ""),
        ("1000/s: sample -> subscriber p99", ""),
        ("1000/s: agent CPU", ""),
        ("100/s: agent CPU", "<= 4 %"),
        ("idle: agent CPU", "< 0.5 %"),
        ("start-up -> first PUBACK (wire)", "< 2 s"),
        ("start-up -> first event at subscriber", ""),
    ),
    *goals(
        "modbus",
        ("agent: RSS peak", "< 60 MiB"),
        ("agent: CPU per 100 events/s", "<= 5 %"),
        ("agent: CPU (% of one core)", ""),
    ),
    *goals(
        "school",
        ("highest sustained rate, backlog flat", ">= 300 /s"),
        ("peak: events committed", ""),
        ("peak: alarm sample -> PUBACK p99, broker up", "< 250 ms"),
        ("peak: card read -> PUBACK p99, broker up", ""),
        ("events lost (seq at the checker)", "0"),
        ("agent CPU at the peak", ""),
    ),
    *goals(
        "peer",
        *(
            (f"{{n}} dev: {who} {figure}", goal if who == "agent" else "")
            for figure, goal in PEER_FIGURES
            for who in ("agent", "peer")
        ),
    ),
]
PER_SIZE = "{n}"
DEFAULT_SIZES = {"peer": [100, 200]}  # when the result file is missing or names none

# Benchmarks whose older result files have no `figures`: the module's figures(doc) derives
# them from the file (imported only when needed).
REFIGURE = {"peer": "bench.peer_report"}


def _verdict(goal: Goal, row: dict[str, Any]) -> str:
    if goal.op is None or goal.target is None:
        return ""
    value = row.get("ratio") if goal.op.startswith("ratio") else row.get("median")
    if value is None:
        return "?"
    ok = {
        "ratio>=": value >= goal.target,
        "ratio<=": value <= goal.target,
        ">=": value >= goal.target,
        "<": value < goal.target,
        "<=": value <= goal.target,
        "==": value == goal.target,
    }[goal.op]
    return "pass" if ok else "MISS"


def _refigure(name: str, doc: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The figures of a result file written before its benchmark wrote them, or None."""
    import importlib

    try:
        rows = importlib.import_module(REFIGURE[name]).figures(doc)
    except Exception:  # a file it cannot read shows as missing figures, not a crash
        return None
    return rows if isinstance(rows, list) else None


def _sizes(benchmark: str, doc: dict[str, Any] | None) -> list[int]:
    sizes = (doc or {}).get("params", {}).get("devices")
    if isinstance(sizes, list) and sizes and all(isinstance(n, int) for n in sizes):
        return sorted(sizes)
    return DEFAULT_SIZES.get(benchmark, [])


def _expand(goals: list[Goal], docs: dict[str, dict[str, Any] | None]) -> list[Goal]:
    """Each run of consecutive "{n}" goals of a benchmark, once per device count, in order."""
    out: list[Goal] = []
    i = 0
    while i < len(goals):
        g = goals[i]
        if PER_SIZE not in g.figure:
            out.append(g)
            i += 1
            continue
        j = i
        while j < len(goals) and PER_SIZE in goals[j].figure and goals[j].benchmark == g.benchmark:
            j += 1
        out += [
            replace(t, figure=t.figure.replace(PER_SIZE, str(n)))
            for n in _sizes(g.benchmark, docs.get(g.benchmark))
            for t in goals[i:j]
        ]
        i = j
    return out


def combined(suffix: str = "", since: float | None = None) -> dict[str, Any]:
    """The combined rows from the latest result files; `since`: the invocation's start."""
    docs: dict[str, dict[str, Any] | None] = {}
    sources: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(g.benchmark for g in GOALS):
        path = result_file(name, suffix)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = None
        docs[name] = doc
        if doc is not None:
            sources[name] = {
                "file": str(path),
                "started": doc.get("started"),
                "this_invocation": since is None or path.stat().st_mtime >= since,
                "runs": doc.get("params", {}).get("runs"),
            }
    rows: list[dict[str, Any]] = []
    for g in _expand(GOALS, docs):
        doc = docs.get(g.benchmark)
        found = None
        if doc is not None:
            figures = doc.get("figures")
            if figures is None and g.benchmark in REFIGURE:
                figures = doc["figures"] = _refigure(g.benchmark, doc)
                sources[g.benchmark]["figures_derived_by"] = REFIGURE[g.benchmark] + ".figures"
            if isinstance(figures, list):
                found = next((r for r in figures if r.get("figure") == g.figure), None)
        row: dict[str, Any] = {"benchmark": g.benchmark, "figure": g.figure, "goal": g.text}
        if found is None:
            missing = "not run" if doc is None else "no figure"  # the file lacks this row
            row.update({"unit": "", "median": None, "verdict": missing if g.op else ""})
            rows.append(row)
            continue
        ceiling = found.get("ceiling_median")
        if ceiling is None and found.get("reference_kind") == "ceiling":
            ceiling = found.get("reference")
        row.update(
            {
                "unit": found.get("unit", ""),
                "median": found.get("median"),
                "min": found.get("min"),
                "max": found.get("max"),
                "ceiling": ceiling,
                "ratio": found.get("ratio"),
                "runs": found.get("runs"),
                "fresh": sources[g.benchmark]["this_invocation"],
            }
        )
        row["verdict"] = _verdict(g, row)
        rows.append(row)
    return {"rows": rows, "sources": sources}


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if isinstance(x, int):  # counts (threads, values, duplicates)
        return f"{x:,}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3f}"


def _spread(r: dict[str, Any]) -> str:
    """min-max of the runs; "1 run" for a single measurement (no spread to show)."""
    if r.get("median") is None:
        return "-"
    if r.get("runs") == 1:
        return "1 run"
    return f"{_num(r.get('min'))}-{_num(r.get('max'))}"


def table(rows: list[dict[str, Any]]) -> str:
    """The combined rows as a fixed-width text table (`*`: not measured in this invocation)."""
    head = ("benchmark", "figure", "median", "min-max", "ceiling", "ratio", "goal", "")
    body = []
    for r in rows:
        unit = f" [{r['unit']}]" if r.get("unit") else ""
        stale = "" if r.get("fresh", True) else "*"
        spread = _spread(r)
        body.append(
            (
                r["benchmark"] + stale,
                r["figure"] + unit,
                _num(r.get("median")),
                spread,
                _num(r.get("ceiling")),
                ratio_text(r.get("ratio")),
                r.get("goal") or "",
                r.get("verdict") or "",
            )
        )
    return fixed_table(head, body, left=(0, 1, 6, 7))


def markdown(rows: list[dict[str, Any]]) -> str:
    """The combined rows as a Markdown table (docs/performance.md)."""
    lines = [
        "| benchmark | figure | median | min-max | ceiling | ratio | goal | |",
        "|---|---|--:|--:|--:|--:|---|---|",
    ]
    for r in rows:
        unit = f" [{r['unit']}]" if r.get("unit") else ""
        spread = _spread(r)
        ratio = ratio_text(r.get("ratio"))
        verdict = r.get("verdict") or ""
        verdict = f"**{verdict}**" if verdict == "MISS" else verdict
        cells = (
            r["benchmark"],
            (r["figure"] + unit).replace("->", "→"),
            _num(r.get("median")),
            spread,
            _num(r.get("ceiling")),
            ratio,
            (r.get("goal") or "").replace(">=", "≥").replace("<=", "≤"),
            verdict,
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(
    suffix: str = "", since: float | None = None, argv: list[str] | None = None
) -> tuple[Path, dict[str, Any]]:
    """Build the combined table, write results/summary<suffix>.json; (path, document)."""
    doc = combined(suffix, since)
    doc = {
        "benchmark": "summary",
        "written": timestamp(),
        "argv": argv,
        "quick": suffix == "-quick",
        "machine": machine(),
        **doc,
    }
    out = result_file("summary", suffix)
    write_json(out, doc)
    return out, doc
