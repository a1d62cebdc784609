"""A command flood against a working gateway: memory, alarm latency, the other bus's period.

Each run starts mosquitto and the agent with two synthetic buses: `fence` (an alarm edge
every 200 ms, polled every 100 ms) and `env` (a reading every 100 ms). After a quiet
baseline of `--baseline` seconds, `mosquitto_pub -l` (a C client, faster than any Python
one) publishes `--commands` one-byte commands on `cmd/north-fence` at QoS 0 as fast as the
broker takes them, the attack of issue #9; then `--after` seconds more. Measured:

* agent RSS: VmRSS every 0.25 s over the run, and VmHWM (the kernel's peak) at the end;
* alarm edge sample -> subscriber (a paho subscriber of `alarm/#` in this process; the
  broker forwards an event as it acks it, so this is close to sample -> PUBACK), p50/p99/max,
  for edges sampled during the baseline and from the flood's start to the end of the run
  (the agent may still be reading the flood after the publisher is done);
* the env bus's period: gaps between its successive reading timestamps (the synthetic
  driver stamps each wake-up; a starved loop shows as long gaps), p99 and max;
* what the gate did: commands handled, dropped busy, busy replies, audit events.

The ceiling of each figure is the same gateway's baseline in the same run (no flood): the
ratio flood/baseline is the cost of the attack. `ts` is written in milliseconds, truncated.
"""

from __future__ import annotations

import itertools
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from agent.contract import TOPIC_ROOT, Origin
from bench import cli
from bench.agent_process import AgentProcess
from bench.peers import Mosquitto, ProcStat
from bench.report import fixed_table, num
from bench.stats import median, quantile, rounded
from tests.harness.process import need
from tests.harness.subscriber import Subscriber

DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else ""
ORIGIN = Origin(TOPIC_ROOT, "pt-023", "gw-flood")
CONFIG = """\
[agent]
school = "pt-023"
gateway = "gw-flood"
status_interval = "5s"

[mqtt]
url = "mqtt://127.0.0.1:{port}"
reconnect_min = "200ms"
reconnect_max = "1s"

[store]
path = "outbox.db"
max_size = "256MiB"

[commands]
allow = ["fence.arm"]

[[buses]]
id = "fence"
driver = "synthetic"

[[buses]]
id = "env"
driver = "synthetic"

[[devices]]
id = "north-fence"
profile = "synthetic-fence"
bus = "fence"
poll_interval = "100ms"
alarm_every = "200ms"

[[devices]]
id = "a101-env"
profile = "synthetic-load"
bus = "env"
rate = 10
"""


@dataclass
class Params:
    runs: int
    commands: int
    baseline: float
    after: float
    quick: bool
    out: Path | None


@dataclass
class FloodRun:
    flood_s: float
    rss_start_mib: float
    rss_peak_mib: float
    rss_end_mib: float
    hwm_mib: float
    alarm_base_p99_ms: float | None
    alarm_flood_p50_ms: float | None
    alarm_flood_p99_ms: float | None
    alarm_flood_max_ms: float | None
    alarms_in_flood: int
    env_base_gap_p99_ms: float | None
    env_flood_gap_p99_ms: float | None
    env_flood_gap_max_ms: float | None
    commands: dict[str, Any] = field(default_factory=dict)
    audits: int = 0


class Recorder(Subscriber):
    """Keeps (receipt time, kind, device, ts) of every event. Its filter matches the events
    only (kind/category/device under the gateway's base), not the flood on its commands."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[float, str, str, float]] = []
        super().__init__("127.0.0.1", port, ORIGIN.kind_filter("+"), persistent=False)

    def handle(self, msg: Any) -> None:
        now = time.time()
        parts = msg.topic.split("/")
        ts = datetime.fromisoformat(orjson.loads(msg.payload)["ts"]).timestamp()
        with self.lock:
            self.seen.append((now, parts[4], parts[6], ts))


def _window(
    events: list[tuple[float, str, str, float]], kind: str, t0: float, t1: float
) -> list[tuple[float, float]]:
    return [(recv, ts) for recv, k, _, ts in events if k == kind and t0 <= ts < t1]


def _gaps_ms(stamps: list[float]) -> list[float]:
    distinct = sorted(set(stamps))
    return [1000 * (b - a) for a, b in itertools.pairwise(distinct)]


def _ms(xs: list[float], q: float) -> float | None:
    return rounded(quantile(xs, q), 1)


def run_once(work: Path, p: Params) -> FloodRun:
    with Mosquitto() as broker:
        (work / "agent.toml").write_text(CONFIG.format(port=broker.port))
        agent = AgentProcess(work / "agent.toml")
        rec = Recorder(broker.port)
        try:
            agent.start()
            agent.wait_for(lambda s: s["broker"]["connected"], 15, lambda s: "no connection")
            stat = ProcStat(agent.pid)
            time.sleep(p.baseline)  # the baseline itself: a measured quiet period
            rss_start = stat.rss_mib()
            t0 = time.time()
            rss: list[float] = []
            done = threading.Event()
            sampler = threading.Thread(
                target=lambda: rss.extend(stat.rss_while(lambda: not done.is_set(), lambda: None))
            )
            sampler.start()
            pub = subprocess.run(
                [
                    need("mosquitto_pub", "mosquitto-clients"),
                    *("-h", "127.0.0.1", "-p", str(broker.port), "-q", "0", "-l"),
                    *("-t", ORIGIN.command_topic("north-fence")),
                ],
                input=b"x\n" * p.commands,
                capture_output=True,
                check=True,
            )
            t1 = time.time()
            time.sleep(p.after)  # the measured aftermath
            done.set()
            sampler.join()
            hwm = _vm(agent.pid, "VmHWM")
            assert agent.stop(30) == 0, pub.stderr  # noqa: S101 - a bench, not a test
            status = agent.status() or {}
        finally:
            if agent.alive():
                agent.kill()
            rec.close()
    with rec.lock:
        events = list(rec.seen)
    base_alarm = [1000 * (r - t) for r, t in _window(events, "alarm", t0 - p.baseline + 1, t0)]
    # The agent may still be reading the flood off its socket after mosquitto_pub is done:
    # "during the flood" is everything from its start to the end of the aftermath.
    flood_alarm = [1000 * (r - t) for r, t in _window(events, "alarm", t0, t1 + p.after)]
    env = [(ts, d) for _, k, d, ts in events if k == "telemetry" and d == "a101-env"]
    base_gaps = _gaps_ms([ts for ts, _ in env if t0 - p.baseline + 1 <= ts < t0])
    flood_gaps = _gaps_ms([ts for ts, _ in env if t0 <= ts < t1 + p.after])
    audits = sum(1 for _, k, _, _ in events if k == "audit")
    return FloodRun(
        flood_s=round(t1 - t0, 2),
        rss_start_mib=round(rss_start, 1),
        rss_peak_mib=round(max(rss or [0.0]), 1),
        rss_end_mib=round(rss[-1] if rss else 0.0, 1),
        hwm_mib=round(hwm, 1),
        alarm_base_p99_ms=_ms(base_alarm, 0.99),
        alarm_flood_p50_ms=_ms(flood_alarm, 0.5),
        alarm_flood_p99_ms=_ms(flood_alarm, 0.99),
        alarm_flood_max_ms=_ms(flood_alarm, 1.0),
        alarms_in_flood=len(flood_alarm),
        env_base_gap_p99_ms=_ms(base_gaps, 0.99),
        env_flood_gap_p99_ms=_ms(flood_gaps, 0.99),
        env_flood_gap_max_ms=_ms(flood_gaps, 1.0),
        commands=status.get("commands", {}),
        audits=audits,
    )


def _vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _median(runs: list[FloodRun], name: str) -> float | None:
    return median(getattr(r, name) for r in runs)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def measure(p: Params) -> cli.Measured:
    runs: list[FloodRun] = []
    print(f"flood: {p.runs} run(s) of {p.commands:,} one-byte commands at QoS 0")
    for i in range(p.runs):
        with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
            r = run_once(Path(tmp), p)
        runs.append(r)
        c = r.commands
        print(
            f"  run {i + 1}: flood {r.flood_s}s; RSS {r.rss_start_mib} -> peak {r.rss_peak_mib} "
            f"(VmHWM {r.hwm_mib}) MiB; alarm p99 {num(r.alarm_base_p99_ms)} -> "
            f"{num(r.alarm_flood_p99_ms)} ms ({r.alarms_in_flood} edges); env gap p99 "
            f"{num(r.env_base_gap_p99_ms)} -> {num(r.env_flood_gap_p99_ms)} ms; handled "
            f"{c.get('accepted', 0) + sum(c.get('rejected', {}).values())}, dropped "
            f"{c.get('dropped_busy')}, audits {r.audits}"
        )

    def m(name: str) -> float | None:
        return _median(runs, name)

    rows = [
        ("agent RSS before the flood", "MiB", m("rss_start_mib"), None),
        ("agent RSS peak (VmHWM)", "MiB", m("hwm_mib"), m("rss_start_mib")),
        ("agent RSS after the flood", "MiB", m("rss_end_mib"), m("rss_start_mib")),
        ("alarm sample -> subscriber p50, flood", "ms", m("alarm_flood_p50_ms"), None),
        (
            "alarm sample -> subscriber p99, flood",
            "ms",
            m("alarm_flood_p99_ms"),
            m("alarm_base_p99_ms"),
        ),
        ("alarm sample -> subscriber max, flood", "ms", m("alarm_flood_max_ms"), None),
        (
            "env bus period p99, flood (100 ms asked)",
            "ms",
            m("env_flood_gap_p99_ms"),
            m("env_base_gap_p99_ms"),
        ),
        ("env bus period max, flood", "ms", m("env_flood_gap_max_ms"), None),
        ("flood duration", "s", m("flood_s"), None),
    ]
    table = fixed_table(
        ("figure (median of runs)", "unit", "value", "baseline", "ratio"),
        [(n, u, num(v), num(b), _ratio(v, b) if b is not None else "-") for n, u, v, b in rows],
        left=(0, 1),
    )
    return cli.Measured(table, {"runs": [r.__dict__ for r in runs]})


def main(argv: list[str] | None = None) -> int:
    ap = cli.Parser("flood", DESCRIPTION, runs="baseline, flood, aftermath")
    ap.add_argument("--commands", type=int, default=100_000, help="commands sent; 100000")
    ap.add_argument("--baseline", type=float, default=5.0, help="quiet seconds first; 5")
    ap.add_argument("--after", type=float, default=5.0, help="seconds after the flood; 5")
    ap.last("1 run, 20000 commands")
    a = ap.parse(argv, quick={"runs": 1, "commands": 20_000, "baseline": 3.0, "after": 3.0})
    if a.runs < 1 or a.commands < 1 or a.baseline < 2:
        ap.error("--runs and --commands must be >= 1, --baseline >= 2")
    p = cli.params(Params, a)
    return cli.main("flood", p, measure)


if __name__ == "__main__":
    raise SystemExit(main())
