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

This file is the timeline and the command line; bench/fleet_gateway.py holds the gateways and
their worker processes, bench/fleet_report.py the analysis and the table. The broker, the
throwaway CA and the subscribers are tests/harness's.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from agent.config import MqttSection
from agent.contract import every_gateway_status
from bench.fleet_gateway import PREFIX, Fleet
from bench.fleet_report import analyse, environment, report
from bench.peers import ProcStat
from bench.report import result_file, result_suffix, timestamp, write_json
from tests.harness.broker import Broker
from tests.harness.subscriber import Subscriber
from tests.harness.tls import Pki, make_pki
from tests.harness.waiting import TimedOutError, wait_for, wait_quiet

PER_PROCESS = 75  # gateways per worker process by default
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


# ---- the broker and the platform's view --------------------------------------------------


def broker_connects(broker: Broker) -> list[tuple[int, str]]:
    """(epoch second, client id) of every CONNECT the broker accepted, from its log."""
    out: list[tuple[int, str]] = []
    for line in broker.log_text().splitlines():
        m = CONNECTED_RE.match(line)
        if m:
            out.append((int(m.group(1)), m.group(2)))
    return out


class Checker(Subscriber):
    """QoS 1 subscriber to every gateway's topics, with a session that survives the restart
    (MQTT 5; a restored session keeps its subscription and queue: no new SUBSCRIBE)."""

    def __init__(self, host: str, port: int, pki: Pki | None = None) -> None:
        self.arrivals: dict[str, dict[int, float]] = defaultdict(dict)
        self.prefix: dict[str, int] = defaultdict(int)  # all seqs 1..prefix arrived
        self.dups: Counter[str] = Counter()
        self.statuses: list[tuple[float, str, str, bool]] = []  # (t, gateway, state, retained)
        self.bad: int = 0
        super().__init__(
            host,
            port,
            f"{PREFIX}/#",
            client_id=f"fleet-checker-{os.getpid()}",
            v5=True,
            tls=None if pki is None else pki.client("client"),
            keepalive=30,
            reconnect=(0.05, 0.1),  # back within 0.1 s of the broker: its arrival times count
            resubscribe=False,
            start=False,
        )

    def handle(self, msg: mqtt.MQTTMessage) -> None:
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
    sub = Subscriber(
        host,
        port,
        every_gateway_status(PREFIX),
        client_id=f"fleet-retained-{os.getpid()}",
        v5=True,
        persistent=False,
        tls=None if pki is None else pki.client("client"),
        keepalive=30,
    )

    def got() -> dict[str, str]:
        return {
            m.topic: str(orjson.loads(m.payload).get("state")) for m in sub.snapshot() if m.retain
        }

    with contextlib.suppress(TimedOutError):
        wait_for(lambda: len(got()) >= expect, limit, "every retained status")
    # Anything beyond the expected count: until the count holds still for 0.3 s (at most 2 s).
    wait_quiet(lambda: len(got()), 0.3, 2.0)
    found = got()
    sub.close()
    return {"retained": len(found), "by_state": dict(Counter(found.values()))}


# ---- the parent: orchestration and sampling ----------------------------------------------


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

    def wait(self, done: Callable[[], Any], timeout: float, what: str) -> float:
        """Sample every TICK until `done()`; when it was (TimedOutError at the deadline)."""

        def step() -> Any:
            self.tick()
            self.fleet.check_alive()
            return done()

        wait_for(step, timeout, what, every=TICK)
        return time.time()

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
    keys: dict[str, str] = {
        "url": url,
        "protocol": p.protocol,
        "reconnect_min": p.reconnect_min,
        "reconnect_max": p.reconnect_max,
        "reconnect_spread": p.reconnect_spread,
        "reconnect_probe": p.reconnect_probe,
    }
    if pki is not None:  # as the district runs it: TLS with client certificates
        files = pki.client("client")
        keys |= {"ca_file": files["ca"], "cert_file": files["cert"], "key_file": files["key"]}
    return keys


def run(p: Params) -> dict[str, Any]:
    """Run the whole timeline; return the raw material for the report."""
    limits = raise_nofile(max(4096, p.gateways * 4 + 256))
    store_root = Path(p.store_dir)
    store_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=store_root))
    # Every gateway presents the same client certificate: the handshake costs the broker the
    # same as with 300 different ones, and the agent builds a fresh SSLContext per connect,
    # so every reconnection is a full handshake (no session resumption), as in the field.
    pki = make_pki(work / "pki", {"client": "fleet-client"}) if p.tls else None
    # A production broker keeps sessions and retained messages across a restart; the
    # checker's persistent session needs it. The notice log has the CONNECTs it saw.
    broker = Broker(
        work / "broker",
        persistent=True,
        tls=pki,
        max_connections=p.gateways + 64,
        start_timeout=15.0,
        stop_timeout=30.0,
    )
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
        fleet = Fleet(
            p.gateways,
            p.processes,
            mqtt_keys=mqtt_keys(p, broker.url, pki),
            rate=p.rate,
            store_max=p.store_max,
            work=work,
        )
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
            t_stop = time.time()
            broker.stop()  # SIGTERM: it saves its sessions
            t_exit = time.time()
            mon.sleep(max(0.0, t_stop + down - time.time()))
            t_start = time.time()
            broker.start()
            t_listen = time.time()

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
        except RuntimeError:  # a timeout, or a worker that died
            complete = False  # reported as lost below

        fleet.send("stop")
        with contextlib.suppress(RuntimeError):
            mon.wait(lambda: fleet.all_sent("stopped"), 30, "the workers to stop")

        return {
            "broker_connects": broker_connects(broker),
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
            checker.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


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
