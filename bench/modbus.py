"""Modbus: requests saved by block reads, and the agent polling many devices over Modbus TCP.

Two parts:

* COALESCING (pure, no I/O): for every shipped modbus profile, the read requests one poll
  costs as `plan_reads` groups the points with the profile's `max_gap`, against one request
  per point (`max_gap = -1`) and against adjacent-only merging (`max_gap = 0`), and the
  registers (or bits) those requests read.
* POLLING LOAD: `--devices` (200) simulated devices of a bench-only 10-point profile (two
  blocks: 5 holding + 5 input registers), each polled every `--interval` (1 s) by a real
  `python -m agent.cli run` over Modbus TCP, against `python -m drivers.modbus.simulator`
  processes (`--simulators`, one TCP bus each) whose values change every `--case-every`
  (0.5 s) so that report-by-exception lets telemetry flow, and a private mosquitto. After a
  warm-up, over `--seconds` (60): points polled/s and requests/s (driver counters in the
  agent's status file, cross-checked against the simulators' own request counts), events
  acked/s (status file), the agent's CPU and RSS (/proc), the simulators' and the broker's
  CPU, and the poll period each device achieved (from the `ts` of the telemetry events a
  bench subscriber receives).

The CEILING of a run is a raw pymodbus client in this process asking the same simulators
for the same blocks as fast as they answer (one client per simulator, `max_concurrent`
tasks each, as the driver does) for `--ceiling-seconds`: what pymodbus client + server can
do on this machine right now, with the simulators' CPU during it. Runs alternate the order
(ceiling first, then agent first, ...). The table gives medians of `--runs` (3), min-max,
and each figure against what was asked (devices x points / interval), the ceiling, or a goal.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pymodbus.client import AsyncModbusTcpClient

from agent.profiles import Profile, load_profile_file, shipped_profiles
from bench.peers import HOST, Mosquitto, ProcStat, cpu_seconds, read_json, stop_process
from bench.report import (
    RESULTS,
    fixed_table,
    ratio_text,
    result_file,
    result_suffix,
    timestamp,
    write_json,
)
from bench.summary import quantile
from bench.throughput import (
    AgentProcess,
    _toml,
    environment,
    profile_report,
    start_py_spy,
    stop_py_spy,
)
from drivers.modbus.codec import BIT_TABLES, ReadBlock, Register, plan_reads
from drivers.modbus.driver import ModbusTcpBus

ROOT = Path(__file__).resolve().parent.parent
PROFILE_ID = "bench-modbus10"
SCHOOL, GATEWAY, PREFIX = "pt-023", "gw-bench", "campus/v1"
MAX_CONCURRENT: int = ModbusTcpBus.model_fields["max_concurrent"].default  # the driver's default
MAX_UNITS = 247  # unit ids per simulator (Modbus: 1-247)
CASES = 7  # vector cases; odd, so that a poll every 2 x case_every always sees a new case
GOAL_RSS_MIB = 60.0  # later issue: RSS < 60 MB at 200 devices
GOAL_CPU_PER_100_EVENTS = 5.0  # later issue: CPU <= 5 % of a core at 100 events/s

# The bench profile: 10 telemetry points, 5 holding (uint16/int16) and 5 input (float32)
# registers with small holes between some of them, so that the profile's max_gap (8) reads
# them in exactly 2 requests (holding 0-6, input 0-13) instead of 10.
BENCH_POINTS: list[tuple[str, dict[str, Any]]] = [
    ("h0", {"table": "holding", "address": 0, "type": "uint16"}),
    ("h1", {"table": "holding", "address": 1, "type": "int16"}),
    ("h2", {"table": "holding", "address": 2, "type": "uint16"}),
    ("h4", {"table": "holding", "address": 4, "type": "uint16"}),
    ("h6", {"table": "holding", "address": 6, "type": "int16"}),
    ("f0", {"table": "input", "address": 0, "type": "float32"}),
    ("f2", {"table": "input", "address": 2, "type": "float32"}),
    ("f4", {"table": "input", "address": 4, "type": "float32"}),
    ("f8", {"table": "input", "address": 8, "type": "float32"}),
    ("f12", {"table": "input", "address": 12, "type": "float32"}),
]
BENCH_MAX_GAP = 8

AGENT_HEAD = """\
profile_dirs = ["{profiles}"]

[agent]
school = "{school}"
gateway = "{gateway}"
drain_timeout = "3s"

[mqtt]
url = "{url}"

[store]
path = "outbox.db"
max_size = "256MiB"
"""

AGENT_BUS = """
[[buses]]
id = "{bus}"
driver = "modbus-tcp"
host = "{host}"
port = {port}
timeout = "1s"
"""

AGENT_DEVICE = """
[[devices]]
id = "{device}"
profile = "{profile}"
bus = "{bus}"
address = {unit}
poll_interval = "{interval}s"
"""


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


# ---- part 1: coalescing (pure) -------------------------------------------------------------


def register_points(profile: Profile) -> list[tuple[str, Register]]:
    """A profile's points as the driver reads them (drivers/modbus/driver.py _points_of)."""
    return [(p.name, Register.model_validate(p.reg)) for p in profile.points if p.reg is not None]


def read_size(blocks: list[ReadBlock]) -> tuple[int, int]:
    """(registers, bits) the blocks read."""
    regs = sum(b.count for b in blocks if b.table not in BIT_TABLES)
    bits = sum(b.count for b in blocks if b.table in BIT_TABLES)
    return regs, bits


def block_name(b: ReadBlock) -> str:
    """'input 0x0156+2': table, start (hex above 255, as maker manuals write them), count."""
    start = f"0x{b.start:04X}" if b.start > 255 else str(b.start)
    return f"{b.table} {start}+{b.count}"


def coalescing_row(profile: Profile) -> dict[str, Any]:
    """Requests and registers one poll of `profile` costs, with and without block reads."""
    points = register_points(profile)
    gap = profile.defaults.max_gap
    planned = plan_reads(points, gap)
    adjacent = plan_reads(points, 0)
    regs, bits = read_size(planned)
    useful_regs = sum(r.width for _, r in points if r.table not in BIT_TABLES)
    # Several bit points of one register (`bit = n`) need that register once.
    distinct_regs = len(
        {
            (r.table, r.address + i)
            for _, r in points
            if r.table not in BIT_TABLES
            for i in range(r.width)
        }
    )
    useful_bits = sum(1 for _, r in points if r.table in BIT_TABLES)
    per_point = len(points)
    interval = profile.defaults.poll_interval
    return {
        "profile": profile.id,
        "points": per_point,
        "max_gap": gap,
        "poll_interval_s": interval,
        "requests_per_point": per_point,  # max_gap = -1
        "requests_adjacent": len(adjacent),  # max_gap = 0
        "requests": len(planned),  # the profile's max_gap
        "saved_per_poll": per_point - len(planned),  # what the driver's requests_saved adds
        "saved_percent": round(100 * (per_point - len(planned)) / per_point, 1),
        "registers_read": regs,
        "registers_useful": useful_regs,
        "registers_distinct": distinct_regs,
        "registers_extra": regs - distinct_regs,  # holes read to merge requests
        "bits_read": bits,
        "bits_useful": useful_bits,
        "blocks": [block_name(b) for b in planned],
    }


def coalescing() -> list[dict[str, Any]]:
    """One row per shipped modbus profile."""
    rows = []
    for path in shipped_profiles().values():
        profile = load_profile_file(path)
        if profile.driver == "modbus":
            rows.append(coalescing_row(profile))
    return rows


def coalescing_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "profile",
        "points",
        "max_gap",
        "req/poll",
        "gap=0",
        "1/point",
        "saved",
        "regs read (useful)",
        "bits read",
        "blocks",
    )
    body = [
        (
            r["profile"],
            str(r["points"]),
            str(r["max_gap"]),
            str(r["requests"]),
            str(r["requests_adjacent"]),
            str(r["requests_per_point"]),
            f"{r['saved_per_poll']} ({r['saved_percent']:.0f}%)",
            f"{r['registers_read']} ({r['registers_distinct']})" if r["registers_read"] else "-",
            str(r["bits_read"]) if r["bits_read"] else "-",
            ", ".join(r["blocks"]),
        )
        for r in rows
    ]
    total_points = sum(r["points"] for r in rows)
    total_req = sum(r["requests"] for r in rows)
    body.append(
        (
            "all (one device each)",
            str(total_points),
            "",
            str(total_req),
            str(sum(r["requests_adjacent"] for r in rows)),
            str(total_points),
            f"{total_points - total_req} ({100 * (total_points - total_req) / total_points:.0f}%)",
            "",
            "",
            "",
        )
    )
    return fixed_table(head, body, left=(0, 9))


# ---- part 2: the files of a polling run ----------------------------------------------------


def bench_profile_doc() -> dict[str, Any]:
    """The bench-only profile: 10 points in 2 blocks, reported by exception (deadband 0)."""
    return {
        "id": PROFILE_ID,
        "vendor": "bench",
        "model": "10 points, 2 blocks (bench only)",
        "category": "env",
        "driver": "modbus",
        "source": "bench/modbus.py: a synthetic register map for the polling benchmark",
        "defaults": {"poll_interval": "1s", "max_gap": BENCH_MAX_GAP, "heartbeat": "5min"},
        "points": [{"name": name, "register": reg} for name, reg in BENCH_POINTS],
    }


def bench_blocks() -> list[ReadBlock]:
    points = [(name, Register.model_validate(reg)) for name, reg in BENCH_POINTS]
    return plan_reads(points, BENCH_MAX_GAP)


def _float_words(value: float) -> list[int]:
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


def vector_toml() -> str:
    """CASES cases in which every point of the bench profile has a different value."""
    lines = [f'source = "bench/modbus.py: {CASES} synthetic cases, every point changes"']
    for k in range(CASES):
        holding: dict[int, int] = {}
        inputs: dict[int, int] = {}
        for i, (_, reg) in enumerate(BENCH_POINTS):
            if reg["table"] == "holding":
                holding[reg["address"]] = 100 * (i + 1) + 7 * k
            else:
                words = _float_words(20.0 + 1.5 * i + 0.25 * k)
                inputs[reg["address"]], inputs[reg["address"] + 1] = words
        h = ", ".join(f"{a} = {v}" for a, v in sorted(holding.items()))
        n = ", ".join(f"{a} = {v}" for a, v in sorted(inputs.items()))
        lines += ["", "[[case]]", f'name = "c{k}"', f"registers = {{ holding = {{ {h} }}, "]
        lines[-1] += f"input = {{ {n} }} }}"
    return "\n".join(lines) + "\n"


def placement(devices: int, simulators: int) -> list[tuple[int, int]]:
    """(simulator index, unit id) of each device: round robin over the simulators."""
    return [(n % simulators, n // simulators + 1) for n in range(devices)]


def write_agent_config(folder: Path, url: str, ports: list[int], p: Params) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    profiles = folder / "profiles"
    profiles.mkdir(exist_ok=True)
    (profiles / f"{PROFILE_ID}.toml").write_text(_toml(bench_profile_doc()), encoding="utf-8")
    text = AGENT_HEAD.format(profiles=profiles, school=SCHOOL, gateway=GATEWAY, url=url)
    for i, port in enumerate(ports):
        text += AGENT_BUS.format(bus=f"mb{i + 1}", host=HOST, port=port)
    for n, (sim, unit) in enumerate(placement(p.devices, p.simulators)):
        text += AGENT_DEVICE.format(
            device=f"dev-{n + 1:03d}",
            profile=PROFILE_ID,
            bus=f"mb{sim + 1}",
            unit=unit,
            interval=f"{p.interval:g}",
        )
    cfg = folder / "agent.toml"
    cfg.write_text(text)
    return cfg


# ---- the simulators ------------------------------------------------------------------------


class Simulator:
    """`python -m drivers.modbus.simulator` on a free loopback port; stopped by its PID."""

    def __init__(self, folder: Path, units: list[int], vector: Path, every: float) -> None:
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.units = units
        self.vector = vector
        self.every = every
        self.stats_path = folder / "stats.json"
        self.log = folder / "simulator.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("simulator not started")
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "drivers.modbus.simulator", "--tcp", f"{HOST}:0"]
        cmd += ["--stats", str(self.stats_path), "--log-level", "warning"]
        for unit in self.units:
            cmd += ["--device", f"{unit}={self.vector}:every={self.every:g}"]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulator exited at start:\n{self.log_tail()}")
            listen = self.stats().get("listen")
            if listen:
                self.port = int(listen["port"])
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"simulator did not listen within {timeout:g}s")
            time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        return read_json(self.stats_path) or {}

    def requests(self) -> int:
        """Every request the server decoded so far (all units, all function codes)."""
        return sum(
            int(n) for codes in self.stats().get("requests", {}).values() for n in codes.values()
        )

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)


def start_simulators(folder: Path, p: Params) -> list[Simulator]:
    folder.mkdir(parents=True, exist_ok=True)
    vector = folder / f"{PROFILE_ID}.vectors.toml"
    vector.write_text(vector_toml())
    units: list[list[int]] = [[] for _ in range(p.simulators)]
    for sim, unit in placement(p.devices, p.simulators):
        units[sim].append(unit)
    sims = [
        Simulator(folder / f"sim-{i + 1}", u, vector, p.case_every) for i, u in enumerate(units)
    ]
    try:
        for s in sims:
            s.start()
    except BaseException:
        for s in sims:
            s.stop()
        raise
    return sims


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
        self.topic = f"{PREFIX}/{SCHOOL}/{GATEWAY}/telemetry/#"
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


def run_agent(
    broker: Mosquitto,
    sims: list[Simulator],
    folder: Path,
    p: Params,
    profile_to: Path | None = None,
) -> AgentRun:
    """Start the agent on the simulators, warm up, measure `p.seconds`, stop it."""
    agent = AgentProcess(write_agent_config(folder, broker.url, [s.port for s in sims], p))
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
        deadline = time.monotonic() + 60
        while True:
            doc = agent.wait_status(0.0, max(1.0, deadline - time.monotonic()))
            online = sum(1 for d in doc.get("devices", {}).values() if d.get("online"))
            if doc["broker"]["acked"] > 0 and online >= p.devices:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"agent: {online}/{p.devices} devices online after 60 s:\n{agent.log_tail()}"
                )
            time.sleep(0.1)
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
    online = sum(1 for d in last.get("devices", {}).values() if d.get("online"))
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
        period_median_s=_round(statistics.median(intervals) if intervals else None),
        period_p95_s=_round(quantile(intervals, 0.95)),
        period_max_s=_round(max(intervals) if intervals else None),
        period_from_rate_s=round(p.devices / polls_per_s, 3) if polls_per_s else math.inf,
        devices_seen=seen,
        devices_online=online,
        backlog_end=int(last.get("backlog", 0)),
        exit_code=exit_code,
    )


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _sim_profile(agent_profile: Path) -> Path:
    return agent_profile.with_name(agent_profile.name.replace("-agent.", "-simulator."))


# ---- the report ----------------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the polling table."""

    figure: str
    unit: str
    values: list[float | None]
    reference: float | None = None  # what was asked, the ceiling or a goal
    reference_kind: str = ""  # "asked", "ceiling", "goal <", "goal <="
    ratio: float | None = None

    def row(self) -> dict[str, Any]:
        xs = [x for x in self.values if x is not None]
        return {
            "figure": self.figure,
            "unit": self.unit,
            "median": round(statistics.median(xs), 3) if xs else None,
            "min": min(xs) if xs else None,
            "max": max(xs) if xs else None,
            "reference": self.reference,
            "reference_kind": self.reference_kind,
            "ratio": self.ratio,
        }


def _ratio(xs: list[float], refs: list[float]) -> float | None:
    pairs = [x / r for x, r in zip(xs, refs, strict=True) if r]
    return round(statistics.median(pairs), 3) if pairs else None


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
            _ratio(a("points_per_s"), [asked_points] * len(agents)),
        ),
        Figure(
            "agent: requests/s (driver counters)",
            "req/s",
            a("requests_per_s"),
            round(statistics.median(ceil), 1),
            "ceiling",
            _ratio(a("requests_per_s"), ceil),
        ),
        Figure(
            "agent: requests/s (simulator counts)",
            "req/s",
            a("server_requests_per_s"),
            asked_requests,
            "asked",
            _ratio(a("server_requests_per_s"), [asked_requests] * len(agents)),
        ),
        Figure(
            "agent: events acked/s",
            "events/s",
            a("acked_per_s"),
            asked_events,
            "1 per poll",
            _ratio(a("acked_per_s"), [asked_events] * len(agents)),
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
            _ratio([x or 0.0 for x in opt("period_median_s")], [p.interval] * len(agents)),
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


# ---- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Params:
    ap = argparse.ArgumentParser(
        prog="python -m bench modbus",
        description="Requests saved by block reads (shipped profiles), and points polled/s "
        "with the agent's CPU and RSS at N simulated Modbus TCP devices.",
    )
    ap.add_argument("--runs", type=int, default=3, help="runs (each: ceiling + agent); 3")
    ap.add_argument("--seconds", type=float, default=60.0, help="agent measured window; 60")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds after all are online; 3")
    ap.add_argument("--devices", type=int, default=200, help="simulated devices; 200")
    ap.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds; 1")
    ap.add_argument(
        "--simulators",
        type=int,
        default=1,
        help="simulator processes, one TCP bus (connection) each; 1",
    )
    ap.add_argument(
        "--case-every",
        type=float,
        default=0.5,
        help="seconds between the simulated devices' value changes; 0.5 (every poll changes)",
    )
    ap.add_argument(
        "--ceiling-seconds", type=float, default=5.0, help="raw pymodbus ceiling per run; 5"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 run, 5 s, 20 devices")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy record the agent and the first simulator during the last run",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON file (default bench/results/modbus.json; -quick/-profiled variants)",
    )
    a = ap.parse_args(argv)
    if a.quick:
        a.runs, a.seconds, a.warmup, a.devices, a.ceiling_seconds = 1, 5.0, 2.0, 20, 2.0
    if a.runs < 1 or a.seconds < 1 or a.devices < 1 or a.simulators < 1 or a.interval <= 0:
        ap.error("--runs, --devices, --simulators must be >= 1, --seconds >= 1, --interval > 0")
    if a.devices > MAX_UNITS * a.simulators:
        ap.error(f"at most {MAX_UNITS} devices per simulator: add --simulators")
    return Params(
        runs=a.runs,
        seconds=a.seconds,
        warmup=a.warmup,
        devices=a.devices,
        interval=a.interval,
        simulators=a.simulators,
        case_every=a.case_every,
        ceiling_seconds=a.ceiling_seconds,
        quick=a.quick,
        profile=a.profile,
        out=a.out,
    )


def main(argv: list[str] | None = None) -> int:
    """Print both tables and write results/modbus.json."""
    p = parse_args(argv)
    out = p.out or result_file("modbus", result_suffix(p.quick, p.profile))
    profile_out = RESULTS / "modbus-agent.pyspy.txt"
    started = timestamp()

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
            order = ("ceiling", "agent") if i % 2 == 0 else ("agent", "ceiling")
            profile_to = profile_out if p.profile and i == p.runs - 1 else None
            sims = start_simulators(work / f"run-{i + 1}", p)
            try:
                if order[0] == "ceiling":
                    ceiling = run_ceiling(sims, p)
                    agent = run_agent(broker, sims, work / f"agent-{i + 1}", p, profile_to)
                else:
                    agent = run_agent(broker, sims, work / f"agent-{i + 1}", p, profile_to)
                    ceiling = run_ceiling(sims, p)
            finally:
                for s in sims:
                    s.stop()
            ceilings.append(ceiling)
            agents.append(agent)
            line = f"  run {i + 1}/{p.runs} ({' then '.join(order)}): {summary(ceiling, agent)}"
            print(line, flush=True)
            if agent.simulator_cpu_percent >= 80 * p.simulators:
                print(
                    f"  warning: the simulator(s) used {agent.simulator_cpu_percent:.0f}% of a "
                    "core: they may be the bottleneck (try --simulators 2)",
                    file=sys.stderr,
                    flush=True,
                )
            runs.append(
                {
                    "run": i + 1,
                    "order": list(order),
                    "ceiling": asdict(ceiling),
                    "agent": asdict(agent),
                    "profiled": profile_to is not None,
                }
            )
    table_rows = figures(ceilings, agents, p)
    print()
    print(polling_table(table_rows))
    doc: dict[str, Any] = {
        "benchmark": "modbus",
        "started": started,
        "params": {
            **asdict(p),
            "out": str(out),
            "points_per_device": len(BENCH_POINTS),
            "requests_per_poll": len(blocks),
            "blocks": [block_name(b) for b in blocks],
            "max_concurrent": MAX_CONCURRENT,
            "cases": CASES,
        },
        "goals": {
            "rss_mib_below": GOAL_RSS_MIB,
            "cpu_percent_per_100_events_s_at_most": GOAL_CPU_PER_100_EVENTS,
        },
        "environment": {**environment(), "pymodbus": metadata.version("pymodbus")},
        "coalescing": rows,
        "figures": table_rows,
        "runs": runs,
    }
    if p.profile and profile_out.exists():
        doc["profile"] = {}
        for who, path in (("agent", profile_out), ("simulator", _sim_profile(profile_out))):
            if path.exists():
                doc["profile"][who] = profile_report(who, path)
    write_json(out, doc)
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
