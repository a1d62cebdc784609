"""The OSDP v2 driver: the agent as the control panel of the card readers on one RS-485 line.

libosdp (the optional `osdp` extra) speaks the protocol; this driver runs its `refresh()`
on the event loop every 20 ms (no threads: its callbacks run here, between two awaits),
always with Secure Channel enforced and each reader's own key from a file. It never sends
KEYSET: a reader whose key does not match stays offline with the reason said, because a
reader re-keyed to the wrong key is locked out until someone resets it at the door.

Card reads go to the privacy pipeline (sink.card); keypad input is dropped and counted
(a PIN is never published, logged or kept); tamper and power come from local status
reports as the profile's alarm points; LED and buzzer are the profile's actions.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.cards import CardRead
from agent.driver import DeviceSink, Driver, Problems
from agent.errors import ActionError, BadArgumentError, DriverError
from agent.profiles import Profile
from agent.sample import BoundDevice, BusSpec, Sample
from agent.sample import Value as SampleValue
from agent.units import Duration, duration_range
from agent.validation import ConfigPath, one_of
from drivers.osdp import codec
from drivers.osdp.channel import SerialChannel

log = logging.getLogger(__name__)
BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400)
REFRESH = 0.02  # libosdp's own pace (its thread sleeps 20 ms between refreshes)
COMMAND_TIMEOUT = 3.0
# An attempt that fails this soon after it started got an answer: the reader refused the
# Secure Channel (wrong key). Not answering at all takes libosdp about 8 s of probes.
QUICK_FAILURE = 3.0
LED_COLORS = ("black", "red", "green", "amber", "blue", "magenta", "cyan", "white")
NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"
INSTALL = "pip install 'campus-agent[osdp]'"


class OsdpBus(BaseModel):
    """Keys of a `driver = "osdp"` [[buses]] entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    port: ConfigPath  # the RS-485 adapter: prefer /dev/serial/by-id/...
    baudrate: int = 9600  # OSDP's default; every reader on the line uses the same
    # How long an unanswered or refused reader waits before the next attempt.
    retry_interval: Annotated[
        Duration, duration_range(2.0, 300.0, "libosdp itself waits 300 s; shorter floods the line")
    ] = 10.0

    @field_validator("baudrate")
    @classmethod
    def _baud(cls, v: int) -> int:
        return one_of(v, BAUD_RATES, "OSDP baud rate")


class ReaderHead(BaseModel):
    """One reader head of a PD (OSDP reader number = its index in `readers`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME)
    direction: Literal["in", "out"] | None = None


class OsdpDevice(BaseModel):
    """Keys an osdp [[devices]] entry adds (`address` is the reader's OSDP address)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    scbk_file: ConfigPath  # the reader's Secure Channel Base Key: 16 bytes or 32 hex digits
    door: str | None = Field(default=None, pattern=NAME)
    direction: Literal["in", "out"] | None = None  # of every head without its own
    readers: list[ReaderHead] = Field(default_factory=list, max_length=8)
    keypad: Literal["drop"] = "drop"  # a PIN never leaves the driver


class StatusWire(BaseModel):
    """A point's `wire`: which bit of the reader's local status report it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    status: Literal["tamper", "power"]


class CommandWire(BaseModel):
    """An action's `wire`: the OSDP command it sends."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    command: Literal["led", "buzzer"]


@dataclass
class _Reader:
    """One PD on the line, as the driver follows it."""

    index: int  # its place in libosdp's PD list
    device: BoundDevice
    address: int
    options: OsdpDevice
    points: dict[str, str]  # status bit -> point name
    online: bool = False
    reported: bool | None = None
    attempt: float = 0.0  # monotonic start of the current connection attempt
    kicking: bool = False  # disabled, to be enabled at the next refresh
    ended: bool = False  # libosdp gave the current attempt up
    failure: str = ""  # why it did
    waiting: collections.deque[tuple[int, asyncio.Future[int]]] = field(
        default_factory=collections.deque
    )


def _osdp() -> Any:
    try:
        import osdp  # type: ignore[import-untyped]  # noqa: PLC0415 - optional extra
    except ImportError:
        raise DriverError(f"the osdp driver needs libosdp: {INSTALL}") from None
    return osdp


class OsdpDriver(Driver):
    """OSDP v2 control panel for the readers (by address) on one serial line."""

    key: ClassVar[str] = "osdp"
    profile_driver: ClassVar[str] = "osdp"
    bus_model: ClassVar[type[BaseModel]] = OsdpBus
    device_model: ClassVar[type[BaseModel]] = OsdpDevice
    point_wire: ClassVar[type[BaseModel] | None] = StatusWire
    action_wire: ClassVar[type[BaseModel] | None] = CommandWire
    wire_required: ClassVar[bool] = True

    def __init__(self, bus: BusSpec, devices: Sequence[BoundDevice]) -> None:
        super().__init__(bus, devices)
        self.options: OsdpBus = bus.options
        self.readers: list[_Reader] = []
        for i, d in enumerate(self.devices):
            points: dict[str, str] = {}
            for p in d.profile.points:
                if p.wire is not None:
                    points[StatusWire.model_validate(p.wire).status] = p.name
            addr = d.address if isinstance(d.address, int) else -1
            self.readers.append(_Reader(i, d, addr, d.options, points))
        self.by_id = {r.device.id: r for r in self.readers}
        self.channel: SerialChannel | None = None
        self.ctx: Any = None
        self.sink: DeviceSink | None = None
        self.pending: list[tuple[int, dict[str, Any]]] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.rejected: collections.Counter[str] = collections.Counter()

    # ---- config checks (`check`: reads the key files, opens no port) ---------------------

    @classmethod
    def check_profile(cls, profile: Profile) -> Problems:
        problems = super().check_profile(profile)
        if profile.category != "card":
            problems.append(("category", 'an osdp reader profile has category = "card"'))
        for i, p in enumerate(profile.points):
            if p.wire is not None and p.kind != "alarm":
                problems.append((f"points[{i}].kind", 'tamper and power are kind = "alarm"'))
        return problems

    @classmethod
    def check_device(cls, device: BoundDevice) -> Problems:
        problems: Problems = []
        a = device.address
        if type(a) is not int or not 0 <= a <= 126:
            problems.append(("address", "the reader's OSDP address: a number from 0 to 126"))
        opts: OsdpDevice = device.options
        try:
            codec.load_scbk(Path(opts.scbk_file))
        except ValueError as e:
            problems.append(("scbk_file", str(e)))
        return problems

    # ---- running -------------------------------------------------------------------------

    async def run(self, sink: DeviceSink) -> None:
        """Open the line, start every reader's Secure Channel, refresh until cancelled."""
        osdp = _osdp()
        seen: dict[int, str] = {}
        for r in self.readers:
            if r.address in seen:
                raise DriverError(
                    f"bus {self.bus.id}: {r.device.id} and {seen[r.address]} share OSDP "
                    f"address {r.address}"
                )
            seen[r.address] = r.device.id
        keys = []
        for r in self.readers:
            try:
                keys.append(codec.load_scbk(Path(r.options.scbk_file)))
            except ValueError as e:
                raise DriverError(f"{r.device.id}: scbk_file: {e}") from None
        self.sink = sink
        channel = self.channel = _channel_class(osdp)(self.options.port, self.options.baudrate)
        try:
            channel.open()
        except OSError as e:
            raise DriverError(f"cannot open {self.options.port}: {e}") from None
        flags = [osdp.LibFlag.EnforceSecure, osdp.LibFlag.EnableNotification]
        infos = [
            osdp.PDInfo(r.address, channel, scbk=key, flags=flags, name=r.device.id[:15]).get()
            for r, key in zip(self.readers, keys, strict=True)
        ]
        # The C logger writes to stderr: errors only (a wrong key, a reader given up), not a
        # line a second per silent reader. Our own log says the rest.
        import osdp_sys  # type: ignore[import-not-found]  # noqa: PLC0415 - in libosdp

        osdp_sys.set_loglevel(osdp.LogLevel.Error)
        self.ctx = osdp_sys.ControlPanel(infos)
        self.ctx.set_event_callback(self._on_event)
        self.ctx.set_command_completion_callback(self._on_completion)
        start = time.monotonic()
        for r in self.readers:
            r.attempt = start
        try:
            while True:
                self.ctx.refresh()
                await self._after_refresh()
                await asyncio.sleep(REFRESH)
        finally:
            for r in self.readers:
                for _, fut in r.waiting:
                    fut.cancel()
                r.waiting.clear()
            channel.close()

    # libosdp callbacks: inside refresh(), on the loop thread. Never raise, never block.

    def _on_event(self, pd: int, event: dict[str, Any]) -> int:
        try:
            self.pending.append((pd, event))
        except Exception:  # noqa: BLE001 - an exception must not unwind into C
            return -1
        return 0

    def _on_completion(self, pd: int, cmd: dict[str, Any], status: int) -> None:
        try:
            waiting = self.readers[pd].waiting
            command = cmd.get("command")
            for i, (kind, fut) in enumerate(waiting):
                if kind == command:
                    del waiting[i]
                    if not fut.done():
                        fut.set_result(status)
                    break
        except Exception:  # noqa: BLE001, S110 - an exception must not unwind into C
            pass

    async def _after_refresh(self) -> None:
        events, self.pending = self.pending, []
        for pd, event in events:
            await self._event(pd, event)
        status = self.ctx.status()
        sc = self.ctx.sc_status()
        now = time.monotonic()
        for r in self.readers:
            await self._follow(r, bool(status & sc & (1 << r.index)), now)

    async def _follow(self, r: _Reader, up: bool, now: float) -> None:
        """Report availability changes; restart an attempt that ended (the 300 s backoff)."""
        if r.kicking:
            if self.ctx.enable_pd(r.index):
                # The disable's own "offline" notification came meanwhile: not a failure.
                r.kicking, r.ended, r.failure = False, False, ""
                r.attempt = now
            return
        if up and not r.online:
            r.online, r.failure = True, ""
            self.counts["online"] += 1
            log.info("osdp reader online: device=%s address=%d", r.device.id, r.address)
            await self._report(r, True, "")
        elif not up and r.online:
            r.online = False
            r.attempt = now - self.options.retry_interval  # retry right away
            await self._report(r, False, r.failure or self._no_answer(r))
        elif not up:
            if r.ended or now - r.attempt >= self.options.retry_interval:
                await self._report(r, False, r.failure or self._no_answer(r))
            # libosdp keeps a reader that failed offline for 300 s: disable it, and enable it
            # at the next refresh, which starts a new attempt (never a KEYSET).
            if now - r.attempt >= self.options.retry_interval and self.ctx.disable_pd(r.index):
                r.kicking, r.ended, r.failure = True, False, ""
                self.counts["retries"] += 1

    def _no_answer(self, r: _Reader) -> str:
        return f"no answer from OSDP address {r.address} on {self.options.port}"

    async def _report(self, r: _Reader, online: bool, reason: str) -> None:
        if r.reported is online:
            return
        r.reported = online
        if self.sink is not None:
            info: dict[str, SampleValue] = {"secure_channel": True} if online else {}
            await self.sink.availability(r.device.id, online=online, reason=reason, info=info)

    async def _event(self, pd: int, event: dict[str, Any]) -> None:
        if not 0 <= pd < len(self.readers) or not isinstance(event, dict):
            self.rejected["bad_event"] += 1
            return
        r = self.readers[pd]
        kind = event.get("event")
        if kind == codec.EVENT_CARD:
            await self._card(r, event)
        elif kind == codec.EVENT_KEYPAD:
            self.counts["keypad_dropped"] += 1  # a PIN: not kept, not logged, not published
        elif kind == codec.EVENT_STATUS:
            await self._status(r, event)
        elif kind == codec.EVENT_NOTIFICATION:
            self._notification(r, event)
        else:
            self.rejected["other_event"] += 1

    def _notification(self, r: _Reader, event: dict[str, Any]) -> None:
        if event.get("type") != codec.NOTIFY_PD or event.get("arg0") != 0 or r.online:
            return
        # An attempt ended without the reader coming online.
        r.ended = True
        if time.monotonic() - r.attempt < QUICK_FAILURE:
            self.counts["sc_refused"] += 1
            r.failure = (
                f"Secure Channel refused by OSDP address {r.address}: its key does not match "
                f"{r.options.scbk_file} (or it is in install mode); the agent never re-keys "
                "a reader: set the key the reader has, or reset the reader"
            )
            log.warning(
                "osdp secure channel refused: device=%s address=%d key_file=%s",
                r.device.id,
                r.address,
                r.options.scbk_file,
            )

    async def _card(self, r: _Reader, event: dict[str, Any]) -> None:
        try:
            card = codec.decode_card(event)
        except codec.RejectedError as e:
            self.rejected[e.reason] += 1
            return
        heads = r.options.readers
        head = heads[card.reader_no] if card.reader_no < len(heads) else None
        name = head.name if head else ("main" if card.reader_no == 0 else f"r{card.reader_no}")
        direction = (head.direction if head else None) or r.options.direction
        self.counts["cards"] += 1
        if card.reversed:
            self.counts["reverse_reads"] += 1
        if self.sink is not None:
            await self.sink.card(
                CardRead(
                    device=r.device.id,
                    ts=time.time(),
                    number=card.number,
                    format=card.format,
                    reader=name,
                    door=r.options.door,
                    direction=direction,
                )
            )

    async def _status(self, r: _Reader, event: dict[str, Any]) -> None:
        try:
            bits = codec.decode_local_status(event)
        except codec.RejectedError as e:
            self.rejected[e.reason] += 1
            return
        self.counts["status_reports"] += 1
        values: dict[str, SampleValue] = {r.points[k]: v for k, v in bits.items() if k in r.points}
        if values and self.sink is not None:
            await self.sink.sample(Sample(r.device.id, time.time(), values))

    # ---- actions -------------------------------------------------------------------------

    async def act(
        self, device: BoundDevice, action: str, args: Mapping[str, Any]
    ) -> Mapping[str, SampleValue]:
        """Send the action's LED or buzzer command; wait for the reader's ACK."""
        spec = device.profile.action(action)
        r = self.by_id.get(device.id)
        if spec is None or spec.wire is None or r is None:
            raise ActionError(f"{device.id} has no osdp action {action!r}")
        wire = CommandWire.model_validate(spec.wire)
        cmd = _led(args) if wire.command == "led" else _buzzer(args)
        if self.ctx is None or not r.online:
            raise ActionError(f"reader {device.id} (OSDP address {r.address}) is offline")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if not self.ctx.submit_command(r.index, cmd):
            raise ActionError(f"reader {device.id}: libosdp's command queue refused it")
        r.waiting.append((cmd["command"], fut))
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                status = await fut
        except TimeoutError:
            raise ActionError(f"reader {device.id} did not acknowledge in time") from None
        if status != 0:
            raise ActionError(f"reader {device.id} refused the command (status {status})")
        self.counts[f"{wire.command}_commands"] += 1
        return {"status": "ok"}

    def stats(self) -> dict[str, Any]:
        """Counters for `campus-agent status`: never a card number or a key."""
        return {
            **(self.channel.stats() if self.channel else {}),
            **dict(self.counts),
            "rejected": dict(self.rejected),
            "readers_online": sum(r.online for r in self.readers),
        }


def _number(args: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    v = args.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
        raise BadArgumentError(f"{key} must be a number from {low:g} to {high:g}")
    return float(v)


def _led(args: Mapping[str, Any]) -> dict[str, Any]:
    """A temporary LED setting: `color` for `seconds` (0.1..60), steady or blinking."""
    color = args.get("color", "green")
    if color not in LED_COLORS:
        raise BadArgumentError(f"color must be one of {', '.join(LED_COLORS)}")
    tenths = round(_number(args, "seconds", 1.0, 0.1, 60.0) * 10)
    code = LED_COLORS.index(color)
    blink = bool(args.get("blink", False))
    return {
        "command": 2,  # osdp_sys.CMD_LED
        "reader": 0,
        "led_number": 0,
        "control_code": 1,  # temporary: the reader returns to its own state after
        "on_count": 3 if blink else tenths,
        "off_count": 3 if blink else 0,
        "on_color": code,
        "off_color": 0 if blink else code,
        "timer_count": tenths,
        "temporary": True,
    }


def _buzzer(args: Mapping[str, Any]) -> dict[str, Any]:
    """`count` beeps (1..10) of `seconds` (0.1..2) each."""
    count = round(_number(args, "count", 1, 1, 10))
    tenths = round(_number(args, "seconds", 0.2, 0.1, 2.0) * 10)
    return {
        "command": 3,  # osdp_sys.CMD_BUZZER
        "reader": 0,
        "control_code": 2,  # the default tone
        "on_count": tenths,
        "off_count": tenths,
        "rep_count": count,
    }


def _channel_class(osdp: Any) -> type[SerialChannel]:
    """SerialChannel as an osdp.Channel (the base class lives in the optional package)."""

    class Channel(SerialChannel, osdp.Channel):  # type: ignore[misc]
        def __init__(self, port: str, baudrate: int) -> None:
            osdp.Channel.__init__(self)
            SerialChannel.__init__(self, port, baudrate)

    return Channel
