"""Throughput: how many events per second the agent delivers, against what paho can do here.

One run measures, on the same private mosquitto:

* the CEILING: raw paho-mqtt 2.x publishing N telemetry payloads at QoS 1, driven from
  asyncio the way agent/publisher.py drives it (socket callbacks + add_reader/add_writer,
  loop_read/loop_write/loop_misc), the window bounded by the application (a semaphore
  released in on_publish, the agent's default window), timed from the first publish to
  the last PUBACK. The payloads are built by the agent's own code (profile, DevicePoints,
  events.encode) from the same config, so topic and bytes are alike.
* the AGENT: a real `python -m agent.cli run` process with a synthetic device asked for far
  more readings than it can deliver (its profile with heartbeat 0, so that report-by-
  exception keeps every reading), plus a fence device. After a warm-up, PUBACKs/s and
  committed/s come from the deltas of its status file (broker.acked, store.committed and
  their `written` stamps); its CPU (utime+stime) and RSS (VmRSS) come from /proc.

Runs alternate the order (ceiling first, then agent first, ...) so a drift of the machine
does not always favour the same side. The table gives medians, min-max, and the ratio
agent/ceiling (the median of the per-run ratios): ratios are what we quote.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from agent.config import load_config
from bench import cli
from bench.agent_process import AgentProcess
from bench.peers import Mosquitto, ProcStat
from bench.report import RESULTS, ceiling_table
from bench.stats import figure_row
from bench.summary import environment
from bench.throughput_ceiling import CeilingRun, build_payloads, measure_ceiling
from bench.throughput_config import FENCE_TOML, WINDOW, agent_head, env_device, write_profile
from bench.throughput_pyspy import profile_report, start_py_spy, stop_py_spy

PROFILE_OUT = RESULTS / "throughput-agent.pyspy.txt"

DESCRIPTION = (  # of --help
    "Agent PUBACKs/s and committed/s against raw paho QoS 1 on the same broker."
)


@dataclass
class Params:
    """What one invocation measures."""

    runs: int
    seconds: float
    warmup: float
    messages: int
    rate: float
    window: int
    paho_inflight: int
    protocol: str
    quick: bool
    profile: bool
    out: Path | None


@dataclass
class AgentRun:
    """The agent over its measured window (deltas of its status file)."""

    window_s: float
    acked_per_s: float
    committed_per_s: float
    cpu_percent: float  # of one core
    rss_mib_peak: float
    rss_mib_end: float
    backlog_end: int
    connects: int
    exit_code: int | None


def write_config(folder: Path, url: str, p: Params) -> Path:
    """The agent's config for one run (its store and its profile folder live beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    profiles = write_profile(folder / "profiles").parent
    head = agent_head(url, protocol=p.protocol, window=p.window, max_size="2GiB", profiles=profiles)
    cfg = folder / "agent.toml"
    cfg.write_text(head + env_device(f"rate = {p.rate}") + FENCE_TOML)
    return cfg


# ---- the two measurements ------------------------------------------------------------------


def run_ceiling(broker: Mosquitto, topic: str, payloads: list[bytes], p: Params) -> CeilingRun:
    """One ceiling measurement in a fresh event loop of this process."""
    return measure_ceiling(
        broker.host,
        broker.port,
        topic,
        payloads,
        window=p.window,
        paho_inflight=p.paho_inflight,
        protocol=p.protocol,
    )


def run_agent(
    broker: Mosquitto, folder: Path, p: Params, profile_to: Path | None = None
) -> AgentRun:
    """Start the agent, warm up, measure `p.seconds` from its status file, stop it."""
    agent = AgentProcess(write_config(folder, broker.url, p))
    pid = agent.start()
    stat = ProcStat(pid)
    exit_code: int | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        agent.wait_for(
            lambda doc: doc["broker"]["connected"] and doc["broker"]["acked"] > 0,
            60,
            lambda doc: "agent never delivered an event",
        )
        time.sleep(p.warmup)
        first = agent.wait_status(agent.written(), 10)
        cpu0, t0 = stat.cpu_seconds(), time.monotonic()
        if profile_to is not None:
            spy = start_py_spy(pid, p.seconds, profile_to)
        rss = stat.rss_while(lambda: time.monotonic() - t0 < p.seconds - 0.05, agent.check_alive)
        last = agent.wait_status(agent.written(), 10)
        cpu1, t1 = stat.cpu_seconds(), time.monotonic()
        rss.append(stat.rss_mib())
    finally:
        if spy is not None:
            stop_py_spy(spy, p.seconds)
        exit_code = agent.stop()
    dt = float(last["written"]) - float(first["written"])
    acked = last["broker"]["acked"] - first["broker"]["acked"]
    committed = last["store"]["committed"] - first["store"]["committed"]
    return AgentRun(
        window_s=round(dt, 3),
        acked_per_s=round(acked / dt, 1),
        committed_per_s=round(committed / dt, 1),
        cpu_percent=round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        rss_mib_peak=round(max(rss), 1),
        rss_mib_end=round(rss[-1], 1),
        backlog_end=int(last.get("backlog", 0)),
        connects=int(last["broker"]["connects"]),
        exit_code=exit_code,
    )


# ---- the report --------------------------------------------------------------------------

SPECS: list[tuple[str, str, str, bool]] = [
    # (figure, unit, AgentRun field, against the ceiling)
    ("agent: PUBACKs/s", "msg/s", "acked_per_s", True),
    ("agent: committed/s", "events/s", "committed_per_s", True),
    ("agent: CPU (% of one core)", "%", "cpu_percent", False),
    ("agent: RSS peak", "MiB", "rss_mib_peak", False),
]


def figures(ceilings: list[CeilingRun], agents: list[AgentRun]) -> list[dict[str, Any]]:
    """One row per figure: median, min, max, ceiling median, ratio (median of run ratios)."""
    ceil = [c.acked_per_s for c in ceilings]
    rows = [figure_row("ceiling: raw paho QoS 1 PUBACKs/s", "msg/s", ceil, digits=2)]
    for name, unit, attr, vs_ceiling in SPECS:
        xs = [float(getattr(a, attr)) for a in agents]
        rows.append(
            figure_row(name, unit, xs, ceil if vs_ceiling else None, digits=2, ceiling_digits=2)
        )
    return rows


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table."""
    return ceiling_table(rows, _num)


# ---- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Params:
    ap = cli.Parser("throughput", DESCRIPTION, runs="each: ceiling + agent")
    ap.seconds(30.0)
    ap.warmup(2.0, "agent warm-up seconds")
    ap.messages()
    ap.rate("synthetic readings/s asked of the agent")
    ap.mqtt(WINDOW)
    ap.add_argument(
        "--paho-inflight",
        type=int,
        default=0,
        help="paho's own in-flight limit in the ceiling client; 0 = off (paho's default is 20)",
    )
    ap.last(
        "1 run, 2 s, tiny sizes", profile="the agent during the last run (needs py-spy in the venv)"
    )
    a = ap.parse(argv, quick={"runs": 1, "seconds": 2.0, "warmup": 1.0, "messages": 2_000})
    if a.runs < 1 or a.seconds < 1 or a.messages < 1:
        ap.error("--runs, --messages must be >= 1 and --seconds >= 1")
    return cli.params(Params, a)


def measure(p: Params) -> cli.Measured:
    """The runs, ceiling and agent in turn, on one broker; the table and the result file."""
    ceilings: list[CeilingRun] = []
    agents: list[AgentRun] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp, Mosquitto() as broker:
        work = Path(tmp)
        config = load_config(write_config(work / "payloads", broker.url, p))
        topic, payloads = build_payloads(config, p.messages)
        print(
            f"throughput: broker {broker.url} (pid {broker.pid}), {p.runs} run(s), "
            f"ceiling {p.messages} msgs, agent {p.warmup:g}s warm-up + {p.seconds:g}s, "
            f"window {p.window}, MQTT {p.protocol}, payload {len(payloads[0])} B",
            flush=True,
        )
        for i in range(p.runs):
            profiled = p.profile and i == p.runs - 1
            to = PROFILE_OUT if profiled else None
            order, ceiling, agent = cli.alternate(
                i,
                partial(run_ceiling, broker, topic, payloads, p),
                partial(run_agent, broker, work / f"agent-{i + 1}", p, to),
            )
            ceilings.append(ceiling)
            agents.append(agent)
            print(
                f"  run {i + 1}/{p.runs} ({' then '.join(order)}): "
                f"ceiling {ceiling.acked_per_s:,.0f}/s, agent {agent.acked_per_s:,.0f} acked/s, "
                f"{agent.committed_per_s:,.0f} committed/s, CPU {agent.cpu_percent:.0f}%, "
                f"RSS {agent.rss_mib_peak:.1f} MiB, backlog {agent.backlog_end:,}",
                flush=True,
            )
            if agent.committed_per_s < 0.5 * min(p.rate, 1000):
                print(
                    f"  warning: the agent committed only {agent.committed_per_s:g} events/s "
                    f"for {p.rate:g} readings/s asked: are readings suppressed (profile "
                    f"deadband/heartbeat) or the driver failing? See the agent log.",
                    file=sys.stderr,
                    flush=True,
                )
            runs.append(cli.run_record(i, order, ceiling, agent, profiled))
    rows = figures(ceilings, agents)
    profiled_doc = p.profile and PROFILE_OUT.exists()
    return cli.Measured(
        table(rows),
        {"environment": environment(), "figures": rows, "runs": runs},
        params={"payload_bytes": len(payloads[0]), "topic": topic},
        then=(lambda: {"profile": profile_report("agent", PROFILE_OUT)}) if profiled_doc else None,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write results/throughput.json."""
    return cli.main("throughput", parse_args(argv), measure)


if __name__ == "__main__":
    raise SystemExit(main())
