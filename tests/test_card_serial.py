"""The card-serial driver end to end: the real agent reading a reader simulator (the real frame
format) over a socat pty pair, publishing to a real mosquitto. Reads arrive as hashed access
events with the right count, format, bits, reader, door and direction; faults are counted by
reason; the card numbers appear nowhere (store, WAL, log, status, anything published); an
unplugged reader goes offline with the reason and comes back online."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.harness.pty import PtyPair
from tests.harness.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
RDM_CARDS = (0x62E3086CED, 0x0A0012D687)  # EM4100: version byte + 4-byte id
W26_CARD = 0x12D687  # facility 18, card 54919


def forms(value: int) -> list[str]:
    """Every way a card number could leak: decimal, hex (both cases), and its 32/24-bit id."""
    out = []
    for v in {value, value & 0xFFFFFFFF, value & 0xFFFFFF}:
        out += [str(v), f"{v:x}", f"{v:X}", f"{v:08X}", f"{v:06x}"]
    return [f for f in out if len(f) >= 5]


class Line(PtyPair):
    """A socat pty pair whose reader end (`a`) the test keeps open: socat ends when the last
    opener of a pty closes it, and each simulator run opens and closes it."""

    held: int | None = None

    def start(self, timeout: float = 10.0) -> None:
        super().start(timeout)
        self.held = os.open(self.a, os.O_RDWR | os.O_NOCTTY)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.held is not None:
            os.close(self.held)
            self.held = None
        return super().stop(timeout)


@pytest.fixture
def line(tmp_path: Path):
    pty = Line(tmp_path / "pty")
    pty.start()
    yield pty
    pty.stop()


def reader_config(port: Path, profile: str, device_extra: str = "") -> str:
    return f"""
[[buses]]
id = "reader-bus"
driver = "card-serial"
port = "{port}"
retry = "300ms"

[[devices]]
id = "front-door"
profile = "{profile}"
bus = "reader-bus"
reader = "front"
door = "main-entrance"
{device_extra}
"""


PRIVACY = """
[privacy]
card_key_file = "card.key"
card_key_id = "school-2026"
dedup_window = "0s"
"""


def start_agent(make_agent, broker, line, profile: str, device_extra: str = ""):
    agent = make_agent(
        broker.url,
        reader_config(line.b, profile, device_extra),
        allow="[]",
        extra=PRIVACY,
        start=False,
    )
    key = agent.dir / "card.key"
    key.write_bytes(b"0123456789abcdef0123456789abcdef-test-key")
    key.chmod(0o600)
    agent.start()
    return agent


def simulate(line: PtyPair, profile: str, *args: str) -> dict[str, Any]:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "drivers.card_serial.simulator",
            "--port",
            str(line.a),
            "--profile",
            profile,
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def states(sub, dev: str) -> list[dict[str, Any]]:
    return [e for e in sub.events("state") if e["device"] == dev]


def access(sub) -> list[dict[str, Any]]:
    return [e for e in sub.events("access") if e["device"] == "front-door"]


def assert_no_number_anywhere(agent, sub, numbers: list[int]) -> None:
    texts = {
        "store": agent.store.read_bytes().decode("latin-1"),
        "wal": (agent.dir / "outbox.db-wal").read_bytes().decode("latin-1")
        if (agent.dir / "outbox.db-wal").exists()
        else "",
        "log": agent.log_text(),
        "status": agent.status_path.read_text(),
        "published": "\n".join(m.payload.decode("latin-1") for m in sub.snapshot()),
        "topics": "\n".join(m.topic for m in sub.snapshot()),
    }
    for n in numbers:
        for form in forms(n):
            for where, text in texts.items():
                assert form not in text, f"card number form {form!r} found in the {where}"


def test_rdm6300_reads_arrive_hashed_faults_counted_numbers_nowhere_and_unplug_replug(
    line, broker, subscribers, make_agent
):
    sub = subscribers(broker)
    agent = start_agent(make_agent, broker, line, "rdm6300", 'direction = "in"')
    wait_for(lambda: [e for e in states(sub, "front-door") if e["online"]], 15, "online")
    cards = [f"{c:#x}" for c in RDM_CARDS]
    sent = simulate(
        line,
        "rdm6300",
        *[a for c in cards for a in ("--card", c)],
        "--count",
        "6",
        "--garbage",
        "2",
        "--bad-checksum",
        "1",
        "--half-frame",
        "1",
    )
    assert sent["sent"] == {"reads": 6, "frames": 6, "garbage": 2, "checksum": 1, "half": 1}
    events = wait_for(lambda: len(access(sub)) >= 6 and access(sub), 15, "six access events")
    assert len(events) == 6
    for e in events:
        card = e["card"]
        assert set(card) == {"hash", "key_id", "format", "bits"}
        assert card["key_id"] == "school-2026" and card["format"] == "em4100"
        assert card["bits"] == 40 and len(card["hash"]) == 32
        assert e["reader"] == "front" and e["direction"] == "in"
        assert e["door"] == "main-entrance" and e["result"] == "read" and e["reads"] == 1
        assert e["category"] == "card" and e["profile"] == "rdm6300"
    assert sorted(Counter(e["card"]["hash"] for e in events).values()) == [3, 3]
    bus = agent.wait_status(
        lambda s: (
            s["buses"]["reader-bus"]["cards"] == 6
            and s["buses"]["reader-bus"]["rejected"]["half_frame"] == 1
        ),
        10,
        "the driver's counters",
    )["buses"]["reader-bus"]
    assert bus["rejected"] == {"garbage": 2, "checksum": 1, "half_frame": 1, "parity": 0}
    assert bus["frames"] == 7 and bus["online"] is True  # 6 good + 1 bad checksum

    line.pull_cable()  # the reader unplugged: its port path is gone
    wait_for(lambda: [e for e in states(sub, "front-door") if not e["online"]], 15, "offline")
    offline = next(e for e in states(sub, "front-door") if not e["online"])
    assert "serial port" in offline["reason"]
    line.plug_cable()
    wait_for(lambda: states(sub, "front-door")[-1]["online"], 15, "online again")
    simulate(line, "rdm6300", "--card", cards[0])
    wait_for(lambda: len(access(sub)) >= 7, 15, "a read after the reader came back")
    assert agent.alive()
    assert not agent.log_lines(" ERROR ") and "driver failed" not in agent.log_text()
    assert agent.terminate() == 0
    assert_no_number_anywhere(agent, sub, list(RDM_CARDS))


def test_wiegand_bits_parity_checked_and_gate_reader_direction_from_the_frame(
    line, broker, subscribers, make_agent
):
    sub = subscribers(broker)
    agent = start_agent(make_agent, broker, line, "wiegand-serial-bits")
    wait_for(lambda: [e for e in states(sub, "front-door") if e["online"]], 15, "online")
    simulate(line, "wiegand-serial-bits", "--card", hex(W26_CARD), "--count", "2")
    simulate(line, "wiegand-serial-bits", "--card", hex(W26_CARD), "--wiegand-bits", "34")
    simulate(
        line, "wiegand-serial-bits", "--card", hex(W26_CARD), "--bad-checksum", "1", "--count", "0"
    )
    events = wait_for(lambda: len(access(sub)) >= 3 and access(sub), 15, "three access events")
    assert [(e["card"]["format"], e["card"]["bits"]) for e in events] == [
        ("wiegand26", 24),
        ("wiegand26", 24),
        ("wiegand34", 32),
    ]
    assert all("direction" not in e and e["reader"] == "front" for e in events)
    agent.wait_status(
        lambda s: s["buses"]["reader-bus"]["rejected"]["parity"] == 1, 10, "parity counted"
    )
    assert agent.terminate() == 0
    assert_no_number_anywhere(agent, sub, [W26_CARD])


def test_gate_reader_direction_comes_from_the_antenna(line, broker, subscribers, make_agent):
    sub = subscribers(broker)
    agent = start_agent(make_agent, broker, line, "gate-2g4-terse")
    wait_for(lambda: [e for e in states(sub, "front-door") if e["online"]], 15, "online")
    card = hex(0x0012D687)
    simulate(line, "gate-2g4-terse", "--card", card, "--direction", "in")
    simulate(line, "gate-2g4-terse", "--card", card, "--direction", "out")
    events = wait_for(lambda: len(access(sub)) >= 2 and access(sub), 15, "two access events")
    assert [(e["direction"], e["reader"]) for e in events] == [
        ("in", "front-in"),
        ("out", "front-out"),
    ]
    assert {e["card"]["format"] for e in events} == {"active-2g4"}
    assert events[0]["card"]["hash"] == events[1]["card"]["hash"]
    assert agent.terminate() == 0
    assert_no_number_anywhere(agent, sub, [0x0012D687])


def test_a_reader_missing_at_start_is_offline_with_the_reason_then_online(
    tmp_path, broker, subscribers, make_agent
):
    line = Line(tmp_path / "late")  # not started: the port does not exist yet
    sub = subscribers(broker)
    agent = start_agent(make_agent, broker, line, "rdm6300")
    off = wait_for(
        lambda: [e for e in states(sub, "front-door") if not e["online"]], 15, "offline at start"
    )
    assert "cannot open serial port" in off[0]["reason"]
    try:
        line.start()
        wait_for(lambda: states(sub, "front-door")[-1]["online"], 15, "online once plugged")
        simulate(line, "rdm6300", "--card", hex(RDM_CARDS[0]))
        wait_for(lambda: access(sub), 15, "a read")
    finally:
        line.stop()
    assert agent.alive() and agent.terminate() == 0
