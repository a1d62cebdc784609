"""Latency and footprint at a steady rate, idle CPU, and start-up time to the first PUBACK.

One run, on one private mosquitto, in three phases:

1. STEADY at each `--rates` (1000 and 100 events/s): a real agent with one synthetic device
   at that rate (its profile with `heartbeat = 0`, so every reading is one event). After a
   warm-up, for `--seconds`:
   * sample -> PUBACK: a packet capture on lo (bench/wire.py) pairs each event's PUBLISH
     with the broker's PUBACK; the PUBACK's kernel timestamp minus the event's `ts`;
   * sample -> publish: the PUBLISH's timestamp minus `ts` (the agent's own share);
   * sample -> subscriber: a QoS 0 subscriber in its own process (bench/subscriber.py),
     receipt time minus `ts`;
   * the agent's CPU (utime+stime from /proc, all threads, % of one core) and RSS.
2. IDLE: the agent with one device polled every `--idle-interval` (10 s), shipped profile,
   for `--idle-seconds` (30): its CPU.
3. START-UP, `--startups` times: an already-running broker; from the agent's process start
   (just before `Popen`) to its first event's PUBACK on the wire, and to the first event at
   the subscriber (also the CONNACK).

`ts` is the sample's wall-clock time, written in milliseconds and truncated, so every latency
here is up to 1 ms above the true one. Without a capture (not root: no AF_PACKET), the PUBACK
figures are missing and sample -> subscriber stands in: on loopback the broker writes the
PUBACK and the subscriber's copy in the same pass, so it is close to, but not strictly a
bound of, sample -> PUBACK.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import cli
from bench.agent_process import AgentProcess
from bench.peers import Mosquitto, ProcStat
from bench.report import figure_cells, fixed_table, num, result_suffix
from bench.stats import figure_row, median, ms, quantile
from bench.subscriber import KIND_CODE, Stamps, SubscriberProcess
from bench.summary import SystemLoad, environment, machine
from bench.throughput_config import ORIGIN, WINDOW, agent_head, env_device, write_profile
from bench.wire import Capture, describe

BASE = ORIGIN.base
CLIENT_ID = f"{ORIGIN.school}.{ORIGIN.gateway}"  # the agent's default client id
TELEMETRY = KIND_CODE["telemetry"]


class NoDelayMosquitto(Mosquitto):
    """mosquitto with `set_tcp_nodelay true` (`--nodelay`): its PUBACKs are not held by Nagle.

    mosquitto leaves Nagle's algorithm on by default: a 4-byte PUBACK written while an
    earlier one is still unacknowledged waits for the client's (delayed) TCP ACK.
    """

    def _write_conf(self, d: Path) -> Path:
        conf = super()._write_conf(d)
        conf.write_text("set_tcp_nodelay true\n" + conf.read_text())
        return conf


DESCRIPTION = (  # of --help
    "sample -> PUBACK / subscriber latency and CPU at steady rates; idle CPU; "
    "start-up time to the first PUBACK."
)


@dataclass
class Params:
    runs: int
    seconds: float
    warmup: float
    rates: list[float]
    idle_seconds: float
    idle_interval: float
    startups: int
    window: int
    protocol: str
    capture: bool
    nodelay: bool
    quick: bool
    out: Path | None


@dataclass
class SteadyRun:
    """One rate over its measured window."""

    rate: float
    window_s: float
    events_per_s: float  # telemetry events received with `ts` in the window
    sub_p50_ms: float | None
    sub_p99_ms: float | None
    sub_max_ms: float | None
    puback_p50_ms: float | None
    puback_p99_ms: float | None
    puback_max_ms: float | None
    publish_p50_ms: float | None
    publish_p99_ms: float | None
    paired: int  # events with both PUBLISH and PUBACK seen in the window
    cpu_percent: float
    rss_mib_peak: float
    capture: dict[str, Any] | None = None
    system: dict[str, Any] | None = None  # the whole machine over the window (SystemLoad)

    def line(self) -> str:
        return (
            f"{self.events_per_s:,.0f} events/s, sample->PUBACK p50/p99 "
            f"{num(self.puback_p50_ms)}/{num(self.puback_p99_ms)} ms, ->subscriber p50/p99 "
            f"{num(self.sub_p50_ms)}/{num(self.sub_p99_ms)} ms, CPU {self.cpu_percent:.1f}%, "
            f"RSS {self.rss_mib_peak:.1f} MiB; machine busy "
            f"{(self.system or {}).get('busy_percent')}%"
        )


@dataclass
class IdleRun:
    window_s: float
    cpu_percent: float
    rss_mib: float
    events: int
    system: dict[str, Any] | None = None

    def line(self) -> str:
        return (
            f"CPU {self.cpu_percent:.2f}% over {self.window_s:g}s ({self.events} events), "
            f"RSS {self.rss_mib:.1f} MiB"
        )


@dataclass
class StartupRun:
    connack_s: list[float | None] = field(default_factory=list)
    puback_s: list[float | None] = field(default_factory=list)
    subscriber_s: list[float | None] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"CONNACK {self.connack_s} s, first PUBACK {self.puback_s} s, "
            f"at subscriber {self.subscriber_s} s"
        )


# ---- the agent's config --------------------------------------------------------------------


def write_config(folder: Path, url: str, p: Params, *, rate: float | None, poll: float) -> Path:
    """A config with one env device: at `rate` readings/s (every one an event), or polled."""
    folder.mkdir(parents=True, exist_ok=True)
    if rate is not None:
        profiles: Path | None = write_profile(folder / "profiles").parent
        device = f"rate = {rate!r}"
    else:
        profiles, device = None, f'poll_interval = "{poll:g}s"'
    head = agent_head(
        url, protocol=p.protocol, window=p.window, max_size="256MiB", profiles=profiles
    )
    cfg = folder / "agent.toml"
    cfg.write_text(head + env_device(device))
    return cfg


def _wait(what: str, check: Any, timeout: float, agent: AgentProcess | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if agent is not None:
            agent.check_alive()
        if time.monotonic() > deadline:
            tail = agent.log_tail() if agent is not None else ""
            raise RuntimeError(f"{what}: not within {timeout:g}s\n{tail}")
        time.sleep(0.01)


# ---- phases --------------------------------------------------------------------------------


def run_steady(
    broker: Mosquitto, folder: Path, rate: float, p: Params, capture: Capture | None
) -> SteadyRun:
    sub = SubscriberProcess(broker.port, BASE, folder / "sub")
    sub.start()
    sub.wait_ready()
    agent = AgentProcess(write_config(folder, broker.url, p, rate=rate, poll=1.0))
    try:
        stat = ProcStat(agent.start())
        _wait("first event at the subscriber", lambda: sub.progress().get("count"), 60, agent)
        time.sleep(p.warmup)
        t0, cpu0 = time.time(), stat.cpu_seconds()
        load = SystemLoad()
        rss = stat.rss_while(lambda: time.time() - t0 < p.seconds, agent.check_alive)
        t1, cpu1 = time.time(), stat.cpu_seconds()
        system = load.result()
    finally:
        agent.stop()
    sub.wait_quiet(quiet=0.3, timeout=10)
    sub.stop()
    a = sub.arrays()
    lats = [
        lat
        for lat, recv, kind in zip(a["lat"], a["recv"], a["kind"], strict=True)
        if kind == TELEMETRY and t0 <= recv - lat < t1
    ]
    puback: list[float] = []
    publish: list[float] = []
    cap_info = None
    if capture is not None:
        stamps = Stamps()
        for ex in list(capture.exchanges):
            if ex.publish < t0 - 5 or ex.puback is None:
                continue
            ts = stamps.epoch(orjson.loads(ex.payload)["ts"])
            if t0 <= ts < t1:
                puback.append(ex.puback - ts)
                publish.append(ex.publish - ts)
        cap_info = describe(capture)
    return SteadyRun(
        rate=rate,
        window_s=round(t1 - t0, 3),
        events_per_s=round(len(lats) / (t1 - t0), 1),
        sub_p50_ms=ms(quantile(lats, 0.5), 2),
        sub_p99_ms=ms(quantile(lats, 0.99), 2),
        sub_max_ms=ms(max(lats, default=None), 2),
        puback_p50_ms=ms(quantile(puback, 0.5), 2),
        puback_p99_ms=ms(quantile(puback, 0.99), 2),
        puback_max_ms=ms(max(puback, default=None), 2),
        publish_p50_ms=ms(quantile(publish, 0.5), 2),
        publish_p99_ms=ms(quantile(publish, 0.99), 2),
        paired=len(puback),
        cpu_percent=round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
        rss_mib_peak=round(max(rss), 1),
        capture=cap_info,
        system=system,
    )


def run_idle(broker: Mosquitto, folder: Path, p: Params) -> IdleRun:
    agent = AgentProcess(write_config(folder, broker.url, p, rate=None, poll=p.idle_interval))
    try:
        stat = ProcStat(agent.start())

        def delivered() -> bool:
            doc = agent.status()
            return bool(doc and doc.get("broker", {}).get("acked"))

        _wait("the idle agent's first PUBACK", delivered, 60, agent)
        time.sleep(p.warmup)
        first = agent.status() or {}
        t0, cpu0 = time.monotonic(), stat.cpu_seconds()
        load = SystemLoad()
        time.sleep(p.idle_seconds)
        agent.check_alive()
        t1, cpu1 = time.monotonic(), stat.cpu_seconds()
        system = load.result()
        last = agent.status() or {}
        rss = stat.rss_mib()
    finally:
        agent.stop()
    events = int(last.get("broker", {}).get("acked", 0)) - int(
        first.get("broker", {}).get("acked", 0)
    )
    return IdleRun(
        window_s=round(t1 - t0, 3),
        cpu_percent=round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
        rss_mib=round(rss, 1),
        events=events,
        system=system,
    )


def run_startups(broker: Mosquitto, folder: Path, p: Params, capture: Capture | None) -> StartupRun:
    out = StartupRun()
    sub = SubscriberProcess(broker.port, BASE, folder / "sub")
    sub.start()
    sub.wait_ready()
    starts: list[float] = []
    try:
        for i in range(p.startups):
            agent = AgentProcess(
                write_config(folder / f"agent-{i + 1}", broker.url, p, rate=None, poll=1.0)
            )
            before = int(sub.progress().get("count") or 0)
            started = time.time()
            agent.start()
            try:
                _wait(
                    "first event at the subscriber",
                    lambda before=before: int(sub.progress().get("count") or 0) > before,
                    60,
                    agent,
                )
                if capture is not None:
                    _wait("its PUBACK on the wire", lambda t=started: capture.first_puback(t), 10)
            finally:
                agent.stop()
            starts.append(started)
            if capture is not None:
                acks = [t for t in capture.connacks if t >= started]
                out.connack_s.append(round(min(acks) - started, 4) if acks else None)
                first = capture.first_puback(started)
                out.puback_s.append(None if first is None else round(first - started, 4))
            time.sleep(0.2)
    finally:
        sub.stop()
    recv = sub.arrays()["recv"]
    for i, started in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else float("inf")
        firsts = [t for t in recv if started <= t < end]
        out.subscriber_s.append(round(min(firsts) - started, 4) if firsts else None)
    return out


# ---- the report ----------------------------------------------------------------------------


def _row(name: str, unit: str, xs: list[float | None], n: int | None = None) -> dict[str, Any]:
    """A figure row over the runs that measured it (`n`: the samples behind it, if told)."""
    row = figure_row(name, unit, xs)
    if row["median"] is None:  # no run measured it: the figure and its unit only
        return {k: row[k] for k in ("figure", "unit", "median", "min", "max")}
    runs = sum(x is not None for x in xs)
    return {**row, "runs": runs, **({"samples": n} if n is not None else {})}


def _label(rate: float) -> str:
    return f"{rate:g}/s"


def figures(
    steady: dict[float, list[SteadyRun]], idle: list[IdleRun], startups: list[StartupRun]
) -> list[dict[str, Any]]:
    """Rows: median over the runs of each run's figure (its p50, p99, CPU...), min-max."""
    rows: list[dict[str, Any]] = []
    for rate, runs in steady.items():
        lab = _label(rate)
        rows += [
            _row(f"{lab}: events delivered", "events/s", [r.events_per_s for r in runs]),
            _row(
                f"{lab}: sample -> PUBACK p50 (wire)",
                "ms",
                [r.puback_p50_ms for r in runs],
                sum(r.paired for r in runs),
            ),
            _row(f"{lab}: sample -> PUBACK p99 (wire)", "ms", [r.puback_p99_ms for r in runs]),
            _row(f"{lab}: sample -> PUBACK max (wire)", "ms", [r.puback_max_ms for r in runs]),
            _row(f"{lab}: sample -> publish p50 (wire)", "ms", [r.publish_p50_ms for r in runs]),
            _row(f"{lab}: sample -> publish p99 (wire)", "ms", [r.publish_p99_ms for r in runs]),
            _row(f"{lab}: sample -> subscriber p50", "ms", [r.sub_p50_ms for r in runs]),
            _row(f"{lab}: sample -> subscriber p99", "ms", [r.sub_p99_ms for r in runs]),
            _row(f"{lab}: sample -> subscriber max", "ms", [r.sub_max_ms for r in runs]),
            _row(f"{lab}: agent CPU", "%", [r.cpu_percent for r in runs]),
            _row(f"{lab}: agent RSS peak", "MiB", [r.rss_mib_peak for r in runs]),
        ]
    rows += [
        _row("idle: agent CPU", "%", [r.cpu_percent for r in idle]),
        _row("idle: agent RSS", "MiB", [r.rss_mib for r in idle]),
    ]
    rows += [
        _row("start-up -> CONNACK (wire)", "s", [median(s.connack_s) for s in startups]),
        _row("start-up -> first PUBACK (wire)", "s", [median(s.puback_s) for s in startups]),
        _row(
            "start-up -> first event at subscriber",
            "s",
            [median(s.subscriber_s) for s in startups],
        ),
    ]
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("figure", "median", "min-max", "runs")
    return fixed_table(head, [(*figure_cells(r), str(r.get("runs", 0))) for r in rows])


# ---- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Params:
    ap = cli.Parser("latency", DESCRIPTION, runs="each: every phase")
    ap.seconds(30.0, "measured window per rate")
    ap.warmup(2.0, "seconds after the first event")
    ap.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[1000.0, 100.0],
        help="steady rates, events/s, comma-separated; 1000,100",
    )
    ap.add_argument("--idle-seconds", type=float, default=30.0, help="idle window; 30")
    ap.add_argument("--idle-interval", type=float, default=10.0, help="idle poll period; 10")
    ap.add_argument("--startups", type=int, default=3, help="start-ups per run; 3")
    ap.mqtt(WINDOW)
    ap.add_argument(
        "--no-capture", action="store_true", help="no packet capture (no PUBACK figures)"
    )
    ap.add_argument(
        "--nodelay",
        action="store_true",
        help="the broker with `set_tcp_nodelay true` (mosquitto's default is Nagle on)",
    )
    ap.last("1 run, 3 s, 1 start-up")
    quick = {"runs": 1, "seconds": 3.0, "warmup": 1.0, "idle_seconds": 3.0, "startups": 1}
    a = ap.parse(argv, quick=quick)
    if a.quick:
        a.idle_interval = min(a.idle_interval, 2.0)
    if a.runs < 1 or a.seconds < 1 or a.startups < 0 or not a.rates:
        ap.error("--runs and --seconds must be >= 1, --rates not empty")
    return cli.params(Params, a, capture=not a.no_capture)


def _say(i: int, p: Params, phase: str, line: str) -> None:
    print(f"  run {i + 1}/{p.runs} {phase}: {line}", flush=True)


def measure(p: Params) -> cli.Measured:
    """The runs, every phase of each, on one broker; the table and the result file."""
    no_capture = Capture.available() if p.capture else "--no-capture"
    if no_capture is not None and p.capture:
        print(f"latency: {no_capture}: no PUBACK figures", file=sys.stderr, flush=True)
    steady: dict[float, list[SteadyRun]] = {r: [] for r in p.rates}
    idle: list[IdleRun] = []
    startups: list[StartupRun] = []
    runs: list[dict[str, Any]] = []
    broker_class = NoDelayMosquitto if p.nodelay else Mosquitto
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, broker_class() as broker:
        work = Path(tmp)
        print(
            f"latency: broker {broker.url} (pid {broker.pid}), {p.runs} run(s): "
            f"{', '.join(_label(r) for r in p.rates)} for {p.warmup:g}s + {p.seconds:g}s each, "
            f"idle {p.idle_seconds:g}s (poll {p.idle_interval:g}s), {p.startups} start-up(s); "
            f"capture {'on' if no_capture is None else 'off'}"
            f"{', broker set_tcp_nodelay' if p.nodelay else ''}",
            flush=True,
        )
        for i in range(p.runs):
            capture = None
            if no_capture is None:
                capture = Capture(broker.port, CLIENT_ID, BASE)
                capture.start()
            try:
                run: dict[str, Any] = {"run": i + 1, "steady": []}
                for rate in p.rates:
                    s = run_steady(broker, work / f"run{i + 1}-{rate:g}", rate, p, capture)
                    steady[rate].append(s)
                    run["steady"].append(asdict(s))
                    _say(i, p, _label(rate), s.line())
                    if capture is not None:
                        capture.exchanges.clear()
                d = run_idle(broker, work / f"run{i + 1}-idle", p)
                idle.append(d)
                run["idle"] = asdict(d)
                _say(i, p, "idle", d.line())
                if p.startups:
                    st = run_startups(broker, work / f"run{i + 1}-startup", p, capture)
                    startups.append(st)
                    run["startup"] = asdict(st)
                    _say(i, p, "start-up", st.line())
            finally:
                if capture is not None:
                    capture.stop()
                    if capture.error:
                        print(f"  warning: capture: {capture.error}", file=sys.stderr)
            runs.append(run)
    rows = figures(steady, idle, startups)
    doc: dict[str, Any] = {
        "environment": {**environment(), **machine()},
        "figures": rows,
        "runs": runs,
    }
    if no_capture is not None:
        doc["no_capture"] = no_capture
    return cli.Measured(table(rows), doc, params={"capture": no_capture is None})


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write results/latency.json (-nodelay after
    --nodelay)."""
    p = parse_args(argv)
    suffix = result_suffix(p.quick) + ("-nodelay" if p.nodelay else "")
    return cli.main("latency", p, measure, suffix=suffix)


if __name__ == "__main__":
    raise SystemExit(main())
