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

This file is the run (its peers, from tests/harness, and the faults carried out) and its
command line; bench/soak_config.py holds the files it writes, bench/soak_schedule.py the
fault schedule, bench/soak_account.py the accounting and bench/soak_report.py the table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from bench.report import result_file, write_json
from bench.soak_account import Record, Sample, StoreSnapshot, account, read_store
from bench.soak_config import (
    ENV_VECTOR,
    FENCE_VECTOR,
    MODBUS_DEVICES,
    TOPIC,
    agent_config,
)
from bench.soak_report import fault_json, log_errors, run_json, table
from bench.soak_schedule import KINDS, REQUIRED, FaultRecord, Planned, Run, describe, make_schedule
from tests.harness.agent import AgentProcess
from tests.harness.broker import Broker
from tests.harness.modbus import ModbusSim
from tests.harness.pty import PtyPair
from tests.harness.subscriber import Subscriber
from tests.harness.waiting import wait_for, wait_quiet

__all__ = ["REQUIRED", "main", "run_soak", "table"]  # tests/test_soak.py imports them from here


class Checker(Subscriber):
    """The district's view: a persistent-session QoS 1 subscriber that records every event.

    paho's own thread receives; `handle` keeps the fields the accounting needs, the receipt
    time (time.time(), the clock the agent stamps `ts` with) and the retain flag. It
    subscribes only when the broker has no session for it, so a broker restart (which
    restores the session from its persistence file) brings no retained replays.
    """

    def __init__(self, host: str, port: int) -> None:
        self.records: list[Record] = []
        self.seqs: set[int] = set()
        self.status_states: Counter[str] = Counter()
        self.undecodable = 0
        super().__init__(
            host,
            port,
            TOPIC,
            client_id=f"soak-checker-{os.getpid()}-{id(self)}",
            resubscribe=False,
            connect_timeout=15,
        )

    def handle(self, msg: mqtt.MQTTMessage) -> None:
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
        # Persistence on: a restart keeps the checker's session and its queued messages.
        self.broker = Broker(
            folder / "broker", persistent=True, start_timeout=15.0, start_attempts=5
        )
        self.pty = PtyPair(folder / "pty")
        vectors = folder / "sim"
        vectors.mkdir(parents=True, exist_ok=True)
        (vectors / "env.toml").write_text(ENV_VECTOR)
        (vectors / "fence.toml").write_text(FENCE_VECTOR)
        self.sim = ModbusSim(  # on the pty's `a` end; it reopens the port when it is back
            vectors,
            {1: vectors / "env.toml", 2: vectors / "fence.toml"},
            every={1: 1.5, 2: 2},
            rtu=self.pty.a,
            baud=38400,
            log_level="warning",
        )
        self.agent = AgentProcess(folder / "agent", log_level="info")
        self.checker: Checker | None = None
        self.faults: list[FaultRecord] = []
        self.runs: list[Run] = []
        self.snapshots: list[StoreSnapshot] = []
        self.samples: list[Sample] = []
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
        self.agent.write_config(
            agent_config(
                profiles=profiles,
                url=self.broker.url,
                cap=self.p.cap,
                pty=self.pty.b,
                rate=self.p.rate,
            )
        )
        self.broker.start()
        self.pty.start()
        self.sim.start(timeout=20.0)
        self.checker = Checker(self.broker.host, self.broker.port)
        self.start_agent()
        self._sampler = threading.Thread(target=self._sample_loop, name="soak-sampler", daemon=True)
        self._sampling.set()
        self._sampler.start()
        wait_for(
            lambda: all(self._device_online(d) for d in MODBUS_DEVICES),
            60,
            "the Modbus devices online",
            every=0.2,
        )
        checker = self.checker
        wait_for(lambda: len(checker.seqs) > 200, 60, "events at the checker", every=0.2)

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
            return bool(st) and (bool(st["broker"]["connected"]) or not self.broker.alive())

        wait_for(ready, timeout, "the agent to start", every=0.05)
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
            self.say(f"fault {f.kind} {describe(f)}")
            self.faults.append(self.do(f))
            done[f.kind] += 1
        fault_end = time.time()
        self.say(f"faults over ({dict(done)}); draining")
        drained = self.drain()
        self.say(f"drained={drained}; SIGTERM to the agent")
        term_at = time.time()
        code = self.agent.terminate(30.0)
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
            "agent_log_errors": log_errors(self.agent.log_lines("ERROR")),
            "folder": str(self.dir),
        }
        report["faults"] = {
            "by_kind": {k: done.get(k, 0) for k in KINDS},
            "log": [fault_json(r, self.t0) for r in self.faults],
        }
        report["runs"] = [run_json(r, self.t0) for r in self.runs]
        report["versions"] = {
            "python": platform.python_version(),
            "mosquitto": self.broker.version(),
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
        checker = self.checker
        assert checker is not None  # noqa: S101 - set in setup
        wait_quiet(lambda: len(checker.records), quiet, limit, every=0.1)

    def close(self) -> None:
        self._sampling.clear()
        if self.agent.alive():
            self.agent.kill()
        if self.checker is not None:
            self.checker.close()
        self.sim.stop()
        self.pty.stop()
        self.broker.stop()


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
    write_json(target, report)
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
