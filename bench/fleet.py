"""Fleet: N gateways against one broker that restarts; how the reconnections spread.

N simulated school gateways, each with the agent's REAL `Store` (its own SQLite outbox) and
REAL `Publisher` (its own MQTT client id, retained status and last-will), built from an
`MqttSection` validated the way a site config is (reconnect 1 s .. 60 s by default), run in
a few worker processes (one asyncio loop each: a 2-core machine cannot run 300 agents as
300 processes). Each gateway commits telemetry events at `--rate` per second (a school's
idle rate: 1/s) through `Store.add`, its commit loop and its publisher, and publishes its
status every 30 s as the runtime does.

Timeline: all connect; `--settle` seconds of steady state (>= 10 s, so each publisher's
backoff starts again at its first step, as for a gateway connected for hours); then, for
every value of `--down`, the broker is stopped (SIGTERM: a clean restart, like a
maintenance restart or a crash the service manager restarts), left down that long, and
started again on the same port with the same persistence file; the bench waits until every
gateway has reconnected and delivered its backlog, and settles again before the next one.

What is recorded, and from where:
- each gateway's reconnect time: `stats.since` of its publisher when `stats.connects` moves
  past its value before the stop (polled every 20 ms in the worker), and every connection
  attempt and backoff delay it drew (a subclass of the real Publisher that only records
  `_connect` calls and `_backoff` results and calls the real ones);
- the CONNECTs the broker saw per second: mosquitto's own log (`New client connected`);
- the backlog: each store's `stats.backlog`, and per gateway the last seq committed when it
  reconnected (`target`); "drained" in the store = `stats.delivered >= target` (all
  events of the outage deleted after their PUBACK; one priority, so sent and acked in seq
  order), and "delivered" at the platform = the checker has every seq 1..target;
- nothing lost: a checker subscriber (QoS 1, persistent MQTT 5 session, so it misses
  nothing while it reconnects after the restart) records every seq of every gateway; at the
  end each gateway's seqs 1..last must all have arrived; duplicates are counted;
- mosquitto's CPU and RSS (/proc, every 0.1 s), the workers' CPU and their event-loop lag
  (a simulation whose loops lag would distort the timings it reports);
- the retained status count after the last restart (a fresh subscriber to `+/+/status`).

The broker: mosquitto on a free 127.0.0.1 port, `persistence true` (saved on exit only),
`max_connections` N + 64, no queue or in-flight limits, notice-level log. Stores live on
tmpfs (/dev/shm) by default: 300 gateways have 300 flash disks, not one shared disk, and
the bench is about the broker, not about fsync contention on the development machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import multiprocessing as mp
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import __version__
from agent.config import AgentSection, MqttSection, StoreSection
from agent.events import Kind, NewEvent, Origin
from agent.publisher import ConnectFailedError, Publisher
from agent.store import Store
from bench.peers import (
    HOST,
    ProcStat,
    free_port,
    mosquitto_binary,
    mosquitto_version,
    stop_process,
)
from bench.report import result_file, result_suffix, timestamp, write_json

PREFIX: str = AgentSection.model_fields["topic_prefix"].default
STATUS_INTERVAL: float = AgentSection.model_fields["status_interval"].default
PER_PROCESS = 75  # gateways per worker process by default
WATCH_EVERY = 0.02  # seconds between two looks at every publisher's stats (worker)
SNAP_EVERY = 0.25  # seconds between two snapshots a worker sends to the parent
TICK = 0.1  # the parent's sampling period (broker and worker CPU/RSS, pipes)
CONNECTED_RE = re.compile(r"^(\d+): New client connected from \S+ as (\S+) ")


@dataclass
class Params:
    """What one invocation simulates."""

    gateways: int
    processes: int
    rate: float
    down: list[float]
    settle: float
    reconnect_min: str
    reconnect_max: str
    reconnect_spread: str
    reconnect_probe: str
    protocol: str
    tls: bool
    store_dir: str
    store_max: str
    timeout: float
    quick: bool
    out: Path | None


# ---- the broker --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A throwaway CA, the broker's certificate, and one client certificate (EC P-256).

    Every gateway presents the same client certificate: the handshake costs the broker the
    same as with 300 different ones, and the agent builds a fresh SSLContext per connect,
    so every reconnection is a full handshake (no session resumption), as in the field.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, d: Path) -> Pki:
        d.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("openssl")
        if binary is None:
            raise RuntimeError("--tls needs the openssl command (apt-get install openssl)")

        def ssl(*args: str) -> None:
            subprocess.run([binary, *args], cwd=d, check=True, capture_output=True)

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        ssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=fleet-ca")  # fmt: skip
        for name, ext in (
            ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
            ("client", "extendedKeyUsage=clientAuth"),
        ):
            ssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=fleet-{name}")  # fmt: skip
            (d / f"{name}.ext").write_text(f"basicConstraints=CA:FALSE\n{ext}\n")
            ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                "-extfile", f"{name}.ext")  # fmt: skip
        return cls(
            d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key"
        )

    def mqtt_fields(self) -> dict[str, str]:
        """The [mqtt] keys of a site config that uses these files."""
        return {
            "ca_file": str(self.ca),
            "cert_file": str(self.client_cert),
            "key_file": str(self.client_key),
        }

    def client_tls(self, client: mqtt.Client) -> None:
        client.tls_set(
            ca_certs=str(self.ca), certfile=str(self.client_cert), keyfile=str(self.client_key)
        )


class Broker:
    """A mosquitto that is stopped and started again on the same port with the same files."""

    def __init__(self, folder: Path, max_connections: int, pki: Pki | None = None) -> None:
        self.binary = mosquitto_binary()
        self.pki = pki
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = free_port(self.host)
        self.max_connections = max_connections
        self.log = self.dir / "mosquitto.log"
        self.conf = self._write_conf()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.pki else 'mqtt'}://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def _write_conf(self) -> Path:
        lines = [
            "user root" if os.geteuid() == 0 else "",
            # A production broker keeps sessions and retained messages across a restart;
            # the checker's persistent session needs it. Saved on exit only (no autosave).
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 0",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "allow_anonymous true",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",  # "New client connected ..." lines: the CONNECTs it saw
            "connection_messages true",
            f"listener {self.port} {self.host}",
            f"max_connections {self.max_connections}",
        ]
        if self.pki is not None:  # as the district runs it: TLS with client certificates
            lines += [
                f"cafile {self.pki.ca}",
                f"certfile {self.pki.server_cert}",
                f"keyfile {self.pki.server_key}",
                "require_certificate true",
            ]
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(line for line in lines if line) + "\n")
        return conf

    def start(self, timeout: float = 15.0) -> tuple[float, float]:
        """Start it; return (when started, when it accepted a TCP connection)."""
        t0 = time.time()
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start: {self.log_tail()}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    return t0, time.time()
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen within {timeout:g}s")
            time.sleep(0.005)

    def stop(self) -> tuple[float, float]:
        """SIGTERM the broker we started (by PID); return (when signalled, when it exited)."""
        proc, self.proc = self.proc, None
        t0 = time.time()
        stop_process(proc, 30)
        return t0, time.time()

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"

    def connects(self) -> list[tuple[int, str]]:
        """(epoch second, client id) of every CONNECT the broker accepted, from its log."""
        out: list[tuple[int, str]] = []
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            m = CONNECTED_RE.match(line)
            if m:
                out.append((int(m.group(1)), m.group(2)))
        return out


# ---- the checker (the district platform's view) ------------------------------------------


class Checker:
    """QoS 1 subscriber to every gateway's topics, with a session that survives the restart."""

    def __init__(self, host: str, port: int, pki: Pki | None = None) -> None:
        self.host = host
        self.port = port
        self.client_id = f"fleet-checker-{os.getpid()}"
        self.lock = threading.Lock()
        self.arrivals: dict[str, dict[int, float]] = defaultdict(dict)
        self.prefix: dict[str, int] = defaultdict(int)  # all seqs 1..prefix arrived
        self.dups: Counter[str] = Counter()
        self.statuses: list[tuple[float, str, str, bool]] = []  # (t, gateway, state, retained)
        self.connects: list[tuple[float, bool]] = []  # (when, session present)
        self.bad: int = 0
        self._connected = threading.Event()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        # Back within 0.1 s of the broker: its arrival times are the platform's.
        c.reconnect_delay_set(0.05, 0.1)  # type: ignore[arg-type]
        if pki is not None:
            pki.client_tls(c)
        self.client = c

    def start(self, timeout: float = 10.0) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(
            self.host,
            self.port,
            keepalive=30,
            # Clean start off from the first CONNECT: mosquitto 2.0 saves a session over a
            # restart only for a client that connected so (the client id is new anyway).
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise RuntimeError("the checker did not connect to the broker")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        if rc.is_failure:
            return
        self.connects.append((time.time(), bool(f.session_present)))
        if not f.session_present:  # a restored session keeps its subscription and queue
            c.subscribe(f"{PREFIX}/#", qos=1)
        self._connected.set()

    def _on_disconnect(self, c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        self._connected.clear()

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        parts = msg.topic.split("/")
        if len(parts) < 5:
            return
        gw = f"{parts[2]}.{parts[3]}"
        try:
            doc = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            self.bad += 1
            return
        with self.lock:
            if parts[4] == "status":
                self.statuses.append((now, gw, str(doc.get("state")), bool(msg.retain)))
                return
            seq = int(doc["seq"])
            arr = self.arrivals[gw]
            if seq in arr:
                self.dups[gw] += 1
                return
            arr[seq] = now
            p = self.prefix[gw]
            while p + 1 in arr:
                p += 1
            self.prefix[gw] = p

    def has_all(self, targets: dict[str, int]) -> bool:
        """True when every gateway's seqs 1..target have arrived."""
        with self.lock:
            return all(self.prefix.get(gw, 0) >= t for gw, t in targets.items())


def retained_statuses(
    host: str, port: int, expect: int, pki: Pki | None, limit: float = 5.0
) -> dict[str, Any]:
    """What a platform that subscribes now gets: the retained status of every gateway."""
    got: dict[str, str] = {}
    done = threading.Event()

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        c.subscribe(f"{PREFIX}/+/+/status", qos=1)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got[msg.topic] = str(orjson.loads(msg.payload).get("state"))
            if len(got) >= expect:
                done.set()

    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"fleet-retained-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    c.on_connect = on_connect
    c.on_message = on_message
    if pki is not None:
        pki.client_tls(c)
    c.connect(host, port, keepalive=30)
    c.loop_start()
    done.wait(limit)
    time.sleep(0.3)  # anything beyond the expected count
    c.disconnect()
    c.loop_stop()
    return {"retained": len(got), "by_state": dict(Counter(got.values()))}


# ---- one gateway (in a worker process) -------------------------------------------------


class ObservedPublisher(Publisher):
    """The agent's Publisher; only records its connection attempts and backoff draws."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attempts: list[tuple[float, bool]] = []  # (when it tried, did it connect)
        self.delays: list[tuple[float, int, float]] = []  # (when, attempt, seconds drawn)

    async def _connect(self) -> None:
        t = time.time()
        try:
            await super()._connect()
        except ConnectFailedError:
            self.attempts.append((t, False))
            raise
        self.attempts.append((t, True))

    def _backoff(self, attempt: int) -> float:
        delay = super()._backoff(attempt)
        self.delays.append((time.time(), attempt, delay))
        return delay


class Gateway:
    """One school's gateway: its own origin, store file, publisher and event producer."""

    def __init__(self, index: int, mqtt_cfg: MqttSection, store_cfg: StoreSection) -> None:
        self.origin = Origin(PREFIX, f"sch-{index:03d}", "gw-main")
        self.name = f"{self.origin.school}.{self.origin.gateway}"
        self.started = time.time()
        self.store = Store(
            store_cfg.path,
            self.origin,
            max_size=store_cfg.max_size,
            commit_interval=store_cfg.commit_interval,
            synchronous=store_cfg.synchronous,
        )
        self.publisher = ObservedPublisher(mqtt_cfg, self.origin, self.store, status=self.status)
        self.location = {"building": "A", "floor": 1, "room": f"{100 + index % 40}"}
        self.was_connected = False
        self.transitions: list[tuple[float, bool]] = []
        self.rounds: list[dict[str, Any]] = []

    def status(self) -> dict[str, Any]:
        """The retained status body, shaped like the runtime's public_status."""
        s = self.store.stats
        return {
            "version": __version__,
            "uptime": round(time.time() - self.started, 1),
            "backlog": s.backlog,
            "evicted": dict(s.evicted),
            "lost_uncommitted": s.lost_uncommitted,
            "publish_rate": self.publisher.stats.rate,
        }

    async def produce(self, rate: float) -> None:
        """Telemetry at `rate`/s on a fixed schedule (a late loop catches up, none is skipped)."""
        period = 1.0 / rate
        start = time.monotonic() + random.uniform(0, period)
        k = 0
        while True:
            delay = start + k * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            k += 1
            self.store.add(
                NewEvent(
                    kind=Kind.TELEMETRY,
                    device="a101-env",
                    category="env",
                    profile="synthetic-env",
                    ts=time.time(),
                    body={
                        "values": {
                            "temperature": round(random.uniform(19.0, 26.0), 2),
                            "humidity": round(random.uniform(35.0, 60.0), 1),
                            "co2": random.randint(420, 1400),
                        },
                        "units": {"temperature": "°C", "humidity": "%RH", "co2": "ppm"},
                        "quality": "good",
                    },
                    location=self.location,
                )
            )

    async def status_loop(self) -> None:
        """The runtime re-publishes the retained status every status_interval (30 s)."""
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            self.publisher.publish_status()

    def watch(self, now: float) -> None:
        stats = self.publisher.stats
        if stats.connected != self.was_connected:
            self.was_connected = stats.connected
            self.transitions.append((stats.since if stats.connected else now, stats.connected))
        if not self.rounds:
            return
        r = self.rounds[-1]
        if r["target"] is None and stats.connected and stats.connects > r["base_connects"]:
            r["reconnect_t"] = stats.since
            r["target"] = self.store.last_seq
        if (
            r["target"] is not None
            and r["drained_t"] is None
            and self.store.stats.delivered >= r["target"]
        ):
            r["drained_t"] = now

    def snap(self) -> tuple[Any, ...]:
        r = self.rounds[-1] if self.rounds else {}
        return (
            self.name,
            self.publisher.stats.connected,
            self.publisher.stats.connects,
            self.store.stats.backlog,
            self.store.last_seq,
            r.get("target"),
            r.get("drained_t"),
        )

    def final(self) -> dict[str, Any]:
        s = self.store.stats
        p = self.publisher.stats
        return {
            "name": self.name,
            "last_seq": self.store.last_seq,
            "committed": s.committed,
            "delivered": s.delivered,
            "backlog": s.backlog,
            "evicted": sum(s.evicted.values()),
            "lost_uncommitted": s.lost_uncommitted,
            "parked": s.parked,
            "connects": p.connects,
            "published": p.published,
            "acked": p.acked,
            "refused": p.refused,
            "attempts": self.publisher.attempts,
            "delays": self.publisher.delays,
            "transitions": self.transitions,
            "rounds": self.rounds,
        }


class _LogCounter(logging.Handler):
    """Counts the agent's warnings and errors by message template (300 gateways log a lot)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        key = f"{record.levelname} {record.name}: " + re.sub(r"\d+", "N", text)[:200]
        self.counts[key] += 1
        if key not in self.examples:
            self.examples[key] = text[:300]


def worker_entry(
    conn: Connection, worker: int, first: int, count: int, cfg: dict[str, Any]
) -> None:
    """A worker process: `count` gateways on one asyncio loop, driven over `conn`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    counter = _LogCounter()
    logging.basicConfig(level=logging.WARNING, handlers=[counter], force=True)
    asyncio.run(_worker(conn, worker, first, count, cfg=cfg, counter=counter))


async def _worker(
    conn: Connection,
    worker: int,
    first: int,
    count: int,
    *,
    cfg: dict[str, Any],
    counter: _LogCounter,
) -> None:
    loop = asyncio.get_running_loop()
    # Each real gateway has the default executor to itself (connect() runs there); here
    # `count` gateways share one, so give it one thread per gateway, not min(32, cpus + 4).
    loop.set_default_executor(ThreadPoolExecutor(max_workers=max(4, count)))
    mqtt_cfg = MqttSection.model_validate(cfg["mqtt"])  # as from a site config's [mqtt]
    folder = Path(cfg["work"])
    gateways = []
    for i in range(first, first + count):
        store_cfg = StoreSection.model_validate(
            {"path": str(folder / f"gw-{i:03d}" / "outbox.db"), "max_size": cfg["store_max"]}
        )
        gateways.append(Gateway(i, mqtt_cfg, store_cfg))
    for g in gateways:
        await g.store.open()

    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def readable() -> None:
        while conn.poll():
            try:
                inbox.put_nowait(conn.recv())
            except EOFError:
                loop.remove_reader(conn.fileno())
                inbox.put_nowait(("stop",))
                return

    loop.add_reader(conn.fileno(), readable)
    core: list[asyncio.Task[Any]] = []
    producers: list[asyncio.Task[Any]] = []
    for g in gateways:
        core.append(asyncio.create_task(g.store.run()))
        core.append(asyncio.create_task(g.publisher.run()))
        core.append(asyncio.create_task(g.status_loop()))
        producers.append(asyncio.create_task(g.produce(cfg["rate"])))
    lags: list[tuple[float, float]] = []

    async def watch() -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY)
            now = time.time()
            for g in gateways:
                g.watch(now)

    async def lag() -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            lags.append((time.time(), time.monotonic() - t - 0.05))

    async def snaps() -> None:
        while True:
            conn.send(("snap", worker, time.time(), [g.snap() for g in gateways]))
            await asyncio.sleep(SNAP_EVERY)

    side = [asyncio.create_task(f()) for f in (watch, lag, snaps)]
    conn.send(("ready", worker, os.getpid()))
    while True:
        msg = await inbox.get()
        if msg[0] == "round":
            for g in gateways:
                g.rounds.append(
                    {
                        "round": msg[1],
                        "base_connects": g.publisher.stats.connects,
                        "reconnect_t": None,
                        "target": None,
                        "drained_t": None,
                    }
                )
            conn.send(("round-ack", worker, msg[1]))
        elif msg[0] == "finish":
            for t in producers:
                t.cancel()
            await asyncio.sleep(0.2)
            deadline = time.monotonic() + 60
            # (not stats.inflight: the publisher updates it on publish, not on PUBACK)
            while time.monotonic() < deadline and any(g.store.stats.backlog for g in gateways):
                await asyncio.sleep(0.05)
            conn.send(
                (
                    "final",
                    worker,
                    {
                        "gateways": [g.final() for g in gateways],
                        "lags": lags,
                        "log": [
                            {"count": n, "template": k, "example": counter.examples[k]}
                            for k, n in counter.counts.most_common()
                        ],
                    },
                )
            )
        elif msg[0] == "stop":
            break
    await asyncio.gather(*(g.publisher.stop() for g in gateways), return_exceptions=True)
    for t in [*side, *core, *producers]:
        t.cancel()
    await asyncio.gather(*side, *core, *producers, return_exceptions=True)
    for g in gateways:
        with contextlib.suppress(Exception):
            await g.store.close()
    with contextlib.suppress(OSError):
        conn.send(("stopped", worker))


# ---- the parent: orchestration and sampling ----------------------------------------------


class Fleet:
    """The worker processes, their pipes and what they last reported."""

    def __init__(self, p: Params, mqtt_keys: dict[str, str], work: Path) -> None:
        ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        self.pids: dict[int, int] = {}
        self.snaps: dict[int, tuple[float, list[tuple[Any, ...]]]] = {}
        self.got: defaultdict[str, list[tuple[Any, ...]]] = defaultdict(list)  # by kind
        per = math.ceil(p.gateways / p.processes)
        cfg = {
            "mqtt": mqtt_keys,
            "rate": p.rate,
            "store_max": p.store_max,
            "work": str(work),
        }
        first = 1
        for w in range(p.processes):
            count = min(per, p.gateways - first + 1)
            if count <= 0:
                break
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_entry,
                args=(child, w, first, count, cfg),
                name=f"fleet-worker-{w}",
                daemon=True,
            )
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
            first += count

    def pump(self) -> None:
        for conn in self.conns:
            while True:
                try:
                    if not conn.poll():
                        break
                    msg = conn.recv()
                except (EOFError, OSError):
                    break
                if msg[0] == "snap":
                    self.snaps[msg[1]] = (msg[2], msg[3])
                else:
                    if msg[0] == "ready":
                        self.pids[msg[1]] = msg[2]
                    self.got[msg[0]].append(msg)

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.exitcode not in (None, 0):
                raise RuntimeError(f"{proc.name} died (exit code {proc.exitcode})")

    def send(self, *msg: Any) -> None:
        for conn in self.conns:
            conn.send(msg)

    def rows(self) -> list[tuple[Any, ...]]:
        return [row for _, rows in self.snaps.values() for row in rows]

    def all_sent(self, kind: str) -> bool:
        """True once every worker has sent a message of this kind."""
        return len({m[1] for m in self.got[kind]}) == len(self.procs)

    def close(self) -> None:
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()  # by its own handle (PID), never by name
                proc.join(5)


class Monitor:
    """Samples the broker's and the workers' CPU/RSS every TICK while it waits for things."""

    def __init__(self, broker: Broker, fleet: Fleet) -> None:
        self.broker = broker
        self.fleet = fleet
        self.samples: list[dict[str, Any]] = []
        self.backlog: list[tuple[float, int, int]] = []  # (t, total backlog, connected)
        self.me = ProcStat(os.getpid())

    def tick(self) -> None:
        self.fleet.pump()
        now = time.time()
        s: dict[str, Any] = {"t": now, "pid": None, "cpu": None, "rss": None}
        pid = self.broker.pid
        if pid is not None:
            with contextlib.suppress(OSError, ValueError):
                b = ProcStat(pid)
                s.update(pid=pid, cpu=b.cpu_seconds(), rss=b.rss_mib())
        workers = 0.0
        for wpid in self.fleet.pids.values():
            with contextlib.suppress(OSError, ValueError):
                workers += ProcStat(wpid).cpu_seconds()
        s["workers"] = workers
        s["parent"] = self.me.cpu_seconds()
        self.samples.append(s)
        rows = self.fleet.rows()
        if rows:
            self.backlog.append((now, sum(r[3] for r in rows), sum(1 for r in rows if r[1])))

    def wait(self, done: Any, timeout: float, what: str) -> float:
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            self.fleet.check_alive()
            if done():
                return time.time()
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(TICK)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.tick()
            self.fleet.check_alive()
            time.sleep(min(TICK, max(0.0, end - time.monotonic())))


def raise_nofile(need: int) -> tuple[int, int]:
    """Raise this process's open-file limit (inherited by mosquitto and the workers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(hard, max(soft, need))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        print(
            f"fleet: warning: open-file limit {soft} < {need} needed for "
            "the broker's connections (raise the hard limit: ulimit -Hn)",
            file=sys.stderr,
        )
    return soft, hard


def mqtt_keys(p: Params, url: str, pki: Pki | None) -> dict[str, str]:
    """The [mqtt] section every gateway's config would have."""
    keys = {
        "url": url,
        "protocol": p.protocol,
        "reconnect_min": p.reconnect_min,
        "reconnect_max": p.reconnect_max,
        "reconnect_spread": p.reconnect_spread,
        "reconnect_probe": p.reconnect_probe,
    }
    return {**keys, **(pki.mqtt_fields() if pki is not None else {})}


def run(p: Params) -> dict[str, Any]:
    """Run the whole timeline; return the raw material for the report."""
    limits = raise_nofile(max(4096, p.gateways * 4 + 256))
    store_root = Path(p.store_dir)
    store_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=store_root))
    pki = Pki.make(work / "pki") if p.tls else None
    broker = Broker(work / "broker", max_connections=p.gateways + 64, pki=pki)
    fleet: Fleet | None = None
    checker: Checker | None = None
    try:
        broker.start()
        checker = Checker(broker.host, broker.port, pki)
        checker.start()
        idle = ProcStat(broker.pid or 0)
        rss_idle = idle.rss_mib()
        print(
            f"fleet: broker {broker.url} (mosquitto pid {broker.pid}, max_connections "
            f"{broker.max_connections}, open files {limits[0]}); starting {p.gateways} "
            f"gateways in {p.processes} processes, {p.rate:g} event/s each",
            flush=True,
        )
        t_launch = time.time()
        fleet = Fleet(p, mqtt_keys(p, broker.url, pki), work)
        mon = Monitor(broker, fleet)
        n_workers = len(fleet.procs)
        mon.wait(lambda: len(fleet.pids) == n_workers, 120, "the workers to open their stores")
        t_all = mon.wait(
            lambda: len(fleet.rows()) == p.gateways and all(r[1] for r in fleet.rows()),
            120,
            "every gateway to connect",
        )
        print(f"  all {p.gateways} connected {t_all - t_launch:.1f}s after launch", flush=True)
        mon.sleep(p.settle)
        rss_connected = mon.samples[-1]["rss"]
        rounds: list[dict[str, Any]] = []
        for k, down in enumerate(p.down, start=1):
            fleet.got.pop("round-ack", None)
            fleet.send("round", k)
            mon.wait(lambda: fleet.all_sent("round-ack"), 30, "round acks")
            mon.sleep(1.0)  # a clean baseline sample before the stop
            t_stop, t_exit = broker.stop()
            mon.sleep(max(0.0, t_stop + down - time.time()))
            t_start, t_listen = broker.start()

            def drained() -> bool:
                rows = fleet.rows()
                if any(r[5] is None or r[6] is None for r in rows):
                    return False
                return checker is not None and checker.has_all({r[0]: r[5] for r in rows})

            t_done = mon.wait(drained, p.timeout, f"round {k}: every backlog delivered")
            print(
                f"  round {k}: broker down {t_listen - t_stop:.1f}s; all reconnected and "
                f"drained {t_done - t_listen:.1f}s after it was back",
                flush=True,
            )
            mon.sleep(3.0)
            rounds.append(
                {
                    "round": k,
                    "down_asked": down,
                    "t_stop": t_stop,
                    "t_exit": t_exit,
                    "t_start": t_start,
                    "t_listen": t_listen,
                    "t_done": t_done,
                }
            )
            if k < len(p.down):
                mon.sleep(p.settle)

        retained = retained_statuses(broker.host, broker.port, p.gateways, pki)

        fleet.send("finish")
        mon.wait(lambda: fleet.all_sent("final"), 120, "the workers' final reports")
        finals = [m[2] for m in fleet.got["final"]]

        gws = [g for f in finals for g in f["gateways"]]
        last = {g["name"]: g["last_seq"] for g in gws}
        complete = True
        try:
            mon.wait(lambda: checker.has_all(last), 30, "the checker to receive every seq")
        except RuntimeError:
            complete = False  # reported as lost below

        fleet.send("stop")
        with contextlib.suppress(RuntimeError):
            mon.wait(lambda: fleet.all_sent("stopped"), 30, "the workers to stop")

        return {
            "broker_connects": broker.connects(),
            "checker": checker,
            "monitor": mon,
            "finals": finals,
            "gateways": gws,
            "rounds": rounds,
            "retained": retained,
            "complete": complete,
            "t_launch": t_launch,
            "t_all": t_all,
            "rss_idle": rss_idle,
            "rss_connected": rss_connected,
            "limits": limits,
        }
    finally:
        if fleet is not None:
            with contextlib.suppress(Exception):
                fleet.send("stop")
            fleet.close()
        if checker is not None:
            checker.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


# ---- analysis ----------------------------------------------------------------------------


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def max_in_window(times: list[float], width: float = 1.0) -> tuple[int, float | None]:
    """The most events in any `width`-second window (sliding), and where it starts."""
    ts = sorted(times)
    best, at = 0, None
    for i, t in enumerate(ts):
        n = bisect_left(ts, t + width) - i
        if n > best:
            best, at = n, t
    return best, at


def per_second(times: list[float], t0: float, t1: float) -> list[int]:
    """Counts in consecutive 1-second buckets from t0 (to t1)."""
    n = max(1, math.ceil(t1 - t0))
    out = [0] * n
    for t in times:
        i = math.floor(t - t0)
        if 0 <= i < n:
            out[i] += 1
    return out


def cpu_window(samples: list[dict[str, Any]], key: str, t0: float, t1: float) -> float | None:
    """Mean CPU % (of one core) of `key` between t0 and t1 (the broker: one process)."""
    inside = [s for s in samples if t0 <= s["t"] <= t1 and s.get(key) is not None]
    if key == "cpu":
        if not inside:
            return None
        pid = inside[-1]["pid"]
        inside = [s for s in inside if s["pid"] == pid]
    if len(inside) < 2 or inside[-1]["t"] - inside[0]["t"] < 0.05:
        return None
    a, b = inside[0], inside[-1]
    return 100 * (b[key] - a[key]) / (b["t"] - a["t"])


def cpu_peak_second(samples: list[dict[str, Any]], key: str, t0: float, t1: float) -> float | None:
    """The busiest 1-second stretch (CPU % of one core) between t0 and t1."""
    best: float | None = None
    t = t0
    while t + 1.0 <= t1 + 1e-6:
        v = cpu_window(samples, key, t, t + 1.0)
        if v is not None and (best is None or v > best):
            best = v
        t += 0.5
    return best


def analyse_round(r: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    k = r["round"]
    t_stop, t_listen, t_done = r["t_stop"], r["t_listen"], r["t_done"]
    checker: Checker = raw["checker"]
    mon: Monitor = raw["monitor"]
    reconnects: list[float] = []
    drained: list[float] = []
    delivered: list[float] = []
    failed_attempts: list[float] = []
    tries: Counter[int] = Counter()
    gateway_outage: list[float] = []
    backlog_events = 0
    drain_rates: list[float] = []
    for g in raw["gateways"]:
        rr = next(x for x in g["rounds"] if x["round"] == k)
        t_rec = rr["reconnect_t"]
        reconnects.append(t_rec - t_listen)
        gateway_outage.append(t_rec - t_stop)
        drained.append(rr["drained_t"] - t_listen)
        arr = checker.arrivals[g["name"]]
        got = [arr[s] for s in range(1, rr["target"] + 1) if s in arr]
        delivered.append(max(got, default=t_listen) - t_listen)
        mine = sum(1 for t in got if t >= t_stop)
        backlog_events += mine
        took = max(got, default=t_rec) - t_rec
        if mine >= 20 and took > 0:  # events/s one gateway drained at, after it reconnected
            drain_rates.append(mine / took)
        fails = [t for t, ok in g["attempts"] if not ok and t_stop <= t <= t_rec]
        failed_attempts += fails
        tries[len(fails) + 1] += 1
    rec_abs = [x + t_listen for x in reconnects]
    peak, peak_at = max_in_window(rec_abs)
    names = {g["name"] for g in raw["gateways"]}
    log = [sec for sec, cid in raw["broker_connects"] if cid in names]
    log_round = Counter(sec for sec in log if t_stop <= sec <= t_done + 1)
    storm_end = t_listen + max(*reconnects, *delivered)
    samples = mon.samples
    before = [s for s in samples if s["t"] < t_stop and s["rss"] is not None]
    storm = [s for s in samples if t_listen <= s["t"] <= storm_end + 1 and s["rss"] is not None]
    lags = [lag for f in raw["finals"] for t, lag in f["lags"] if t_listen <= t <= storm_end + 1]
    steady_lags = [lag for f in raw["finals"] for t, lag in f["lags"] if t_stop - 10 <= t < t_stop]
    tele = [t for arr in checker.arrivals.values() for t in arr.values()]
    tele_storm = [t for t in tele if t_listen <= t <= storm_end + 1]
    msgs_peak, _ = max_in_window(tele_storm)
    steady_msgs = sum(1 for t in tele if t_stop - 10 <= t < t_stop) / 10
    backlog_peak = max((b for t, b, _ in mon.backlog if t_stop <= t <= t_done), default=0)
    offline = [
        (t, gw)
        for t, gw, state, _ in checker.statuses
        if t_stop <= t <= t_done and state == "offline"
    ]
    online = {
        gw for t, gw, state, _ in checker.statuses if t_listen <= t <= t_done and state == "online"
    }
    span0, span1 = t_stop - 5, t_done + 3
    return {
        "round": k,
        "broker_down_s": _r(t_listen - t_stop),
        "broker_exit_s": _r(r["t_exit"] - t_stop, 3),
        "broker_start_to_listen_s": _r(t_listen - r["t_start"], 3),
        "gateways": len(reconnects),
        "reconnect_after_back_s": {
            "min": _r(min(reconnects)),
            "median": _r(statistics.median(reconnects)),
            "p90": _r(_pct(reconnects, 0.9)),
            "max": _r(max(reconnects)),
        },
        "outage_seen_by_gateways_s": {
            "median": _r(statistics.median(gateway_outage)),
            "max": _r(max(gateway_outage)),
        },
        "reconnects_peak_1s": peak,
        "reconnects_peak_1s_at_s": _r(None if peak_at is None else peak_at - t_listen),
        "broker_connects_peak_per_s": max(log_round.values(), default=0),
        "broker_connects_total": sum(log_round.values()),
        "connect_tries_histogram": {str(n): c for n, c in sorted(tries.items())},
        "refused_attempts_while_down": len(failed_attempts),
        "refused_attempts_peak_1s": max_in_window(failed_attempts)[0],
        "store_drained_after_back_s": _r(max(drained)),
        "platform_has_backlog_after_back_s": _r(max(delivered)),
        "backlog_events_delivered": backlog_events,
        "backlog_peak_events": backlog_peak,
        "drain_rate_per_gateway": {
            "gateways": len(drain_rates),
            "median": _r(statistics.median(drain_rates), 0) if drain_rates else None,
            "min": _r(min(drain_rates), 0) if drain_rates else None,
        },
        "checker_msgs_peak_1s": msgs_peak,
        "checker_msgs_steady_per_s": _r(steady_msgs, 1),
        # mosquitto publishes every connected client's will when it shuts down: the platform
        # sees each gateway go "offline", then "online" again when it has reconnected.
        "status_offline_msgs": len(offline),
        "status_offline_gateways": len({gw for _, gw in offline}),
        "status_offline_before_back": sum(1 for t, _ in offline if t < t_listen),
        "status_online_again_gateways": len(online),
        "mosquitto": {
            "cpu_steady_pct": _r(cpu_window(samples, "cpu", t_stop - 10, t_stop), 1),
            "cpu_storm_mean_pct": _r(cpu_window(samples, "cpu", t_listen, storm_end + 1), 1),
            "cpu_storm_peak_1s_pct": _r(
                cpu_peak_second(samples, "cpu", t_listen, storm_end + 1), 1
            ),
            "rss_before_stop_mib": _r(before[-1]["rss"] if before else None, 1),
            "rss_after_start_mib": _r(storm[0]["rss"] if storm else None, 1),
            "rss_storm_peak_mib": _r(max((s["rss"] for s in storm), default=None), 1),
        },
        "workers": {
            "cpu_steady_pct": _r(cpu_window(samples, "workers", t_stop - 10, t_stop), 1),
            "cpu_storm_peak_1s_pct": _r(
                cpu_peak_second(samples, "workers", t_listen, storm_end + 1), 1
            ),
            "loop_lag_steady_max_ms": _r(1000 * max(steady_lags, default=0.0), 1),
            "loop_lag_storm_max_ms": _r(1000 * max(lags, default=0.0), 1),
            "loop_lag_storm_p99_ms": _r(1000 * (_pct(lags, 0.99) or 0.0), 1),
        },
        "timeline": {
            "from_s": _r(span0 - t_listen),
            "reconnects_per_s_from_back": per_second(rec_abs, t_listen, storm_end + 1),
            "broker_connects_per_epoch_s": sorted(log_round.items()),
            "refused_attempts_per_s_from_stop": per_second(failed_attempts, t_stop, t_listen),
            "checker_msgs_per_s": per_second(
                [t for t in tele if span0 <= t <= span1], span0, span1
            ),
            "backlog": [[_r(t - t_listen), b, c] for t, b, c in mon.backlog if span0 <= t <= span1][
                ::4
            ],
        },
        "reconnect_after_back_s_each": sorted(_r(x) or 0.0 for x in reconnects),
    }


def analyse(p: Params, raw: dict[str, Any]) -> dict[str, Any]:
    checker: Checker = raw["checker"]
    gws = raw["gateways"]
    lost_by_gw: dict[str, int] = {}
    for g in gws:
        arr = checker.arrivals.get(g["name"], {})
        missing = sum(1 for s in range(1, g["last_seq"] + 1) if s not in arr)
        if missing:
            lost_by_gw[g["name"]] = missing
    names = {g["name"] for g in gws}
    cold = [sec for sec, cid in raw["broker_connects"] if cid in names and sec <= raw["t_all"]]
    cold_count = Counter(cold)
    first_up = [next(t for t, c in g["transitions"] if c) for g in gws if g["transitions"]]
    log_lines: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for f in raw["finals"]:
        for item in f["log"]:
            log_lines[item["template"]] += item["count"]
            examples.setdefault(item["template"], item["example"])
    events = sum(g["last_seq"] for g in gws)
    return {
        "cold_start": {
            "all_connected_after_launch_s": _r(raw["t_all"] - raw["t_launch"]),
            "first_connect_span_s": _r(max(first_up) - min(first_up)) if first_up else None,
            "broker_connects_peak_per_s": max(cold_count.values(), default=0),
            "mosquitto_rss_idle_mib": _r(raw["rss_idle"], 1),
            "mosquitto_rss_connected_mib": _r(raw["rss_connected"], 1),
            "mosquitto_kib_per_connected_gateway": _r(
                1024 * (raw["rss_connected"] - raw["rss_idle"]) / p.gateways, 1
            )
            if raw["rss_connected"] is not None
            else None,
        },
        "rounds": [analyse_round(r, raw) for r in raw["rounds"]],
        "totals": {
            "gateways": len(gws),
            "events_committed": events,
            "events_received_distinct": sum(len(a) for a in checker.arrivals.values()),
            "lost": sum(lost_by_gw.values()),
            "gateways_with_loss": len(lost_by_gw),
            "lost_by_gateway": dict(sorted(lost_by_gw.items())[:20]),
            "duplicates": sum(checker.dups.values()),
            "gateways_with_duplicates": sum(1 for n in checker.dups.values() if n),
            "evicted": sum(g["evicted"] for g in gws),
            "lost_uncommitted": sum(g["lost_uncommitted"] for g in gws),
            "refused": sum(g["refused"] for g in gws),
            "backlog_end": sum(g["backlog"] for g in gws),
            "connects": sum(g["connects"] for g in gws),
            "checker_reconnects": len(checker.connects) - 1,
            "checker_session_restored": all(sp for _, sp in checker.connects[1:]),
            "checker_complete": raw["complete"],
            "checker_bad_payloads": checker.bad,
        },
        "retained_status_after_restarts": raw["retained"],
        "agent_log": [
            {"count": n, "template": k, "example": examples[k]} for k, n in log_lines.most_common()
        ],
    }


# ---- report ------------------------------------------------------------------------------


def _num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{x:,}" if isinstance(x, int) else str(x)


def table(rows: list[tuple[str, Any]]) -> str:
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"  {a:<{w}}  {_num(b)}" for a, b in rows)


def report(p: Params, res: dict[str, Any]) -> str:
    c = res["cold_start"]
    out = [
        f"cold start: all connected {_num(c['all_connected_after_launch_s'])} s after launch; "
        f"broker CONNECTs peak {c['broker_connects_peak_per_s']}/s; mosquitto RSS "
        f"{_num(c['mosquitto_rss_idle_mib'])} MiB idle -> "
        f"{_num(c['mosquitto_rss_connected_mib'])} MiB with {p.gateways} gateways "
        f"(~{_num(c['mosquitto_kib_per_connected_gateway'])} KiB each)",
    ]
    for r in res["rounds"]:
        rc = r["reconnect_after_back_s"]
        m = r["mosquitto"]
        w = r["workers"]
        rows: list[tuple[str, Any]] = [
            ("broker down (stop -> listening again) [s]", r["broker_down_s"]),
            ("gateways reconnected", f"{r['gateways']}/{p.gateways}"),
            (
                "reconnect after broker back: min / median / p90 / max [s]",
                f"{_num(rc['min'])} / {_num(rc['median'])} / {_num(rc['p90'])} / {_num(rc['max'])}",
            ),
            (
                "outage seen by gateways: median / max [s]",
                f"{_num(r['outage_seen_by_gateways_s']['median'])} / "
                f"{_num(r['outage_seen_by_gateways_s']['max'])}",
            ),
            (
                "most reconnections in any 1 s (gateways)",
                f"{r['reconnects_peak_1s']} (at +{_num(r['reconnects_peak_1s_at_s'])} s)",
            ),
            ("most CONNECTs in one second (broker log)", r["broker_connects_peak_per_s"]),
            ("connect tries per gateway (tries: gateways)", r["connect_tries_histogram"]),
            (
                "refused attempts while down: total / peak per s",
                f"{r['refused_attempts_while_down']} / {r['refused_attempts_peak_1s']}",
            ),
            (
                "stores drained (outage events acked) after back [s]",
                r["store_drained_after_back_s"],
            ),
            (
                "platform has every backlog event after back [s]",
                r["platform_has_backlog_after_back_s"],
            ),
            (
                "backlog: events delivered / peak stored",
                f"{r['backlog_events_delivered']:,} / {r['backlog_peak_events']:,}",
            ),
            (
                "drain rate of one gateway: median / min [events/s]",
                f"{_num(r['drain_rate_per_gateway']['median'])} / "
                f"{_num(r['drain_rate_per_gateway']['min'])}",
            ),
            (
                "msgs/s at the checker: steady / peak 1 s",
                f"{_num(r['checker_msgs_steady_per_s'])} / {r['checker_msgs_peak_1s']}",
            ),
            (
                "mosquitto CPU %: steady / storm mean / storm peak 1 s",
                f"{_num(m['cpu_steady_pct'])} / {_num(m['cpu_storm_mean_pct'])} / "
                f"{_num(m['cpu_storm_peak_1s_pct'])}",
            ),
            (
                "mosquitto RSS MiB: before stop / after start / storm peak",
                f"{_num(m['rss_before_stop_mib'])} / {_num(m['rss_after_start_mib'])} / "
                f"{_num(m['rss_storm_peak_mib'])}",
            ),
            (
                "workers CPU %: steady / storm peak 1 s",
                f"{_num(w['cpu_steady_pct'])} / {_num(w['cpu_storm_peak_1s_pct'])}",
            ),
            (
                "worker loop lag max ms: steady / storm",
                f"{_num(w['loop_lag_steady_max_ms'])} / {_num(w['loop_lag_storm_max_ms'])}",
            ),
            (
                "status: gateways seen offline (msgs) / online again",
                f"{r['status_offline_gateways']} ({r['status_offline_msgs']}) / "
                f"{r['status_online_again_gateways']}",
            ),
        ]
        per_s = r["timeline"]["reconnects_per_s_from_back"]
        out += [
            "",
            f"round {r['round']}: broker stopped for {_num(r['broker_down_s'])} s",
            table(rows),
            "  reconnections per second after the broker was back: "
            + " ".join(f"{i}:{n}" for i, n in enumerate(per_s) if n),
        ]
    t = res["totals"]
    rs = res["retained_status_after_restarts"]
    out += [
        "",
        "totals",
        table(
            [
                (
                    "events committed / received (distinct)",
                    f"{t['events_committed']:,} / {t['events_received_distinct']:,}",
                ),
                (
                    "lost (seqs 1..last not received)",
                    f"{t['lost']} ({t['gateways_with_loss']} gateways)",
                ),
                ("duplicates", f"{t['duplicates']} ({t['gateways_with_duplicates']} gateways)"),
                (
                    "evicted / lost uncommitted / refused",
                    f"{t['evicted']} / {t['lost_uncommitted']} / {t['refused']}",
                ),
                ("retained statuses after the restarts", f"{rs['retained']} {rs['by_state']}"),
            ]
        ),
    ]
    if res["agent_log"]:
        out += ["", "agent warnings/errors (all gateways):"]
        out += [f"  {x['count']:>6}  {x['example']}" for x in res["agent_log"][:8]]
    return "\n".join(out)


def environment(p: Params, raw: dict[str, Any]) -> dict[str, Any]:
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    return {
        "python": platform.python_version(),
        "paho_mqtt": metadata.version("paho-mqtt"),
        "aiosqlite": metadata.version("aiosqlite"),
        "agent": __version__,
        "mosquitto": mosquitto_version(),
        "cpus": os.cpu_count(),
        "mem_mib": mem,
        "machine": platform.machine(),
        "kernel": platform.release(),
        "open_files_limit": list(raw["limits"]),
        "store_dir": p.store_dir,
    }


# ---- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Params:
    ap = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description="N gateways (real Store + Publisher) against one broker that restarts: "
        "how reconnections spread, how long the backlogs take, and that nothing is lost.",
    )
    ap.add_argument("--gateways", type=int, default=300, help="simulated gateways; 300")
    ap.add_argument(
        "--processes",
        type=int,
        default=0,
        help=f"worker processes (one asyncio loop each); default N/{PER_PROCESS} rounded up",
    )
    ap.add_argument("--rate", type=float, default=1.0, help="events/s per gateway; 1")
    ap.add_argument(
        "--down",
        type=float,
        nargs="+",
        default=[10.0],
        help="seconds the broker stays down; several values = several restarts; 10",
    )
    ap.add_argument(
        "--settle", type=float, default=15.0, help="steady seconds before each restart; 15"
    )
    ap.add_argument("--reconnect-min", default="1s", help="mqtt.reconnect_min; 1s (default)")
    ap.add_argument("--reconnect-max", default="60s", help="mqtt.reconnect_max; 60s (default)")
    ap.add_argument("--reconnect-spread", default="1s", help="mqtt.reconnect_spread; 1s (default)")
    ap.add_argument(
        "--reconnect-probe", default="1s", help="mqtt.reconnect_probe; 1s (default), 0s: off"
    )
    ap.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version; 5")
    ap.add_argument(
        "--tls",
        action="store_true",
        help="mqtts:// with client certificates (a throwaway CA), as the district runs it",
    )
    ap.add_argument(
        "--store-dir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir(),
        help="where the stores (and the broker's files) live; /dev/shm (tmpfs)",
    )
    ap.add_argument("--store-max", default="32MiB", help="store.max_size of each gateway; 32MiB")
    ap.add_argument(
        "--timeout", type=float, default=300.0, help="limit per restart to reconnect+drain; 300"
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 20 gateways, 2 processes, down 3 s"
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON (default results/fleet.json)")
    a = ap.parse_args(argv)
    if a.quick:
        a.gateways, a.processes, a.down, a.settle, a.timeout = 20, 2, [3.0], 3.0, 90.0
    if a.gateways < 1 or a.rate <= 0 or any(d < 0 for d in a.down):
        ap.error("--gateways >= 1, --rate > 0 and --down >= 0 please")
    processes = a.processes or math.ceil(a.gateways / PER_PROCESS)
    return Params(
        gateways=a.gateways,
        processes=max(1, min(processes, a.gateways)),
        rate=a.rate,
        down=list(a.down),
        settle=a.settle,
        reconnect_min=a.reconnect_min,
        reconnect_max=a.reconnect_max,
        reconnect_spread=a.reconnect_spread,
        reconnect_probe=a.reconnect_probe,
        protocol=a.protocol,
        tls=a.tls,
        store_dir=a.store_dir,
        store_max=a.store_max,
        timeout=a.timeout,
        quick=a.quick,
        out=a.out,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the simulation, print the table, write results/fleet.json."""
    p = parse_args(argv)
    out = p.out or result_file("fleet", result_suffix(p.quick))
    started = timestamp()
    mqtt_cfg = MqttSection.model_validate(
        {
            "url": "mqtt://127.0.0.1",
            "reconnect_min": p.reconnect_min,
            "reconnect_max": p.reconnect_max,
            "reconnect_spread": p.reconnect_spread,
            "reconnect_probe": p.reconnect_probe,
        }
    )
    raw = run(p)
    res = analyse(p, raw)
    print()
    print(report(p, res))
    doc = {
        "benchmark": "fleet",
        "started": started,
        "params": {
            **asdict(p),
            "out": str(out),
            "reconnect_min_s": mqtt_cfg.reconnect_min,
            "reconnect_max_s": mqtt_cfg.reconnect_max,
            "reconnect_spread_s": mqtt_cfg.reconnect_spread,
            "reconnect_probe_s": mqtt_cfg.reconnect_probe,
            "keepalive_s": mqtt_cfg.keepalive,
            "window": mqtt_cfg.window,
        },
        "environment": environment(p, raw),
        **res,
    }
    write_json(out, doc, indent=1)
    print(f"\nwritten: {out}")
    t = res["totals"]
    return 0 if t["lost"] == 0 and t["checker_complete"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
