"""The BLE driver at `--devices` advertising devices: the agent's CPU while it scans them.

No radio: python-dbusmock's bluez5 template on a private D-Bus (tests/harness/bluez.py) plays
BlueZ, and the real bleak in the agent scans it (passive, AdvertisementMonitor). The devices
are all configured (the worst case: every advert is decoded): half plain BTHome v2 sensors,
a quarter encrypted ones (AES-CCM, a bind key each), a quarter allowlisted iBeacon tags.
Each advertises `--rate` times a second (a new packet id / counter each time, temperature
moving 0.05 °C so that the points' deadband keeps most adverts from being events). Measured
over `--seconds` after `--warmup`: the agent's CPU (% of one core), adverts the driver
counted per second against those sent, events published, the agent's RSS; and the mock's
own CPU (it, not the agent, bounds the rate reachable here).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import cli
from bench.agent_process import AgentProcess
from bench.peers import Mosquitto, ProcStat
from bench.report import fixed_table, num
from bench.stats import median
from tests.harness import ble_adverts as enc
from tests.harness.bluez import BluezMock
from tests.harness.subscriber import Subscriber

DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else ""
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
UUID = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"
HEAD = """\
[agent]
school = "pt-023"
gateway = "gw-ble"
status_interval = "1s"

[mqtt]
url = "mqtt://127.0.0.1:{port}"

[store]
path = "outbox.db"

[privacy]
card_key_file = "card.key"
"""
BLE_BUS = """
[[buses]]
id = "ble"
driver = "ble"
adapter = "hci0"
"""


@dataclass
class Params:
    runs: int
    devices: int
    rate: float
    seconds: float
    warmup: float
    quick: bool
    out: Path | None


@dataclass
class BleRun:
    adverts_sent_per_s: float
    adverts_counted_per_s: float
    events: int
    cpu_percent: float
    mock_cpu_percent: float
    rss_mib: float
    rejected: int


def mac(i: int) -> str:
    return f"A4:C1:38:{i >> 16 & 0xFF:02X}:{i >> 8 & 0xFF:02X}:{i & 0xFF:02X}"


def kinds(n: int) -> list[str]:
    return ["plain" if i % 4 in (0, 1) else "secret" if i % 4 == 2 else "tag" for i in range(n)]


def ble_toml(work: Path, devices: int) -> str:
    """Bus `ble` and its devices (kinds(devices)); the bind key in `work/bind.key`."""
    text = BLE_BUS
    tags = []
    for i, kind in enumerate(kinds(devices)):
        if kind == "tag":
            tags.append(f'"ibeacon:{UUID}:1:{i}"')
            continue
        text += f'\n[[devices]]\nid = "s{i}"\nprofile = "bthome-sensor"\nbus = "ble"\n'
        text += f'address = "{mac(i)}"\n'
        if kind == "secret":
            text += 'bind_key_file = "bind.key"\n'
    if tags:
        text += '\n[[devices]]\nid = "tags"\nprofile = "ble-tags"\nbus = "ble"\n'
        text += f"tags = [{', '.join(tags)}]\n"
    (work / "bind.key").write_text(KEY.hex())
    (work / "bind.key").chmod(0o600)
    return text


def write_config(work: Path, p: Params, port: int) -> None:
    (work / "agent.toml").write_text(HEAD.format(port=port) + ble_toml(work, p.devices))
    (work / "card.key").write_text(os.urandom(32).hex())
    (work / "card.key").chmod(0o600)


def advert(i: int, kind: str, n: int) -> dict[str, Any]:
    temp = (2000 + (n % 40) * 5).to_bytes(2, "little", signed=True)
    if kind == "tag":
        return {"address": f"C0:00:00:00:{i >> 8:02X}:{i & 0xFF:02X}",
                "manufacturer_data": enc.ibeacon(UUID, 1, i)}  # fmt: skip
    objects = bytes([0x02]) + temp + bytes([0x03, 0x88, 0x13])
    if kind == "plain":
        sd = enc.bthome_plain(bytes([0x00, n % 256]) + objects)
    else:
        sd = enc.bthome_encrypted(KEY, mac(i), objects, 1000 + n)
    return {"address": mac(i), "service_data": sd}


def run_once(work: Path, p: Params) -> BleRun:
    mock = BluezMock(work / "bluez").start()
    mock.add_adapter("hci0")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = mock.address
    stop = threading.Event()
    sent = [0]

    def feed() -> None:
        kk = kinds(p.devices)
        n = 0
        while not stop.is_set():
            t = time.monotonic()
            mock.advertise_many([advert(i, k, n) for i, k in enumerate(kk)])
            sent[0] += len(kk)
            n += 1
            stop.wait(max(0.0, 1 / p.rate - (time.monotonic() - t)))

    try:
        with Mosquitto() as broker:
            write_config(work, p, broker.port)
            sub = Subscriber("127.0.0.1", broker.port, "campus/#")
            agent = AgentProcess(work / "agent.toml")
            try:
                agent.start()
                agent.wait_for(lambda s: s["broker"]["connected"], 30, lambda s: "no connection")
                feeder = threading.Thread(target=feed, daemon=True)
                feeder.start()
                time.sleep(p.warmup)
                stat, mstat = ProcStat(agent.pid), ProcStat(mock.mock.pid or 0)
                first = agent.wait_status(time.time(), 10)
                t0, c0, m0, s0 = time.time(), stat.cpu_seconds(), mstat.cpu_seconds(), sent[0]
                e0 = len(sub.events())
                time.sleep(p.seconds)
                t1, c1, m1, s1 = time.time(), stat.cpu_seconds(), mstat.cpu_seconds(), sent[0]
                e1 = len(sub.events())
                last = agent.wait_status(time.time(), 10)
                rss = stat.rss_mib()
                stop.set()
                feeder.join(10)
            finally:
                stop.set()
                if agent.alive():
                    agent.stop(30)
                sub.close()
    finally:
        mock.stop()
    bus0, bus1 = first["buses"]["ble"], last["buses"]["ble"]
    span = t1 - t0
    return BleRun(
        adverts_sent_per_s=round((s1 - s0) / span, 1),
        adverts_counted_per_s=round((bus1["adverts"] - bus0["adverts"]) / span, 1),
        events=e1 - e0,
        cpu_percent=round(100 * (c1 - c0) / span, 1),
        mock_cpu_percent=round(100 * (m1 - m0) / span, 1),
        rss_mib=round(rss, 1),
        rejected=sum(bus1["rejected"].values()),
    )


def measure(p: Params) -> cli.Measured:
    print(
        f"ble: {p.runs} run(s): {p.devices} devices advertising {p.rate:g}/s each "
        f"(half plain BTHome, a quarter encrypted, a quarter iBeacon tags), {p.seconds:g} s"
    )
    runs = []
    for i in range(p.runs):
        with tempfile.TemporaryDirectory(prefix="bench-ble-") as tmp:
            r = run_once(Path(tmp), p)
        runs.append(r)
        print(
            f"  run {i + 1}: adverts {r.adverts_counted_per_s}/s counted of "
            f"{r.adverts_sent_per_s}/s sent; agent CPU {r.cpu_percent} %, RSS {r.rss_mib} MiB; "
            f"{r.events} events; mock CPU {r.mock_cpu_percent} %; rejected {r.rejected}"
        )

    def m(name: str) -> float | None:
        return median(getattr(r, name) for r in runs)

    rows = [
        ("adverts sent through the mock", "adverts/s", num(m("adverts_sent_per_s"))),
        ("adverts counted by the driver", "adverts/s", num(m("adverts_counted_per_s"))),
        ("agent CPU", "% of a core", num(m("cpu_percent"))),
        ("agent RSS", "MiB", num(m("rss_mib"))),
        ("events published in the window", "events", num(m("events"))),
        ("python-dbusmock's CPU (BlueZ's stand-in)", "% of a core", num(m("mock_cpu_percent"))),
        ("adverts rejected", "adverts", num(m("rejected"))),
    ]
    table = fixed_table(("figure (median of runs)", "unit", "value"), rows, left=(0, 1))
    return cli.Measured(table, {"runs": [asdict(r) for r in runs]})


def main(argv: list[str] | None = None) -> int:
    ap = cli.Parser("ble", DESCRIPTION, runs="200 devices advertising")
    ap.add_argument("--devices", type=int, default=200, help="advertising devices; 200")
    ap.add_argument("--rate", type=float, default=1.0, help="adverts/s per device; 1")
    ap.seconds(30.0)
    ap.warmup(5.0, "seconds of adverts before measuring")
    ap.last("1 run, 20 devices, 5 s")
    a = ap.parse(argv, quick={"runs": 1, "devices": 20, "seconds": 5.0, "warmup": 2.0})
    if a.runs < 1 or a.devices < 1 or a.rate <= 0 or a.seconds <= 0:
        ap.error("--runs, --devices >= 1, --rate and --seconds > 0")
    return cli.main("ble", cli.params(Params, a), measure)


if __name__ == "__main__":
    raise SystemExit(main())
