"""The simulated devices of the Modbus load (bench/modbus.py, bench/peer.py), and the agent's
config for them.

A bench-only 10-point profile (`bench-modbus10`: 5 holding uint16/int16 and 5 input float32
registers with small holes, read in 2 blocks with its `max_gap` 8), `CASES` vector cases in
which every point changes, and `python -m drivers.modbus.simulator` processes serving them
on free loopback ports (`Simulator`), the devices placed round robin over the simulators
with unit ids from 1 (`placement`), named `dev-001`... (`device_name`).
"""

from __future__ import annotations

import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.contract import Kind
from bench.agent_process import BenchProcess
from bench.peers import HOST, read_json
from bench.throughput_config import ORIGIN, agent_head, toml_document
from drivers.modbus.codec import ReadBlock, Register, plan_reads

ROOT = Path(__file__).resolve().parent.parent
PROFILE_ID = "bench-modbus10"
TELEMETRY_TOPIC = ORIGIN.kind_filter(Kind.TELEMETRY)  # the agent's, these devices'
MAX_UNITS = 247  # unit ids per simulator (Modbus: 1-247)
CASES = 7  # vector cases; odd, so that a poll every 2 x case_every always sees a new case

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
        "points": [{"name": name, "wire": reg} for name, reg in BENCH_POINTS],
    }


def bench_blocks() -> list[ReadBlock]:
    points = [(name, Register.model_validate(reg)) for name, reg in BENCH_POINTS]
    return plan_reads(points, BENCH_MAX_GAP)


def case_value(i: int, k: int) -> float:
    """What point i of BENCH_POINTS holds in vector case k: a holding register's raw value
    (unsigned), an input register pair's float."""
    if BENCH_POINTS[i][1]["table"] == "holding":
        return 100 * (i + 1) + 7 * k
    return 20.0 + 1.5 * i + 0.25 * k


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
                holding[reg["address"]] = int(case_value(i, k))
            else:
                words = _float_words(case_value(i, k))
                inputs[reg["address"]], inputs[reg["address"] + 1] = words
        h = ", ".join(f"{a} = {v}" for a, v in sorted(holding.items()))
        n = ", ".join(f"{a} = {v}" for a, v in sorted(inputs.items()))
        lines += ["", "[[case]]", f'name = "c{k}"', f"registers = {{ holding = {{ {h} }}, "]
        lines[-1] += f"input = {{ {n} }} }}"
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Load:
    """The simulated devices of a run: how many, the poll interval the system is given
    (s), the simulator processes (one TCP bus each) and how often their values change (s)."""

    devices: int
    interval: float
    simulators: int
    case_every: float

    def placement(self) -> list[tuple[int, int]]:
        """(simulator index, unit id) of each device: round robin over the simulators."""
        return [(n % self.simulators, n // self.simulators + 1) for n in range(self.devices)]


def device_name(n: int) -> str:
    """The name of device n (0-based) in the agent's config and the peer's."""
    return f"dev-{n + 1:03d}"


def write_bench_profile(folder: Path) -> Path:
    """`folder/profiles/bench-modbus10.toml`; the profiles folder (for `profile_dirs`)."""
    profiles = folder / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    profile = toml_document(bench_profile_doc())
    (profiles / f"{PROFILE_ID}.toml").write_text(profile, encoding="utf-8")
    return profiles


def modbus_toml(ports: list[int], load: Load) -> str:
    """The agent's `[[buses]]` (one per simulator) and `[[devices]]` of the load."""
    text = "".join(
        AGENT_BUS.format(bus=f"mb{i + 1}", host=HOST, port=port) for i, port in enumerate(ports)
    )
    for n, (sim, unit) in enumerate(load.placement()):
        text += AGENT_DEVICE.format(
            device=device_name(n),
            profile=PROFILE_ID,
            bus=f"mb{sim + 1}",
            unit=unit,
            interval=f"{load.interval:g}",
        )
    return text


def write_agent_config(folder: Path, url: str, ports: list[int], load: Load) -> Path:
    """The agent's config: the bench profile, one bus per simulator, the devices on them."""
    folder.mkdir(parents=True, exist_ok=True)
    profiles = write_bench_profile(folder)
    text = agent_head(url, max_size="256MiB", profiles=profiles) + modbus_toml(ports, load)
    cfg = folder / "agent.toml"
    cfg.write_text(text)
    return cfg


class Simulator(BenchProcess):
    """`python -m drivers.modbus.simulator` on a free loopback port; stopped by its PID."""

    name = "simulator"
    stop_timeout = 10.0

    def __init__(self, folder: Path, units: list[int], vector: Path, every: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__(folder / "simulator.log")
        self.dir = folder
        self.units = units
        self.vector = vector
        self.every = every
        self.stats_path = folder / "stats.json"
        self.port = 0

    def start(self, timeout: float = 30.0) -> int:
        """Start it; return its PID once it listens (its port in `port`)."""
        cmd = [sys.executable, "-m", "drivers.modbus.simulator", "--tcp", f"{HOST}:0"]
        cmd += ["--stats", str(self.stats_path), "--log-level", "warning"]
        for unit in self.units:
            cmd += ["--device", f"{unit}={self.vector}:every={self.every:g}"]
        pid = self.launch(cmd, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"simulator exited at start:\n{self.log_tail()}")
            listen = self.stats().get("listen")
            if listen:
                self.port = int(listen["port"])
                return pid
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


def start_simulators(folder: Path, load: Load) -> list[Simulator]:
    """The load's simulator processes serving its devices; all started (or none)."""
    folder.mkdir(parents=True, exist_ok=True)
    vector = folder / f"{PROFILE_ID}.vectors.toml"
    vector.write_text(vector_toml())
    units: list[list[int]] = [[] for _ in range(load.simulators)]
    for sim, unit in load.placement():
        units[sim].append(unit)
    sims = [
        Simulator(folder / f"sim-{i + 1}", u, vector, load.case_every) for i, u in enumerate(units)
    ]
    try:
        for s in sims:
            s.start()
    except BaseException:
        for s in sims:
            s.stop()
        raise
    return sims
