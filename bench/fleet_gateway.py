"""The fleet's gateways: each a school's REAL agent Store and Publisher, many per worker process.

A worker process (`worker_entry`, started by `Fleet` with multiprocessing's spawn) runs
`count` gateways on one asyncio loop: each its own origin, SQLite store file and
`ObservedPublisher` (the agent's Publisher, recording only its connection attempts and
backoff draws), producing telemetry at the asked rate and its retained status every
status_interval. Over a pipe it sends the parent a snapshot of every gateway every
SNAP_EVERY seconds and, when asked, a round's baseline, its final figures and its stop.
`Fleet` is the parent's side: the worker processes, their pipes and what they last sent.
Workers are stopped through their pipe, or by their own process handle: never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing as mp
import os
import random
import re
import signal
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import AgentSection, MqttSection, StoreSection
from agent.contract import Kind, NewEvent, Origin
from agent.errors import ConnectFailedError
from agent.publisher import Publisher
from agent.store import Store
from tests.harness.waiting import TimedOutError, eventually

PREFIX: str = AgentSection.model_fields["topic_prefix"].default
STATUS_INTERVAL: float = AgentSection.model_fields["status_interval"].default
WATCH_EVERY = 0.02  # seconds between two looks at every publisher's stats (worker)
SNAP_EVERY = 0.25  # seconds between two snapshots a worker sends to the parent


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
            await asyncio.gather(*producers, return_exceptions=True)
            # Drained, or 60 s (not stats.inflight: the publisher updates it on publish, not on
            # PUBACK); a gateway that never drains is what the report shows.
            with contextlib.suppress(TimedOutError):
                await eventually(
                    lambda: not any(g.store.stats.backlog for g in gateways), 60, "drained"
                )
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


class Fleet:
    """The worker processes, their pipes and what they last reported."""

    def __init__(
        self,
        gateways: int,
        processes: int,
        *,
        mqtt_keys: dict[str, str],
        rate: float,
        store_max: str,
        work: Path,
    ) -> None:
        ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        self.pids: dict[int, int] = {}
        self.snaps: dict[int, tuple[float, list[tuple[Any, ...]]]] = {}
        self.got: defaultdict[str, list[tuple[Any, ...]]] = defaultdict(list)  # by kind
        per = math.ceil(gateways / processes)
        cfg = {"mqtt": mqtt_keys, "rate": rate, "store_max": store_max, "work": str(work)}
        first = 1
        for w in range(processes):
            count = min(per, gateways - first + 1)
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
