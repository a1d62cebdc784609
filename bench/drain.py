"""Backlog drain: N events stored while the broker is down, then the broker comes back.

One run:

1. FILL: the agent starts while its broker is down (nothing listens on the broker's port):
   a synthetic device asked for far more readings than the store can take (`--rate`, its
   profile with `heartbeat = 0`) on one bus, and a fence device on another bus that polls
   every `--fence-poll` (0.1 s) and toggles its alarm every `--alarm-every` (0.5 s). Once the
   status file shows `backlog` >= `--events` (500 000), the config is rewritten without the
   fast device and the agent is sent SIGHUP: it stops that bus and keeps the fence. The
   rate the store took events at meanwhile is `fill: committed/s` (durable ingest, nothing
   sent).
2. DRAIN: a subscriber process (bench/subscriber.py, QoS 0, every event of the gateway) is
   started, then mosquitto on the port the agent keeps trying. The agent reconnects on its
   own schedule (its backoff: `[mqtt] reconnect_min/max`, the defaults unless
   `--reconnect-max`), sends the backlog, alarms first, and keeps sending the fence's new
   events. Figures:
   * `drain: PUBACKs/s`: Δ`broker.acked` / Δ`written` of the status file while the backlog
     is not empty (the subscriber's count over its own clock when the drain is shorter than
     2 s); the ratio is to the ceiling of the same run;
   * `broker back -> first backlog event at subscriber`: reconnect delay + first delivery;
   * `broker back -> backlog empty`: until the subscriber holds every event stored before
     the broker came back (by `seq`); the least it could be is backlog / ceiling;
   * `alarm during drain: sample -> subscriber` p50 / p99 / max: alarm events whose sample
     time (`ts`) lies between the agent's reconnection and the end of the drain, from `ts`
     to receipt: how long an alarm raised mid-drain waits behind the backlog;
   * `duplicates received` (ids seen twice) and `events missing` (stored before the broker
     returned and never received): both 0 without faults;
   * the agent's CPU and RSS over the drain.
3. CEILING: the agent is stopped; raw paho QoS 1, asyncio-native (`measure_ceiling` of
   bench/throughput_ceiling.py), publishes `--messages` payloads of the same shape (the
   agent's own encoder, another gateway name of the same length, so the subscriber tells
   them apart and still receives them: the broker forwards as much as during the drain) to
   the same broker.

The subscriber reads with its own MQTT parser at a small share of a core (it keeps up with
the ceiling), and is the same during drain and ceiling, so the ratio compares like with like.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.contract import Origin
from bench import cli
from bench.agent_process import AgentProcess
from bench.peers import Mosquitto, ProcStat, free_port
from bench.report import ceiling_table, num
from bench.stats import figure_row, ms, quantile, rounded, since
from bench.subscriber import KIND_CODE, SubscriberProcess
from bench.summary import SystemLoad, environment, machine
from bench.throughput_ceiling import CeilingRun, build_payloads, measure_ceiling
from bench.throughput_config import ORIGIN, WINDOW, agent_head, env_device, write_profile

CEILING_GATEWAY = "gw-ceil0"  # as long as GATEWAY: the same payload bytes
BASE = ORIGIN.base
CEILING = Origin(ORIGIN.prefix, ORIGIN.school, CEILING_GATEWAY)
ALARM = KIND_CODE["alarm"]

# After bench.throughput_config's AGENT_HEAD and, while filling, its env device (the fast one).
FENCE = """
[[buses]]
id = "fence"
driver = "synthetic"

[[devices]]
id = "north-fence"
profile = "synthetic-fence"
bus = "fence"
poll_interval = "{fence_poll:g}s"
alarm_every = "{alarm_every:g}s"
"""

DESCRIPTION = (  # of --help
    "Backlog drain after a broker outage: rate vs raw paho, alarm delay "
    "during the drain, time to empty, duplicates."
)


@dataclass
class Params:
    runs: int
    events: int
    messages: int
    rate: float
    alarm_every: float
    fence_poll: float
    reconnect_max: float | None
    window: int
    protocol: str
    quick: bool
    out: Path | None


@dataclass
class DrainRun:
    """One run: the fill, the drain after the broker came back, and the ceiling."""

    backlog: int  # events in the store when the broker came back
    backlog_last_seq: int
    fill_committed_per_s: float | None
    fill_s: float | None
    reconnect_s: float | None  # broker listening -> the agent's CONNACK (status `since`)
    first_event_s: float | None  # broker listening -> first event at the subscriber
    empty_s: float | None  # broker listening -> the last stored event at the subscriber
    drain_acked_per_s: float | None  # status file, while the backlog was not empty
    drain_received_per_s: float | None  # subscriber, first to last stored event
    drain_per_s: float  # the figure: status-based, else the subscriber's
    drain_source: str
    alarms: int  # alarms raised during the drain
    alarm_p50_ms: float | None
    alarm_p99_ms: float | None
    alarm_max_ms: float | None
    alarms_before_reconnect: int  # raised after the broker returned, before the agent did
    received: int
    duplicates: int
    missing: int
    connects: int
    cpu_percent: float | None
    rss_mib_peak: float
    subscriber_late: bool  # it subscribed after the agent connected: counts not reliable
    system: dict[str, Any] | None = None  # the whole machine over the drain (SystemLoad)
    ceiling: CeilingRun | None = None
    ratio: float | None = None
    agent_exit: int | None = None


# ---- config ----------------------------------------------------------------------------------


def write_config(
    folder: Path, url: str, p: Params, *, fast: bool, gateway: str = ORIGIN.gateway
) -> Path:
    """The agent's config; `fast=False` is the same without the fast device (after SIGHUP)."""
    folder.mkdir(parents=True, exist_ok=True)
    profiles = write_profile(folder / "profiles").parent
    reconnect = "" if p.reconnect_max is None else f'reconnect_max = "{p.reconnect_max:g}s"\n'
    text = agent_head(
        url,
        protocol=p.protocol,
        window=p.window,
        max_size=f"{2 + p.events * 4000 // 2**30}GiB",
        profiles=profiles,
        gateway=gateway,
        mqtt_extra=reconnect,
    )
    text += env_device(f"rate = {p.rate}") if fast else ""
    text += FENCE.format(fence_poll=p.fence_poll, alarm_every=p.alarm_every)
    cfg = folder / "agent.toml"
    tmp = cfg.with_name("agent.toml.tmp")
    tmp.write_text(text)
    tmp.replace(cfg)
    return cfg


def ceiling_payloads(folder: Path, url: str, p: Params) -> tuple[str, list[bytes]]:
    """The ceiling's payloads: the agent's encoder, env device, the ceiling's gateway."""
    cfg = write_config(folder, url, p, fast=True, gateway=CEILING_GATEWAY)
    return build_payloads(load_config(cfg), p.messages)


# ---- one run ---------------------------------------------------------------------------------


def _status(agent: AgentProcess, newer_than: float, timeout: float = 15.0) -> dict[str, Any]:
    return agent.wait_status(newer_than, timeout)


def fill(agent: AgentProcess, p: Params) -> tuple[dict[str, Any], float | None, float | None]:
    """Wait for the backlog to reach p.events; (last status, committed/s, seconds)."""
    deadline = time.monotonic() + 120 + p.events / 500
    doc = _status(agent, 0.0, 60)
    first: dict[str, Any] | None = None
    while int(doc.get("backlog", 0)) < p.events:
        if first is None and int(doc["store"]["committed"]) > 0:
            first = doc
        if time.monotonic() > deadline:
            raise RuntimeError(f"backlog {doc.get('backlog')} < {p.events}:\n{agent.log_tail()}")
        doc = _status(agent, float(doc["written"]))
    if first is None or first is doc:
        return doc, None, None  # filled within one status period: no rate to tell
    dt = float(doc["written"]) - float(first["written"])
    committed = int(doc["store"]["committed"]) - int(first["store"]["committed"])
    return doc, committed / dt, dt


def stop_producing(agent: AgentProcess, folder: Path, url: str, p: Params) -> dict[str, Any]:
    """Rewrite the config without the fast device, SIGHUP, wait until ingest settles."""
    write_config(folder, url, p, fast=False)
    os.kill(agent.pid, signal.SIGHUP)
    doc = _status(agent, 0.0)
    while int(doc.get("reloads", 0)) < 1:
        if doc.get("last_reload_error"):
            raise RuntimeError(f"reload refused: {doc['last_reload_error']}")
        doc = _status(agent, float(doc["written"]))
    # Settled: one status period in which only the fence added events.
    while True:
        nxt = _status(agent, float(doc["written"]))
        if int(nxt["store"]["committed"]) - int(doc["store"]["committed"]) < 100:
            return nxt
        doc = nxt


def run_once(work: Path, p: Params, payloads: tuple[str, list[bytes]] | None) -> DrainRun:
    port = free_port()
    broker = Mosquitto(port=port)
    url = f"mqtt://{broker.host}:{port}"
    agent = AgentProcess(write_config(work / "agent", url, p, fast=True))
    sub = SubscriberProcess(port, BASE, work / "sub", also=(CEILING.everything,))
    ceiling: CeilingRun | None = None
    exit_code: int | None = None
    try:
        stat = ProcStat(agent.start())
        filled, fill_rate, fill_s = fill(agent, p)
        rate = "-" if fill_rate is None else f"{fill_rate:,.0f}"
        print(
            f"    filled: backlog {filled['backlog']:,} at {rate} committed/s with the broker "
            "down; SIGHUP without the fast device",
            flush=True,
        )
        doc = stop_producing(agent, work / "agent", url, p)
        last_seq = int(doc["store"]["last_seq"])
        backlog = int(doc["backlog"])
        sub.start()
        broker.start()
        t_up = time.time()
        load = SystemLoad()
        sub_ready = sub.wait_ready()
        # Watch the drain through the status file (rewritten every second).
        docs: list[tuple[dict[str, Any], float]] = []
        rss = [stat.rss_mib()]
        deadline = time.monotonic() + 180 + p.events / 1000
        doc = _status(agent, float(doc["written"]))
        while True:
            docs.append((doc, stat.cpu_seconds()))
            rss.append(stat.rss_mib())
            # Done when nothing of the backlog is left: the store is empty, or all it holds
            # is the fence's fresh events (it goes on producing, and an acknowledged event
            # waits up to 250 ms for its deletion): its oldest row is younger than the drain.
            age = doc.get("oldest_unsent_age")
            if doc["broker"]["connected"] and (
                int(doc.get("backlog", 1)) == 0 or (age is not None and age < time.time() - t_up)
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"backlog not drained:\n{agent.log_tail()}")
            doc = _status(agent, float(doc["written"]))
        system = load.result()
        # The fence goes on producing: stop the agent (it waits for its in-flight PUBACKs),
        # then let the subscriber take in what the broker still has for it.
        exit_code = agent.stop()
        sub.wait_quiet(quiet=0.5, timeout=30)
        if payloads is not None:
            topic, msgs = payloads
            ceiling = measure_ceiling(
                broker.host, port, topic, msgs, window=p.window, protocol=p.protocol
            )
            sub.wait_quiet(quiet=0.5, timeout=30)
    finally:
        if agent.proc is not None:
            exit_code = agent.stop()
        result = sub.stop() if sub.proc is not None else {}
        broker.stop()
    return analyse(
        p,
        docs=docs,
        arrays=sub.arrays(),
        result=result,
        t_up=t_up,
        sub_ready=sub_ready,
        last_seq=last_seq,
        backlog=backlog,
        fill=(fill_rate, fill_s),
        rss=rss,
        ceiling=ceiling,
        exit_code=exit_code,
        system=system,
    )


def analyse(
    p: Params,
    *,
    docs: list[tuple[dict[str, Any], float]],
    arrays: dict[str, Any],
    result: dict[str, Any],
    t_up: float,
    sub_ready: float,
    last_seq: int,
    backlog: int,
    fill: tuple[float | None, float | None],
    rss: list[float],
    ceiling: CeilingRun | None,
    exit_code: int | None,
    system: dict[str, Any],
) -> DrainRun:
    seqs, recv, lat, kind = arrays["seq"], arrays["recv"], arrays["lat"], arrays["kind"]
    stored = [(s, r) for s, r in zip(seqs, recv, strict=True) if s <= last_seq]
    unique_stored = len({s for s, _ in stored})
    first_any = min(recv) if len(recv) else None
    first_stored = min((r for _, r in stored), default=None)
    drain_end = max((r for _, r in stored), default=None)
    connected = next((d["broker"]["since"] for d, _ in docs if d["broker"]["connected"]), None)
    connected_at = float(connected) if connected is not None else None

    # Status-based rate: between documents written after the connection while the backlog
    # was not yet empty (a document written after the end would dilute the rate).
    during = [
        (d, c)
        for d, c in docs
        if d["broker"]["connected"] and int(d["broker"]["acked"]) and int(d["backlog"]) > 0
    ]
    acked_rate = cpu = None
    if len(during) >= 2:
        (d0, c0), (d1, c1) = during[0], during[-1]
        dt = float(d1["written"]) - float(d0["written"])
        if dt >= 2.0:
            acked_rate = (int(d1["broker"]["acked"]) - int(d0["broker"]["acked"])) / dt
        if dt > 0:
            cpu = 100 * (c1 - c0) / dt
    received_rate = None
    if first_stored is not None and drain_end is not None and drain_end > first_stored:
        received_rate = (unique_stored - 1) / (drain_end - first_stored)
    if acked_rate is not None:
        rate, source = acked_rate, "status: acked"
    else:
        rate, source = received_rate or 0.0, "subscriber"

    # Alarms raised (sampled) while the agent was draining, and those raised after the
    # broker was back but before the agent had reconnected (waiting on its backoff).
    delays: list[float] = []
    before = 0
    for k, r, la in zip(kind, recv, lat, strict=True):
        if k != ALARM:
            continue
        sampled = r - la
        if connected_at is not None and drain_end is not None and connected_at <= sampled:
            if sampled <= drain_end:
                delays.append(la)
        elif sampled >= t_up:
            before += 1

    last_doc = docs[-1][0] if docs else {}
    ratio = round(rate / ceiling.acked_per_s, 3) if ceiling and ceiling.acked_per_s else None
    return DrainRun(
        backlog=backlog,
        backlog_last_seq=last_seq,
        fill_committed_per_s=rounded(fill[0], 1),
        fill_s=rounded(fill[1], 1),
        reconnect_s=since(connected_at, t_up, 3),
        first_event_s=since(first_any, t_up, 3),
        empty_s=since(drain_end, t_up, 3),
        drain_acked_per_s=rounded(acked_rate, 1),
        drain_received_per_s=rounded(received_rate, 1),
        drain_per_s=round(rate, 1),
        drain_source=source,
        alarms=len(delays),
        alarm_p50_ms=ms(quantile(delays, 0.5), 1),
        alarm_p99_ms=ms(quantile(delays, 0.99), 1),
        alarm_max_ms=ms(max(delays, default=None), 1),
        alarms_before_reconnect=before,
        received=int(result.get("count", 0)),
        duplicates=int(result.get("duplicates", 0)),
        missing=last_seq - unique_stored,
        connects=int(last_doc.get("broker", {}).get("connects", 0)),
        cpu_percent=rounded(cpu, 1),
        rss_mib_peak=round(max(rss), 1),
        subscriber_late=connected_at is not None and sub_ready > connected_at,
        system=system,
        ceiling=ceiling,
        ratio=ratio,
        agent_exit=exit_code,
    )


# ---- the report ------------------------------------------------------------------------------


def _row(
    name: str, unit: str, xs: list[float | None], ceilings: list[float] | None = None
) -> dict[str, Any]:
    """A figure row (its ratio to the ceilings of the same runs, if given), and its runs."""
    return {**figure_row(name, unit, xs, ceilings), "runs": sum(x is not None for x in xs)}


def figures(runs: list[DrainRun]) -> list[dict[str, Any]]:
    ceil = [r.ceiling.acked_per_s for r in runs if r.ceiling is not None]
    ceilings = ceil if len(ceil) == len(runs) else None
    rows = [_row("ceiling: raw paho QoS 1 PUBACKs/s", "msg/s", list(ceil))] if ceil else []
    rows += [
        _row("backlog when the broker came back", "events", [r.backlog for r in runs]),
        _row("fill: committed/s (broker down)", "events/s", [r.fill_committed_per_s for r in runs]),
        _row("drain: PUBACKs/s", "msg/s", [r.drain_per_s for r in runs], ceilings),
        _row(
            "drain: received/s (subscriber)",
            "msg/s",
            [r.drain_received_per_s for r in runs],
            ceilings,
        ),
        _row("broker back -> agent connected", "s", [r.reconnect_s for r in runs]),
        _row(
            "broker back -> first backlog event at subscriber", "s", [r.first_event_s for r in runs]
        ),
        _row("broker back -> backlog empty", "s", [r.empty_s for r in runs]),
        _row(
            "backlog / ceiling (least possible)",
            "s",
            [r.backlog / r.ceiling.acked_per_s if r.ceiling else None for r in runs],
        ),
        _row("alarms raised during drain", "alarms", [r.alarms for r in runs]),
        _row("alarm during drain: sample -> subscriber p50", "ms", [r.alarm_p50_ms for r in runs]),
        _row("alarm during drain: sample -> subscriber p99", "ms", [r.alarm_p99_ms for r in runs]),
        _row("alarm during drain: sample -> subscriber max", "ms", [r.alarm_max_ms for r in runs]),
        _row("duplicates received", "events", [r.duplicates for r in runs]),
        _row("events missing", "events", [r.missing for r in runs]),
        _row("agent: CPU during drain", "%", [r.cpu_percent for r in runs]),
        _row("agent: RSS peak", "MiB", [r.rss_mib_peak for r in runs]),
    ]
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    return ceiling_table(rows)


def summary(r: DrainRun) -> str:
    c = f"ceiling {r.ceiling.acked_per_s:,.0f}/s, " if r.ceiling else ""
    return (
        f"backlog {r.backlog:,}: {c}drain {r.drain_per_s:,.0f}/s ({r.drain_source}), "
        f"agent connected +{num(r.reconnect_s)}s, first event +{num(r.first_event_s)}s, "
        f"empty +{num(r.empty_s)}s; {r.alarms} alarms p50/p99/max {num(r.alarm_p50_ms)}/"
        f"{num(r.alarm_p99_ms)}/{num(r.alarm_max_ms)} ms; dup {r.duplicates}, "
        f"missing {r.missing}, CPU {num(r.cpu_percent)}%, RSS {r.rss_mib_peak:.0f} MiB"
        + (
            f"; machine busy {r.system.get('busy_percent')}%, iowait "
            f"{r.system.get('iowait_percent')}%"
            if r.system
            else ""
        )
    )


# ---- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Params:
    ap = cli.Parser("drain", DESCRIPTION, runs="fill, drain, ceiling")
    ap.add_argument("--events", type=int, default=500_000, help="backlog to build; 500000")
    ap.messages()
    ap.rate("fast device readings/s while filling")
    ap.add_argument("--alarm-every", type=float, default=0.5, help="fence alarm toggle, s; 0.5")
    ap.add_argument("--fence-poll", type=float, default=0.1, help="fence poll period, s; 0.1")
    ap.add_argument(
        "--reconnect-max",
        type=float,
        default=None,
        help="the agent's [mqtt] reconnect_max, s (default: the agent's own, 60 s)",
    )
    ap.mqtt(WINDOW)
    ap.last("1 run, 20000 events")
    a = ap.parse(argv, quick={"runs": 1, "events": 20_000, "messages": 5_000})
    if a.runs < 1 or a.events < 1 or a.messages < 0:
        ap.error("--runs and --events must be >= 1")
    return cli.params(Params, a)


def measure(p: Params) -> cli.Measured:
    """The runs, each on its own broker; the table and the result file."""
    runs: list[DrainRun] = []
    print(
        f"drain: {p.runs} run(s): {p.events:,} events stored with the broker down, then the "
        f"broker back; ceiling {p.messages:,} msgs; fence alarm every {p.alarm_every:g}s "
        f"(poll {p.fence_poll:g}s); reconnect_max "
        f"{'agent default' if p.reconnect_max is None else f'{p.reconnect_max:g}s'}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        work = Path(tmp)
        payloads = (
            ceiling_payloads(work / "payloads", "mqtt://127.0.0.1:1", p) if p.messages else None
        )
        if payloads:
            print(f"  payload {len(payloads[1][0])} B, MQTT {p.protocol}", flush=True)
        for i in range(p.runs):
            print(f"  run {i + 1}/{p.runs}:", flush=True)
            r = run_once(work / f"run-{i + 1}", p, payloads)
            runs.append(r)
            print(f"    {summary(r)}", flush=True)
            if r.subscriber_late:
                print(
                    "    warning: the agent reconnected before the subscriber had subscribed: "
                    "missing/first-event figures of this run are not reliable",
                    file=sys.stderr,
                    flush=True,
                )
    rows = figures(runs)
    doc: dict[str, Any] = {
        "environment": {**environment(), **machine()},
        "figures": rows,
        "runs": [
            {
                **asdict(replace(r, ceiling=None)),
                "ceiling": asdict(r.ceiling) if r.ceiling else None,
            }
            for r in runs
        ],
    }
    payload_bytes = len(payloads[1][0]) if payloads else None
    return cli.Measured(table(rows), doc, params={"payload_bytes": payload_bytes})


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write results/drain.json."""
    return cli.main("drain", parse_args(argv), measure)


if __name__ == "__main__":
    raise SystemExit(main())
