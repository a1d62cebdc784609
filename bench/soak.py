"""Fault soak: the agent under a seeded random schedule of faults, every event accounted for.

    python -m bench.soak --minutes 10            # the bounded soak (about 11 minutes)
    python -m bench.soak --seconds 60 --seed 3   # what tests/test_soak.py runs

One run starts, in a temporary folder, its own mosquitto (persistence on, so a restart keeps
the checker's session and its queued messages), a socat pty pair standing for an RS-485
line, the Modbus RTU simulator on one end (an XY-MD02 sensor and an 8-zone DI fence module
whose zones are raised and cleared every few seconds), a checker (an MQTT client with a
persistent session subscribed at QoS 1 to the gateway's topics) and the agent: a
`modbus-rtu` bus on the other end of the line, a synthetic env device at a few hundred
events/s (the shipped `synthetic-load` profile: every reading is an event) and a synthetic
fence that raises and clears an alarm every second, with a small store cap (512 KiB) so
that a broker outage fills the store and eviction happens.

Then, for the asked duration, faults from a seeded random schedule, one after another:
`broker` (mosquitto stopped for 2-8 s), `cap` (mosquitto stopped until the agent's status
shows it evicting), `kill` (the agent SIGKILLed and started again), `kill+broker` (killed
while the broker is down), `cable` (socat stopped for 2-6 s: the serial line drops, the
ptys vanish) and `quiet` (nothing). The first faults are one of each kind, so even a short
run has them all. Then the faults stop, the backlog drains, the agent gets SIGTERM, and
every `seq` from 1 to the last one committed (final status file and SQLite store) is
accounted for: received by the checker, still in the store, or counted as evicted.

Exit status 1 when an alarm is lost or an event is lost outside documented eviction.
bench/README.md ("soak") explains every figure.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.peers import (
    HOST,
    free_port,
    mosquitto_binary,
    mosquitto_version,
    read_json,
    stop_process,
)
from bench.report import result_file

ROOT = Path(__file__).resolve().parent.parent
SCHOOL = "pt-023"
GATEWAY = "gw-soak"
TOPIC = f"campus/v1/{SCHOOL}/{GATEWAY}/#"
FENCE = "north-fence"  # the synthetic fence: its zone_3 alarm toggles every ALARM_EVERY
ALARM_EVERY = 1.0
MODBUS_DEVICES = ("b201-env", "gate-zones")
KINDS = ("broker", "cap", "kill", "kill+broker", "cable", "quiet")
REQUIRED = ("broker", "cap", "kill", "cable", "quiet")  # first, in a seeded order
WEIGHTS = (3, 1, 3, 1, 2, 2)
BACKLOG_WINDOW = 100  # a backlog at least this large: the store may be filling
MARGIN = 3.0  # seconds added around every window in which eviction can have happened

# ---- the files the run writes -------------------------------------------------------------

# XY-MD02 input registers 1 (x0.1 degC, signed) and 2 (x0.1 %RH): four readings in turn.
ENV_VECTOR = """\
source = "bench/soak.py"
[[case]]
name = "a"
registers = { input = { 1 = 0x00F5, 2 = 0x01C2 } }
[[case]]
name = "b"
registers = { input = { 1 = 0x0131, 2 = 0x0222 } }
[[case]]
name = "c"
registers = { input = { 1 = 0x00E1, 2 = 0x0190 } }
[[case]]
name = "d"
registers = { input = { 1 = 0x0104, 2 = 0x01F4 } }
"""

# The DI fence module's discrete inputs 0-1 (zone_1, zone_2): every case change is an edge.
FENCE_VECTOR = """\
source = "bench/soak.py"
[[case]]
name = "quiet"
registers = { discrete = { 0 = 0, 1 = 0 } }
[[case]]
name = "zone_1"
registers = { discrete = { 0 = 1, 1 = 0 } }
[[case]]
name = "zone_1_and_2"
registers = { discrete = { 0 = 1, 1 = 1 } }
[[case]]
name = "zone_2"
registers = { discrete = { 0 = 0, 1 = 1 } }
"""

AGENT_CONFIG = """\
profile_dirs = ["{profiles}"]

[agent]
school = "{school}"
gateway = "{gateway}"
drain_timeout = "3s"
status_interval = "2s"

[mqtt]
url = "{url}"
reconnect_min = "200ms"
reconnect_max = "1s"
keepalive = "10s"

[store]
path = "outbox.db"
max_size = "{cap}"

[[buses]]
id = "sim"
driver = "synthetic"

[[buses]]
id = "rs485-1"
driver = "modbus-rtu"
port = "{pty}"
baudrate = 38400
timeout = "250ms"

[[devices]]
id = "a101-env"
profile = "synthetic-load"
bus = "sim"
location = {{ building = "A", floor = 1, room = "101" }}
rate = {rate}

[[devices]]
id = "{fence}"
profile = "synthetic-fence"
bus = "sim"
poll_interval = "100ms"
alarm_every = "{alarm_every}s"

[[devices]]
id = "b201-env"
profile = "xy-md02"
bus = "rs485-1"
address = 1
poll_interval = "500ms"

[[devices]]
id = "gate-zones"
profile = "generic-di8-fence"
bus = "rs485-1"
address = 2
poll_interval = "200ms"
"""


# ---- the peers ------------------------------------------------------------------------------


def _wait(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


class Broker:
    """mosquitto with persistence on; stop() and start() keep its port and its state."""

    def __init__(self, folder: Path) -> None:
        self.binary = mosquitto_binary()
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = free_port(HOST)
        self.conf = self.dir / "mosquitto.conf"
        lines = [
            "user root" if os.geteuid() == 0 else "",
            "per_listener_settings false",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 3600",  # saved at every (SIGTERM) stop
            "max_queued_messages 0",
            "max_inflight_messages 0",
            f"log_dest file {self.dir}/mosquitto.log",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"listener {self.port} {self.host}",
        ]
        self.conf.write_text("\n".join(line for line in lines if line) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0, attempts: int = 5) -> None:
        """Start it on its port; try again a few times if the port is briefly taken (a
        client elsewhere on this shared machine may hold it as its source port)."""
        for attempt in range(1, attempts + 1):
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _wait(self._listening, timeout, "mosquitto to listen", every=0.02)
                return
            except RuntimeError:
                self.stop()
                if attempt == attempts:
                    raise
                time.sleep(2.0)

    def _listening(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited at start (port {self.port}): {self.tail()}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            return s.connect_ex((self.host, self.port)) == 0

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def tail(self, limit: int = 1500) -> str:
        try:
            return (self.dir / "mosquitto.log").read_text(errors="replace")[-limit:]
        except OSError:
            return ""


class PtyPair:
    """Two linked ptys from socat (`.a`, `.b`); stop() is a pulled cable, start() plugs it."""

    def __init__(self, folder: Path) -> None:
        found = shutil.which("socat")
        if found is None:
            raise RuntimeError("socat is not installed: sudo apt-get install -y socat")
        self.binary = found
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.a = self.dir / "a"
        self.b = self.dir / "b"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        for link in (self.a, self.b):
            link.unlink(missing_ok=True)
        with (self.dir / "socat.log").open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "-d",
                    "-d",
                    f"pty,raw,echo=0,link={self.a}",
                    f"pty,raw,echo=0,link={self.b}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

        def linked() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("socat exited at start")
            return self.a.exists() and self.b.exists()

        _wait(linked, timeout, "socat to create both pty links")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        for link in (self.a, self.b):
            link.unlink(missing_ok=True)


class Simulator:
    """The Modbus RTU simulator on the pty's `a` end; it reopens the port when it is back."""

    def __init__(self, folder: Path, port: Path) -> None:
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        (self.dir / "env.toml").write_text(ENV_VECTOR)
        (self.dir / "fence.toml").write_text(FENCE_VECTOR)
        self.stats = self.dir / "stats.json"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        cmd = [sys.executable, "-m", "drivers.modbus.simulator", "--rtu", str(self.port)]
        cmd += ["--baud", "38400", "--stats", str(self.stats), "--log-level", "warning"]
        cmd += ["--device", f"1={self.dir / 'env.toml'}:every=1.5"]
        cmd += ["--device", f"2={self.dir / 'fence.toml'}:every=2"]
        with (self.dir / "simulator.log").open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

        def serving() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("the Modbus simulator exited at start")
            try:
                return bool(json.loads(self.stats.read_text()).get("listen"))
            except (OSError, ValueError):
                return False

        _wait(serving, timeout, "the Modbus simulator to open its port")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class Agent:
    """`python -m agent.cli run` with the soak's config; killed, restarted, terminated."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.config = folder / "agent.toml"
        self.store = folder / "outbox.db"
        self.status_path = folder / "outbox.db.status.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        log = self.dir / f"agent-{len(self.logs)}.log"
        self.logs.append(log)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*cmd, "--log-level", "info"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def status(self) -> dict[str, Any]:
        return read_json(self.status_path) or {}

    def live_status(self) -> dict[str, Any]:
        """The status file if the running process wrote it, else {}."""
        st = self.status()
        return st if self.alive() and st.get("pid") == self.pid else {}

    def log_lines(self, level: str) -> list[str]:
        out = []
        for p in self.logs:
            with contextlib.suppress(OSError):
                out += [ln for ln in p.read_text(errors="replace").splitlines() if level in ln]
        return out


class Checker:
    """The district's view: a persistent-session QoS 1 subscriber that records every event.

    paho's own thread receives; the callback keeps the fields the accounting needs, the
    receipt time (time.time(), the clock the agent stamps `ts` with) and the retain flag.
    It subscribes only when the broker has no session for it, so a broker restart (which
    restores the session from its persistence file) brings no retained replays.
    """

    def __init__(self, host: str, port: int) -> None:
        self.records: list[tuple[float, int, str, str, str, str, str | None, str | None, bool]]
        self.records = []
        self.seqs: set[int] = set()
        self.status_states: Counter[str] = Counter()
        self.undecodable = 0
        self.subscribes = 0
        self.connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"soak-checker-{os.getpid()}-{id(self)}",
            clean_session=False,
        )
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        _wait(self.connected.is_set, 15, "the checker to connect and subscribe")

    def _on_connect(self, client: mqtt.Client, u: Any, flags: Any, rc: Any, p: Any) -> None:
        if rc.is_failure:
            return
        if not flags.session_present:
            self.subscribes += 1
            client.subscribe(TOPIC, qos=1)
        self.connected.set()

    def _on_message(self, client: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        if msg.topic.endswith("/status"):
            with contextlib.suppress(ValueError, AttributeError):
                self.status_states[str(orjson.loads(msg.payload).get("state"))] += 1
            return
        try:
            d = orjson.loads(msg.payload)
            seq = int(d["seq"])
            rec = (now, seq, str(d["id"]), str(d["kind"]), str(d["ts"]), str(d["device"]))
        except (ValueError, KeyError, TypeError):
            self.undecodable += 1
            return
        self.records.append((*rec, d.get("alarm"), d.get("state"), bool(msg.retain)))
        self.seqs.add(seq)

    def close(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()


# ---- the store, read while the agent is not running -------------------------------------


@dataclass
class StoreSnapshot:
    """What an agent's SQLite store held: unsent rows (seq -> (kind, id)), counters."""

    next_seq: int = 1
    rows: dict[int, tuple[str, str]] = field(default_factory=dict)
    evicted: dict[str, int] = field(default_factory=dict)


def read_store(path: Path) -> StoreSnapshot:
    """Read the store of a stopped (or killed) agent. Never while one runs on it."""
    snap = StoreSnapshot()
    if not path.exists():
        return snap
    con = sqlite3.connect(path)
    try:
        for key, value in con.execute("SELECT key, value FROM meta"):
            if key == "next_seq":
                snap.next_seq = int(value)
            elif str(key).startswith("evicted."):
                snap.evicted[str(key).removeprefix("evicted.")] = int(value)
        for seq, payload in con.execute("SELECT seq, payload FROM outbox"):
            doc = orjson.loads(payload)
            snap.rows[int(seq)] = (str(doc.get("kind")), str(doc.get("id")))
    finally:
        con.close()
    # The store's own rule (agent/store.py, open): meta holds next_seq only as of the last
    # transaction that deleted rows; the rows themselves hold it until then.
    snap.next_seq = max(snap.next_seq, max(snap.rows, default=0) + 1)
    return snap


# ---- the schedule ---------------------------------------------------------------------------


@dataclass
class Planned:
    """One fault of the schedule, with its random durations drawn in advance."""

    kind: str
    gap: float  # seconds of normal running before it
    down: float = 0.0  # broker stopped / cable out / quiet
    restart_after: float = 0.0  # agent killed -> started again
    before_kill: float = 0.0  # kill+broker: broker down this long before the kill


def make_schedule(seed: int, seconds: float) -> list[Planned]:
    """The seeded schedule: one fault of each required kind (shuffled), then random ones.

    Long enough for `seconds` at the shortest durations; the run stops taking faults from
    it once `seconds` have passed and every required kind has run.
    """
    rng = random.Random(seed)
    first = list(REQUIRED)
    rng.shuffle(first)
    out: list[Planned] = []
    planned = 0.0
    while first or planned < seconds * 2:
        kind = first.pop(0) if first else rng.choices(KINDS, WEIGHTS)[0]
        f = Planned(kind, gap=round(rng.uniform(1.0, 4.0), 2))
        if kind == "broker":
            f.down = round(rng.uniform(2.0, 8.0), 2)
        elif kind == "cap":
            f.down = round(rng.uniform(0.0, 2.0), 2)  # after eviction is seen
        elif kind == "kill":
            f.restart_after = round(rng.uniform(0.2, 2.0), 2)
        elif kind == "kill+broker":
            f.before_kill = round(rng.uniform(1.0, 3.0), 2)
            f.restart_after = round(rng.uniform(0.5, 2.0), 2)
            f.down = round(rng.uniform(1.0, 3.0), 2)  # broker still down after the restart
        elif kind == "cable":
            f.down = round(rng.uniform(2.0, 6.0), 2)
        else:
            f.down = round(rng.uniform(3.0, 10.0), 2)
        out.append(f)
        planned += f.gap + max(f.down, 1.0) + f.before_kill + f.restart_after + 1.0
    return out


# ---- the run --------------------------------------------------------------------------------


@dataclass
class FaultRecord:
    """What happened: wall-clock intervals (time.time()) of each outage."""

    kind: str
    start: float
    end: float
    broker_down: list[tuple[float, float]] = field(default_factory=list)
    agent_down: list[tuple[float, float]] = field(default_factory=list)
    cable_out: list[tuple[float, float]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """One agent process: from start to SIGKILL or SIGTERM; `hwm` = last seq it committed."""

    pid: int
    started: float
    ready: float | None = None
    ended: float | None = None
    how: str = ""
    hwm: int = 0
    exit_code: int | None = None


@dataclass
class Params:
    seconds: float
    seed: int
    rate: float
    cap: str
    out: Path | None
    workdir: Path | None
    keep: bool
    drain_timeout: float = 90.0
    verbose: bool = True


class Soak:
    """Holds the peers and what the run recorded; run() is the whole soak."""

    def __init__(self, p: Params, folder: Path) -> None:
        self.p = p
        self.dir = folder
        self.broker = Broker(folder / "broker")
        self.pty = PtyPair(folder / "pty")
        self.sim = Simulator(folder / "sim", self.pty.a)
        self.agent = Agent(folder / "agent")
        self.checker: Checker | None = None
        self.faults: list[FaultRecord] = []
        self.runs: list[Run] = []
        self.snapshots: list[StoreSnapshot] = []
        self.samples: list[tuple[float, bool, int, int, int, bool]] = []
        self.unexpected_exits: list[dict[str, Any]] = []
        self.cable_recovery: list[float | None] = []
        self.agent_down = False  # True while the soak itself keeps the agent stopped
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self.t0 = 0.0

    def say(self, text: str) -> None:
        if self.p.verbose:
            print(f"[{time.time() - self.t0:7.1f}s] {text}", flush=True)

    # ---- set-up --------------------------------------------------------------------

    def setup(self) -> None:
        profiles = self.dir / "profiles"
        profiles.mkdir(parents=True, exist_ok=True)
        self.agent.dir.mkdir(parents=True, exist_ok=True)
        self.agent.config.write_text(
            AGENT_CONFIG.format(
                profiles=profiles,
                school=SCHOOL,
                gateway=GATEWAY,
                url=self.broker.url,
                cap=self.p.cap,
                pty=self.pty.b,
                rate=self.p.rate,
                fence=FENCE,
                alarm_every=ALARM_EVERY,
            ),
            encoding="utf-8",
        )
        self.broker.start()
        self.pty.start()
        self.sim.start()
        self.checker = Checker(self.broker.host, self.broker.port)
        self.start_agent()
        self._sampler = threading.Thread(target=self._sample_loop, name="soak-sampler", daemon=True)
        self._sampling.set()
        self._sampler.start()
        _wait(
            lambda: all(self._device_online(d) for d in MODBUS_DEVICES),
            60,
            "the Modbus devices online",
            every=0.2,
        )
        assert self.checker is not None  # noqa: S101 - set above
        _wait(lambda: len(self.checker.seqs) > 200, 60, "events at the checker", every=0.2)

    def _device_online(self, dev: str) -> bool:
        st = self.agent.live_status()
        return bool(st.get("devices", {}).get(dev, {}).get("online"))

    def start_agent(self, timeout: float = 60.0) -> None:
        """Start the agent; return once its status file shows it (connected if the broker is up)."""
        self.agent.start()
        self.agent_down = False
        assert self.agent.pid is not None  # noqa: S101 - just started
        run = Run(self.agent.pid, time.time())
        self.runs.append(run)

        def ready() -> bool:
            if not self.agent.alive():
                raise RuntimeError(f"the agent exited at start: {self.agent.log_lines('')[-20:]}")
            st = self.agent.live_status()
            return bool(st) and (bool(st["broker"]["connected"]) or not self.broker.up())

        _wait(ready, timeout, "the agent to start", every=0.05)
        run.ready = time.time()

    def _sample_loop(self) -> None:
        """Every 0.25 s: (time, status known, backlog, evicted, used bytes, connected)."""
        while self._sampling.is_set():
            st = self.agent.live_status()
            if st:
                self.samples.append(
                    (
                        time.time(),
                        True,
                        int(st.get("backlog", 0)),
                        sum(st.get("evicted", {}).values()),
                        int(st.get("store", {}).get("used_bytes", 0)),
                        bool(st.get("broker", {}).get("connected")),
                    )
                )
            else:
                self.samples.append((time.time(), False, 0, 0, 0, False))
            time.sleep(0.25)

    # ---- faults --------------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Sleep, restarting the agent if it died by itself (recorded: that is a finding)."""
        deadline = time.monotonic() + seconds
        while True:
            if self.agent.proc is not None and not self.agent.alive() and not self.agent_down:
                self._unexpected_exit()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    def _unexpected_exit(self) -> None:
        assert self.agent.proc is not None  # noqa: S101 - checked by the caller
        code = self.agent.proc.returncode
        run = self.runs[-1]
        run.ended, run.how, run.exit_code = time.time(), "died", code
        snap = read_store(self.agent.store)
        run.hwm = snap.next_seq - 1
        self.snapshots.append(snap)
        tail = self.agent.log_lines("")[-15:]
        self.unexpected_exits.append({"at": run.ended, "code": code, "log_tail": tail})
        self.say(f"!! the agent exited by itself (code {code}); restarting it")
        self.start_agent()

    def _kill_agent(self) -> tuple[float, int]:
        t = time.time()
        self.agent_down = True
        self.agent.kill()
        run = self.runs[-1]
        snap = read_store(self.agent.store)
        run.ended, run.how, run.hwm = t, "kill", snap.next_seq - 1
        self.snapshots.append(snap)
        return t, len(snap.rows)

    def do(self, f: Planned) -> FaultRecord:
        rec = FaultRecord(f.kind, time.time(), 0.0)
        if f.kind == "broker":
            a = time.time()
            self.broker.stop()
            self.pause(f.down)
            self.broker.start()
            rec.broker_down.append((a, time.time()))
            rec.detail["down_s"] = f.down
        elif f.kind == "cap":
            before = self._evicted()
            a = time.time()
            self.broker.stop()
            deadline = time.monotonic() + 60
            while self._evicted() <= before and time.monotonic() < deadline:
                self.pause(0.1)
            rec.detail["evicted_during"] = self._evicted() - before
            self.pause(f.down)
            rec.detail["evicted_during"] = self._evicted() - before
            self.broker.start()
            rec.broker_down.append((a, time.time()))
        elif f.kind == "kill":
            t, stored = self._kill_agent()
            self.pause(f.restart_after)
            self.start_agent()
            rec.agent_down.append((t, time.time()))
            rec.detail.update(stored_at_kill=stored, hwm=self.runs[-2].hwm)
        elif f.kind == "kill+broker":
            a = time.time()
            self.broker.stop()
            self.pause(f.before_kill)
            t, stored = self._kill_agent()
            self.pause(f.restart_after)
            self.start_agent()
            rec.agent_down.append((t, time.time()))
            self.pause(f.down)
            self.broker.start()
            rec.broker_down.append((a, time.time()))
            rec.detail.update(stored_at_kill=stored, hwm=self.runs[-2].hwm)
        elif f.kind == "cable":
            a = time.time()
            self.pty.stop()
            self.pause(f.down)
            self.pty.start()
            back = time.time()
            rec.cable_out.append((a, back))
            rec.detail["out_s"] = f.down
            self._watch_cable(a, back)
        else:
            self.pause(f.down)
        rec.end = time.time()
        return rec

    def _evicted(self) -> int:
        return sum(self.agent.live_status().get("evicted", {}).values())

    def _watch_cable(self, pulled: float, back: float) -> None:
        """Record, in the background, how long the Modbus devices take to come back: until
        both are online again since a moment after the cable was pulled."""
        slot = len(self.cable_recovery)
        self.cable_recovery.append(None)

        def watch() -> None:
            deadline = time.time() + 180
            while time.time() < deadline and self._sampling.is_set():
                devs = self.agent.live_status().get("devices", {})
                if all(
                    devs.get(d, {}).get("online") and devs[d].get("since", 0) >= pulled
                    for d in MODBUS_DEVICES
                ):
                    self.cable_recovery[slot] = round(time.time() - back, 2)
                    return
                time.sleep(0.2)

        threading.Thread(target=watch, name="soak-cable-watch", daemon=True).start()

    # ---- the whole run ---------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.t0 = time.time()
        self.say(f"folder {self.dir}")
        self.setup()
        self.say(
            f"running: broker :{self.broker.port}, agent pid {self.agent.pid}, "
            f"{len(self.checker.seqs) if self.checker else 0} events so far"
        )
        schedule = make_schedule(self.p.seed, self.p.seconds)
        began, began_wall = time.monotonic(), time.time()
        done: Counter[str] = Counter()
        for f in schedule:
            over = time.monotonic() - began >= self.p.seconds
            if over and all(done[k] for k in REQUIRED):
                break
            self.pause(f.gap)
            self.say(f"fault {f.kind} {_describe(f)}")
            self.faults.append(self.do(f))
            done[f.kind] += 1
        fault_end = time.time()
        self.say(f"faults over ({dict(done)}); draining")
        drained = self.drain()
        self.say(f"drained={drained}; SIGTERM to the agent")
        term_at = time.time()
        code = self.agent.terminate()
        run = self.runs[-1]
        run.ended, run.how, run.exit_code = term_at, "term", code
        self._settle()
        self._sampling.clear()
        final = self.agent.status()
        if "stopped" not in final:
            self.say("!! the status file was not rewritten at the agent's exit")
        snap = read_store(self.agent.store)
        run.hwm = snap.next_seq - 1
        self.say(f"agent exit {code}; accounting")
        assert self.checker is not None  # noqa: S101 - set in setup
        report = account(
            records=self.checker.records,
            final_status=final,
            final_store=snap,
            snapshots=self.snapshots,
            runs=self.runs,
            faults=self.faults,
            samples=self.samples,
            t0=self.t0,
        )
        report["run"] = {
            "seconds_asked": self.p.seconds,
            "faults_seconds": round(fault_end - began_wall, 1),
            "total_seconds": round(time.time() - self.t0, 1),
            "seed": self.p.seed,
            "rate_asked": self.p.rate,
            "store_cap": self.p.cap,
            "events_per_s": round(run.hwm / max(1e-9, term_at - self.runs[0].started), 1),
            "drained_before_sigterm": drained,
            "agent_exit_code": code,
            "agent_unexpected_exits": self.unexpected_exits,
            "checker_subscribes": self.checker.subscribes,
            "checker_undecodable": self.checker.undecodable,
            "status_messages": dict(self.checker.status_states),
            "cable_recovery_s": self.cable_recovery,
            "agent_log_errors": _log_errors(self.agent.log_lines("ERROR")),
            "folder": str(self.dir),
        }
        report["faults"] = {
            "by_kind": {k: done.get(k, 0) for k in KINDS},
            "log": [_fault_json(r, self.t0) for r in self.faults],
        }
        report["runs"] = [
            {**asdict(r), "started": round(r.started - self.t0, 2)} | _rel(r, self.t0)
            for r in self.runs
        ]
        report["versions"] = {
            "python": platform.python_version(),
            "mosquitto": mosquitto_version(self.broker.binary),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        }
        return report

    def drain(self) -> bool:
        """Wait until the agent is connected and its backlog is (nearly) empty, twice in a row."""
        deadline = time.monotonic() + self.p.drain_timeout
        good = 0
        while time.monotonic() < deadline:
            st = self.agent.live_status()
            ok = bool(st) and st["broker"]["connected"] and int(st["backlog"]) <= 50
            good = good + 1 if ok else 0
            if good >= 3:
                return True
            self.pause(0.5)
        return False

    def _settle(self, quiet: float = 1.5, limit: float = 20.0) -> None:
        """After SIGTERM: wait until the checker has had nothing new for `quiet` seconds."""
        assert self.checker is not None  # noqa: S101 - set in setup
        deadline = time.monotonic() + limit
        n, since = len(self.checker.records), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            m = len(self.checker.records)
            if m != n:
                n, since = m, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return

    def close(self) -> None:
        self._sampling.clear()
        if self.agent.alive():
            self.agent.kill()
        if self.checker is not None:
            self.checker.close()
        self.sim.stop()
        self.pty.stop()
        self.broker.stop()


def _describe(f: Planned) -> str:
    parts = []
    if f.before_kill:
        parts.append(f"kill after {f.before_kill:g}s")
    if f.restart_after:
        parts.append(f"restart after {f.restart_after:g}s")
    if f.down and f.kind != "cap":
        parts.append(f"{f.down:g}s")
    return ", ".join(parts)


def _rel(r: Run, t0: float) -> dict[str, Any]:
    return {
        "ready": None if r.ready is None else round(r.ready - t0, 2),
        "ended": None if r.ended is None else round(r.ended - t0, 2),
    }


def _fault_json(r: FaultRecord, t0: float) -> dict[str, Any]:
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


def _log_errors(lines: list[str]) -> dict[str, int]:
    """ERROR lines of the agent's logs by message (the part before the first '='/':')."""
    out: Counter[str] = Counter()
    for ln in lines:
        name, _, text = ln.split(" ERROR ", 1)[-1].partition(": ")
        out[f"{name}: {text.split('=', 1)[0][:70]}"] += 1
    return dict(out)


# ---- the accounting -------------------------------------------------------------------------


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _overlap(a: float, b: float, intervals: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, y) - max(a, x)) for x, y in intervals)


def _touches(a: float, b: float, intervals: list[tuple[float, float]]) -> bool:
    return any(a <= y and x <= b for x, y in intervals)


def backlog_windows(
    samples: list[tuple[float, bool, int, int, int, bool]],
) -> list[tuple[float, float]]:
    """Intervals in which the store may have been filling: a backlog of BACKLOG_WINDOW or
    more, or no live status (agent down or starting). Eviction happens only well above that
    (80 % of the cap), and it takes the oldest telemetry, which was created after the
    backlog last was small."""
    out = []
    start: float | None = None
    last_t = 0.0
    for t, known, backlog, *_ in samples:
        high = (not known) or backlog >= BACKLOG_WINDOW
        if high and start is None:
            start = last_t or t
        elif not high and start is not None:
            out.append((start, t))
            start = None
        last_t = t
    if start is not None:
        out.append((start, math.inf))
    return out


def account(
    *,
    records: list[tuple[float, int, str, str, str, str, str | None, str | None, bool]],
    final_status: dict[str, Any],
    final_store: StoreSnapshot,
    snapshots: list[StoreSnapshot],
    runs: list[Run],
    faults: list[FaultRecord],
    samples: list[tuple[float, bool, int, int, int, bool]],
    t0: float = 0.0,
) -> dict[str, Any]:
    """Every seq from 1 to the last committed: received, still stored, or evicted."""
    # -- what the checker got
    first: dict[str, tuple[float, int, str, str, str, str, str | None, str | None, bool]] = {}
    ids_by_seq: dict[int, set[str]] = defaultdict(set)
    duplicates = retained_replays = 0
    for rec in records:
        _recv, seq, eid, *_rest, retain = rec
        if eid in first:
            if retain:
                retained_replays += 1
            else:
                duplicates += 1
            continue
        first[eid] = rec
        ids_by_seq[seq].add(eid)
    seq_reused = sorted(s for s, ids in ids_by_seq.items() if len(ids) > 1)
    ts_by_seq = {seq: _ts(rec[4]) for seq, ids in ids_by_seq.items() for rec in [first[min(ids)]]}

    store = final_status.get("store", {})
    last = max(int(store.get("last_seq", 0)), final_store.next_seq - 1)
    received = {s for s in ids_by_seq if s <= last}
    beyond = sorted(s for s in ids_by_seq if s > last)
    stored = set(final_store.rows)
    missing = sorted(set(range(1, last + 1)) - received - stored)

    evicted = {k: int(v) for k, v in final_status.get("evicted", {}).items()}
    for k, v in final_store.evicted.items():
        evicted[k] = max(evicted.get(k, 0), v)
    evicted_total = sum(evicted.values())
    lost_by_count = max(0, len(missing) - evicted_total)
    slack = max(0, evicted_total - len(missing))

    # -- missing seqs created while the store cannot have been filling: not evictions
    broker_down = _merge(iv for f in faults for iv in f.broker_down)
    agent_down = _merge(iv for f in faults for iv in f.agent_down)
    windows = _merge(
        (a - MARGIN, b + MARGIN) for a, b in [*backlog_windows(samples), *broker_down, *agent_down]
    )
    got = sorted(received)
    unexplained: list[list[int]] = []
    i = 0
    while i < len(missing):
        j = i
        while j + 1 < len(missing) and missing[j + 1] == missing[j] + 1:
            j += 1
        lo_i = bisect.bisect_left(got, missing[i]) - 1
        hi_i = bisect.bisect_right(got, missing[j])
        lo = ts_by_seq[got[lo_i]] if lo_i >= 0 else -math.inf
        hi = ts_by_seq[got[hi_i]] if hi_i < len(got) else math.inf
        if not _touches(lo, hi, windows):
            unexplained.append([missing[i], missing[j]])
        i = j + 1
    n_unexplained = sum(b - a + 1 for a, b in unexplained)

    # -- alarms
    alarms = sorted((r for r in first.values() if r[3] == "alarm"), key=lambda r: r[1])
    alarm_ids = {r[2] for r in alarms}
    snapshot_alarms = {
        eid: seq for snap in snapshots for seq, (kind, eid) in snap.rows.items() if kind == "alarm"
    }
    final_alarm_ids = {eid for kind, eid in final_store.rows.values() if kind == "alarm"}
    committed_not_received = sorted(
        seq
        for eid, seq in snapshot_alarms.items()
        if eid not in alarm_ids and eid not in final_alarm_ids
    )
    bounds = sorted(r.hwm for r in runs[:-1] if r.how in ("kill", "died"))
    by_point: dict[tuple[int, str, str], list[tuple[int, str]]] = defaultdict(list)
    for r in alarms:
        run_i = bisect.bisect_left(bounds, r[1])
        by_point[(run_i, r[5], str(r[6]))].append((r[1], str(r[7])))
    breaks: list[dict[str, Any]] = []
    for (run_i, dev, name), seq_states in sorted(by_point.items()):
        want = "active"
        for seq, state in seq_states:
            if state != want:
                breaks.append({"run": run_i, "device": dev, "alarm": name, "seq": seq})
            want = "cleared" if state == "active" else "active"
    evicted_alarms = evicted.get("alarm", 0)
    alarms_lost = len(committed_not_received) + len(breaks) + evicted_alarms

    # -- alarm delay: device time -> receipt; without broker/agent downtime; steady state
    blocked = _merge([*broker_down, *agent_down])
    fault_spans = _merge(
        (f.start - 1.0, f.end + MARGIN) for f in faults if f.broker_down or f.agent_down
    )
    raw, excl, steady = [], [], []
    worst: dict[str, tuple[float, Any]] = {}
    for r in alarms:
        if r[8]:
            continue  # a retained replay: not a delivery
        ts = _ts(r[4])
        d = r[0] - ts
        raw.append(d)
        excl.append(d - _overlap(ts, r[0], blocked))
        figures = {"raw": d, "excl_outages": excl[-1]}
        if not _touches(ts, r[0], fault_spans):
            steady.append(d)
            figures["steady"] = d
        for name, value in figures.items():
            if name not in worst or value > worst[name][0]:
                worst[name] = (value, r)
    worst_alarms = {
        name: {
            "delay_s": round(value, 3),
            "seq": r[1],
            "device": r[5],
            "alarm": r[6],
            "state": r[7],
            "ts_s": round(_ts(r[4]) - t0, 3),
            "received_s": round(r[0] - t0, 3),
        }
        for name, (value, r) in worst.items()
    }

    # -- the synthetic fence's edges: expected at every ALARM_EVERY boundary while it ran
    fence_ts = sorted(_ts(r[4]) for r in alarms if r[5] == FENCE)
    expected = missed = 0
    missed_at: list[float] = []
    for run in runs:
        if run.ready is None or run.ended is None:
            continue
        k = math.ceil((run.ready + 1.5) / ALARM_EVERY)
        while k * ALARM_EVERY < run.ended - 1.5:
            b = k * ALARM_EVERY
            expected += 1
            j = bisect.bisect_left(fence_ts, b - 0.002)
            if not (j < len(fence_ts) and fence_ts[j] <= b + 1.0):
                missed += 1
                missed_at.append(round(b - t0, 3))
            k += 1

    # -- order within device and kind (first deliveries)
    last_seq_of: dict[tuple[str, str], int] = {}
    out_of_order = 0
    for rec in sorted(first.values(), key=lambda r: r[0]):
        key = (rec[5], rec[3])
        if rec[1] < last_seq_of.get(key, 0):
            out_of_order += 1
        last_seq_of[key] = max(rec[1], last_seq_of.get(key, 0))

    used = [s[4] for s in samples if s[1]]
    kinds = Counter(r[3] for r in first.values())
    events_lost = max(lost_by_count, n_unexplained) + len(seq_reused)
    return {
        "ok": alarms_lost == 0 and events_lost == 0,
        "events": {
            "last_seq": last,
            "received_unique": len(received),
            "received_by_kind": dict(kinds),
            "messages": len(records),
            "still_stored": len(stored),
            "evicted": evicted,
            "evicted_total": evicted_total,
            "lost_uncommitted_last_run": int(final_status.get("lost_uncommitted", 0)),
            "missing": len(missing),
            "lost": events_lost,
            "lost_by_count": lost_by_count,
            "unexplained_gaps": unexplained[:50],
            "unexplained_missing": n_unexplained,
            "evicted_but_delivered_max": slack,
            "seq_reused": seq_reused[:50],
            "beyond_last_seq": beyond[:50],
            "duplicates": duplicates,
            "duplicate_ratio": round(duplicates / max(1, len(received)), 5),
            "retained_replays": retained_replays,
            "out_of_order": out_of_order,
        },
        "alarms": {
            "received": len(alarms),
            "seen_in_store_after_kill": len(snapshot_alarms),
            "lost": alarms_lost,
            "committed_not_received": committed_not_received[:50],
            "alternation_breaks": breaks[:50],
            "evicted": evicted_alarms,
            "fence_edges_expected": expected,
            "fence_edges_missed": missed,
            "fence_edges_missed_at": missed_at[:50],
            "delay_max_s": _r(max(raw, default=None)),
            "delay_max_excl_outages_s": _r(max(excl, default=None)),
            "delay_steady_max_s": _r(max(steady, default=None)),
            "delay_steady_p50_s": _r(statistics.median(steady) if steady else None),
            "delay_p50_s": _r(statistics.median(raw) if raw else None),
            "delay_p99_s": _r(_pct(raw, 0.99)),
            "steady_samples": len(steady),
            "worst": worst_alarms,
        },
        "store": {
            "used_bytes_max": max(used, default=0),
            "max_size": final_status.get("store", {}).get("max_size"),
            "backlog_max": max((s[2] for s in samples if s[1]), default=0),
        },
        "outages_s": {
            "broker_down": round(sum(b - a for a, b in broker_down), 1),
            "agent_down": round(sum(b - a for a, b in agent_down), 1),
        },
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


# ---- the report -----------------------------------------------------------------------------


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
    width = max(len(a) for a, _ in rows)
    head = (
        f"soak: {run['seconds_asked']:g} s of faults (seed {run['seed']}), "
        f"{run['rate_asked']:g} env events/s asked ({run['events_per_s']:g} committed/s), "
        f"store cap {run['store_cap']}, {run['total_seconds']:g} s in all"
    )
    return "\n".join([head, *(f"  {a:<{width}}  {b}" for a, b in rows)])


# ---- entry points ---------------------------------------------------------------------------


def run_soak(
    seconds: float = 600.0,
    *,
    seed: int = 1,
    rate: float = 300.0,
    cap: str = "512KiB",
    out: Path | None = None,
    workdir: Path | None = None,
    keep: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run one soak; return the report (also written to `out`, default results/soak.json).

    The run's files (logs, store, broker) are in `workdir` (a temporary folder if None,
    removed after a run that lost nothing unless `keep`).
    """
    p = Params(seconds, seed, rate, cap, out, workdir, keep, verbose=verbose)
    folder = workdir or Path(tempfile.mkdtemp(prefix="bench-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    soak = Soak(p, folder)
    try:
        report = soak.run()
    finally:
        soak.close()
    target = out or result_file("soak")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")
    if verbose:
        print(table(report))
        print(f"written: {target}")
    if report["ok"] and not keep and workdir is None:
        shutil.rmtree(folder, ignore_errors=True)
    elif verbose:
        print(f"run files kept in {folder}")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="fault phase (default 10)")
    ap.add_argument("--seconds", type=float, help="fault phase in seconds (overrides --minutes)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the fault schedule (1)")
    ap.add_argument("--rate", type=float, default=300.0, help="synthetic env events/s (300)")
    ap.add_argument("--cap", default="512KiB", help="the agent's [store] max_size (512KiB)")
    ap.add_argument("--out", type=Path, help="report file (default bench/results/soak.json)")
    ap.add_argument("--workdir", type=Path, help="keep the run's files here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    report = run_soak(
        seconds,
        seed=args.seed,
        rate=args.rate,
        cap=args.cap,
        out=args.out,
        workdir=args.workdir,
        keep=args.keep,
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
