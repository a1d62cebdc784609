"""A big school's class boards: a morning swipe burst, then an emergency notice to every board.

Each run starts mosquitto and the agent as the hub of `--boards` class boards (driver
classboard, canonical profile, one token each), and the board simulator
(`python -m drivers.classboard.simulator`, its own process): every board heartbeats every
`--interval` s and long-polls its notices; each posts `--swipes` swipes, one at a time at
random moments over `--spread` s (the morning burst: students tapping their cards). Then
`--idle` s with heartbeats and long-polls only. Then the district's emergency notice for the
whole school: a `notice_post` command published on the hub's command topic. Measured:

* the agent's CPU (% of one core) over the burst and over the quiet window, its RSS peak
  (VmRSS every 0.25 s) over the run; swipes taken (the hub's counter) against access events
  at the subscriber;
* post -> each board got the notice (the simulator's receipt of the long-poll's answer) and
  post -> each board's `displayed` receipt at the subscriber (a state event: the board posts
  the receipt, the hub records it in SQLite and the agent publishes it), p50/p99/max over
  the boards. The post's time is just before the command's PUBLISH (QoS 1) leaves this
  process; all times are this machine's wall clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from agent.contract import TOPIC_ROOT, Origin
from bench import cli
from bench.agent_process import ROOT, AgentProcess
from bench.peers import Mosquitto, ProcStat, stop_process
from bench.report import fixed_table, num
from bench.stats import median, quantile, rounded
from tests.harness.ports import free_port
from tests.harness.subscriber import Subscriber
from tests.harness.waiting import wait_for

DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else ""
ORIGIN = Origin(TOPIC_ROOT, "pt-023", "gw-boards")
HEAD = """\
[agent]
school = "{school}"
gateway = "{gateway}"
status_interval = "1s"

[mqtt]
url = "mqtt://127.0.0.1:{port}"

[store]
path = "outbox.db"

[commands]
allow = ["classboard.notice_post", "classboard.notice_revoke"]

[privacy]
card_key_file = "card.key"
"""
BOARDS_BUS = """
[[buses]]
id = "boards"
driver = "classboard"
listen = "127.0.0.1:{listen}"

[[devices]]
id = "boards-hub"
profile = "classboard-hub"
bus = "boards"
"""
BOARD = """
[[devices]]
id = "{name}"
profile = "classboard-v1"
bus = "boards"
token_file = "tokens/{name}.token"
class = "{klass}"
location = {{ building = "{building}", floor = {floor}, room = "{room}" }}
"""


@dataclass
class Params:
    runs: int
    boards: int
    interval: float
    swipes: int
    spread: float
    idle: float
    quick: bool
    out: Path | None


@dataclass
class BoardsRun:
    swipes_sent: int
    swipes_taken: int
    access_events: int
    cpu_burst_percent: float
    cpu_quiet_percent: float
    rss_peak_mib: float
    boards_got: int
    boards_receipted: int
    got_p50_ms: float | None
    got_p99_ms: float | None
    receipt_p50_ms: float | None
    receipt_p99_ms: float | None
    receipt_max_ms: float | None
    requests: int
    refused: int


class Seen(Subscriber):
    """(receipt time, kind, device, document) of every state and access event."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[float, str, str, dict[str, Any]]] = []
        super().__init__("127.0.0.1", port, f"{ORIGIN.base}/#", client_id="boards-bench")

    def handle(self, msg: Any) -> None:
        parts = msg.topic.split("/")
        if len(parts) == 7 and parts[4] in ("state", "access"):
            doc = orjson.loads(msg.payload)
            with self.lock:
                self.got.append((time.time(), parts[4], doc["device"], doc))

    def count(self, kind: str) -> int:
        with self.lock:
            return sum(1 for g in self.got if g[1] == kind)

    def receipts(self, nid: str) -> dict[str, float]:
        with self.lock:
            got = list(self.got)
        out: dict[str, float] = {}
        for t, kind, dev, doc in got:
            receipt = (doc.get("notice_id"), doc.get("notice_status"))
            if kind == "state" and receipt == (nid, "displayed"):
                out.setdefault(dev, t)
        return out


def boards_toml(work: Path, boards: int, listen: int) -> str:
    """The hub's bus and device and `boards` boards (a token file each in `work/tokens`)."""
    (work / "tokens").mkdir()
    text = BOARDS_BUS.format(listen=listen)
    for i in range(boards):
        name = f"board-{i + 1}"
        token = work / "tokens" / f"{name}.token"
        token.write_text(os.urandom(18).hex())
        os.chmod(token, 0o600)
        grade, n = divmod(i, 10)
        text += BOARD.format(
            name=name,
            klass=f"{grade + 1}-{n + 1}",
            building="AB"[i % 2],
            floor=grade + 1,
            room=f"{grade + 1}{n + 1:02d}",
        )
    return text


def write_school(work: Path, p: Params, broker_port: int, listen: int) -> None:
    (work / "card.key").write_bytes(os.urandom(32))
    os.chmod(work / "card.key", 0o600)
    text = HEAD.format(school=ORIGIN.school, gateway=ORIGIN.gateway, port=broker_port)
    (work / "agent.toml").write_text(text + boards_toml(work, p.boards, listen))


def run_once(work: Path, p: Params, i: int) -> BoardsRun:
    listen = free_port()
    with Mosquitto() as broker:
        write_school(work, p, broker.port, listen)
        agent = AgentProcess(work / "agent.toml")
        seen = Seen(broker.port)
        sim: subprocess.Popen[bytes] | None = None
        duration = p.spread + p.idle + 120  # it is stopped (SIGTERM) once measured
        try:
            agent.start()
            agent.wait_for(lambda s: s["broker"]["connected"], 30, lambda s: "no connection")
            stat = ProcStat(agent.pid)
            rss: list[float] = []
            done = threading.Event()
            sampler = threading.Thread(
                target=lambda: rss.extend(stat.rss_while(lambda: not done.is_set(), lambda: None))
            )
            sampler.start()
            with (work / "sim.log").open("wb") as log:
                sim = subprocess.Popen(
                    [sys.executable, "-m", "drivers.classboard.simulator",
                     "--url", f"http://127.0.0.1:{listen}", "--boards", str(p.boards),
                     "--token-dir", str(work / "tokens"), "--interval", str(p.interval),
                     "--swipes", str(p.swipes), "--spread", str(p.spread),
                     "--duration", str(duration), "--stats", str(work / "sim.json")],
                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            t0, cpu0 = time.time(), stat.cpu_seconds()
            time.sleep(p.spread)  # the burst: the simulator's swipes are spread over it
            t1, cpu1 = time.time(), stat.cpu_seconds()
            time.sleep(p.idle)  # the quiet window: heartbeats and long-polls only
            t2, cpu2 = time.time(), stat.cpu_seconds()
            last = agent.wait_for(
                lambda s: s["buses"]["boards"].get("polls_waiting", 0) >= p.boards,
                30,
                lambda s: f"boards not all long-polling: {s.get('buses')}",
            )
            nid = f"evacuate-{i + 1}"
            cmd = {
                "id": f"cmd-bench-{i + 1:04d}",
                "action": "notice_post",
                "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "args": {
                    "id": nid,
                    "title": "Evacuate",
                    "body": "Leave by the nearest stairs.",
                    "level": "emergency",
                },
            }
            posted = time.time()
            seen.publish(ORIGIN.command_topic("boards-hub"), json.dumps(cmd).encode())
            wait_for(lambda: len(seen.receipts(nid)) >= p.boards, 30, "every board's receipt")
            receipts = seen.receipts(nid)
            sent = p.boards * p.swipes
            wait_for(lambda: seen.count("access") >= sent, 30, "every swipe's access event")
            sim.terminate()  # the simulator writes its stats and exits
            assert sim.wait(30) == 0  # noqa: S101 - a bench, not a test
            last = agent.wait_status(time.time(), 10)
            done.set()
            sampler.join()
        finally:
            if sim is not None and sim.poll() is None:
                stop_process(sim, 5)
            if agent.alive():
                agent.stop(30)
            seen.close()
    stats = json.loads((work / "sim.json").read_text())
    got = [1000 * (t["received"] - posted) for t in stats["notices"].get(f"{nid}@1", {}).values()]
    lat = [1000 * (t - posted) for t in receipts.values()]
    counts = last["buses"]["boards"]
    return BoardsRun(
        swipes_sent=sent,
        swipes_taken=int(counts.get("swipes", 0)),
        access_events=seen.count("access"),
        cpu_burst_percent=round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        cpu_quiet_percent=round(100 * (cpu2 - cpu1) / (t2 - t1), 1),
        rss_peak_mib=round(max(rss or [0.0]), 1),
        boards_got=len(got),
        boards_receipted=len(lat),
        got_p50_ms=rounded(quantile(got, 0.5), 1),
        got_p99_ms=rounded(quantile(got, 0.99), 1),
        receipt_p50_ms=rounded(quantile(lat, 0.5), 1),
        receipt_p99_ms=rounded(quantile(lat, 0.99), 1),
        receipt_max_ms=rounded(quantile(lat, 1.0), 1),
        requests=int(counts.get("requests", 0)),
        refused=sum(int(v) for k, v in counts.items() if k.startswith("http_")),
    )


def measure(p: Params) -> cli.Measured:
    runs: list[BoardsRun] = []
    print(
        f"classboard: {p.runs} run(s): {p.boards} boards, heartbeat every {p.interval:g} s, "
        f"{p.swipes} swipes each over {p.spread:g} s, {p.idle:g} s quiet, then an emergency"
    )
    for i in range(p.runs):
        with tempfile.TemporaryDirectory(prefix="bench-classboard-") as tmp:
            r = run_once(Path(tmp), p, i)
        runs.append(r)
        print(
            f"  run {i + 1}: swipes {r.swipes_taken}/{r.swipes_sent} taken, "
            f"{r.access_events} access events; CPU burst {r.cpu_burst_percent} %, quiet "
            f"{r.cpu_quiet_percent} %, RSS peak {r.rss_peak_mib} MiB; emergency -> board "
            f"p50/p99 {num(r.got_p50_ms)}/{num(r.got_p99_ms)} ms, -> receipt at the subscriber "
            f"p50/p99/max {num(r.receipt_p50_ms)}/{num(r.receipt_p99_ms)}/"
            f"{num(r.receipt_max_ms)} ms ({r.boards_receipted} boards)"
        )

    def m(name: str) -> float | None:
        return median(getattr(r, name) for r in runs)

    def n(name: str) -> str:
        v = m(name)
        return "-" if v is None else f"{v:.0f}"

    rows = [
        ("swipes taken / sent", "swipes", f"{n('swipes_taken')} / {n('swipes_sent')}"),
        ("access events at the subscriber", "events", n("access_events")),
        ("agent CPU over the swipe burst", "% of a core", num(m("cpu_burst_percent"))),
        ("agent CPU, heartbeats + long-polls only", "% of a core", num(m("cpu_quiet_percent"))),
        ("agent RSS peak", "MiB", num(m("rss_peak_mib"))),
        ("emergency post -> board has it, p50 / p99", "ms",
         f"{num(m('got_p50_ms'))} / {num(m('got_p99_ms'))}"),
        ("emergency post -> receipt at subscriber, p50 / p99", "ms",
         f"{num(m('receipt_p50_ms'))} / {num(m('receipt_p99_ms'))}"),
        ("emergency post -> last board's receipt", "ms", num(m("receipt_max_ms"))),
        ("boards receipted", "boards", n("boards_receipted")),
        ("hub requests / refused (4xx)", "requests", f"{n('requests')} / {n('refused')}"),
    ]  # fmt: skip
    table = fixed_table(("figure (median of runs)", "unit", "value"), rows, left=(0, 1))
    return cli.Measured(table, {"runs": [asdict(r) for r in runs]})


def main(argv: list[str] | None = None) -> int:
    ap = cli.Parser("classboard", DESCRIPTION, runs="a whole school morning")
    ap.add_argument("--boards", type=int, default=60, help="class boards; 60")
    ap.add_argument("--interval", type=float, default=30.0, help="heartbeat every, s; 30")
    ap.add_argument("--swipes", type=int, default=30, help="swipes per board; 30")
    ap.add_argument("--spread", type=float, default=60.0, help="the swipe burst's length, s; 60")
    ap.add_argument("--idle", type=float, default=60.0, help="quiet window after it, s; 60")
    ap.last("1 run, 10 boards, 5 swipes each over 10 s, 5 s quiet")
    a = ap.parse(argv, quick={"runs": 1, "boards": 10, "swipes": 5, "spread": 10.0, "idle": 5.0})
    if a.runs < 1 or a.boards < 1 or a.swipes < 0 or a.spread <= 0 or a.idle <= 0:
        ap.error("--runs, --boards >= 1, --swipes >= 0, --spread and --idle > 0")
    return cli.main("classboard", cli.params(Params, a), measure)


if __name__ == "__main__":
    raise SystemExit(main())
