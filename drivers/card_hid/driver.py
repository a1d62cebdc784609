"""The keyboard-wedge card reader driver: a USB HID reader that types each card, via evdev.

One bus is one input device (`path`, e.g. /dev/input/by-id/usb-…-event-kbd) and its one
device. The driver opens it and grabs it (EVIOCGRAB), so the keystrokes reach the agent only,
never a console or a desktop session; reads its events; and hands each card the decoder
(drivers/card_hid/decoder.py) completes to the privacy pipeline as a CardRead. How the model
types (layout, decimal or hex, length, bits, terminator, key timeout) is the `wire` table of
the profile's one state point, whose value (true) says the reader is held. A device that
cannot be opened or grabbed, or vanishes (unplugged), is offline with the reason; the driver
tries again every `retry`. evdev is the optional extra `hid`, imported only when a card-hid
bus runs or is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import logging
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from agent.cards import CardRead, Direction
from agent.driver import DeviceSink, Driver, Problems
from agent.errors import DriverError
from agent.profiles import Profile
from agent.sample import BoundDevice, BusSpec, Sample
from agent.units import MINUTE, Duration, duration_range
from agent.validation import ConfigPath, model_problems
from drivers.card_hid.decoder import Keymap, Output, WedgeDecoder
from drivers.card_hid.keys import Layout, Terminator

log = logging.getLogger(__name__)
EVDEV_MISSING = (
    "the card-hid driver needs the Python package evdev, which is not installed: "
    "pip install 'campus-agent[hid]' (it builds from source: gcc, python3-dev, linux-libc-dev)"
)


class HidBus(BaseModel):
    """Keys of a `driver = "card-hid"` [[buses]] entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # The reader's event device; prefer /dev/input/by-id/usb-…-event-kbd (stable names).
    path: ConfigPath
    # How often an absent, unreadable or busy device is tried again.
    retry: Annotated[
        Duration, duration_range(0.5, 10 * MINUTE, "quicker spins; slower misses a replug")
    ] = 3.0


class HidDevice(BaseModel):
    """Keys a card-hid [[devices]] entry may add: where the reader is."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    reader: str = Field(default="main", pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    door: str | None = Field(default=None, min_length=1, max_length=64)
    direction: Direction | None = None


class HidWire(BaseModel):
    """The `wire` table of the profile's state point: how the reader model types a card."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    output: Output  # "decimal" or "hex" digits
    bits: int = Field(ge=1, le=512)  # the card number's size: 32 for 10 decimal EM4100 digits
    format: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")  # the access event's format
    min_length: int = Field(default=1, ge=1, le=128)
    max_length: int = Field(default=20, ge=1, le=128)
    layout: Layout = "us"
    terminators: list[Terminator] = Field(default=["enter", "kpenter"], min_length=1)
    key_timeout: Annotated[
        Duration, duration_range(0.01, 5.0, "readers type a card in well under a second")
    ] = 0.1

    def keymap(self) -> Keymap:
        return Keymap(
            output=self.output,
            bits=self.bits,
            min_length=self.min_length,
            max_length=self.max_length,
            layout=self.layout,
            terminators=tuple(self.terminators),
            key_timeout=self.key_timeout,
        )


def load_evdev() -> ModuleType:
    """The evdev package, or a DriverError that says how to install it."""
    try:
        return importlib.import_module("evdev")
    except ImportError:
        raise DriverError(EVDEV_MISSING) from None


def open_reason(e: OSError, path: str) -> str:
    """Why the device is offline, for facilities staff (never a card number: only errno)."""
    if e.errno == errno.ENOENT:
        return f"no input device at {path} (reader unplugged?)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on {path}: give the agent's user the input group"
    if e.errno == errno.EBUSY:
        return f"{path} is grabbed by another program (only one may hold a reader)"
    if e.errno == errno.ENOTTY:
        return f"{path} is not an input event device"
    if e.errno == errno.ENODEV:
        return f"input device {path} vanished (reader unplugged?)"
    return f"input device {path}: {e.strerror or type(e).__name__}"


class CardHidDriver(Driver):
    """A keyboard-wedge reader on one input device: grabbed, decoded, cards to the core."""

    key: ClassVar[str] = "card-hid"
    profile_driver: ClassVar[str] = "card_hid"
    bus_model: ClassVar[type[BaseModel]] = HidBus
    device_model: ClassVar[type[BaseModel]] = HidDevice
    point_wire: ClassVar[type[BaseModel] | None] = HidWire

    def __init__(self, bus: BusSpec, devices: Sequence[BoundDevice]) -> None:
        super().__init__(bus, devices)
        self.options: HidBus = bus.options
        self.decoder: WedgeDecoder | None = None
        self.point: str | None = None
        if devices:
            for p in devices[0].profile.points:
                if p.wire is not None:
                    self.point = p.name
                    self.decoder = WedgeDecoder(HidWire.model_validate(p.wire).keymap())
        self.format = "hid"
        if devices:
            wire = next((p.wire for p in devices[0].profile.points if p.wire is not None), None)
            if wire is not None:
                self.format = str(wire["format"])
        self.opened = 0
        self.lost = 0
        self.reason = ""

    # ---- `check` time: no I/O ------------------------------------------------------------

    @classmethod
    def check_profile(cls, profile: Profile) -> Problems:
        problems: Problems = []
        wired = [(i, p) for i, p in enumerate(profile.points) if p.wire is not None]
        if len(wired) != 1:
            problems.append(
                ("points", "a card_hid profile has exactly one point with a `wire` table: how "
                 "the reader types (a state point; true while the reader is held)")
            )  # fmt: skip
        for i, p in wired:
            if p.kind != "state":
                problems.append((f"points[{i}].kind", "the point with the `wire` is a state"))
            problems += model_problems(HidWire, p.wire, f"points[{i}].wire")
            w = p.wire or {}
            lo, hi = w.get("min_length", 1), w.get("max_length", 20)
            if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
                problems.append((f"points[{i}].wire.min_length", "more than max_length"))
        for i, p in enumerate(profile.points):
            if p.wire is None and p.kind != "state":
                problems.append((f"points[{i}].wire", "a card_hid point needs `wire = {…}`"))
        return problems

    @classmethod
    def check_device(cls, device: BoundDevice) -> Problems:
        del device
        try:
            load_evdev()
        except DriverError as e:
            return [("bus", str(e))]
        return []

    # ---- running -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"opened": self.opened, "lost": self.lost}
        if self.decoder is not None:
            out.update(self.decoder.counts)
            out["rejected"] = self.decoder.rejected()
        return out

    async def run(self, sink: DeviceSink) -> None:
        if len(self.devices) != 1 or self.decoder is None:
            raise DriverError(
                f"bus {self.bus.id!r}: a card-hid bus is one reader; give it exactly one "
                f"[[devices]] entry (it has {len(self.devices)})"
            )
        evdev = load_evdev()
        device = self.devices[0]
        path = self.options.path
        while True:
            try:
                await self._session(evdev, device, sink)
                reason = f"input device {path} closed"
            except OSError as e:
                reason = open_reason(e, path)
            self.decoder.reset()
            self.reason = reason  # the runtime logs the change (device offline: reason=…)
            await sink.availability(device.id, online=False, reason=reason)
            await asyncio.sleep(self.options.retry)

    async def _session(self, evdev: ModuleType, device: BoundDevice, sink: DeviceSink) -> None:
        """Open, grab and read the device until it fails (OSError) or closes."""
        assert self.decoder is not None  # noqa: S101 - checked by run
        opts: HidDevice = device.options
        inp = evdev.InputDevice(self.options.path)
        grabbed = False
        try:
            inp.grab()  # the keystrokes reach no console, no desktop, no other reader
            grabbed = True
            self.opened += 1
            self.reason = ""
            info = inp.info
            await sink.availability(
                device.id,
                online=True,
                info={
                    "name": str(inp.name)[:80],
                    "usb_id": f"{info.vendor:04x}:{info.product:04x}",
                },
            )
            log.info("card reader %s: %s grabbed", device.id, self.options.path)
            if self.point is not None:
                await sink.sample(Sample(device.id, time.time(), {self.point: True}))
            async for ev in inp.async_read_loop():
                for number in self.decoder.feed(ev.type, ev.code, ev.value, ev.timestamp()):
                    await sink.card(
                        CardRead(
                            device=device.id,
                            ts=time.time(),
                            number=number,
                            format=self.format,
                            reader=opts.reader,
                            door=opts.door,
                            direction=opts.direction,
                        )
                    )
        except OSError:
            self.lost += grabbed
            raise
        finally:
            with contextlib.suppress(OSError):
                inp.ungrab()
            with contextlib.suppress(OSError):
                inp.close()
