"""The BLE driver's advert handling without a radio: the vectors of tests/vectors/ble (encoded
from the specifications) through the real bthome-ble and the driver's own decoders, the
encryption counter kept across restarts, and hypothesis garbage that never crashes."""

from __future__ import annotations

import asyncio
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from bleak.backends.scanner import AdvertisementData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cards import CardRead
from agent.profiles import load_profile_file, shipped_profiles
from agent.sample import BoundDevice, BusSpec, Sample, Value
from drivers.ble import adverts
from drivers.ble.driver import BleBus, BleDevice, BleDriver
from tests.harness import ble_adverts as enc

VECTORS = tomllib.loads((Path(__file__).parent / "vectors/ble/adverts.toml").read_text())
PROFILES = shipped_profiles()


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


class Recorder:
    """A DeviceSink that keeps what it is handed (the runtime's role, not a mock of ours)."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.cards: list[CardRead] = []
        self.states: list[tuple[str, bool, str]] = []

    async def sample(self, sample: Sample) -> None:
        self.samples.append(sample)

    async def availability(
        self,
        device: str,
        *,
        online: bool,
        reason: str = "",
        info: Mapping[str, Value] | None = None,
    ) -> None:
        self.states.append((device, online, reason))

    async def card(self, read: CardRead) -> None:
        self.cards.append(read)

    async def action_failed(self, device: str, action: str, reason: str) -> None:
        pass


def _driver(tmp_path: Path, devices: list[tuple[str, str | None, BleDevice]]) -> BleDriver:
    bound = [
        BoundDevice(
            did,
            load_profile_file(PROFILES["ble-tags" if opts.tags else "bthome-sensor"]),
            "ble0",
            addr,
            1.0,
            {},
            opts,
        )
        for did, addr, opts in devices
    ]
    bus = BleBus(state_file=str(tmp_path / "ble-state.json"))
    drv = BleDriver(BusSpec("ble0", "ble", bus), bound)
    drv.store.load()
    assert drv._setup() == []
    return drv


def _adv(
    sd: Mapping[str, bytes] | None = None, md: Mapping[int, bytes] | None = None, rssi: int = -60
) -> AdvertisementData:
    return AdvertisementData(None, dict(md or {}), dict(sd or {}), list(sd or {}), None, rssi, ())


def _key_file(tmp_path: Path, key: str) -> str:
    path = tmp_path / "bind.key"
    path.write_text(key + "\n")
    os.chmod(path, 0o600)
    return str(path)


@pytest.mark.parametrize("case", VECTORS["bthome"], ids=lambda c: c["name"])
def test_plain_bthome_vectors_become_samples(case: dict[str, Any], tmp_path: Path) -> None:
    drv = _driver(tmp_path, [("s1", case["mac"], BleDevice())])
    sink = Recorder()
    asyncio.run(
        drv.handle(sink, case["mac"], _adv(enc.bthome_plain(_hex(case["service_data"])[1:])), 1.0)
    )
    assert len(sink.samples) == 1
    got = sink.samples[0].values
    for k, v in case["values"].items():
        assert got[k] == pytest.approx(v), k


def test_encrypted_bthome_vector_and_replay_across_restart(tmp_path: Path) -> None:
    case = VECTORS["bthome_encrypted"][0]
    key = _key_file(tmp_path, case["key"])
    adv = enc.bthome_encrypted(
        _hex(case["key"]), case["mac"], _hex(case["objects"]), case["counter"]
    )
    opts = BleDevice(bind_key_file=key)
    drv = _driver(tmp_path, [("s1", case["mac"], opts)])
    sink = Recorder()
    asyncio.run(drv.handle(sink, case["mac"], _adv(adv), 1.0))
    assert len(sink.samples) == 1
    for k, v in case["values"].items():
        assert sink.samples[0].values[k] == pytest.approx(v)
    drv.store.flush()
    # a new driver (the agent restarted): the same advert is a replay and is refused
    again = _driver(tmp_path, [("s1", case["mac"], opts)])
    sink2 = Recorder()
    asyncio.run(again.handle(sink2, case["mac"], _adv(adv), 2.0))
    assert sink2.samples == []
    assert again.counters.rejected["replayed"] == 1
    newer = enc.bthome_encrypted(
        _hex(case["key"]), case["mac"], _hex(case["objects"]), case["counter"] + 1
    )
    asyncio.run(again.handle(sink2, case["mac"], _adv(newer), 3.0))
    assert len(sink2.samples) == 1


def test_wrong_key_is_refused_and_plaintext_downgrade_too(tmp_path: Path) -> None:
    case = VECTORS["bthome_encrypted"][0]
    key = _key_file(tmp_path, "00" * 16)
    drv = _driver(tmp_path, [("s1", case["mac"], BleDevice(bind_key_file=key))])
    sink = Recorder()
    adv = enc.bthome_encrypted(_hex(case["key"]), case["mac"], _hex(case["objects"]), 5)
    asyncio.run(drv.handle(sink, case["mac"], _adv(adv), 1.0))
    asyncio.run(drv.handle(sink, case["mac"], _adv(enc.bthome_plain(_hex("02CA09"))), 1.0))
    assert sink.samples == []
    assert drv.store.last(case["mac"]) is None  # a forged counter never moves it
    assert sum(drv.counters.rejected.values()) == 2


def test_tag_vectors_decode_to_the_configured_ids() -> None:
    c = adverts.Counters()
    ib = VECTORS["ibeacon"][0]
    seen = adverts.ibeacon({0x004C: _hex(ib["manufacturer_data"])}, c)
    assert seen == adverts.tag_number(ib["tag"])
    ed = VECTORS["eddystone_uid"][0]
    seen = adverts.eddystone({adverts.EDDYSTONE_UUID: _hex(ed["service_data"])}, c)
    assert seen == adverts.tag_number(ed["tag"])
    tlm = VECTORS["eddystone_tlm"][0]
    t = adverts.eddystone({adverts.EDDYSTONE_UUID: _hex(tlm["service_data"])}, c)
    assert t == adverts.Telemetry(tlm["battery_mv"])
    # the encoders the end-to-end tests use give the same bytes
    assert enc.ibeacon("f7826da6-4fa2-4e98-8024-bc5b71e0893e", 1, 258)[0x004C] == _hex(
        ib["manufacturer_data"]
    )
    assert enc.eddystone_uid("edd1ebeac04e5defa017", "0badcafe0001")[enc.EDDYSTONE_UUID] == _hex(
        ed["service_data"]
    )
    assert enc.eddystone_tlm(3000)[enc.EDDYSTONE_UUID] == _hex(tlm["service_data"])
    assert not c.rejected


def test_only_allowlisted_tags_are_reported(tmp_path: Path) -> None:
    ib = VECTORS["ibeacon"][0]
    drv = _driver(tmp_path, [("tags", None, BleDevice(tags=[ib["tag"]], zone="gate"))])
    sink = Recorder()
    other = enc.ibeacon("f7826da6-4fa2-4e98-8024-bc5b71e0893e", 1, 259)
    asyncio.run(drv.handle(sink, "C0:00:00:00:00:09", _adv(md=other), 1.0))
    asyncio.run(
        drv.handle(
            sink,
            "C0:00:00:00:00:0A",
            _adv(md={0x004C: _hex(ib["manufacturer_data"])}, rssi=-100),
            1.0,
        )
    )
    assert sink.cards == []  # unlisted; listed but below rssi_min
    asyncio.run(
        drv.handle(sink, "C0:00:00:00:00:0A", _adv(md={0x004C: _hex(ib["manufacturer_data"])}), 1.0)
    )
    assert [(c.format, c.reader, c.direction, c.number.bits) for c in sink.cards] == [
        ("ibeacon", "gate", "in", 160)
    ]
    assert drv.counters.unknown == 1


GARBAGE = st.binary(max_size=40)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bthome=GARBAGE,
    eddy=GARBAGE,
    apple=GARBAGE,
    encrypted=st.booleans(),
)
def test_garbage_adverts_never_crash_nor_make_a_tag_or_reading(
    tmp_path: Path, bthome: bytes, eddy: bytes, apple: bytes, encrypted: bool
) -> None:
    key = _key_file(tmp_path, "11" * 16)
    ib = VECTORS["ibeacon"][0]
    drv = _driver(
        tmp_path,
        [
            ("s1", "A4:C1:38:00:00:01", BleDevice(bind_key_file=key if encrypted else None)),
            ("tags", None, BleDevice(tags=[ib["tag"]])),
        ],
    )
    sink = Recorder()
    sd = {adverts.BTHOME_UUID: bthome, adverts.EDDYSTONE_UUID: eddy}
    for mac in ("A4:C1:38:00:00:01", "C0:00:00:00:00:01"):
        asyncio.run(drv.handle(sink, mac, _adv(sd, {0x004C: apple}), 1.0))
    assert sink.cards == [] or _hex(ib["manufacturer_data"]) == apple
    if encrypted:
        assert sink.samples == []  # garbage never decrypts under the key
    assert drv.counters.rejected["error"] == 0


def test_bthome_profile_units_are_the_ones_bthome_ble_decodes() -> None:
    from bthome_ble.const import MEAS_TYPES

    units: dict[str, str | None] = {}
    for m in MEAS_TYPES.values():
        d = m.meas_format
        dc = getattr(d, "device_class", None)
        if dc is not None and hasattr(d, "native_unit_of_measurement"):
            unit = d.native_unit_of_measurement
            units.setdefault(dc.value, None if unit is None else str(unit.value))
    profile = load_profile_file(PROFILES["bthome-sensor"])
    for p in profile.points:
        key = (p.wire or {}).get("key", p.name)
        if p.kind == "state":
            continue  # binary sensors (window): no unit
        assert key in units, f"{p.name}: bthome-ble has no {key!r}"
        assert p.unit == units[key], f"{p.name}: {p.unit!r} here, {units[key]!r} in bthome-ble"
