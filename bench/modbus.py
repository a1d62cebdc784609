"""Modbus: requests saved by block reads, and the agent polling many devices over Modbus TCP.

Two tables:

* COALESCING (pure, no I/O; bench/coalescing.py): for every shipped modbus profile, the
  read requests one poll costs as `plan_reads` groups the points with the profile's
  `max_gap`, against one request per point (`max_gap = -1`) and against adjacent-only
  merging (`max_gap = 0`), and the registers (or bits) those requests read.
* POLLING LOAD (this module): `--devices` (200) simulated devices of a bench-only 10-point
  profile (two blocks: 5 holding + 5 input registers; bench/modbus_devices.py), each polled
  every `--interval` (1 s) by a real `python -m agent.cli run` over Modbus TCP, against
  `python -m drivers.modbus.simulator` processes (`--simulators`, one TCP bus each) whose
  values change every `--case-every` (0.5 s) so that report-by-exception lets telemetry
  flow, and a private mosquitto. After a warm-up, over `--seconds` (60): points polled/s and
  requests/s (driver counters in the agent's status file, cross-checked against the
  simulators' own request counts), events acked/s (status file), the agent's CPU and RSS
  (/proc), the simulators' and the broker's CPU, and the poll period each device achieved
  (from the `ts` of the telemetry events a bench subscriber receives).

The CEILING of a run is a raw pymodbus client in this process asking the same simulators
for the same blocks as fast as they answer (one client per simulator, `max_concurrent`
tasks each, as the driver does) for `--ceiling-seconds`: what pymodbus client + server can
do on this machine right now, with the simulators' CPU during it. Runs alternate the order
(ceiling first, then agent first, ...). The table (bench/modbus_report.py) gives medians of
`--runs` (3), min-max, and each figure against what was asked (devices x points /
interval), the ceiling, or a goal.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pymodbus.client import AsyncModbusTcpClient

from bench import cli
from bench.agent_process import AgentProcess
from bench.coalescing import block_name, coalescing, coalescing_table
from bench.modbus_devices import (
    BENCH_POINTS,
    CASES,
    MAX_UNITS,
    TELEMETRY_TOPIC,
    Load,
    Simulator,
    bench_blocks,
    start_simulators,
    write_agent_config,
)
from bench.modbus_report import GOAL_CPU_PER_100_EVENTS, GOAL_RSS_MIB, figures, polling_table
from bench.modbus_report import summary as run_line
from bench.peers import HOST, Mosquitto, ProcStat, cpu_seconds
from bench.report import RESULTS
from bench.stats import quantile, rounded
from bench.summary import environment
from bench.throughput_pyspy import profile_report, start_py_spy, stop_py_spy
from drivers.modbus.driver import ModbusTcpBus

MAX_CONCURRENT: int = ModbusTcpBus.model_fields["max_concurrent"].default  # the driver's default
PROFILE_OUT = RESULTS / "modbus-agent.pyspy.txt"

DESCRIPTION = (  # of --help
    "Requests saved by block reads (shipped profiles), and points polled/s "
    "with the agent's CPU and RSS at N simulated Modbus TCP devices."
)


@dataclass
class Params:
    """What one invocation measures."""

    runs: int
    seconds: float
    warmup: float
    devices: int
    interval: float
    simulators: int
    case_every: float
    ceiling_seconds: float
    quick: bool
    profile: bool
    out: Path | None

    def load(self) -> Load:
        return Load(self.devices, self.interval, self.simulators, self.case_every)


@dataclass
class CeilingRun:
    """Raw pymodbus: the same blocks asked of the same simulators as fast as they answer."""

    clients: int
    tasks_per_client: int
    elapsed_s: float
    requests: int
    errors: int
    requests_per_s: float
    simulator_cpu_percent: float  # all simulators together; 100 % = one core
    client_cpu_percent: float  # this process (the raw client)


@dataclass
class AgentRun:
    """The agent over its measured window."""

    window_s: float
    requests_per_s: float  # driver counters (status file)
    server_requests_per_s: float  # the simulators' own counts
    points_per_s: float  # (requests - errors) x points per request
    polls_per_s: float
    errors: int
    acked_per_s: float
    committed_per_s: float
    received_per_s: float  # telemetry events the bench subscriber got
    cpu_percent: float
    rss_mib_peak: float
    rss_mib_end: float
    simulator_cpu_percent: float
    broker_cpu_percent: float
    period_median_s: float | None
    period_p95_s: float | None
    period_max_s: float | None
    period_from_rate_s: float  # devices / polls per second
    devices_seen: int  # devices with at least two telemetry events in the window
    devices_online: int
    backlog_end: int
    exit_code: int | None


# ---- the ceiling ---------------------------------------------------------------------------


async def _ceiling(sims: list[Simulator], seconds: float, tasks: int) -> tuple[int, int, float]:
    blocks = bench_blocks()
    clients = [
        AsyncModbusTcpClient(HOST, port=s.port, timeout=1.0, retries=0, reconnect_delay=0)
        for s in sims
    ]
    try:
        for c in clients:
            if not await c.connect():
                raise RuntimeError("ceiling: cannot connect to the simulator")
        counts = [0, 0]  # requests, errors
        stop_at = time.monotonic() + seconds

        async def worker(client: AsyncModbusTcpClient, units: list[int], offset: int) -> None:
            i = offset
            while time.monotonic() < stop_at:
                unit = units[(i // len(blocks)) % len(units)]
                block = blocks[i % len(blocks)]
                i += 1
                try:
                    if block.table == "holding":
                        rr = await client.read_holding_registers(
                            block.start, count=block.count, device_id=unit
                        )
                    else:
                        rr = await client.read_input_registers(
                            block.start, count=block.count, device_id=unit
                        )
                    block.extract(rr.registers)
                    counts[1] += rr.isError()
                except Exception:
                    counts[1] += 1
                counts[0] += 1

        started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            for c, s in zip(clients, sims, strict=True):
                for t in range(tasks):
                    tg.create_task(worker(c, s.units, t * 7))
        return counts[0], counts[1], time.monotonic() - started
    finally:
        for c in clients:
            c.close()


def run_ceiling(sims: list[Simulator], p: Params) -> CeilingRun:
    sim_stats = [ProcStat(s.pid) for s in sims]
    me = ProcStat(os.getpid())
    cpu_s0, cpu_me0, t0 = cpu_seconds(sim_stats), me.cpu_seconds(), time.monotonic()
    requests, errors, elapsed = asyncio.run(_ceiling(sims, p.ceiling_seconds, MAX_CONCURRENT))
    cpu_s1, cpu_me1, t1 = cpu_seconds(sim_stats), me.cpu_seconds(), time.monotonic()
    return CeilingRun(
        clients=len(sims),
        tasks_per_client=MAX_CONCURRENT,
        elapsed_s=round(elapsed, 3),
        requests=requests,
        errors=errors,
        requests_per_s=round(requests / elapsed, 1),
        simulator_cpu_percent=round(100 * (cpu_s1 - cpu_s0) / (t1 - t0), 1),
        client_cpu_percent=round(100 * (cpu_me1 - cpu_me0) / (t1 - t0), 1),
    )


# ---- the subscriber (poll periods) ---------------------------------------------------------


class Subscriber:
    """A QoS 0 subscriber to the agent's telemetry; keeps (device, payload) for later."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-modbus-sub-{os.getpid()}",
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        self.broker = broker
        self.topic = TELEMETRY_TOPIC
        self.messages: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self.topic, qos=0)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), msg.payload))

    def start(self) -> None:
        self.client.connect(self.broker.host, self.broker.port, keepalive=60)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("bench subscriber: no SUBACK within 10 s")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def between(self, t0: float, t1: float) -> list[bytes]:
        with self._lock:
            return [m for t, m in self.messages if t0 <= t <= t1]


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


def poll_periods(payloads: list[bytes]) -> tuple[list[float], int]:
    """Intervals between consecutive telemetry events of each device; devices seen."""
    by_device: dict[str, list[float]] = {}
    for raw in payloads:
        doc = json.loads(raw)
        by_device.setdefault(doc["device"], []).append(_epoch(doc["ts"]))
    intervals: list[float] = []
    seen = 0
    for stamps in by_device.values():
        stamps.sort()
        if len(stamps) >= 2:
            seen += 1
        intervals += [b - a for a, b in itertools.pairwise(stamps)]
    return intervals, seen


# ---- the agent -----------------------------------------------------------------------------


def _bus_sum(doc: dict[str, Any], key: str) -> int:
    return sum(int(b.get(key, 0)) for b in doc.get("buses", {}).values())


def _online(doc: dict[str, Any]) -> int:
    """Devices the agent's status file says are online."""
    return sum(1 for d in doc.get("devices", {}).values() if d.get("online"))


def run_agent(
    broker: Mosquitto,
    sims: list[Simulator],
    folder: Path,
    p: Params,
    profile_to: Path | None = None,
) -> AgentRun:
    """Start the agent on the simulators, warm up, measure `p.seconds`, stop it."""
    agent = AgentProcess(write_agent_config(folder, broker.url, [s.port for s in sims], p.load()))
    sub = Subscriber(broker)
    sub.start()
    pid = agent.start()
    stat = ProcStat(pid)
    sim_stats = [ProcStat(s.pid) for s in sims]
    mosq = ProcStat(broker.pid) if broker.pid else None
    blocks = len(bench_blocks())
    points_per_request = len(BENCH_POINTS) / blocks
    spies: list[subprocess.Popen[bytes]] = []
    try:
        agent.wait_for(
            lambda doc: doc["broker"]["acked"] > 0 and _online(doc) >= p.devices,
            60,
            lambda doc: f"agent: {_online(doc)}/{p.devices} devices online after 60 s",
        )
        time.sleep(p.warmup)
        first = agent.wait_status(agent.written(), 10)
        t0 = time.monotonic()
        cpu0, sim0 = stat.cpu_seconds(), cpu_seconds(sim_stats)
        mosq0 = mosq.cpu_seconds() if mosq else 0
        served0 = sum(s.requests() for s in sims)
        if profile_to is not None:
            spies.append(start_py_spy(pid, p.seconds, profile_to))
            spies.append(start_py_spy(sims[0].pid, p.seconds, _sim_profile(profile_to)))
        rss = stat.rss_while(lambda: time.monotonic() - t0 < p.seconds - 0.05, agent.check_alive)
        last = agent.wait_status(agent.written(), 10)
        t1 = time.monotonic()
        cpu1, sim1 = stat.cpu_seconds(), cpu_seconds(sim_stats)
        mosq1 = mosq.cpu_seconds() if mosq else 0
        served1 = sum(s.requests() for s in sims)
        rss.append(stat.rss_mib())
        # Events stamped inside the window arrive a little later; wait one interval for them.
        time.sleep(min(2.0, p.interval))
        payloads = sub.between(t0, time.monotonic())
    finally:
        for spy in spies:
            stop_py_spy(spy, p.seconds)
        exit_code = agent.stop()
        sub.stop()
    dt = float(last["written"]) - float(first["written"])
    wall = t1 - t0
    requests = _bus_sum(last, "requests") - _bus_sum(first, "requests")
    errors = _bus_sum(last, "errors") - _bus_sum(first, "errors")
    acked = last["broker"]["acked"] - first["broker"]["acked"]
    committed = last["store"]["committed"] - first["store"]["committed"]
    # Keep the events stamped within the window of the status documents.
    lo, hi = float(first["written"]), float(last["written"])
    in_window = [m for m in payloads if lo <= _epoch(json.loads(m)["ts"]) < hi]
    intervals, seen = poll_periods(in_window)
    polls_per_s = requests / blocks / dt
    return AgentRun(
        window_s=round(dt, 3),
        requests_per_s=round(requests / dt, 1),
        server_requests_per_s=round((served1 - served0) / wall, 1),
        points_per_s=round((requests - errors) * points_per_request / dt, 1),
        polls_per_s=round(polls_per_s, 1),
        errors=errors,
        acked_per_s=round(acked / dt, 1),
        committed_per_s=round(committed / dt, 1),
        received_per_s=round(len(in_window) / dt, 1),
        cpu_percent=round(100 * (cpu1 - cpu0) / wall, 1),
        rss_mib_peak=round(max(rss), 1),
        rss_mib_end=round(rss[-1], 1),
        simulator_cpu_percent=round(100 * (sim1 - sim0) / wall, 1),
        broker_cpu_percent=round(100 * (mosq1 - mosq0) / wall, 1),
        period_median_s=rounded(statistics.median(intervals) if intervals else None, 3),
        period_p95_s=rounded(quantile(intervals, 0.95), 3),
        period_max_s=rounded(max(intervals, default=None), 3),
        period_from_rate_s=round(p.devices / polls_per_s, 3) if polls_per_s else math.inf,
        devices_seen=seen,
        devices_online=_online(last),
        backlog_end=int(last.get("backlog", 0)),
        exit_code=exit_code,
    )


def _sim_profile(agent_profile: Path) -> Path:
    return agent_profile.with_name(agent_profile.name.replace("-agent.", "-simulator."))


# ---- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Params:
    ap = cli.Parser("modbus", DESCRIPTION, runs="each: ceiling + agent")
    ap.seconds(60.0)
    ap.warmup(3.0, "seconds after all are online")
    ap.add_argument("--devices", type=int, default=200, help="simulated devices; 200")
    ap.modbus_load()
    ap.add_argument(
        "--ceiling-seconds", type=float, default=5.0, help="raw pymodbus ceiling per run; 5"
    )
    ap.last(
        "1 run, 5 s, 20 devices", profile="the agent and the first simulator during the last run"
    )
    quick = {"runs": 1, "seconds": 5.0, "warmup": 2.0, "devices": 20, "ceiling_seconds": 2.0}
    a = ap.parse(argv, quick=quick)
    if a.runs < 1 or a.seconds < 1 or a.devices < 1 or a.simulators < 1 or a.interval <= 0:
        ap.error("--runs, --devices, --simulators must be >= 1, --seconds >= 1, --interval > 0")
    if a.devices > MAX_UNITS * a.simulators:
        ap.error(f"at most {MAX_UNITS} devices per simulator: add --simulators")
    return cli.params(Params, a)


def measure(p: Params) -> cli.Measured:
    """The coalescing table, then the runs, ceiling and agent in turn on fresh simulators."""
    rows = coalescing()
    print("modbus: requests per poll of the shipped profiles (plan_reads, no I/O)\n")
    print(coalescing_table(rows))
    print(flush=True)

    blocks = bench_blocks()
    print(
        f"modbus: {p.devices} devices x {len(BENCH_POINTS)} points ({len(blocks)} requests) "
        f"every {p.interval:g}s on {p.simulators} simulator(s); {p.runs} run(s) of "
        f"{p.warmup:g}s warm-up + {p.seconds:g}s, ceiling {p.ceiling_seconds:g}s",
        flush=True,
    )
    ceilings: list[CeilingRun] = []
    agents: list[AgentRun] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-modbus-") as tmp, Mosquitto() as broker:
        work = Path(tmp)
        for i in range(p.runs):
            to = PROFILE_OUT if p.profile and i == p.runs - 1 else None
            sims = start_simulators(work / f"run-{i + 1}", p.load())
            try:
                order, ceiling, agent = cli.alternate(
                    i,
                    partial(run_ceiling, sims, p),
                    partial(run_agent, broker, sims, work / f"agent-{i + 1}", p, to),
                )
            finally:
                for s in sims:
                    s.stop()
            ceilings.append(ceiling)
            agents.append(agent)
            line = f"  run {i + 1}/{p.runs} ({' then '.join(order)}): {run_line(ceiling, agent)}"
            print(line, flush=True)
            if agent.simulator_cpu_percent >= 80 * p.simulators:
                print(
                    f"  warning: the simulator(s) used {agent.simulator_cpu_percent:.0f}% of a "
                    "core: they may be the bottleneck (try --simulators 2)",
                    file=sys.stderr,
                    flush=True,
                )
            runs.append(cli.run_record(i, order, ceiling, agent, to is not None))
    table_rows = figures(ceilings, agents, p)
    doc: dict[str, Any] = {
        "goals": {
            "rss_mib_below": GOAL_RSS_MIB,
            "cpu_percent_per_100_events_s_at_most": GOAL_CPU_PER_100_EVENTS,
        },
        "environment": {**environment(), "pymodbus": metadata.version("pymodbus")},
        "coalescing": rows,
        "figures": table_rows,
        "runs": runs,
    }
    params = {
        "points_per_device": len(BENCH_POINTS),
        "requests_per_poll": len(blocks),
        "blocks": [block_name(b) for b in blocks],
        "max_concurrent": MAX_CONCURRENT,
        "cases": CASES,
    }
    profiled = p.profile and PROFILE_OUT.exists()
    return cli.Measured(
        polling_table(table_rows), doc, params, then=_profiles if profiled else None
    )


def _profiles() -> dict[str, Any]:
    """The py-spy summaries of the agent and the first simulator (printed)."""
    found = {}
    for who, path in (("agent", PROFILE_OUT), ("simulator", _sim_profile(PROFILE_OUT))):
        if path.exists():
            found[who] = profile_report(who, path)
    return {"profile": found}


def main(argv: list[str] | None = None) -> int:
    """Print both tables and write results/modbus.json."""
    return cli.main("modbus", parse_args(argv), measure)


if __name__ == "__main__":
    raise SystemExit(main())
