"""The serial line card reader driver: one reader (RDM6300, a Wiegand-to-serial converter, a
2.4 GHz gate reader...) on one serial port, printing one frame per read.

The reader's frame is data: the `wire` table of its profile's `card` point (frames.py). Each
card read goes to the core's privacy pipeline (agent/cards.py) through `sink.card`; this
driver never logs, counts by value, or reports a card number. A port that cannot be opened,
disappears (a `/dev/serial/by-id` link gone when the reader is unplugged) or fails a read
puts the device offline with the reason; it is retried every `retry` and is online again
once open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import serial_asyncio_fast
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.cards import CardRead
from agent.driver import DeviceSink, Driver, Problems
from agent.errors import DriverError
from agent.profiles import Profile
from agent.sample import BoundDevice, BusSpec
from agent.units import Duration, duration_range
from agent.validation import ConfigPath, model_problems, one_of
from drivers.card_serial.frames import Counters, Decoder, Direction, FrameSpec, Read

log = logging.getLogger(__name__)
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
CARD_POINT = "card"
READ_CHUNK = 256


class CardSerialBus(BaseModel):
    """Keys of a `driver = "card-serial"` [[buses]] entry: the reader's port."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    port: ConfigPath  # prefer /dev/serial/by-id/... (stable across reboots)
    baudrate: int = 9600
    # How often a missing or failed port is tried again, and how often an open port's
    # path is checked (a by-id link vanishes when the reader is unplugged).
    retry: Annotated[
        Duration, duration_range(0.2, 60.0, "a reader plugged back is seen within a minute")
    ] = 2.0

    @field_validator("baudrate")
    @classmethod
    def _baud(cls, v: int) -> int:
        return one_of(v, BAUD_RATES, "serial baud rate")


class CardSerialDevice(BaseModel):
    """Keys a card-serial [[devices]] entry may add."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    reader: str = Field(default="main", pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    door: str | None = Field(default=None, min_length=1, max_length=64)
    # A one-way reader (an entrance-only head): every read is this direction. A gate reader
    # whose frames say the direction (`directions` in its profile) needs none.
    direction: Direction | None = None


class CardSerialDriver(Driver):
    """A card reader on a serial port: frames in, card reads to the privacy pipeline."""

    key: ClassVar[str] = "card-serial"
    profile_driver: ClassVar[str] = "card_serial"
    bus_model: ClassVar[type[BaseModel]] = CardSerialBus
    device_model: ClassVar[type[BaseModel]] = CardSerialDevice
    point_wire: ClassVar[type[BaseModel] | None] = FrameSpec

    def __init__(self, bus: BusSpec, devices: Sequence[BoundDevice]) -> None:
        super().__init__(bus, devices)
        self.options: CardSerialBus = bus.options
        self.device = devices[0] if devices else None
        self.counters = Counters()
        self.spec: FrameSpec | None = None
        if self.device is not None:
            point = self.device.profile.point(CARD_POINT)
            if point is not None and point.wire is not None:
                self.spec = FrameSpec.model_validate(point.wire)
        self.opened = 0  # times the port was opened
        self.offline = 0  # times the reader went offline
        self.online = False
        self._announced: bool | None = None

    # ---- config checks (no I/O) ----------------------------------------------------

    @classmethod
    def check_profile(cls, profile: Profile) -> Problems:
        problems: Problems = []
        if profile.category != "card":
            problems.append(("category", 'a card_serial profile is a card reader: "card"'))
        for i, p in enumerate(profile.points):
            if p.name != CARD_POINT:
                problems.append(
                    (
                        f"points[{i}].name",
                        f"a card_serial profile has one point, {CARD_POINT!r} (its frame); "
                        f"{p.name!r} is not read by this driver",
                    )
                )
            elif p.wire is None:
                problems.append(
                    (f"points[{i}].wire", "the card point's `wire` table is the reader's frame")
                )
            else:
                problems += model_problems(FrameSpec, p.wire, f"points[{i}].wire")
        if profile.point(CARD_POINT) is None:
            problems.append(("points", f"a card_serial profile needs the point {CARD_POINT!r}"))
        if profile.actions:
            problems.append(("actions", "a card_serial reader takes no actions"))
        return problems

    @classmethod
    def check_device(cls, device: BoundDevice) -> Problems:
        if device.address is not None:
            return [("address", "a serial card reader is the whole port: remove `address`")]
        point = device.profile.point(CARD_POINT)
        spec = point.wire if point is not None else None
        options: CardSerialDevice | None = device.options
        if options is not None and options.direction and spec and spec.get("directions"):
            return [
                (
                    "direction",
                    "this reader's frames say the direction (its profile's `directions`): "
                    "remove `direction`",
                )
            ]
        return []

    # ---- running -------------------------------------------------------------------

    async def run(self, sink: DeviceSink) -> None:
        """Read the port until cancelled; reopen it after every loss, every `retry`."""
        if len(self.devices) != 1 or self.spec is None:
            raise DriverError(
                f"bus {self.bus.id}: a card-serial bus carries exactly one reader, "
                f"but {len(self.devices)} devices name it"
            )
        port = self.options.port
        while True:
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=port, baudrate=self.options.baudrate
                )
            except OSError as e:  # serial.SerialException is an OSError
                await self._state(sink, False, f"cannot open serial port {port}: {_why(e)}")
                await asyncio.sleep(self.options.retry)
                continue
            self.opened += 1
            decoder = Decoder(self.spec, self.counters)
            await self._state(sink, True, "")
            try:
                reason = await self._serve(sink, reader, decoder)
            except OSError as e:
                reason = f"serial port {port} failed: {_why(e)}"
            finally:
                decoder.close()
                with contextlib.suppress(OSError, RuntimeError):
                    writer.close()
            await self._state(sink, False, reason)
            await asyncio.sleep(self.options.retry)

    async def _serve(self, sink: DeviceSink, reader: asyncio.StreamReader, decoder: Decoder) -> str:
        """Read frames until the port fails or its path is gone; the reason it ended."""
        port = self.options.port
        local = "://" not in port
        assert self.device is not None  # noqa: S101 - run checked it
        opts: CardSerialDevice = self.device.options or CardSerialDevice()
        while True:
            try:
                async with asyncio.timeout(self.options.retry):
                    data = await reader.read(READ_CHUNK)
            except TimeoutError:
                if local and not await asyncio.to_thread(os.path.exists, port):
                    return f"serial port {port} is gone (reader unplugged?)"
                continue
            if not data:
                return f"serial port {port} closed"
            ts = time.time()
            for read in decoder.feed(data):
                await sink.card(_card_read(self.device.id, ts, read, opts))

    async def _state(self, sink: DeviceSink, online: bool, reason: str) -> None:
        if self._announced is online:
            return
        self._announced = online
        self.online = online
        if online:
            log.info("card reader online: bus=%s port=%s", self.bus.id, self.options.port)
        else:
            self.offline += 1
            log.warning("card reader offline: bus=%s reason=%s", self.bus.id, reason)
        if self.device is not None:
            await sink.availability(self.device.id, online=online, reason=reason)

    def stats(self) -> dict[str, Any]:
        """Frames, cards and rejections by reason: counts only, never a number."""
        return {
            "frames": self.counters.frames,
            "cards": self.counters.cards,
            "rejected": dict(self.counters.rejected),
            "opened": self.opened,
            "offline": self.offline,
            "online": self.online,
        }


def _card_read(device: str, ts: float, read: Read, opts: CardSerialDevice) -> CardRead:
    direction = read.direction or opts.direction
    reader = opts.reader if read.direction is None else f"{opts.reader}-{read.direction}"
    return CardRead(
        device,
        ts,
        read.number,
        read.format,
        reader=reader,
        door=opts.door,
        direction=direction,
    )


def _why(e: OSError) -> str:
    """An OS error's words without the path repeated (pyserial puts it in the message)."""
    return e.strerror or str(e) or type(e).__name__
