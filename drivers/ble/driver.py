"""The BLE driver: one Bluetooth adapter scanned through BlueZ with bleak.

* Sensors (`address` = the MAC): BTHome v2 adverts decoded by bthome-ble, plain or
  encrypted (`bind_key_file`, 0600, 32 hex digits); every value the library decodes whose key
  is a point of the profile goes out as a Sample (the points' deadband/heartbeat decide what
  is an event). The last accepted encryption counter of each sensor is kept in the bus's
  `state_file`, so a recorded advert replayed after a restart is refused; bthome-ble's packet
  id drops repeats.
* Tags (a profile of category "ble"): iBeacon / Eddystone-UID ids on the device's allowlist
  (`tags` or `tags_file`) heard at or above `rssi_min` are `seen` (an access event of
  direction "in" at reader = the zone), `gone` ("out") after `gone_after` without one. The id
  goes through the privacy pipeline like a card (hashed); it is never logged or counted by
  value. Eddystone TLM gives the tags' battery.
* Anything else heard is only counted (`unknown`).
* Health: the adapter removed, powered off or silent for `silent_after` puts every device of
  the bus offline with the reason; the adapter is powered (off and) on through BlueZ with a
  backoff and scanning resumes by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.cards import CardRead
from agent.driver import DeviceSink, Driver, Problems
from agent.profiles import Profile
from agent.sample import BoundDevice, BusSpec, Sample, Value
from agent.units import Duration, duration_range
from agent.validation import ConfigPath
from drivers.ble import adverts
from drivers.ble.adverts import Counters, TagSeen, Telemetry
from drivers.ble.state import CounterStore

log = logging.getLogger(__name__)
TAG_CATEGORY = "ble"
LOW_BATTERY_MV = 2400
QUEUE_MAX = 20_000
QUIET_LOGGERS = ("bleak", "bthome_ble", "habluetooth", "bluetooth_data_tools", "dbus_fast")
MAC = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"


class BleBus(BaseModel):
    """Keys of a `driver = "ble"` [[buses]] entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    adapter: str = Field(default="hci0", pattern=r"^hci[0-9]{1,2}$")
    # passive: BlueZ's AdvertisementMonitor (no scan requests sent; BlueZ >= 5.56 with
    # --experimental); active: classic discovery, where passive is not available.
    scanning: Literal["passive", "active"] = "passive"
    # Beside the config by default (validated, so taken from the config file's folder).
    state_file: ConfigPath = Field(default="ble-state.json", validate_default=True)
    silent_after: Annotated[Duration, duration_range(2.0, 3600.0, "")] = 120.0
    reset_min: Annotated[Duration, duration_range(0.1, 60.0, "")] = 1.0
    reset_max: Annotated[Duration, duration_range(1.0, 3600.0, "")] = 60.0
    tick: Annotated[Duration, duration_range(0.05, 10.0, "")] = 0.5


class BleDevice(BaseModel):
    """Keys a ble [[devices]] entry may add."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    bind_key_file: ConfigPath | None = None  # encrypted BTHome: 32 hex digits, 0600
    tags: list[str] = Field(default_factory=list)  # ibeacon:<uuid>:<major>:<minor>, ...
    tags_file: ConfigPath | None = None  # one tag id a line (# comments)
    zone: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    rssi_min: int = Field(default=-90, ge=-127, le=20)
    gone_after: Annotated[Duration, duration_range(1.0, 3600.0, "")] = 30.0


class PointWire(BaseModel):
    """A ble point's `wire`: the bthome-ble key it takes (default: the point's name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")


@dataclass
class _Sensor:
    device: BoundDevice
    parser: Any  # bthome_ble.BTHomeBluetoothDeviceData
    keys: dict[str, str]  # bthome-ble key -> point name
    accepted: int = 0


@dataclass
class _Tags:
    device: BoundDevice
    opts: BleDevice
    zone: str
    present: dict[tuple[str, int], tuple[TagSeen, float]] = field(default_factory=dict)
    battery: dict[tuple[str, int], int] = field(default_factory=dict)


class BleDriver(Driver):
    key: ClassVar[str] = "ble"
    profile_driver: ClassVar[str] = "ble"
    bus_model: ClassVar[type[BaseModel]] = BleBus
    device_model: ClassVar[type[BaseModel]] = BleDevice
    point_wire: ClassVar[type[BaseModel] | None] = PointWire

    def __init__(self, bus: BusSpec, devices: Sequence[BoundDevice]) -> None:
        super().__init__(bus, devices)
        self.options: BleBus = bus.options
        self.counters = Counters()
        self.store = CounterStore(Path(self.options.state_file))
        self.sensors: dict[str, _Sensor] = {}
        self.tag_groups: list[_Tags] = []
        self.allow: dict[tuple[str, int], list[_Tags]] = {}  # (format, id) -> groups
        self.mac_tag: dict[str, tuple[str, int]] = {}  # Eddystone TLM: MAC -> its UID
        self.queue: asyncio.Queue[tuple[str, Any, float]] = asyncio.Queue(QUEUE_MAX)
        self.healthy: bool | None = None
        self.reason = ""
        self.resets = 0
        self.scans = 0
        self.rate = 0.0
        self._last_advert = time.monotonic()
        self._rate_mark = (time.monotonic(), 0)

    # ---- config checks (no I/O) ----------------------------------------------------

    @classmethod
    def check_profile(cls, profile: Profile) -> Problems:
        problems = super().check_profile(profile)
        if profile.actions:
            problems.append(("actions", "a ble device takes no actions"))
        return problems

    @classmethod
    def check_device(cls, device: BoundDevice) -> Problems:
        opts: BleDevice = device.options or BleDevice()
        import re  # noqa: PLC0415

        if device.profile.category == TAG_CATEGORY:
            problems: Problems = []
            if device.address is not None:
                problems.append(("address", "a tag group is its allowlist: remove `address`"))
            if not opts.tags and not opts.tags_file:
                problems.append(("tags", "a tag group needs `tags` or `tags_file`"))
            for i, t in enumerate(opts.tags):
                try:
                    adverts.tag_number(t)
                except ValueError as e:
                    problems.append((f"tags[{i}]", str(e)))
            return problems
        if not isinstance(device.address, str) or not re.match(MAC, device.address):
            return [("address", 'a BLE sensor\'s address is its MAC: "A4:C1:38:00:00:01"')]
        return []

    # ---- setup ---------------------------------------------------------------------

    def _setup(self) -> list[tuple[str, str]]:
        """Sensors and tag groups from the devices; (device, reason) of those unusable."""
        from bthome_ble import BTHomeBluetoothDeviceData  # noqa: PLC0415

        bad: list[tuple[str, str]] = []
        for d in self.devices:
            opts: BleDevice = d.options or BleDevice()
            try:
                if d.profile.category == TAG_CATEGORY:
                    self._add_tags(d, opts)
                else:
                    key = _bind_key(opts.bind_key_file) if opts.bind_key_file else None
                    keys = {}
                    for p in d.profile.points:
                        keys[(p.wire or {}).get("key", p.name)] = p.name
                    self.sensors[str(d.address).upper()] = _Sensor(
                        d, BTHomeBluetoothDeviceData(bindkey=key), keys
                    )
            except (OSError, ValueError) as e:
                bad.append((d.id, str(e)))
        return bad

    def _add_tags(self, d: BoundDevice, opts: BleDevice) -> None:
        ids = list(opts.tags)
        if opts.tags_file:
            for raw in Path(opts.tags_file).read_text().splitlines():
                line = raw.split("#", 1)[0].strip()
                if line:
                    ids.append(line)
        group = _Tags(d, opts, opts.zone or self.options.adapter)
        self.tag_groups.append(group)
        for t in ids:
            seen = adverts.tag_number(t)
            self.allow.setdefault((seen.format, seen.number.reveal()), []).append(group)

    # ---- running -------------------------------------------------------------------

    async def run(self, sink: DeviceSink) -> None:
        # bleak, bthome-ble and habluetooth log whole adverts at DEBUG: a tag's id is in
        # them. Never below INFO, whatever the agent's level.
        for name in QUIET_LOGGERS:
            logger = logging.getLogger(name)
            logger.setLevel(max(logger.getEffectiveLevel(), logging.INFO))
        self.store.load()
        for dev, why in self._setup():
            log.error("ble device %s unusable: %s", dev, why)
            await sink.availability(dev, online=False, reason=why)
        consumer = asyncio.create_task(self._consume(sink))
        backoff = self.options.reset_min
        try:
            while True:
                problem = await self._adapter_problem()
                if problem is None:
                    problem = await self._scan(sink)
                    if problem is None:  # scanned a while: start over quickly
                        backoff = self.options.reset_min
                        continue
                await self._health(sink, False, problem)
                await self._reset(problem)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.options.reset_max)
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            self.store.flush()

    async def _scan(self, sink: DeviceSink) -> str | None:
        """Scan until the adapter has a problem (its description returned)."""
        from bleak import BleakScanner  # noqa: PLC0415
        from bleak.assigned_numbers import AdvertisementDataType  # noqa: PLC0415
        from bleak.exc import BleakError  # noqa: PLC0415

        def heard(device: Any, adv: Any) -> None:
            self._last_advert = time.monotonic()
            try:
                self.queue.put_nowait((device.address, adv, time.time()))
            except asyncio.QueueFull:
                self.counters.rejected["queue-full"] += 1

        bluez: dict[str, Any] = {"adapter": self.options.adapter}
        if self.options.scanning == "passive":
            from bleak.args.bluez import OrPattern  # noqa: PLC0415

            # BlueZ wants a pattern: every advert carries Flags (0x01) of LE General (0x02) /
            # Limited (0x01) discoverable, or BR/EDR not supported (0x04): match them all.
            bluez["or_patterns"] = [
                OrPattern(0, AdvertisementDataType.FLAGS, bytes([b])) for b in (2, 4, 5, 6, 0x1A)
            ]
        try:
            scanner = BleakScanner(
                heard,
                scanning_mode=self.options.scanning,
                bluez=bluez,  # type: ignore[arg-type]
            )
            await scanner.start()
        except (BleakError, OSError, ValueError, RuntimeError) as e:
            return f"adapter {self.options.adapter}: scanning failed: {e}"
        self.scans += 1
        self._last_advert = time.monotonic()
        await self._health(sink, True, "")
        try:
            return await self._watch(sink)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await scanner.stop()

    async def _watch(self, sink: DeviceSink) -> str | None:
        while True:
            await asyncio.sleep(self.options.tick)
            now = time.monotonic()
            t0, n0 = self._rate_mark
            if now - t0 >= 1.0:
                self.rate = (self.counters.adverts - n0) / (now - t0)
                self._rate_mark = (now, self.counters.adverts)
            self.store.flush()
            await self._gone(sink)
            problem = await self._adapter_problem()
            if problem is not None:
                return problem
            if now - self._last_advert > self.options.silent_after:
                return f"adapter {self.options.adapter} silent for {self.options.silent_after:g} s"

    async def _consume(self, sink: DeviceSink) -> None:
        while True:
            address, adv, ts = await self.queue.get()
            try:
                await self.handle(sink, address, adv, ts)
            except Exception:  # one bad advert never stops the scan
                self.counters.rejected["error"] += 1
                log.exception("ble advert not handled")

    async def handle(self, sink: DeviceSink, address: str, adv: Any, ts: float) -> None:
        """One advert (bleak's AdvertisementData) from `address`."""
        c = self.counters
        c.adverts += 1
        address = address.upper()
        sensor = self.sensors.get(address)
        if sensor is not None:
            await self._sensor(sink, sensor, address, adv, ts)
            return
        md: dict[int, bytes] = dict(adv.manufacturer_data or {})
        sd: dict[str, bytes] = dict(adv.service_data or {})
        found = adverts.ibeacon(md, c) or adverts.eddystone(sd, c)
        if isinstance(found, TagSeen):
            key: tuple[str, int] = (found.format, found.number.reveal())
            groups = self.allow.get(key)
            if not groups:
                c.unknown += 1
                return
            self.mac_tag[address] = key
            for g in groups:
                await self._tag(sink, g, key=key, seen=found, rssi=adv.rssi, ts=ts)
            return
        if isinstance(found, Telemetry) and address in self.mac_tag:
            key = self.mac_tag[address]
            for g in self.allow.get(key, []):
                if found.battery_mv is not None and key in g.present:
                    g.battery[key] = found.battery_mv
                    await self._tag_points(sink, g, ts)
            return
        c.unknown += 1

    async def _sensor(
        self, sink: DeviceSink, s: _Sensor, address: str, adv: Any, ts: float
    ) -> None:
        from habluetooth import BluetoothServiceInfoBleak  # noqa: PLC0415

        sd = dict(adv.service_data or {})
        if adverts.BTHOME_UUID not in sd:
            self.counters.rejected["not-bthome"] += 1
            return
        counter = adverts.bthome_counter(sd)
        last = self.store.last(address)
        if counter is not None and last is not None and counter <= last:
            self.counters.rejected["replayed"] += 1
            return
        info = BluetoothServiceInfoBleak(
            adv.local_name or "",
            address,
            adv.rssi,
            dict(adv.manufacturer_data or {}),
            sd,
            list(adv.service_uuids or []),
            self.options.adapter,
            None,  # type: ignore[arg-type]  # bthome-ble does not use the BLEDevice
            None,
            False,
            time.monotonic(),
            adv.tx_power,
        )
        p = s.parser
        try:
            update = p.update(info)
        except Exception:  # noqa: BLE001 - a third-party parser on radio garbage: counted
            self.counters.rejected["bthome"] += 1
            return
        if p.last_service_info is not info:
            self.counters.rejected["downgrade" if p.downgrade_detected else "repeat"] += 1
            return
        if counter is not None:
            if not (
                p.bindkey_verified and not p.decryption_failed and p.encryption_counter == counter
            ):
                self.counters.rejected["decrypt"] += 1
                return
            self.store.accept(address, counter)
        elif p.bindkey:
            self.counters.rejected["plaintext"] += 1
            return
        values: dict[str, Value] = {}
        for dk, sv in update.entity_values.items():
            name = s.keys.get(dk.key)
            if name is not None and isinstance(sv.native_value, int | float):
                values[name] = sv.native_value
        for dk, bv in update.binary_entity_values.items():
            name = s.keys.get(dk.key)
            if name is not None and isinstance(bv.native_value, bool):
                values[name] = bv.native_value
        if values:
            s.accepted += 1
            await sink.sample(Sample(s.device.id, ts, values))

    async def _tag(
        self,
        sink: DeviceSink,
        g: _Tags,
        *,
        key: tuple[str, int],
        seen: TagSeen,
        rssi: int,
        ts: float,
    ) -> None:
        if rssi < g.opts.rssi_min:
            return
        first = key not in g.present
        g.present[key] = (seen, time.monotonic())
        if first:
            await sink.card(
                CardRead(g.device.id, ts, seen.number, seen.format, reader=g.zone, direction="in")
            )
            await self._tag_points(sink, g, ts)

    async def _gone(self, sink: DeviceSink) -> None:
        now = time.monotonic()
        for g in self.tag_groups:
            gone = [k for k, (_, t) in g.present.items() if now - t > g.opts.gone_after]
            for k in gone:
                seen, _ = g.present.pop(k)
                g.battery.pop(k, None)
                await sink.card(
                    CardRead(
                        g.device.id,
                        time.time(),
                        seen.number,
                        seen.format,
                        reader=g.zone,
                        direction="out",
                    )
                )
            if gone:
                await self._tag_points(sink, g, time.time())

    async def _tag_points(self, sink: DeviceSink, g: _Tags, ts: float) -> None:
        names = {p.name for p in g.device.profile.points}
        values: dict[str, Value] = {}
        if "tags_present" in names:
            values["tags_present"] = len(g.present)
        if "tags_low_battery" in names:
            values["tags_low_battery"] = sum(1 for v in g.battery.values() if v < LOW_BATTERY_MV)
        if values:
            await sink.sample(Sample(g.device.id, ts, values))

    # ---- adapter health --------------------------------------------------------------

    async def _adapter_problem(self) -> str | None:
        return await adapter_problem(self.options.adapter)

    async def _reset(self, problem: str) -> None:
        """Power the adapter (off and) on through BlueZ; nothing to do if it is removed."""
        if problem.endswith("removed") or problem.startswith("BlueZ"):
            return
        from dbus_fast import Variant  # noqa: PLC0415

        path = f"/org/bluez/{self.options.adapter}"
        self.resets += 1
        log.warning("ble: resetting adapter %s (%s)", self.options.adapter, problem)
        with contextlib.suppress(OSError, RuntimeError, ValueError, _NoAdapterError):
            if "silent" in problem:
                await _bluez_call(
                    path, "Set", "ssv", ["org.bluez.Adapter1", "Powered", Variant("b", False)]
                )
            await _bluez_call(
                path, "Set", "ssv", ["org.bluez.Adapter1", "Powered", Variant("b", True)]
            )

    async def _health(self, sink: DeviceSink, ok: bool, reason: str) -> None:
        if self.healthy is ok and self.reason == reason:
            return
        self.healthy, self.reason = ok, reason
        if ok:
            log.info("ble: scanning on %s (%s)", self.options.adapter, self.options.scanning)
        else:
            log.warning("ble: %s", reason)
        for d in self.devices:
            await sink.availability(d.id, online=ok, reason=reason)

    def stats(self) -> dict[str, Any]:
        """Counts only: never an address of a tag, a tag id or a value."""
        return {
            "adverts": self.counters.adverts,
            "adverts_per_s": round(self.rate, 1),
            "unknown": self.counters.unknown,
            "rejected": dict(self.counters.rejected),
            "sensors_accepted": sum(s.accepted for s in self.sensors.values()),
            "tags_present": sum(len(g.present) for g in self.tag_groups),
            "scanning": bool(self.healthy),
            "reason": self.reason,
            "scans": self.scans,
            "resets": self.resets,
            "state_writes": self.store.writes,
        }


async def adapter_problem(name: str) -> str | None:
    """What is wrong with the adapter `name` as BlueZ sees it (removed, powered off, BlueZ
    not reachable), or None. Also `campus-agent doctor`'s Bluetooth check."""
    try:
        props = await _bluez_call(f"/org/bluez/{name}", "GetAll", "s", ["org.bluez.Adapter1"])
    except _NoAdapterError:
        return f"adapter {name} removed"
    except (OSError, RuntimeError, ValueError) as e:
        return f"BlueZ not reachable: {e}"
    powered = props[0].get("Powered")
    if powered is not None and not powered.value:
        return f"adapter {name} powered off"
    return None


class _NoAdapterError(Exception):
    pass


_BUS: Any = None


async def _bluez_call(path: str, member: str, signature: str, body: list[Any]) -> list[Any]:
    """A Properties call to BlueZ on the system bus (one shared connection, reopened)."""
    global _BUS  # noqa: PLW0603
    from dbus_fast import BusType, Message, MessageType  # noqa: PLC0415
    from dbus_fast.aio import MessageBus  # noqa: PLC0415

    if _BUS is None or not _BUS.connected:
        _BUS = await MessageBus(bus_type=BusType.SYSTEM).connect()
    message = Message(
        destination="org.bluez",
        path=path,
        interface="org.freedesktop.DBus.Properties",
        member=member,
        signature=signature,
        body=body,
    )
    async with asyncio.timeout(5):
        reply = await _BUS.call(message)
    if reply.message_type == MessageType.ERROR:
        if reply.error_name in (
            "org.freedesktop.DBus.Error.UnknownObject",
            "org.freedesktop.DBus.Error.UnknownMethod",
            "org.freedesktop.DBus.Error.InvalidArgs",
            "org.bluez.Error.DoesNotExist",
        ):
            raise _NoAdapterError(path)
        raise RuntimeError(f"{reply.error_name}: {reply.body}")
    return list(reply.body)


def _bind_key(path: str) -> bytes:
    """A BTHome bind key: 32 hex digits in a file only its owner reads."""
    st = os.stat(path)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"bind key file {path} must be 0600 (chmod 600 {path})")
    text = Path(path).read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 16:
        raise ValueError(f"bind key file {path}: 32 hex digits expected")
    return key
