"""Peer: the agent and the ThingsBoard IoT Gateway on the same Modbus workload, in one run.

For each `--devices` size (100 and 200 devices x 10 registers, polled every `--interval`
1 s) and each system (`peer` = ThingsBoard IoT Gateway 3.8.x from PyPI with SQLite storage,
`agent` = `python -m agent.cli run`), one PHASE on a private mosquitto with persistence on
and simulators from `bench.modbus_devices` (same profile, vectors and placement):

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

import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import cli
from bench.agent_process import AgentProcess, BenchProcess
from bench.modbus_devices import (
    MAX_UNITS,
    Load,
    Simulator,
    device_name,
    start_simulators,
    write_agent_config,
)
from bench.peer_broker import (
    SESSION_LIMITS,
    PersistentMosquitto,
    SessionLimitsResponder,
    Subscriber,
)
from bench.peer_delivery import Delivery
from bench.peer_loopback import SocketWatch, ss_lines, threads
from bench.peer_report import Life, Outage, Phase, Steady, figures, outage_line, table
from bench.peer_systems import (
    PEER_REQUIREMENTS,
    PEER_VENV,
    POINTS,
    SYSTEMS,
    PeerGateway,
    ensure_peer_venv,
    write_peer_config,
)
from bench.peers import Mosquitto, ProcStat, cpu_seconds
from bench.stats import since
from bench.summary import environment

DESCRIPTION = (  # of --help
    "The agent and the ThingsBoard IoT Gateway on the same Modbus workload: "
    "CPU per 1000 values/s, RSS, threads, and what each delivers after a broker outage "
    "and after a SIGKILL during one."
)


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


# ---- one phase: a system, a size ----------------------------------------------------------


class PhaseRunner:
    """Runs one system at one size: steady window and outage (process A), then the outage
    with a SIGKILL (process B) and a restart (process C), each on fresh simulators."""

    def __init__(self, system_name: str, devices: int, p: Params, work: Path) -> None:
        self.name = system_name
        self.kind = SYSTEMS[system_name]
        self.devices = devices
        self.p = p
        self.load = Load(devices, p.interval, p.simulators, p.case_every)
        self.work = work
        self.folder = work / f"{system_name}-{devices}"
        self.notes: list[str] = []
        self.delivery = Delivery(expected={device_name(n) for n in range(devices)})
        self.sub: Subscriber | None = None
        self.system: BenchProcess | None = None
        self.exit_codes: list[int | None] = []

    # -- helpers --

    def process(self) -> BenchProcess:
        if self.system is None:
            raise RuntimeError("no system")
        return self.system

    def pump(self) -> None:
        """Parse what the subscriber received since the last call."""
        if self.sub is not None:
            self.delivery.absorb(self.kind.parse, self.sub.since(self.delivery.parsed))

    def configure(self, broker: Mosquitto, sims: list[Simulator]) -> BenchProcess:
        """Write the system's config for these simulators (same folders, store kept)."""
        ports = [s.port for s in sims]
        if self.name == "peer":
            folder = write_peer_config(self.folder / "tb", broker, ports, self.load)
            if self.system is None:
                self.system = PeerGateway(folder)
        else:
            cfg = write_agent_config(self.folder / "agent", broker.url, ports, self.load)
            if self.system is None:
                self.system = AgentProcess(cfg, sources=True)
        return self.process()

    def requests_served(self, sims: list[Simulator]) -> dict[str, int]:
        """Requests the simulators served to each device so far (all function codes)."""
        by_unit: dict[tuple[int, int], int] = {}
        for i, s in enumerate(sims):
            for unit, codes in s.stats().get("requests", {}).items():
                by_unit[(i, int(unit))] = sum(int(c) for c in codes.values())
        return {
            device_name(n): by_unit.get((sim, unit), 0)
            for n, (sim, unit) in enumerate(self.load.placement())
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
        per_poll = self.kind.requests_per_poll
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

    def end_life(self, sims: list[Simulator]) -> dict[str, int]:
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

    def wait_devices(self, t0: float, timeout: float) -> None:
        """Until every device has delivered a poll stamped at or after t0."""
        system = self.process()
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            seen = self.delivery.devices_since(t0)
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

    # -- the phase --

    def run(self) -> Phase:
        self.folder.mkdir(parents=True, exist_ok=True)
        watch = SocketWatch()
        responder: SessionLimitsResponder | None = None
        sims: list[Simulator] = []
        with PersistentMosquitto() as broker:
            try:
                if self.name == "peer":
                    responder = SessionLimitsResponder(broker, f"bench-peer-rpc-{os.getpid()}")
                    responder.start()
                topic = self.kind.topic
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
        if isinstance(self.system, PeerGateway):
            blocked = self.system.blocked()
            phase.loopback["launcher_blocked"] = blocked
            phase.loopback["launcher_blocked_count"] = len(blocked)
        if responder is not None:
            phase.loopback["getSessionLimits_answered"] = responder.answered
        return phase

    def _measure(
        self, broker: PersistentMosquitto, sims: list[Simulator], watch: SocketWatch
    ) -> Phase:
        p = self.p
        # ---- process A: steady state, then a plain outage
        sims[:] = start_simulators(self.folder / "sims-a", self.load)
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
            print(f"    {outage_line(o1)}", flush=True)

            # ---- process B, SIGKILLed during an outage; process C, its restart
            sims[:] = start_simulators(self.folder / "sims-b", self.load)
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
            print(f"    {outage_line(o2)}", flush=True)

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
        if isinstance(system, AgentProcess):
            totals["agent_sources_sha256"] = system.sources
            doc = system.status() or {}
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

    def _steady(self, broker: PersistentMosquitto, sims: list[Simulator], ready_s: float) -> Steady:
        p = self.p
        system = self.process()
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
        sims: list[Simulator],
        watch: SocketWatch,
        *,
        kill: bool,
    ) -> Outage:
        p = self.p
        system = self.process()
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
            backlog_delivered_after_s=since(last, t_up),
            first_value_after_s=since(self.delivery.first_arrival_after(t_up), t_up),
            values_stamped_in_outage=stamped,
            duplicates=dup_new,
            duplicates_broker_redelivery=dup_broker,
            backlog_timed_out=timed_out,
            t_down=round(t_down, 3),
            killed_at_s=since(t_kill, t_down),
            restarted_at_s=since(t_restart, t_down),
            restart_to_first_poll_s=None
            if first_poll is None or t_restart is None
            else since(first_poll, t_restart),
        )


# ---- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Params:
    ap = cli.Parser("peer", DESCRIPTION, prog="python -m bench.peer")
    ap.add_argument("--devices", default="100,200", help="sizes, comma-separated; 100,200")
    ap.add_argument("--systems", default="peer,agent", help="peer,agent (the order of size 1)")
    ap.seconds(60.0, "steady window, s")
    ap.warmup(5.0, "s after all devices deliver")
    ap.add_argument("--outage", type=float, default=60.0, help="broker outage, s (0: none); 60")
    ap.add_argument("--kill-at", type=float, default=20.0, help="SIGKILL s into outage 2; 20")
    ap.add_argument("--restart-after", type=float, default=5.0, help="restart s after it; 5")
    ap.add_argument(
        "--quiet", type=float, default=15.0, help="backlog done after this long without one; 15"
    )
    ap.add_argument("--backlog-timeout", type=float, default=300.0, help="max wait, s; 300")
    ap.modbus_load()
    ap.add_argument(
        "--runs",
        type=int,
        default=1,
        help="accepted for `python -m bench --runs N`; the peer comparison is one run per size",
    )
    ap.last("10 devices, 10 s window, 15 s outages")
    quick = {"devices": "10", "seconds": 10.0, "warmup": 3.0, "outage": 15.0, "kill_at": 5.0}
    a = ap.parse(argv, quick={**quick, "restart_after": 2.0, "quiet": 8.0})
    if a.runs != 1:
        print(f"peer: --runs {a.runs} ignored: one run per size", file=sys.stderr, flush=True)
    devices = [int(x) for x in str(a.devices).split(",") if x.strip()]
    systems = [x.strip() for x in str(a.systems).split(",") if x.strip()]
    if not devices or any(n < 1 or n > MAX_UNITS * a.simulators for n in devices):
        ap.error(f"--devices: 1 to {MAX_UNITS} per simulator")
    if not systems or any(s not in SYSTEMS for s in systems):
        ap.error("--systems: peer and/or agent")
    if a.outage and not 0 < a.kill_at < a.kill_at + a.restart_after < a.outage:
        ap.error("need 0 < --kill-at < --kill-at + --restart-after < --outage")
    return cli.params(Params, a, devices=devices, systems=systems)


def measure(p: Params) -> cli.Measured:
    """Each size, each system in turn (the order reversed at every other size)."""
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
    doc: dict[str, Any] = {
        "setup": {
            "peer_venv": str(PEER_VENV),
            "peer_requirements": PEER_REQUIREMENTS,
            "peer_versions": versions,
            "peer_requests_per_poll": SYSTEMS["peer"].requests_per_poll,
            "agent_requests_per_poll": SYSTEMS["agent"].requests_per_poll,
            "session_limits_reply": SESSION_LIMITS,
        },
        "environment": {**environment(), "pymodbus (agent)": metadata.version("pymodbus")},
        "phases": phases,
    }
    doc["figures"] = figures(doc)
    return cli.Measured(table(phases), doc, params={"runs": 1})


def main(argv: list[str] | None = None) -> int:
    """Print the side-by-side table and write results/peer.json."""
    return cli.main("peer", parse_args(argv), measure, default=str)


if __name__ == "__main__":
    sys.exit(main())
