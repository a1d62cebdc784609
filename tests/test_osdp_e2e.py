"""The OSDP driver end to end: libosdp's PeripheralDevice in its own process on the other end
of a socat pty, Secure Channel on with the reader's key, a real agent process (the control
panel), a real mosquitto and subscriber."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import BASE_CONFIG
from tests.harness.agent import AgentProcess
from tests.harness.broker import Broker
from tests.harness.osdp_pd import OsdpReader
from tests.harness.pty import PtyPair
from tests.harness.subscriber import Subscriber
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.slow
SCBK = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
OTHER_SCBK = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
CMD = "campus/v1/pt-023/gw-main/cmd/"
# A Wiegand-26 card (facility 42, card 12345: 26 bits, MSB first, padded) and a 37-bit raw one.
W26_DATA, W26_BITS = bytes([0x95, 0x18, 0x1C, 0xC0]), 26
W26_NUMBER = int.from_bytes(W26_DATA, "big") >> 6
RAW_NUMBER, RAW_BITS = 0x1A2B3C4D5E, 37
RAW_DATA = (RAW_NUMBER << 3).to_bytes(5, "big")
PIN = "7295318046#"  # long enough not to turn up by chance in timestamps or ids


def secret(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def bus(port: Path, retry: str = "3s") -> str:
    return f'\n[[buses]]\nid = "door-bus"\ndriver = "osdp"\nport = "{port}"\nretry_interval = "{retry}"\n'


def reader(dev_id: str, address: int, key_file: Path, extra: str = "") -> str:
    return (
        f'\n[[devices]]\nid = "{dev_id}"\nprofile = "generic-osdp-reader"\nbus = "door-bus"\n'
        f'address = {address}\nscbk_file = "{key_file}"\n{extra}\n'
    )


def privacy(card_key: Path) -> str:
    return f'\n[privacy]\ncard_key_file = "{card_key}"\ndedup_window = "0s"\n'


ALLOW = '["card.led", "card.beep"]'


@pytest.fixture
def line(tmp_path: Path) -> Iterator[PtyPair]:
    pty = PtyPair(tmp_path / "pty")
    pty.start()
    yield pty
    pty.stop()


@pytest.fixture
def readers() -> Iterator[list[OsdpReader]]:
    made: list[OsdpReader] = []
    yield made
    for r in made:
        r.stop()


def states(sub, dev_id: str) -> list[dict]:
    return [e for e in sub.events("state") if e["device"] == dev_id and "online" in e]


def command(action: str, cid: str, **args) -> bytes:
    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"id": cid, "action": action, "ts": ts, "args": args}).encode()


def reply(sub, cid: str) -> dict:
    def find():
        for m in sub.snapshot():
            if "/cmd-reply/" in m.topic and m.json()["id"] == cid:
                return m.json()
        return None

    return wait_for(find, 15, f"a reply to {cid}")


def forms(n: int) -> list[bytes]:
    """How a card number could show up in a file or a payload."""
    return [str(n).encode(), f"{n:x}".encode(), f"{n:X}".encode(), f"{n:#x}".encode()]


def test_reads_are_hashed_pin_dropped_tamper_alarmed_led_and_beep_reach_the_reader(  # noqa: PLR0917 - fixtures
    tmp_path, broker, subscribers, make_agent, line, readers
):
    pd = OsdpReader(tmp_path / "pd", line.b, 101, SCBK)
    readers.append(pd)
    pd.start()
    sub = subscribers(broker)
    heads = 'door = "main-gate"\ndirection = "in"\nreaders = [{ name = "main" }, { name = "exit", direction = "out" }]'
    agent = make_agent(
        broker.url,
        bus(line.a) + reader("gate-reader", 101, secret(tmp_path / "r101.key", SCBK), heads),
        allow=ALLOW,
        extra=privacy(secret(tmp_path / "card.key", os.urandom(32).hex().encode())),
    )
    wait_for(lambda: any(e["online"] for e in states(sub, "gate-reader")), 30, "online")
    assert states(sub, "gate-reader")[-1]["secure_channel"] is True
    pd.card(W26_DATA, W26_BITS)
    pd.keys(PIN)
    pd.card(RAW_DATA, RAW_BITS, fmt=0, reader=1)
    pd.status(tamper=True)
    wait_for(lambda: len(sub.events("access")) >= 2, 15, "two access events")
    wait_for(lambda: sub.events("alarm"), 15, "the tamper alarm")
    first, second = sub.events("access")
    assert first["card"]["format"] == "wiegand" and first["card"]["bits"] == 26
    assert (first["reader"], first["direction"], first["door"]) == ("main", "in", "main-gate")
    assert second["card"]["format"] == "raw" and second["card"]["bits"] == RAW_BITS
    assert (second["reader"], second["direction"]) == ("exit", "out")
    for e in (first, second):
        assert set(e["card"]) == {"hash", "key_id", "format", "bits"}
        assert e["reads"] == 1 and e["result"] == "read"
    alarm = sub.events("alarm")[0]
    assert (alarm["alarm"], alarm["state"], alarm["device"]) == ("tamper", "active", "gate-reader")

    sub.publish(CMD + "gate-reader", command("led", "cmd-led-green-01", color="green"))
    sub.publish(CMD + "gate-reader", command("beep", "cmd-beep-twice-1", count=2))
    assert reply(sub, "cmd-led-green-01")["result"] == "ok"
    assert reply(sub, "cmd-beep-twice-1")["result"] == "ok"
    got = pd.commands()
    led = next(c for c in got if c["command"] == 2)
    assert led["on_color"] == 2 and led["timer_count"] == 10  # green, 1 s
    assert next(c for c in got if c["command"] == 3)["rep_count"] == 2
    assert not [c for c in got if c["command"] == 5], "the agent sent a KEYSET"

    st = agent.wait_status(
        lambda s: s["buses"]["door-bus"].get("keypad_dropped") == 1, 10, "keypad counted"
    )
    assert st["buses"]["door-bus"]["cards"] == 2
    assert agent.terminate() == 0
    # The numbers and the PIN are nowhere: not in the store, the log, the status or on the wire.
    secrets = [*forms(W26_NUMBER), *forms(RAW_NUMBER), PIN.encode(), PIN[:-1].encode()]
    places = {p.name: p.read_bytes() for p in agent.dir.iterdir() if p.is_file()}
    assert "outbox.db" in places and agent.logs
    places["mqtt"] = b"\n".join(m.payload for m in sub.snapshot())
    for name, blob in places.items():
        for s in secrets:
            assert s not in blob, f"{s!r} found in {name}"


def test_a_reader_that_dies_goes_offline_and_comes_back_online(  # noqa: PLR0917 - fixtures
    tmp_path, broker, subscribers, make_agent, line, readers
):
    pd = OsdpReader(tmp_path / "pd", line.b, 7, SCBK)
    readers.append(pd)
    pd.start()
    sub = subscribers(broker)
    make_agent(
        broker.url,
        bus(line.a) + reader("hall-reader", 7, secret(tmp_path / "r7.key", SCBK.hex().encode())),
        allow=ALLOW,
        extra=privacy(secret(tmp_path / "card.key", os.urandom(32).hex().encode())),
    )
    wait_for(lambda: any(e["online"] for e in states(sub, "hall-reader")), 30, "online")
    pd.kill()
    t0 = time.monotonic()
    wait_for(lambda: not states(sub, "hall-reader")[-1]["online"], 30, "offline")
    down = states(sub, "hall-reader")[-1]
    assert "no answer from OSDP address 7" in down["reason"]
    sub.publish(CMD + "hall-reader", command("led", "cmd-led-offline1", color="red"))
    r = reply(sub, "cmd-led-offline1")
    assert r["result"] != "ok" and "offline" in json.dumps(r)
    # Back after libosdp's own 300 s backoff would have kept it offline: the driver restarts
    # the attempt itself.
    pd.start()
    wait_for(lambda: states(sub, "hall-reader")[-1]["online"], 40, "online again")
    assert time.monotonic() - t0 < 120
    pd.card(W26_DATA, W26_BITS)
    wait_for(lambda: sub.events("access"), 15, "a read after the return")


def test_a_reader_with_another_key_stays_offline_with_the_reason_and_is_never_rekeyed(  # noqa: PLR0917 - fixtures
    tmp_path, broker, subscribers, make_agent, line, readers
):
    pd = OsdpReader(tmp_path / "pd", line.b, 101, OTHER_SCBK)
    readers.append(pd)
    pd.start()
    sub = subscribers(broker)
    agent = make_agent(
        broker.url,
        bus(line.a) + reader("gate-reader", 101, secret(tmp_path / "r101.key", SCBK)),
        allow=ALLOW,
        extra=privacy(secret(tmp_path / "card.key", os.urandom(32).hex().encode())),
    )
    wait_for(lambda: states(sub, "gate-reader"), 30, "a state event")
    down = states(sub, "gate-reader")[-1]
    assert down["online"] is False
    assert "Secure Channel refused" in down["reason"] and "never re-keys" in down["reason"]
    # Several attempts later (retry_interval 3 s): still no KEYSET, still offline.
    agent.wait_status(lambda s: s["buses"]["door-bus"].get("retries", 0) >= 2, 30, "retries")
    assert not pd.sc_active()
    assert not [c for c in pd.commands() if c["command"] == 5]
    assert all(not e["online"] for e in states(sub, "gate-reader"))
    assert SCBK.hex() not in agent.log_text() and OTHER_SCBK.hex() not in agent.log_text()


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(noise=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=8))
def test_garbage_on_the_line_is_never_a_card_and_does_not_stop_the_panel(noise, tmp_path_factory):
    """Bytes from a broken or hostile device on the line, frames starting with OSDP's SOM
    (0x53) among them, go into libosdp's frame decoder in the agent's process."""
    with Broker(tmp_path_factory.mktemp("broker")) as broker:
        folder = tmp_path_factory.mktemp("garbage")
        pty = PtyPair(folder / "pty")
        pty.start()
        agent = AgentProcess(folder / "agent")
        sub = Subscriber(broker.host, broker.port, "campus/#")
        try:
            agent.write_config(
                BASE_CONFIG.format(
                    url=broker.url, reconnect="", mqtt_extra="", max_size="64MiB", allow=ALLOW
                )
                + bus(pty.a)
                + reader("gate-reader", 101, secret(folder / "r.key", SCBK))
                + privacy(secret(folder / "card.key", os.urandom(32).hex().encode()))
            )
            agent.start()
            fd = os.open(pty.b, os.O_RDWR | os.O_NOCTTY)
            try:
                for chunk in noise:
                    os.write(fd, b"\x53" + chunk)
                    os.write(fd, chunk)
                wait_for(lambda: states(sub, "gate-reader"), 30, "the reader reported offline")
            finally:
                os.close(fd)
            assert agent.alive()
            assert not sub.events("access")
            assert states(sub, "gate-reader")[-1]["online"] is False
            assert agent.terminate() == 0
        finally:
            sub.close()
            if agent.alive():
                agent.kill()
            pty.stop()
