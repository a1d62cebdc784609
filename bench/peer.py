"""Peer: the agent and the ThingsBoard IoT Gateway on the same Modbus workload, in one run.

For each `--devices` size (100 and 200 devices x 10 registers, polled every `--interval`
1 s) and each system (`peer` = ThingsBoard IoT Gateway 3.8.x from PyPI with SQLite storage,
`agent` = `python -m agent.cli run`), one PHASE on a private mosquitto with persistence on
and simulators from `bench.modbus` (same profile, vectors and placement):

* process A, on fresh simulators: steady state over `--seconds` (values/s a bench
  subscriber receives, CPU % of a core -> CPU per 1 000 values/s, RSS, threads from
  /proc, requests/s the simulators served), then a broker outage of `--outage` s
  (mosquitto stopped with SIGTERM, restarted on the same port and persistence file);
* process B, on fresh simulators: the same outage, SIGKILLed `--kill-at` s into it;
  process C: its restart `--restart-after` s later, the broker still down.

Each outage gives the time from the broker's return to the first value and to the last
value stamped during the outage reaching the subscriber, and duplicates. Each process
gives values polled vs delivered, EXACTLY: `polled` is the complete polls the simulators
served to each device (their own request counts, read when nothing polls them any more:
after the SIGKILL, or after the simulators are stopped at the end of the process), x 10;
`delivered` is the distinct values of that device stamped within the process's life that
the subscriber received by the end. Lost = polled - delivered.

A value is one telemetry point of one poll of one device: for the agent a key of an event's
`values`, for the peer a key of an entry of its `v1/gateway/telemetry` message. Values are
identified by (device, stamp, key): the same one received twice is a duplicate. The
subscriber holds a persistent QoS 1 session (clean_session false, mosquitto persistence),
so it misses nothing while the broker restarts; a redelivery of the broker to the bench
(MQTT DUP flag set) is counted apart, as the harness's, not the system's.

The peer runs in its own virtual environment (`bench/results/peer-venv`, created here on
first use; its Modbus connector insists on pymodbus 3.9.2, the agent uses 3.x latest)
through `bench/peer_tb/launch.py`, which switches off its update check and run-time pip
installs and refuses any connection beyond loopback. A bench client answers its
ThingsBoard-only `getSessionLimits` RPC, without which it publishes nothing.

    .venv/bin/python -m bench.peer            # 100 and 200 devices, both systems (~25 min)
    .venv/bin/python -m bench.peer --quick    # 10 devices, 15 s outages (~3 min)

Also the last benchmark of `python -m bench`; the result file's `figures` (see figures())
are its rows in the combined table (bench/summary.py), one run each.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import itertools
import json
import math
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import venv
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench import modbus
from bench.peers import HOST, Mosquitto, ProcStat, cpu_seconds, stop_process
from bench.report import RESULTS, result_file, result_suffix, timestamp, write_json
from bench.throughput import AgentProcess, environment

ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = Path(__file__).resolve().parent / "peer_tb"
LAUNCHER = PEER_DIR / "launch.py"
PEER_VENV = RESULTS / "peer-venv"
PEER_PY = PEER_VENV / "bin" / "python"
PEER_REQUIREMENTS = [
    "thingsboard-gateway>=3.8,<3.9",
    "pymodbus==3.9.2",  # what its Modbus connector pins (and would pip install at start-up)
    "pyserial",  # imported by that connector even for TCP (installed at start-up if missing)
    "pyserial-asyncio",
]
PEER_TOPIC = "v1/gateway/telemetry"
RPC_REQUEST = "v1/devices/me/rpc/request/"
RPC_RESPONSE = "v1/devices/me/rpc/response/"
# What a ThingsBoard CE server answers to getSessionLimits with no tenant rate limits and its
# MQTT transport defaults (max payload 65 536 B, 100 messages queued per device). Empty limit
# strings mean "no limit" to tb-mqtt-client (RateLimit('0:0,')).
NO_LIMITS = {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""}
SESSION_LIMITS: dict[str, Any] = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": NO_LIMITS,
    "gatewayRateLimits": NO_LIMITS,
}
SYSTEMS = ("peer", "agent")
POINTS = len(modbus.BENCH_POINTS)
# The peer reads one register range per key (10 requests per poll: its range form
# "address": "a-b" would decode every register of the range with one type); the agent plans
# 2 block reads (bench.modbus).
PEER_REQUESTS_PER_POLL = POINTS
TB_TYPES = {"uint16": "16uint", "int16": "16int", "float32": "32float"}
TB_FUNCTION = {"holding": 3, "input": 4}
KILL_TOLERANCE = 0.25  # s: a poll stamped this close to a SIGKILL may not have been stored yet


@dataclass
class Params:
    """What one invocation measures."""

    devices: list[int]
    systems: list[str]
    interval: float
    seconds: float
    warmup: float
    outage: float
    kill_at: float
    restart_after: float
    quiet: float
    backlog_timeout: float
    simulators: int
    case_every: float
    quick: bool
    out: Path | None


# ---- the peer's own virtual environment ----------------------------------------------------


def peer_versions() -> dict[str, str]:
    """Versions inside the peer venv (python, thingsboard-gateway, pymodbus, ...)."""
    code = (
        "import json, platform\n"
        "from importlib import metadata as m\n"
        "names = ['thingsboard-gateway', 'tb-mqtt-client', 'tb-paho-mqtt-client', "
        "'pymodbus', 'pyserial', 'pyserial-asyncio']\n"
        "out = {'python': platform.python_version()}\n"
        "for n in names:\n"
        "    try:\n"
        "        out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError:\n"
        "        out[n] = None\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run(
        [str(PEER_PY), "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    return dict(json.loads(r.stdout))


def ensure_peer_venv() -> dict[str, str]:
    """Create bench/results/peer-venv and install the peer into it, unless it is there."""
    if PEER_PY.exists():
        v = peer_versions()
        tb = v.get("thingsboard-gateway") or ""
        if tb.startswith("3.8.") and v.get("pymodbus") == "3.9.2" and v.get("pyserial-asyncio"):
            return v
    print(f"peer: installing {', '.join(PEER_REQUIREMENTS)} into {PEER_VENV}", flush=True)
    venv.EnvBuilder(with_pip=True, clear=False).create(PEER_VENV)
    subprocess.run(
        [str(PEER_PY), "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS],
        check=True,
        timeout=1800,
    )
    v = peer_versions()
    if v.get("pymodbus") != "3.9.2" or not (v.get("thingsboard-gateway") or "").startswith("3.8"):
        raise RuntimeError(f"peer venv: unexpected versions {v}")
    return v


# ---- the broker: persistent, stopped and restarted on the same port --------------------------


class PersistentMosquitto(Mosquitto):
    """`bench.peers.Mosquitto` with persistence on, and an outage: `down()` then `up()`.

    mosquitto saves its sessions (the bench subscriber's subscription and queue) to
    `mosquitto.db` in its folder on SIGTERM and loads them at start; `up()` starts it again
    with the same config, so on the same port.
    """

    def _write_conf(self, d: Path) -> Path:
        conf = super()._write_conf(d)
        text = conf.read_text().replace("persistence false", "persistence true")
        text += f"persistence_location {d}/\nautosave_interval 0\n"
        conf.write_text(text)
        return conf

    def __enter__(self) -> PersistentMosquitto:
        self.start()
        return self

    def down(self) -> None:
        """SIGTERM the broker (it saves its sessions) and wait for it; keep its folder."""
        proc, self.proc = self.proc, None
        stop_process(proc, 20)

    def up(self) -> None:
        """Start the broker again on its port with its saved state; return when it listens."""
        if self.dir is None:
            raise RuntimeError("broker was never started")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.dir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at restart: {self.log_tail()}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen again on {self.port}")
            time.sleep(0.02)


# ---- MQTT clients of the bench ---------------------------------------------------------------


def _client(client_id: str, *, clean: bool) -> mqtt.Client:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv311,
        clean_session=clean,
    )
    # Retry every 0.1 s while the broker is down, so that the bench is back within 0.1 s of it.
    c.reconnect_delay_set(min_delay=0.1, max_delay=0.1)  # type: ignore[arg-type]
    return c


class Subscriber:
    """A persistent QoS 1 session on the telemetry topic; keeps every message it receives."""

    def __init__(self, broker: Mosquitto, topic: str, client_id: str) -> None:
        self.broker = broker
        self.topic = topic
        self.client = _client(client_id, clean=False)
        self.messages: list[tuple[float, bytes, bool]] = []  # (arrival, payload, DUP flag)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.connects = 0
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        self.connects += 1
        client.subscribe(self.topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.time(), bytes(msg.payload), bool(msg.dup)))

    def start(self) -> None:
        self.client.connect(self.broker.host, self.broker.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("bench subscriber: no SUBACK within 10 s")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def since(self, index: int) -> list[tuple[float, bytes, bool]]:
        with self._lock:
            return self.messages[index:]


class SessionLimitsResponder:
    """Answers the peer's getSessionLimits RPC as a ThingsBoard server would.

    tb-mqtt-client publishes {"method": "getSessionLimits", "params": {"timeout": 5000}} on
    v1/devices/me/rpc/request/<id> after each CONNACK and holds the gateway's data (its
    `is_connected()` is false) until a reply with a "rateLimits" key arrives on
    v1/devices/me/rpc/response/<id> (tb_device_mqtt.on_service_configuration,
    tb_gateway_mqtt.__on_service_configuration).
    """

    def __init__(self, broker: Mosquitto, client_id: str) -> None:
        self.client = _client(client_id, clean=True)
        self.broker = broker
        self.answered = 0
        self.ignored = 0
        self._subscribed = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe(RPC_REQUEST + "+", qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            method = json.loads(msg.payload).get("method")
        except (ValueError, AttributeError):
            method = None
        if method != "getSessionLimits":
            self.ignored += 1
            return
        request_id = msg.topic[len(RPC_REQUEST) :]
        client.publish(RPC_RESPONSE + request_id, json.dumps(SESSION_LIMITS), qos=1)
        self.answered += 1

    def start(self) -> None:
        self.client.connect(self.broker.host, self.broker.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("getSessionLimits responder: no SUBACK within 10 s")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---- the systems -----------------------------------------------------------------------------


def peer_modbus_config(ports: list[int], p: Params, devices: int) -> dict[str, Any]:
    """The peer's Modbus connector: the bench profile's 10 points per device, one key each."""
    timeseries = [
        {
            "tag": name,
            "type": TB_TYPES[reg["type"]],
            "functionCode": TB_FUNCTION[reg["table"]],
            "objectsCount": 2 if reg["type"] == "float32" else 1,
            "address": reg["address"],
        }
        for name, reg in modbus.BENCH_POINTS
    ]
    slaves = [
        {
            "host": HOST,
            "port": ports[sim],
            "type": "tcp",
            "method": "socket",
            "unitId": unit,
            "deviceName": device_name(n),
            "deviceType": "bench-modbus10",
            "timeout": 1,  # s, as the agent's bus
            "byteOrder": "BIG",
            "wordOrder": "BIG",  # float32 high word first, as the simulator serves them
            "retries": 3,
            "retryOnEmpty": True,
            "retryOnInvalid": True,
            "pollPeriod": int(p.interval * 1000),
            "connectAttemptTimeMs": 5000,
            "connectAttemptCount": 5,
            "waitAfterFailedAttemptsMs": 300000,
            "attributes": [],
            "timeseries": timeseries,
            "attributeUpdates": [],
            "rpc": [],
        }
        for n, (sim, unit) in enumerate(modbus.placement(devices, p.simulators))
    ]
    return {"name": "Modbus", "logLevel": "WARNING", "master": {"slaves": slaves}}


def write_peer_config(folder: Path, broker: Mosquitto, ports: list[int], p: Params, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    main = json.loads((PEER_DIR / "tb_gateway.json").read_text())
    main["thingsboard"]["host"] = broker.host
    main["thingsboard"]["port"] = broker.port
    (folder / "tb_gateway.json").write_text(json.dumps(main, indent=2))
    (folder / "logs.json").write_text((PEER_DIR / "logs.json").read_text())
    (folder / "modbus.json").write_text(json.dumps(peer_modbus_config(ports, p, n), indent=2))
    return folder


def device_name(n: int) -> str:
    return f"dev-{n + 1:03d}"  # as bench.modbus names the agent's devices


class System:
    """A system under test: started, SIGKILLed, restarted and stopped by its PID."""

    name = ""
    requests_per_poll = 1
    topic = ""

    def start(self) -> int:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def stop(self) -> int | None:
        raise NotImplementedError

    def log_tail(self) -> str:
        raise NotImplementedError

    def parse(self, payload: bytes) -> list[tuple[str, float, list[tuple[str, Any]]]]:
        """(device, stamp in epoch seconds, [(key, value)]) of each poll in a message."""
        raise NotImplementedError


class Peer(System):
    """The ThingsBoard IoT Gateway under bench/peer_tb/launch.py, in the peer venv."""

    name = "peer"
    requests_per_poll = PEER_REQUESTS_PER_POLL
    topic = PEER_TOPIC

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log = folder / "launcher.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> int:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.folder),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        }
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"---- start {self.starts} at {time.time():.3f}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [str(PEER_PY), str(LAUNCHER), "--config-dir", str(self.folder)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=env,
            )
        return self.proc.pid

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("peer not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        return stop_process(proc, 30, signal.SIGINT)  # SIGINT: the gateway's own stop handler

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def blocked(self) -> list[dict[str, Any]]:
        """What the launcher's loopback guard refused (one JSON line each)."""
        try:
            lines = (self.folder / "blocked.jsonl").read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def parse(self, payload: bytes) -> list[tuple[str, float, list[tuple[str, Any]]]]:
        doc = json.loads(payload)
        out = []
        for device, entries in doc.items():
            for entry in entries if isinstance(entries, list) else [entries]:
                values = entry.get("values", {})
                kept = [(k, v) for k, v in values.items() if v is not None]
                out.append((device, int(entry["ts"]) / 1000, kept))
        return out


def source_digest() -> str:
    """sha256 (12 hex) of the agent's and drivers' Python sources: the working tree changes
    under a long run on a shared machine, and this says which code each start ran."""
    h = hashlib.sha256()
    for folder in ("agent", "drivers"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


class Agent(System):
    """`python -m agent.cli run` on bench.modbus's config for the same devices."""

    name = "agent"
    requests_per_poll = len(modbus.bench_blocks())
    topic = f"{modbus.PREFIX}/{modbus.SCHOOL}/{modbus.GATEWAY}/telemetry/#"

    def __init__(self, config: Path) -> None:
        self.process = AgentProcess(config)
        self.sources: list[str] = []  # digest of the agent's sources at each start

    def start(self) -> int:
        self.sources.append(source_digest())
        return self.process.start()

    @property
    def pid(self) -> int:
        if self.process.proc is None:
            raise RuntimeError("agent not started")
        return self.process.proc.pid

    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None

    def kill(self) -> None:
        proc = self.process.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop(self) -> int | None:
        return self.process.stop()

    def log_tail(self) -> str:
        return self.process.log_tail()

    def parse(self, payload: bytes) -> list[tuple[str, float, list[tuple[str, Any]]]]:
        doc = json.loads(payload)
        ts = datetime.fromisoformat(doc["ts"]).timestamp()
        # A failed read is reported as null with a bad quality: not a delivered value.
        kept = [(k, v) for k, v in doc.get("values", {}).items() if v is not None]
        return [(doc["device"], ts, kept)]


# ---- what the systems deliver ----------------------------------------------------------------


@dataclass
class Delivery:
    """Every value the subscriber received, first deliveries and duplicates apart."""

    first: dict[tuple[str, int, str], float] = field(default_factory=dict)  # -> arrival
    dups: list[tuple[float, bool]] = field(default_factory=list)  # (arrival, DUP flag)
    polls: dict[str, dict[int, int]] = field(default_factory=dict)  # device -> stamp_ms -> n
    arrivals: list[tuple[float, int, int]] = field(default_factory=list)  # arrival, stamp, n
    bad_values: int = 0  # values matching no simulator case (a decoding error)
    unknown_devices: int = 0
    parsed: int = 0  # messages consumed so far

    def absorb(self, system: System, messages: list[tuple[float, bytes, bool]]) -> None:
        for arrival, payload, dup in messages:
            self.parsed += 1
            try:
                polls = system.parse(payload)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            for device, stamp, values in polls:
                if device not in EXPECTED_DEVICES:
                    self.unknown_devices += 1
                    continue
                ms = round(stamp * 1000)
                fresh = 0
                for key, value in values:
                    k = (device, ms, key)
                    if k in self.first:
                        self.dups.append((arrival, dup))
                        continue
                    self.first[k] = arrival
                    fresh += 1
                    if not _plausible(key, value):
                        self.bad_values += 1
                if fresh:
                    per = self.polls.setdefault(device, {})
                    per[ms] = per.get(ms, 0) + fresh
                    self.arrivals.append((arrival, ms, fresh))

    def values_arrived(self, t0: float, t1: float) -> int:
        return sum(n for a, _, n in self.arrivals if t0 <= a < t1)

    def stamped(self, t0: float, t1: float) -> tuple[int, float | None]:
        """Values stamped in [t0, t1): how many arrived, and the last one's arrival."""
        lo, hi = round(t0 * 1000), round(t1 * 1000)
        n, last = 0, None
        for a, ms, k in self.arrivals:
            if lo <= ms < hi:
                n += k
                last = a if last is None or a > last else last
        return n, last

    def first_after(self, t: float) -> float | None:
        """Arrival of the first value stamped at or after t."""
        lo = round(t * 1000)
        return min((a for a, ms, _ in self.arrivals if ms >= lo), default=None)

    def first_arrival_after(self, t: float) -> float | None:
        """The first arrival (of a value of any stamp) at or after t."""
        return min((a for a, _, _ in self.arrivals if a >= t), default=None)

    def first_stamp_after(self, t: float) -> float | None:
        """The earliest poll stamp at or after t (epoch seconds)."""
        lo = round(t * 1000)
        found = [ms for per in self.polls.values() for ms in per if ms >= lo]
        return min(found) / 1000 if found else None

    def dups_between(self, t0: float, t1: float) -> tuple[int, int]:
        """Duplicates that arrived in [t0, t1): (new publishes, broker redeliveries)."""
        new = sum(1 for a, dup in self.dups if t0 <= a < t1 and not dup)
        redelivered = sum(1 for a, dup in self.dups if t0 <= a < t1 and dup)
        return new, redelivered

    def devices_seen(self) -> int:
        return len(self.polls)

    def period(self, t0: float, t1: float) -> float | None:
        """Median interval between consecutive polls of a device stamped in [t0, t1)."""
        lo, hi = round(t0 * 1000), round(t1 * 1000)
        gaps: list[float] = []
        for per in self.polls.values():
            stamps = sorted(ms for ms in per if lo <= ms < hi)
            gaps += [(b - a) / 1000 for a, b in itertools.pairwise(stamps)]
        return statistics.median(gaps) if gaps else None

    def devices_since(self, t: float) -> int:
        """Devices with a poll stamped at or after t."""
        lo = round(t * 1000)
        return sum(1 for per in self.polls.values() if any(ms >= lo for ms in per))

    def of_device(self, device: str, t0: float, t1: float) -> tuple[int, int]:
        """(polls, values) of a device stamped in [t0, t1) that were delivered."""
        lo, hi = round(t0 * 1000), round(t1 * 1000)
        per = self.polls.get(device, {})
        ns = [n for ms, n in per.items() if lo <= ms < hi]
        return len(ns), sum(ns)


EXPECTED_DEVICES: set[str] = set()
_CASE_VALUES: dict[str, list[float]] = {}


def _case_values() -> dict[str, list[float]]:
    """Every value each point takes in bench.modbus's vectors (to catch a decoding error)."""
    out: dict[str, list[float]] = {}
    for i, (name, reg) in enumerate(modbus.BENCH_POINTS):
        if reg["table"] == "holding":
            vals = [100 * (i + 1) + 7 * k for k in range(modbus.CASES)]
            if reg["type"] == "int16":
                vals = [v - 65536 if v >= 32768 else v for v in vals]
        else:
            vals = [
                struct.unpack(">f", struct.pack(">f", 20.0 + 1.5 * i + 0.25 * k))[0]
                for k in range(modbus.CASES)
            ]
        out[name] = [float(v) for v in vals]
    return out


def _plausible(key: str, value: Any) -> bool:
    if not _CASE_VALUES:
        _CASE_VALUES.update(_case_values())
    if not isinstance(value, int | float) or key not in _CASE_VALUES:
        return False
    return any(abs(value - v) < 1e-3 for v in _CASE_VALUES[key])


# ---- /proc: threads and sockets ----------------------------------------------------------


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def _addr(hexaddr: str) -> tuple[str, int]:
    host, port = hexaddr.split(":")
    raw = bytes.fromhex(host)
    # /proc/net/tcp{,6} print each 32-bit word of the address in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def sockets_of(pid: int) -> list[dict[str, Any]]:
    """The process's TCP/UDP sockets: its fds' socket inodes matched in /proc/<pid>/net/*."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    out = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[9] not in inodes:
                continue
            local, remote = _addr(f[1]), _addr(f[2])
            out.append({"proto": proto, "local": local, "remote": remote, "state": f[3]})
    return out


def _loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def beyond_loopback(socks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sockets connected to, or listening on, anything but loopback."""
    bad = []
    for s in socks:
        rhost, rport = s["remote"]
        lhost, _ = s["local"]
        connected = rport != 0
        if (connected and not _loopback(rhost)) or (not connected and not _loopback(lhost)):
            bad.append(s)
    return bad


def ss_lines(pid: int) -> list[str]:
    """`ss -tuanp` lines of the process (a second look, by another tool, at its sockets)."""
    try:
        out = subprocess.run(
            ["ss", "-tuanpH"], check=False, capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ["(ss not available)"]
    return [" ".join(line.split()) for line in out.splitlines() if f"pid={pid}," in line]


class SocketWatch:
    """Samples a system's sockets from /proc every `every` s in a thread; keeps endpoints."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.samples = 0
        self.endpoints: set[tuple[str, str, int, str]] = set()
        self.violations: list[dict[str, Any]] = []
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="socket-watch")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            pid = self.pid
            if pid is None:
                continue
            socks = sockets_of(pid)
            self.samples += 1
            for s in socks:
                host, port = s["remote"] if s["remote"][1] else s["local"]
                self.endpoints.add(
                    (s["proto"], host, port, "remote" if s["remote"][1] else "local")
                )
            for s in beyond_loopback(socks):
                self.violations.append({"t": time.time(), **s})

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5)

    def report(self) -> dict[str, Any]:
        hosts = sorted({e[1] for e in self.endpoints})
        return {
            "samples": self.samples,
            "addresses_seen": hosts,
            "endpoints": sorted(f"{p} {h}:{port} ({kind})" for p, h, port, kind in self.endpoints),
            "beyond_loopback": self.violations[:20],
            "beyond_loopback_count": len(self.violations),
        }


# ---- one phase: a system, a size ----------------------------------------------------------


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


class PhaseRunner:
    """Runs one system at one size: steady window and outage (process A), then the outage
    with a SIGKILL (process B) and a restart (process C), each on fresh simulators."""

    def __init__(self, system_name: str, devices: int, p: Params, work: Path) -> None:
        self.name = system_name
        self.devices = devices
        self.p = p
        self.work = work
        self.folder = work / f"{system_name}-{devices}"
        self.notes: list[str] = []
        self.delivery = Delivery()
        self.sub: Subscriber | None = None
        self.system: System | None = None
        self.exit_codes: list[int | None] = []

    # -- helpers --

    def mp(self) -> modbus.Params:
        p = self.p
        return modbus.Params(
            runs=1,
            seconds=p.seconds,
            warmup=p.warmup,
            devices=self.devices,
            interval=p.interval,
            simulators=p.simulators,
            case_every=p.case_every,
            ceiling_seconds=0,
            quick=p.quick,
            profile=False,
            out=None,
        )

    def sys(self) -> System:
        if self.system is None:
            raise RuntimeError("no system")
        return self.system

    def pump(self) -> None:
        """Parse what the subscriber received since the last call."""
        if self.sub is not None:
            self.delivery.absorb(self.sys(), self.sub.since(self.delivery.parsed))

    def configure(self, broker: Mosquitto, sims: list[modbus.Simulator]) -> System:
        """Write the system's config for these simulators (same folders, store kept)."""
        ports = [s.port for s in sims]
        if self.name == "peer":
            folder = write_peer_config(self.folder / "tb", broker, ports, self.p, self.devices)
            if self.system is None:
                self.system = Peer(folder)
        else:
            cfg = modbus.write_agent_config(self.folder / "agent", broker.url, ports, self.mp())
            if self.system is None:
                self.system = Agent(cfg)
        return self.sys()

    def requests_served(self, sims: list[modbus.Simulator]) -> dict[str, int]:
        """Requests the simulators served to each device so far (all function codes)."""
        by_unit: dict[tuple[int, int], int] = {}
        for i, s in enumerate(sims):
            for unit, codes in s.stats().get("requests", {}).items():
                by_unit[(i, int(unit))] = sum(int(c) for c in codes.values())
        return {
            device_name(n): by_unit.get((sim, unit), 0)
            for n, (sim, unit) in enumerate(modbus.placement(self.devices, self.p.simulators))
        }

    def life(
        self,
        name: str,
        served: dict[str, int],
        t0: float,
        t1: float,
        base: dict[str, int] | None = None,
    ) -> Life:
        """Compare the complete polls served (requests since `base` // requests per poll:
        a poll cut by the kill or the simulators' stop is not one) with the values
        stamped in [t0, t1)."""
        per_poll = self.sys().requests_per_poll
        lost_total = delivered_total = polled_total = 0
        histogram: dict[int, int] = {}
        for device, total in served.items():
            n = (total - (base or {}).get(device, 0)) // per_poll
            polls, values = self.delivery.of_device(device, t0, t1)
            polled_total += n * POINTS
            delivered_total += values
            lost_total += n * POINTS - values
            histogram[n - polls] = histogram.get(n - polls, 0) + 1
        return Life(
            name=name,
            seconds=round(t1 - t0, 1),
            values_polled=polled_total,
            values_delivered=delivered_total,
            values_lost=lost_total,
            devices_with_loss=sum(v for k, v in histogram.items() if k > 0),
            lost_polls_per_device={str(k): v for k, v in sorted(histogram.items())},
        )

    def end_life(self, sims: list[modbus.Simulator]) -> dict[str, int]:
        """Stop the simulators (their final counts are written at exit), then wait until the
        system has delivered what it had polled; the requests served to each device."""
        for s in sims:
            s.stop()
        polled = self.requests_served(sims)
        self.wait_quiet(3.0, 60.0)
        return polled

    def wait_quiet(self, quiet: float, timeout: float) -> None:
        """Until no telemetry arrived for `quiet` s (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            self.pump()
            last = self.delivery.arrivals[-1][0] if self.delivery.arrivals else 0.0
            if time.time() - last >= quiet:
                return

    def wait_devices(self, since: float, timeout: float) -> None:
        system = self.sys()
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            seen = self.delivery.devices_since(since)
            if seen >= self.devices:
                return
            if not system.alive():
                raise RuntimeError(f"{self.name} exited:\n{system.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name}: {seen}/{self.devices} devices delivered within "
                    f"{timeout:g} s:\n{system.log_tail()}"
                )
            time.sleep(0.25)

    def wait_backlog(self, t_down: float, t_up: float) -> tuple[float | None, bool]:
        """Wait until values stamped in [t_down, t_up) stop arriving; their last arrival."""
        p = self.p
        deadline = t_up + p.backlog_timeout
        while True:
            time.sleep(0.5)
            self.pump()
            _, last = self.delivery.stamped(t_down, t_up)
            live = self.delivery.first_after(t_up) is not None
            if live and time.time() - (last if last is not None else t_up) >= p.quiet:
                return last, False
            if time.time() > deadline:
                return last, True

    # -- the phase --

    def run(self) -> Phase:
        self.folder.mkdir(parents=True, exist_ok=True)
        EXPECTED_DEVICES.clear()
        EXPECTED_DEVICES.update(device_name(n) for n in range(self.devices))
        watch = SocketWatch()
        responder: SessionLimitsResponder | None = None
        sims: list[modbus.Simulator] = []
        with PersistentMosquitto() as broker:
            try:
                if self.name == "peer":
                    responder = SessionLimitsResponder(broker, f"bench-peer-rpc-{os.getpid()}")
                    responder.start()
                topic = Peer.topic if self.name == "peer" else Agent.topic
                self.sub = Subscriber(broker, topic, f"bench-peer-sub-{self.folder.name}")
                self.sub.start()
                phase = self._measure(broker, sims, watch)
            finally:
                watch.stop()
                if self.system is not None and self.system.alive():
                    self.exit_codes.append(self.system.stop())
                if self.sub is not None:
                    self.sub.stop()
                if responder is not None:
                    responder.stop()
                for s in sims:
                    s.stop()
        phase.exit_codes = self.exit_codes
        if isinstance(self.system, Peer):
            blocked = self.system.blocked()
            phase.loopback["launcher_blocked"] = blocked
            phase.loopback["launcher_blocked_count"] = len(blocked)
        if responder is not None:
            phase.loopback["getSessionLimits_answered"] = responder.answered
        return phase

    def _measure(
        self, broker: PersistentMosquitto, sims: list[modbus.Simulator], watch: SocketWatch
    ) -> Phase:
        p = self.p
        # ---- process A: steady state, then a plain outage
        sims[:] = modbus.start_simulators(self.folder / "sims-a", self.mp())
        system = self.configure(broker, sims)
        t_a = time.time()
        watch.pid = system.start()
        watch.start()
        self.wait_devices(t_a, 180)
        ready_s = time.time() - t_a
        time.sleep(p.warmup)
        steady = self._steady(broker, sims, ready_s)
        outages: list[Outage] = []
        ss_seen: list[str] = []
        if p.outage <= 0:
            ss_seen = ss_lines(system.pid)
            self.exit_codes.append(system.stop())
        else:
            o1 = self._outage(broker, sims, watch, kill=False)
            ss_seen = ss_lines(system.pid)
            polled = self.end_life(sims)
            self.exit_codes.append(system.stop())
            o1.lives.append(self.life("A: steady + outage", polled, t_a, time.time()))
            outages.append(o1)
            print(f"    {_outage_line(o1)}", flush=True)

            # ---- process B, SIGKILLed during an outage; process C, its restart
            sims[:] = modbus.start_simulators(self.folder / "sims-b", self.mp())
            system = self.configure(broker, sims)
            t_b = time.time()
            watch.pid = system.start()
            self.wait_devices(t_b, 180)
            time.sleep(p.warmup)
            o2 = self._outage(broker, sims, watch, kill=True)
            polled_c = self.end_life(sims)
            t_end = time.time()
            self.exit_codes.append(system.stop())
            assert o2.killed_at_s is not None  # noqa: S101
            assert o2.restarted_at_s is not None  # noqa: S101
            t_restart = self._t_restart
            o2.lives.append(self.life("B: until the SIGKILL", self._polled_b, t_b, t_restart))
            o2.lives.append(
                self.life("C: after the restart", polled_c, t_restart, t_end, self._polled_b)
            )
            outages.append(o2)
            # Duplicates: from each outage to the next one (or the end).
            o1.duplicates, o1.duplicates_broker_redelivery = self.delivery.dups_between(
                o1.t_down, t_b
            )
            o2.duplicates, o2.duplicates_broker_redelivery = self.delivery.dups_between(
                o2.t_down, math.inf
            )
            print(f"    {_outage_line(o2)}", flush=True)

        self.pump()
        totals: dict[str, Any] = {
            "values_delivered": len(self.delivery.first),
            "duplicates": sum(1 for _, dup in self.delivery.dups if not dup),
            "duplicates_broker_redelivery": sum(1 for _, dup in self.delivery.dups if dup),
            "bad_values": self.delivery.bad_values,
            "unknown_devices": self.delivery.unknown_devices,
            "messages": self.delivery.parsed,
            "subscriber_connects": self.sub.connects if self.sub else 0,
            "ready_after_s": round(ready_s, 1),
        }
        if isinstance(system, Agent):
            totals["agent_sources_sha256"] = system.sources
            doc = system.process.status() or {}
            totals["agent_store"] = {
                k: doc.get("store", {}).get(k)
                for k in ("lost_uncommitted", "recovered", "last_seq")
            }
        loopback = watch.report()
        loopback["ss_during_outage_recovery"] = ss_seen
        return Phase(
            system=self.name,
            devices=self.devices,
            steady=steady,
            outages=outages,
            totals=totals,
            loopback=loopback,
            exit_codes=[],
            notes=self.notes,
        )

    def _steady(
        self, broker: PersistentMosquitto, sims: list[modbus.Simulator], ready_s: float
    ) -> Steady:
        p = self.p
        system = self.sys()
        stat = ProcStat(system.pid)
        sim_stats = [ProcStat(s.pid) for s in sims]
        mosq = ProcStat(broker.pid) if broker.pid else None
        served0 = sum(s.requests() for s in sims)
        t0, w0 = time.time(), time.monotonic()
        cpu0 = stat.cpu_seconds()
        sim0 = cpu_seconds(sim_stats)
        mq0 = mosq.cpu_seconds() if mosq else 0.0
        rss, thr = [stat.rss_mib()], [threads(system.pid)]
        while time.monotonic() - w0 < p.seconds:
            time.sleep(0.25)
            if not system.alive():
                raise RuntimeError(f"{self.name} exited:\n{system.log_tail()}")
            rss.append(stat.rss_mib())
            thr.append(threads(system.pid))
        t1, w1 = time.time(), time.monotonic()
        cpu1 = stat.cpu_seconds()
        sim1 = cpu_seconds(sim_stats)
        mq1 = mosq.cpu_seconds() if mosq else 0.0
        served1 = sum(s.requests() for s in sims)
        self.notes.append(
            "load average (1 min) at the end of the steady window: "
            f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
        )
        time.sleep(min(3.0, 2 * p.interval))  # the window's last values are still on the way
        self.pump()
        wall = w1 - w0
        vps = self.delivery.values_arrived(t0, t1) / wall
        cpu = 100 * (cpu1 - cpu0) / wall
        period = self.delivery.period(t0, t1)
        steady = Steady(
            window_s=round(wall, 3),
            values_per_s=round(vps, 1),
            asked_values_per_s=self.devices * POINTS / p.interval,
            cpu_percent=round(cpu, 1),
            cpu_per_1000_values_s=round(cpu * 1000 / vps, 2) if vps else math.inf,
            rss_mib_peak=round(max(rss), 1),
            rss_mib_end=round(rss[-1], 1),
            threads_max=max(thr),
            threads_end=thr[-1],
            simulator_requests_per_s=round((served1 - served0) / wall, 1),
            simulator_cpu_percent=round(100 * (sim1 - sim0) / wall, 1),
            broker_cpu_percent=round(100 * (mq1 - mq0) / wall, 1),
            period_median_s=None if period is None else round(period, 3),
        )
        print(
            f"    steady: {steady.values_per_s:,.0f} values/s (asked "
            f"{steady.asked_values_per_s:,.0f}), CPU {steady.cpu_percent:.1f}% "
            f"({steady.cpu_per_1000_values_s:.1f}% per 1000 values/s), RSS "
            f"{steady.rss_mib_peak:.1f} MiB, {steady.threads_max} threads "
            f"(ready after {ready_s:.1f} s)",
            flush=True,
        )
        return steady

    _polled_b: dict[str, int]
    _t_restart: float

    def _outage(
        self,
        broker: PersistentMosquitto,
        sims: list[modbus.Simulator],
        watch: SocketWatch,
        *,
        kill: bool,
    ) -> Outage:
        p = self.p
        system = self.sys()
        t_down = time.time()
        broker.down()
        t_kill = t_restart = None
        if kill:
            time.sleep(max(0.0, t_down + p.kill_at - time.time()))
            system.kill()
            t_kill = time.time()
            time.sleep(0.5)  # the simulators' stats file is rewritten every 0.2 s
            self._polled_b = self.requests_served(sims)  # exact: nothing polls them now
            time.sleep(max(0.0, t_kill + p.restart_after - time.time()))
            t_restart = self._t_restart = time.time()
            watch.pid = system.start()
        time.sleep(max(0.0, t_down + p.outage - time.time()))
        broker.up()
        t_up = time.time()
        if not system.alive():
            raise RuntimeError(f"{self.name} exited during the outage:\n{system.log_tail()}")
        last, timed_out = self.wait_backlog(t_down, t_up)
        self.pump()
        stamped, _ = self.delivery.stamped(t_down, t_up)
        dup_new, dup_broker = self.delivery.dups_between(t_down, math.inf)
        first_poll = None if t_restart is None else self.delivery.first_stamp_after(t_restart)
        return Outage(
            kind="sigkill" if kill else "outage",
            outage_s=round(t_up - t_down, 2),
            backlog_delivered_after_s=_since(last, t_up),
            first_value_after_s=_since(self.delivery.first_arrival_after(t_up), t_up),
            values_stamped_in_outage=stamped,
            duplicates=dup_new,
            duplicates_broker_redelivery=dup_broker,
            backlog_timed_out=timed_out,
            t_down=round(t_down, 3),
            killed_at_s=_since(t_kill, t_down),
            restarted_at_s=_since(t_restart, t_down),
            restart_to_first_poll_s=None
            if first_poll is None or t_restart is None
            else _since(first_poll, t_restart),
        )


def _since(t: float | None, since: float) -> float | None:
    return None if t is None else round(t - since, 2)


def _outage_line(o: Outage) -> str:
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


# ---- the report ----------------------------------------------------------------------------


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
    cols = [f"{d['system']} {d['devices']}" for d in phases]
    head = ("figure", *cols)
    body = []
    for label, path, fmt in ROWS:
        cells = []
        for d in phases:
            v = _lookup(d, path)
            cells.append(_num(v, fmt) if v is not None else "-")
        body.append((label, *cells))
    widths = [max(len(r[i]) for r in (head, *body)) for i in range(len(head))]
    line = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths)).format
    return "\n".join([line(*head), line(*("-" * w for w in widths)), *(line(*r) for r in body)])


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


# ---- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Params:
    ap = argparse.ArgumentParser(
        prog="python -m bench.peer",
        description="The agent and the ThingsBoard IoT Gateway on the same Modbus workload: "
        "CPU per 1000 values/s, RSS, threads, and what each delivers after a broker outage "
        "and after a SIGKILL during one.",
    )
    ap.add_argument("--devices", default="100,200", help="sizes, comma-separated; 100,200")
    ap.add_argument("--systems", default="peer,agent", help="peer,agent (the order of size 1)")
    ap.add_argument("--interval", type=float, default=1.0, help="poll interval, s; 1")
    ap.add_argument("--seconds", type=float, default=60.0, help="steady window, s; 60")
    ap.add_argument("--warmup", type=float, default=5.0, help="s after all devices deliver; 5")
    ap.add_argument("--outage", type=float, default=60.0, help="broker outage, s (0: none); 60")
    ap.add_argument("--kill-at", type=float, default=20.0, help="SIGKILL s into outage 2; 20")
    ap.add_argument("--restart-after", type=float, default=5.0, help="restart s after it; 5")
    ap.add_argument(
        "--quiet", type=float, default=15.0, help="backlog done after this long without one; 15"
    )
    ap.add_argument("--backlog-timeout", type=float, default=300.0, help="max wait, s; 300")
    ap.add_argument("--simulators", type=int, default=1, help="simulator processes; 1")
    ap.add_argument("--case-every", type=float, default=0.5, help="simulated value change, s")
    ap.add_argument("--quick", action="store_true", help="10 devices, 10 s window, 15 s outages")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default results/peer.json)")
    ap.add_argument(
        "--runs",
        type=int,
        default=1,
        help="accepted for `python -m bench --runs N`; the peer comparison is one run per size",
    )
    a = ap.parse_args(argv)
    if a.runs != 1:
        print(f"peer: --runs {a.runs} ignored: one run per size", file=sys.stderr, flush=True)
    devices = [int(x) for x in str(a.devices).split(",") if x.strip()]
    systems = [x.strip() for x in str(a.systems).split(",") if x.strip()]
    if a.quick:
        devices, a.seconds, a.warmup, a.outage = [10], 10.0, 3.0, 15.0
        a.kill_at, a.restart_after, a.quiet = 5.0, 2.0, 8.0
    if not devices or any(n < 1 or n > modbus.MAX_UNITS * a.simulators for n in devices):
        ap.error(f"--devices: 1 to {modbus.MAX_UNITS} per simulator")
    if not systems or any(s not in SYSTEMS for s in systems):
        ap.error("--systems: peer and/or agent")
    if a.outage and not 0 < a.kill_at < a.kill_at + a.restart_after < a.outage:
        ap.error("need 0 < --kill-at < --kill-at + --restart-after < --outage")
    return Params(
        devices=devices,
        systems=systems,
        interval=a.interval,
        seconds=a.seconds,
        warmup=a.warmup,
        outage=a.outage,
        kill_at=a.kill_at,
        restart_after=a.restart_after,
        quiet=a.quiet,
        backlog_timeout=a.backlog_timeout,
        simulators=a.simulators,
        case_every=a.case_every,
        quick=a.quick,
        out=a.out,
    )


def main(argv: list[str] | None = None) -> int:
    """Print the side-by-side table and write results/peer.json."""
    p = parse_args(argv)
    out = p.out or result_file("peer", result_suffix(p.quick))
    started = timestamp()
    versions = ensure_peer_venv() if "peer" in p.systems else {}
    print(
        f"peer: {'/'.join(map(str, p.devices))} devices x {POINTS} registers every "
        f"{p.interval:g} s; steady {p.seconds:g} s, outage {p.outage:g} s (SIGKILL at "
        f"{p.kill_at:g} s, restart {p.restart_after:g} s later); ThingsBoard IoT Gateway "
        f"{versions.get('thingsboard-gateway', '-')} (pymodbus {versions.get('pymodbus', '-')})",
        flush=True,
    )
    phases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        for i, n in enumerate(p.devices):
            order = p.systems if i % 2 == 0 else list(reversed(p.systems))
            for name in order:
                print(f"  {name}, {n} devices:", flush=True)
                phase = PhaseRunner(name, n, p, Path(tmp)).run()
                phases.append(asdict(phase))
    print()
    print(table(phases))
    doc: dict[str, Any] = {
        "benchmark": "peer",
        "started": started,
        "params": {**asdict(p), "out": str(out), "runs": 1},
        "setup": {
            "peer_venv": str(PEER_VENV),
            "peer_requirements": PEER_REQUIREMENTS,
            "peer_versions": versions,
            "peer_requests_per_poll": PEER_REQUESTS_PER_POLL,
            "agent_requests_per_poll": Agent.requests_per_poll,
            "session_limits_reply": SESSION_LIMITS,
        },
        "environment": {**environment(), "pymodbus (agent)": metadata.version("pymodbus")},
        "phases": phases,
    }
    doc["figures"] = figures(doc)
    write_json(out, doc, default=str)
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
