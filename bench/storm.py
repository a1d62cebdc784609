"""An alarm storm from one device: what it costs the gateway's other bus, and the broker.

Each run starts mosquitto and the agent with two synthetic buses: `fence`, a device read
`--rate` times a second whose alarm zone flips every millisecond (a flapping node: about one
edge per read), and `env`, a reading every 100 ms. The baseline is the same gateway with the
zone quiet, in the same run. Over `--seconds`, measured:

* env telemetry sample -> subscriber p50/p99 and its period (gaps between successive
  reading timestamps): what the storm costs another bus;
* alarm edges the fence produced (`alarm_storm_edges` of its last storm state event, plus the
  edges sent) against alarm events that reached the broker;
* the agent's CPU (% of one core) and RSS.

Before the points layer coalesced storms (issue #9), a flapping node sent ~4,900 critical
alarms a second and the other buses' telemetry waited 5.4 s instead of 0.06 s.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import cli
from bench.agent_process import AgentProcess
from bench.flood import ORIGIN, Recorder, _gaps_ms, _ms, _ratio
from bench.peers import Mosquitto, ProcStat
from bench.report import fixed_table, num
from bench.stats import median
from tests.harness.waiting import wait_for

DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else ""
CONFIG = """\
[agent]
school = "{school}"
gateway = "{gateway}"
status_interval = "5s"

[mqtt]
url = "mqtt://127.0.0.1:{port}"

[store]
path = "outbox.db"
max_size = "256MiB"

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
rate = {rate}
alarm_every = "{every}"

[[devices]]
id = "a101-env"
profile = "synthetic-load"
bus = "env"
rate = 10
"""


@dataclass
class Params:
    runs: int
    seconds: float
    rate: float
    quick: bool
    out: Path | None


@dataclass
class StormSide:
    env_p50_ms: float | None
    env_p99_ms: float | None
    env_gap_p99_ms: float | None
    env_gap_max_ms: float | None
    edges: int
    alarm_events: int
    cpu_percent: float
    rss_mib: float


class StormRecorder(Recorder):
    """A Recorder that also keeps the fence's last `alarm_storm_edges`."""

    def __init__(self, port: int) -> None:
        self.storm_edges = 0
        super().__init__(port)

    def handle(self, msg: Any) -> None:
        super().handle(msg)
        if b"alarm_storm_edges" in msg.payload:
            edges = orjson.loads(msg.payload)["alarm_storm_edges"]
            self.storm_edges = max(self.storm_edges, edges)


def run_side(work: Path, p: Params, *, storm: bool) -> StormSide:
    with Mosquitto() as broker:
        (work / "agent.toml").write_text(
            CONFIG.format(
                school=ORIGIN.school,
                gateway=ORIGIN.gateway,
                port=broker.port,
                rate=p.rate,
                every="1ms" if storm else "1h",
            )
        )
        agent = AgentProcess(work / "agent.toml")
        rec = StormRecorder(broker.port)
        try:
            agent.start()
            agent.wait_for(lambda s: s["broker"]["connected"], 15, lambda s: "no connection")
            stat = ProcStat(agent.pid)
            wait_for(lambda: len(rec.seen) > 10, 10, "the first events")
            t0, cpu0 = time.time(), stat.cpu_seconds()
            time.sleep(p.seconds)  # the measured window
            t1, cpu1, rss = time.time(), stat.cpu_seconds(), stat.rss_mib()
            assert agent.stop(30) == 0  # noqa: S101 - a bench, not a test
        finally:
            if agent.alive():
                agent.kill()
            rec.close()
    with rec.lock:
        events = list(rec.seen)
    env = [(r, ts) for r, k, d, ts in events if k == "telemetry" and d == "a101-env"]
    lat = [1000 * (r - ts) for r, ts in env if t0 <= ts < t1]
    gaps = _gaps_ms([ts for _, ts in env if t0 <= ts < t1])
    alarms = [1 for _, k, d, ts in events if k == "alarm" and d == "north-fence" and t0 <= ts < t1]
    return StormSide(
        env_p50_ms=_ms(lat, 0.5),
        env_p99_ms=_ms(lat, 0.99),
        env_gap_p99_ms=_ms(gaps, 0.99),
        env_gap_max_ms=_ms(gaps, 1.0),
        edges=rec.storm_edges,
        alarm_events=len(alarms),
        cpu_percent=round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        rss_mib=round(rss, 1),
    )


def measure(p: Params) -> cli.Measured:
    runs: list[dict[str, Any]] = []
    print(f"storm: {p.runs} run(s) of {p.seconds:g}s, fence read {p.rate:g}/s flipping every 1 ms")
    for i in range(p.runs):
        with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
            base = run_side(Path(tmp), p, storm=False)
        with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
            storm = run_side(Path(tmp), p, storm=True)
        runs.append({"run": i + 1, "baseline": base.__dict__, "storm": storm.__dict__})
        print(
            f"  run {i + 1}: env p99 {num(base.env_p99_ms)} -> {num(storm.env_p99_ms)} ms, "
            f"period p99 {num(base.env_gap_p99_ms)} -> {num(storm.env_gap_p99_ms)} ms; "
            f"{storm.edges:,} edges coalesced, {storm.alarm_events} alarm events sent; "
            f"CPU {base.cpu_percent} -> {storm.cpu_percent} %"
        )

    def m(side: str, name: str) -> float | None:
        return median(r[side][name] for r in runs)

    rows = [
        (
            f"env sample -> subscriber {q}",
            "ms",
            m("storm", f"env_{q}_ms"),
            m("baseline", f"env_{q}_ms"),
        )
        for q in ("p50", "p99")
    ] + [
        (
            "env bus period p99 (100 ms asked)",
            "ms",
            m("storm", "env_gap_p99_ms"),
            m("baseline", "env_gap_p99_ms"),
        ),
        ("env bus period max", "ms", m("storm", "env_gap_max_ms"), m("baseline", "env_gap_max_ms")),
        ("fence alarm edges coalesced", "edges", m("storm", "edges"), None),
        ("fence alarm events sent", "events", m("storm", "alarm_events"), None),
        ("agent CPU", "%", m("storm", "cpu_percent"), m("baseline", "cpu_percent")),
        ("agent RSS", "MiB", m("storm", "rss_mib"), m("baseline", "rss_mib")),
    ]
    table = fixed_table(
        ("figure (median of runs)", "unit", "storm", "quiet zone", "ratio"),
        [(n, u, num(v), num(b), _ratio(v, b) if b is not None else "-") for n, u, v, b in rows],
        left=(0, 1),
    )
    return cli.Measured(table, {"runs": runs})


def main(argv: list[str] | None = None) -> int:
    ap = cli.Parser("storm", DESCRIPTION, runs="quiet zone, storm")
    ap.seconds(10.0, "measured window per side")
    ap.add_argument("--rate", type=float, default=2000, help="fence reads/s; 2000")
    ap.last("1 run of 4 s")
    a = ap.parse(argv, quick={"runs": 1, "seconds": 4.0})
    if a.runs < 1 or a.seconds <= 1 or a.rate <= 0:
        ap.error("--runs >= 1, --seconds > 1, --rate > 0")
    return cli.main("storm", cli.params(Params, a), measure)


if __name__ == "__main__":
    raise SystemExit(main())
