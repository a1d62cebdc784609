"""The BLE driver end to end: the real agent scanning a mocked BlueZ (python-dbusmock's bluez5
on a private D-Bus) through the real bleak, publishing to a real mosquitto. Plain and
encrypted BTHome sensors become telemetry; an encrypted advert replayed after a restart is
refused; allowlisted tags are seen and gone, hashed, their ids nowhere; an unlisted device is
only counted; the adapter removed and re-added: offline with the reason, then scanning again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ble_adverts as enc
from tests.harness.bluez import BluezMock
from tests.harness.waiting import wait_for

PLAIN = "A4:C1:38:00:00:01"
SECRET = "54:48:E6:8F:80:A5"
KEY = "231d39c1d7cc1ab1aee224cd096db932"  # the bthome.io encryption example's key
STUDENT = ("f7826da6-4fa2-4e98-8024-bc5b71e0893e", 1, 258)  # an allowlisted iBeacon
EDDY = ("edd1ebeac04e5defa017", "0badcafe0001")  # an allowlisted Eddystone-UID tag
STRANGER = ("f7826da6-4fa2-4e98-8024-bc5b71e0893e", 7, 7)  # a tag not on the list


@pytest.fixture
def bluez(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BluezMock]:
    mock = BluezMock(tmp_path / "bluez").start()
    mock.add_adapter("hci0")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", mock.address)  # the agent's system bus
    yield mock
    mock.stop()


DEVICES = f"""
[[buses]]
id = "ble-hall"
driver = "ble"
adapter = "hci0"
reset_min = "200ms"
reset_max = "1s"
tick = "200ms"

[[devices]]
id = "dorm-12"
profile = "bthome-sensor"
bus = "ble-hall"
address = "{PLAIN}"

[[devices]]
id = "lab-3"
profile = "bthome-sensor"
bus = "ble-hall"
address = "{SECRET}"
bind_key_file = "lab-3.key"

[[devices]]
id = "hall-tags"
profile = "ble-tags"
bus = "ble-hall"
zone = "main-hall"
rssi_min = -80
gone_after = "1s"
tags = ["ibeacon:{STUDENT[0]}:{STUDENT[1]}:{STUDENT[2]}", "eddystone:{EDDY[0]}:{EDDY[1]}"]
"""

PRIVACY = """
[privacy]
card_key_file = "card.key"
card_key_id = "school-2026"
dedup_window = "0s"
"""


def start_agent(make_agent: Any, broker: Any) -> Any:
    agent = make_agent(broker.url, DEVICES, allow="[]", extra=PRIVACY, start=False)
    for name, text in (
        ("card.key", "0123456789abcdef0123456789abcdef-test-key"),
        ("lab-3.key", KEY),
    ):
        path = agent.dir / name
        path.write_text(text)
        path.chmod(0o600)
    agent.start()
    return agent


def states(sub: Any, dev: str) -> list[dict[str, Any]]:
    return [e for e in sub.events("state") if e["device"] == dev]


def telemetry(sub: Any, dev: str) -> list[dict[str, Any]]:
    return [e for e in sub.events("telemetry") if e["device"] == dev]


def access(sub: Any) -> list[dict[str, Any]]:
    return [e for e in sub.events("access") if e["device"] == "hall-tags"]


def online(sub: Any, dev: str) -> bool:
    s = states(sub, dev)
    return bool(s) and s[-1]["online"]


def tag_forms() -> list[str]:
    """Every way a tag id could leak: the UUID (with and without dashes, both cases), the
    Eddystone namespace and instance, the ids as decimal numbers."""
    out = []
    for text in (STUDENT[0], STUDENT[0].replace("-", ""), EDDY[0], EDDY[1]):
        out += [text.lower(), text.upper()]
    ib = int(STUDENT[0].replace("-", "") + f"{STUDENT[1]:04x}{STUDENT[2]:04x}", 16)
    ed = int(EDDY[0] + EDDY[1], 16)
    out += [str(ib), str(ed), f"{ib:x}", f"{ed:x}"]
    return out


def test_bthome_sensors_tags_and_unknown_devices_through_bleak(
    bluez: BluezMock, broker: Any, subscribers: Any, make_agent: Any
) -> None:
    sub = subscribers(broker)
    agent = start_agent(make_agent, broker)
    wait_for(lambda: online(sub, "dorm-12"), 20, "the ble bus scanning (devices online)")

    # a plain BTHome sensor: packet 1, battery 97 %, 25.06 °C, 50.55 %
    bluez.advertise(
        PLAIN,
        service_data=enc.bthome_plain(bytes.fromhex("00010161 02CA09 03BF13".replace(" ", ""))),
    )
    tele = wait_for(lambda: telemetry(sub, "dorm-12"), 15, "the plain sensor's telemetry")[0]
    assert tele["values"] == pytest.approx({"battery": 97, "temperature": 25.06, "humidity": 50.55})
    assert tele["units"]["temperature"] == "°C" and tele["units"]["humidity"] == "%"
    # the same packet id again: a repeat, dropped
    bluez.advertise(PLAIN, service_data=enc.bthome_plain(bytes.fromhex("0001016102CA0903BF13")))

    # an encrypted sensor with its bind key
    sealed = enc.bthome_encrypted(bytes.fromhex(KEY), SECRET, bytes.fromhex("02CA0903BF13"), 1000)
    bluez.advertise(SECRET, service_data=sealed)
    tele = wait_for(lambda: telemetry(sub, "lab-3"), 15, "the encrypted sensor's telemetry")[0]
    assert tele["values"] == pytest.approx({"temperature": 25.06, "humidity": 50.55})

    # tags: an allowlisted iBeacon and Eddystone, an unlisted one, and a phone
    bluez.advertise("C0:00:00:00:00:01", manufacturer_data=enc.ibeacon(*STUDENT), rssi=-60)
    bluez.advertise("C0:00:00:00:00:02", service_data=enc.eddystone_uid(*EDDY), rssi=-70)
    bluez.advertise("C0:00:00:00:00:02", service_data=enc.eddystone_tlm(2100), rssi=-70)
    bluez.advertise("C0:00:00:00:00:03", manufacturer_data=enc.ibeacon(*STRANGER), rssi=-40)
    bluez.advertise("D0:00:00:00:00:04", manufacturer_data={0x0075: b"\x42\x04\x01"}, rssi=-50)
    seen = wait_for(lambda: len(access(sub)) >= 2 and access(sub), 15, "two tags seen")
    assert len(seen) == 2
    for e in seen:
        assert set(e["card"]) == {"hash", "key_id", "format", "bits"}
        assert e["card"]["key_id"] == "school-2026" and len(e["card"]["hash"]) == 32
        assert e["reader"] == "main-hall" and e["direction"] == "in" and e["category"] == "ble"
    assert sorted((e["card"]["format"], e["card"]["bits"]) for e in seen) == [
        ("eddystone-uid", 128),
        ("ibeacon", 160),
    ]
    # no advert for gone_after (1 s): both gone
    gone = wait_for(
        lambda: [e for e in access(sub) if e["direction"] == "out"] or None, 15, "tags gone"
    )
    wait_for(lambda: len([e for e in access(sub) if e["direction"] == "out"]) == 2, 10, "both gone")
    assert {e["card"]["hash"] for e in access(sub) if e["direction"] == "out"} == {
        e["card"]["hash"] for e in seen
    }
    assert gone
    bus = agent.wait_status(
        lambda s: (
            s["buses"]["ble-hall"]["unknown"] >= 2
            and s["buses"]["ble-hall"]["rejected"].get("repeat", 0) >= 1
        ),
        10,
        "unknown and repeated adverts counted",
    )["buses"]["ble-hall"]
    assert bus["unknown"] == 2 and bus["adverts"] >= 8 and "adverts_per_s" in bus
    low = wait_for(
        lambda: [e for e in telemetry(sub, "hall-tags") if e["values"].get("tags_low_battery")],
        10,
        "the Eddystone tag's low battery (TLM 2.1 V)",
    )
    assert low

    agent.terminate()
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
    for form in tag_forms():
        for where, text in texts.items():
            assert form not in text, f"tag id form {form!r} found in the {where}"


def test_a_replayed_encrypted_advert_is_refused_after_a_restart(
    bluez: BluezMock, broker: Any, subscribers: Any, make_agent: Any
) -> None:
    sub = subscribers(broker)
    agent = start_agent(make_agent, broker)
    wait_for(lambda: online(sub, "lab-3"), 20, "scanning")
    recorded = enc.bthome_encrypted(bytes.fromhex(KEY), SECRET, bytes.fromhex("02CA09"), 500)
    bluez.advertise(SECRET, service_data=recorded)
    wait_for(lambda: telemetry(sub, "lab-3"), 15, "the first advert accepted")
    state = agent.dir / "ble-state.json"
    wait_for(lambda: state.exists() and "500" in state.read_text(), 10, "the counter persisted")
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    assert agent.terminate() == 0

    bluez.stop_mock()  # BlueZ restarts too: the device is new to it
    bluez.start_mock()
    bluez.add_adapter("hci0")
    before = len(states(sub, "lab-3"))
    agent.start()
    wait_for(
        lambda: len(states(sub, "lab-3")) > before and online(sub, "lab-3"), 20, "scanning again"
    )
    seen = len(telemetry(sub, "lab-3"))
    bluez.advertise(SECRET, service_data=recorded)  # the attacker replays what was recorded
    agent.wait_status(
        lambda s: s["buses"]["ble-hall"]["rejected"].get("replayed", 0) == 1, 10, "replay refused"
    )
    fresh = enc.bthome_encrypted(bytes.fromhex(KEY), SECRET, bytes.fromhex("02D209"), 501)
    bluez.advertise(SECRET, service_data=fresh)
    later = wait_for(lambda: telemetry(sub, "lab-3")[seen:], 15, "the next counter accepted")
    assert later[0]["values"]["temperature"] == pytest.approx(25.14)
    assert len(telemetry(sub, "lab-3")) == seen + 1


def test_adapter_removed_and_readded_scanning_resumes(
    bluez: BluezMock, broker: Any, subscribers: Any, make_agent: Any
) -> None:
    sub = subscribers(broker)
    agent = start_agent(make_agent, broker)
    wait_for(lambda: online(sub, "dorm-12"), 20, "scanning")
    bluez.remove_adapter("hci0")
    wait_for(lambda: not online(sub, "dorm-12"), 15, "offline: adapter removed")
    assert "adapter hci0 removed" in states(sub, "dorm-12")[-1]["reason"]
    assert not online(sub, "hall-tags")
    bluez.add_adapter("hci0")
    wait_for(lambda: online(sub, "dorm-12"), 15, "online: scanning resumed")
    bluez.advertise(PLAIN, service_data=enc.bthome_plain(bytes.fromhex("000502CA09")))
    wait_for(lambda: telemetry(sub, "dorm-12"), 15, "an advert after the adapter came back")

    bluez.set_powered("hci0", False)  # powered off: the driver powers it on again
    wait_for(
        lambda: any("powered off" in e.get("reason", "") for e in states(sub, "dorm-12")),
        15,
        "powered off",
    )
    wait_for(lambda: online(sub, "dorm-12"), 15, "powered on by the driver, scanning")
    agent.wait_status(
        lambda s: s["buses"]["ble-hall"]["resets"] >= 1 and s["buses"]["ble-hall"]["scans"] >= 3,
        10,
        "one reset, three scans (start, re-added, powered on)",
    )
    assert agent.alive() and "driver failed" not in agent.log_text()


def test_a_silent_adapter_is_reset_and_scanning_resumes(
    bluez: BluezMock, broker: Any, subscribers: Any, make_agent: Any
) -> None:
    sub = subscribers(broker)
    devices = DEVICES.replace('tick = "200ms"', 'tick = "200ms"\nsilent_after = "2s"')
    agent = make_agent(broker.url, devices, allow="[]", extra=PRIVACY, start=False)
    for name, text in (("card.key", "k" * 40), ("lab-3.key", KEY)):
        (agent.dir / name).write_text(text)
        (agent.dir / name).chmod(0o600)
    agent.start()
    wait_for(lambda: online(sub, "dorm-12"), 20, "scanning")
    # nothing advertises for 2 s: the adapter is power-cycled through BlueZ
    wait_for(
        lambda: any("silent" in e.get("reason", "") for e in states(sub, "dorm-12")), 15, "silent"
    )
    wait_for(lambda: online(sub, "dorm-12"), 15, "scanning again after the reset")
    bus = agent.wait_status(lambda s: s["buses"]["ble-hall"]["resets"] >= 1, 10, "a reset")
    assert bus["buses"]["ble-hall"]["scans"] >= 2
    bluez.advertise(PLAIN, service_data=enc.bthome_plain(bytes.fromhex("000902CA09")))
    wait_for(lambda: telemetry(sub, "dorm-12"), 15, "an advert after the reset")
    log = bluez.log_text()  # the reset went through BlueZ's D-Bus API: off, then on
    assert "Set /org/bluez/hci0 org.bluez.Adapter1.Powered False" in log
    assert "Set /org/bluez/hci0 org.bluez.Adapter1.Powered True" in log
