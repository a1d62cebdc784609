"""The morning rush at a school's gates: 40 card readers, bursts of 50 reads/s, a broker restart.

One run: mosquitto (persistent), the agent with `--serial` RDM6300 readers (one pty each, the
agent's card-serial driver; this process writes the real frames on the other end) and
`--osdp` OSDP readers (libosdp's PeripheralDevice in its own process on a pty, Secure
Channel on, the agent's osdp driver), and a QoS 1 subscriber with a persistent session.
`--reads` reads (one new student card each) over `--minutes`: a steady trickle plus bell
bursts at `--burst` reads/s across all readers; the broker is stopped `--down` seconds at
mid-rush and started again. Measured:

* every read delivered, once, in order per reader: each access event's hash is matched to
  the card it was made from (the bench holds the school key), per reader in seq order;
* read -> subscriber p50/p99 (the read's time is when the frame was written / the PD was told;
  the subscriber's copy leaves the broker as it acks the agent's PUBLISH, so this is close to
  read -> PUBACK plus one hop): for reads made while the broker was up, and all of them.
  It includes `[privacy] dedup_window` (2 s by default: an event leaves when its card's
  window closes) — the `--dedup` option sets it;
* the agent's CPU (% of one core) and peak RSS over the rush.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from agent.cards import CardKey, CardNumber, card_hash
from agent.contract import TOPIC_ROOT, Origin
from agent.profiles import load_profile_file, shipped_profiles
from bench import cli
from bench.agent_process import AgentProcess
from bench.peers import ProcStat
from bench.report import fixed_table, num
from bench.stats import quantile, rounded
from drivers.card_serial.frames import FrameSpec, encode
from tests.harness.broker import Broker
from tests.harness.pty import PtyPair
from tests.harness.subscriber import Subscriber
from tests.harness.waiting import wait_for

DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else ""
ORIGIN = Origin(TOPIC_ROOT, "pt-023", "gw-gate")
KEY = CardKey("rush-key", os.urandom(32))
HEAD = """\
[agent]
school = "{school}"
gateway = "{gateway}"
status_interval = "5s"
drain_timeout = "10s"

[mqtt]
url = "mqtt://127.0.0.1:{port}"
reconnect_min = "200ms"
reconnect_max = "2s"

[store]
path = "outbox.db"

[privacy]
card_key_file = "card.key"
card_key_id = "{key_id}"
dedup_window = "{dedup}"
"""


@dataclass
class Params:
    runs: int
    minutes: float
    reads: int
    serial: int
    osdp: int
    burst: int
    down: float
    dedup: float
    quick: bool
    out: Path | None


@dataclass
class RushRun:
    reads: int
    delivered: int
    missing: int
    duplicates: int
    out_of_order_readers: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_p99_all_ms: float | None
    latency_max_all_ms: float | None
    cpu_percent: float
    rss_peak_mib: float
    broker_down_s: float
    extra: dict[str, Any] = field(default_factory=dict)


class Seen(Subscriber):
    """Keeps (receipt time, device, seq, event id, hash) of every access event."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[float, str, int, str, str]] = []
        super().__init__(
            "127.0.0.1",
            port,
            ORIGIN.kind_filter("access"),
            client_id="rush-subscriber",
            persistent=True,
            resubscribe=False,
        )

    def handle(self, msg: Any) -> None:
        doc = orjson.loads(msg.payload)
        with self.lock:
            self.got.append(
                (time.time(), doc["device"], doc["seq"], doc["id"], doc["card"]["hash"])
            )


def schedule(p: Params, rng: random.Random) -> list[float]:
    """Read times (s from the start): bell bursts at `burst`/s, the rest a steady trickle."""
    span = p.minutes * 60
    bursts = max(1, round(0.6 * p.reads / (p.burst * 6)))  # ~60 % of reads in 6 s bursts
    times: list[float] = []
    for b in range(bursts):
        t0 = span * (b + 1) / (bursts + 1)
        times += [t0 + i / p.burst for i in range(min(p.burst * 6, p.reads - len(times)))]
    rest = p.reads - len(times)
    times += sorted(rng.uniform(0, span) for _ in range(rest))
    return sorted(times)


def run_once(work: Path, p: Params, rng: random.Random) -> RushRun:
    (work / "card.key").write_bytes(KEY.secret)
    os.chmod(work / "card.key", 0o600)
    spec = FrameSpec.model_validate(
        load_profile_file(shipped_profiles()["rdm6300"]).point("card").wire  # type: ignore[union-attr]
    )
    broker = Broker(work / "broker", persistent=True, notice_log=False)
    broker.start()
    lines = [PtyPair(work / f"serial{i}") for i in range(p.serial)]
    for line in lines:
        line.start()
    text = HEAD.format(
        school=ORIGIN.school,
        gateway=ORIGIN.gateway,
        port=broker.port,
        key_id=KEY.key_id,
        dedup=f"{p.dedup}s",
    )
    for i, line in enumerate(lines):
        text += (
            f'\n[[buses]]\nid = "s{i}"\ndriver = "card-serial"\nport = "{line.a}"\n'
            f'\n[[devices]]\nid = "gate-s{i}"\nprofile = "rdm6300"\nbus = "s{i}"\n'
            'door = "main-gate"\ndirection = "in"\n'
        )
    pds, osdp_lines = _osdp_readers(work, p, text_add := [])
    text += "".join(text_add)
    (work / "agent.toml").write_text(text)
    agent = AgentProcess(work / "agent.toml")
    sub = Seen(broker.port)
    writers = [os.open(line.b, os.O_WRONLY | os.O_NOCTTY) for line in lines]
    readers = [f"gate-s{i}" for i in range(p.serial)] + [f"gate-o{i}" for i in range(len(pds))]
    sent: dict[str, list[tuple[float, str]]] = {r: [] for r in readers}
    try:
        agent.start()
        agent.wait_for(
            lambda s: (
                s["broker"]["connected"]
                and all(d["online"] for d in s.get("devices", {}).values())
                and len(s.get("devices", {})) == len(readers)
            ),
            60,
            lambda s: f"readers not all online: {s.get('devices')}",
        )
        stat = ProcStat(agent.pid)
        times = schedule(p, rng)
        restart_at = p.minutes * 60 / 2
        cpu0, t0 = stat.cpu_seconds(), time.time()
        rss: list[float] = []
        done = threading.Event()
        sampler = threading.Thread(
            target=lambda: rss.extend(stat.rss_while(lambda: not done.is_set(), lambda: None))
        )
        sampler.start()
        down_from = down_to = 0.0
        restarted = False
        for n, at in enumerate(times):
            if not restarted and at >= restart_at:
                restarted = True
                down_from = time.time()
                broker.stop()
                time.sleep(p.down)  # the outage itself
                broker.start()
                down_to = time.time()
            delay = t0 + at - time.time()
            if delay > 0:
                time.sleep(delay)  # the schedule: a read at its time
            reader = rng.choice(readers)
            value = 0x0A00000000 + 100_000 + n  # student n's card: one read each
            h = card_hash(KEY, CardNumber(value, 40), "exact")
            when = time.time()
            if reader.startswith("gate-s"):
                os.write(writers[int(reader[6:])], encode(spec, value))
            else:
                pd = pds[int(reader[6:])]
                pd.card(value.to_bytes(5, "big"), 40, fmt=0)
            sent[reader].append((when, h))
        expected = sum(len(v) for v in sent.values())
        wait_for(
            lambda: len({g[3] for g in sub.got}) >= expected, 120, "every read at the subscriber"
        )
        cpu1, t1 = stat.cpu_seconds(), time.time()
        done.set()
        sampler.join()
    finally:
        done_stop = agent.stop(30) if agent.alive() else None
        sub.close()
        for fd in writers:
            os.close(fd)
        for pd in pds:
            pd.stop()
        for line in lines + osdp_lines:
            line.stop()
        broker.stop()
    with sub.lock:
        got = list(sub.got)
    return _score(
        p,
        sent,
        got,
        cpu=(cpu1 - cpu0) / (t1 - t0),
        rss_peak=max(rss or [0.0]),
        down=(down_from, down_to),
        stop_code=done_stop,
    )


def _osdp_readers(work: Path, p: Params, text: list[str]) -> tuple[list[Any], list[PtyPair]]:
    if p.osdp <= 0:
        return [], []
    from tests.harness.osdp_pd import OsdpReader

    pds, lines = [], []
    for i in range(p.osdp):
        line = PtyPair(work / f"osdp{i}")
        line.start()
        scbk = os.urandom(16)
        kf = work / f"osdp{i}.key"
        kf.write_text(scbk.hex())
        os.chmod(kf, 0o600)
        pd = OsdpReader(work / f"pd{i}", line.b, 1, scbk)
        pd.start()
        text.append(
            f'\n[[buses]]\nid = "o{i}"\ndriver = "osdp"\nport = "{line.a}"\n'
            f'\n[[devices]]\nid = "gate-o{i}"\nprofile = "generic-osdp-reader"\nbus = "o{i}"\n'
            f'address = 1\nscbk_file = "{kf}"\ndoor = "main-gate"\ndirection = "in"\n'
        )
        pds.append(pd)
        lines.append(line)
    return pds, lines


def _score(
    p: Params,
    sent: dict[str, list[tuple[float, str]]],
    got: list[tuple[float, str, int, str, str]],
    *,
    cpu: float,
    rss_peak: float,
    down: tuple[float, float],
    stop_code: int | None,
) -> RushRun:
    ids: dict[str, int] = {}
    for g in got:
        ids[g[3]] = ids.get(g[3], 0) + 1
    duplicates = sum(n - 1 for n in ids.values())
    first: dict[str, tuple[float, str, int, str, str]] = {}
    for g in got:
        first.setdefault(g[3], g)
    by_reader: dict[str, list[tuple[int, str, float]]] = {}
    for recv, dev, seq, _, h in first.values():
        by_reader.setdefault(dev, []).append((seq, h, recv))
    lat_up, lat_all, missing, disorder, delivered = [], [], 0, 0, 0
    for reader, reads in sent.items():
        events = sorted(by_reader.get(reader, []))
        hashes = [h for _, h, _ in events]
        want = [h for _, h in reads]
        missing += len(set(want) - set(hashes))
        delivered += len(set(want) & set(hashes))
        if [h for h in hashes if h in set(want)] != [h for h in want if h in set(hashes)]:
            disorder += 1
        recv_of = {h: r for _, h, r in events}
        for when, h in reads:
            if h in recv_of:
                ms = 1000 * (recv_of[h] - when)
                lat_all.append(ms)
                if not (down[0] - 3 <= when <= down[1] + 3):
                    lat_up.append(ms)
    return RushRun(
        reads=sum(len(v) for v in sent.values()),
        delivered=delivered,
        missing=missing,
        duplicates=duplicates,
        out_of_order_readers=disorder,
        latency_p50_ms=rounded(quantile(lat_up, 0.5), 1),
        latency_p99_ms=rounded(quantile(lat_up, 0.99), 1),
        latency_p99_all_ms=rounded(quantile(lat_all, 0.99), 1),
        latency_max_all_ms=rounded(quantile(lat_all, 1.0), 1),
        cpu_percent=round(100 * cpu, 1),
        rss_peak_mib=round(rss_peak, 1),
        broker_down_s=round(down[1] - down[0], 1),
        extra={"agent_exit": stop_code, "started": datetime.now().isoformat(timespec="seconds")},
    )


def measure(p: Params) -> cli.Measured:
    rng = random.Random(1)
    runs = []
    print(
        f"rush: {p.runs} run(s): {p.reads} reads in {p.minutes:g} min on {p.serial} serial + "
        f"{p.osdp} OSDP readers, bursts {p.burst}/s, broker down {p.down:g}s mid-rush"
    )
    for i in range(p.runs):
        with tempfile.TemporaryDirectory(prefix="bench-rush-") as tmp:
            r = run_once(Path(tmp), p, rng)
        runs.append(r)
        print(
            f"  run {i + 1}: delivered {r.delivered}/{r.reads}, missing {r.missing}, dup "
            f"{r.duplicates}, out of order {r.out_of_order_readers} readers; read -> subscriber "
            f"p50/p99 {num(r.latency_p50_ms)}/{num(r.latency_p99_ms)} ms (all reads p99 "
            f"{num(r.latency_p99_all_ms)}, max {num(r.latency_max_all_ms)}); CPU "
            f"{r.cpu_percent} %, RSS {r.rss_peak_mib} MiB"
        )
    r = runs[-1]
    rows = [
        ("reads / delivered once", f"{r.reads} / {r.delivered}"),
        (
            "missing / duplicates / readers out of order",
            f"{r.missing} / {r.duplicates} / {r.out_of_order_readers}",
        ),
        (
            "read -> subscriber p50 / p99, broker up [ms]",
            f"{num(r.latency_p50_ms)} / {num(r.latency_p99_ms)}",
        ),
        (
            "read -> subscriber p99 / max, all reads [ms]",
            f"{num(r.latency_p99_all_ms)} / {num(r.latency_max_all_ms)}",
        ),
        ("of which de-duplication hold [ms]", f"{p.dedup * 1000:g}"),
        ("agent CPU over the rush [% of a core]", str(r.cpu_percent)),
        ("agent RSS peak [MiB]", str(r.rss_peak_mib)),
        ("broker down [s]", str(r.broker_down_s)),
    ]
    table = fixed_table(("figure (last run)", "value"), rows, left=(0,))
    return cli.Measured(table, {"runs": [asdict(x) for x in runs]})


def main(argv: list[str] | None = None) -> int:
    ap = cli.Parser("rush", DESCRIPTION, runs="a whole rush")
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the rush; 10")
    ap.add_argument("--reads", type=int, default=1500, help="card reads; 1500")
    ap.add_argument("--serial", type=int, default=32, help="serial (RDM6300) readers; 32")
    ap.add_argument("--osdp", type=int, default=8, help="OSDP readers (libosdp PDs); 8")
    ap.add_argument("--burst", type=int, default=50, help="reads/s in a bell burst; 50")
    ap.add_argument("--down", type=float, default=5.0, help="broker outage mid-rush, s; 5")
    ap.add_argument("--dedup", type=float, default=2.0, help="[privacy] dedup_window, s; 2")
    ap.last("1 min, 150 reads, 8 serial + 2 OSDP readers")
    a = ap.parse(
        argv,
        quick={"runs": 1, "minutes": 1.0, "reads": 150, "serial": 8, "osdp": 2},
    )
    if a.runs < 1 or a.reads < 1 or a.serial + a.osdp < 1 or a.minutes <= 0:
        ap.error("--runs, --reads >= 1, at least one reader, --minutes > 0")
    return cli.main("rush", cli.params(Params, a), measure)


if __name__ == "__main__":
    raise SystemExit(main())
