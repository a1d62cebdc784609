"""Modbus RTU and TCP polling (pymodbus 3.x async clients): the only module importing pymodbus.

One request at a time on an RTU bus, with the inter-frame gap its baud rate needs; bounded
concurrency per TCP host. A device's points are read in as few block requests as its
profile's `max_gap` allows. A device that stops answering backs off (a circuit breaker), so
it does not slow the others on its bus; writes (an e-fence arm) go ahead of routine polls.
Polls are batched (#14): one timer per bus wakes when the earliest poll is due and starts
every poll due within the batch window (drivers/modbus/schedule.py); one worker per
connection reads their blocks.
It hands Samples to the core and never builds topics, JSON or SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from agent.driver import DeviceSink, Driver, Problems
from agent.errors import ActionError, DriverError
from agent.profiles import Profile
from agent.sample import BoundDevice, BusSpec, Quality, Sample, Value
from agent.units import Duration, duration_range
from agent.validation import ConfigPath, one_of
from drivers.modbus.codec import ReadBlock, Register, Write, encode, plan_reads
from drivers.modbus.schedule import Schedule, batch_window, first_offsets

log = logging.getLogger(__name__)
BAUD_RATES = (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200)
Client = AsyncModbusTcpClient | AsyncModbusSerialClient


# A Modbus answer takes milliseconds; a bus that waits minutes for one polls nothing else.
Timeout = Annotated[Duration, duration_range(0.01, 60.0, "the time one answer may take")]


class ModbusTcpBus(BaseModel):
    """Keys of a `driver = "modbus-tcp"` [[buses]] entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    timeout: Timeout = 1.0
    retries: int = Field(default=1, ge=0, le=5)
    max_concurrent: int = Field(default=4, ge=1, le=64)  # requests in flight to this host


class ModbusRtuBus(BaseModel):
    """Keys of a `driver = "modbus-rtu"` [[buses]] entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    port: ConfigPath  # prefer /dev/serial/by-id/... (stable across reboots)
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout: Timeout = 0.5
    retries: int = Field(default=1, ge=0, le=5)

    @field_validator("baudrate")
    @classmethod
    def _baud(cls, v: int) -> int:
        return one_of(v, BAUD_RATES, "serial baud rate")


class ModbusDevice(BaseModel):
    """Keys a Modbus [[devices]] entry may add (`address` is the unit id, 1-247)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_gap: int | None = Field(default=None, ge=-1, le=120)  # overrides the profile's


def frame_gap(baudrate: int) -> float:
    """Modbus RTU silent interval between frames: 3.5 characters, 1.75 ms above 19200 baud."""
    return 3.5 * 11 / baudrate if baudrate <= 19200 else 0.00175


class BusSlot:
    """Who may talk on the bus now: up to `width` requests at once, writes before polls."""

    def __init__(self, width: int, gap: float = 0.0) -> None:
        self._free = width
        self._gap = gap
        self._writes: deque[asyncio.Future[None]] = deque()
        self._polls: deque[asyncio.Future[None]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, *, write: bool = False) -> AsyncIterator[None]:
        if self._free > 0 and not self._writes and not self._polls:
            self._free -= 1
        else:
            fut = asyncio.get_running_loop().create_future()
            (self._writes if write else self._polls).append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release()
                raise
        try:
            yield
        finally:
            if self._gap:
                await asyncio.sleep(self._gap)  # the line must stay silent between frames
            self._release()

    def _release(self) -> None:
        for queue in (self._writes, self._polls):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)
                    return
        self._free += 1


@dataclass(eq=False)
class _Device:
    device: BoundDevice
    unit: int
    blocks: list[ReadBlock]
    points: int
    failures: int = 0
    backoff: float = 0.0
    due: float = 0.0  # when its current (or next) poll was due, loop time
    busy: bool = False  # a poll is running or its sample is being handed over
    again: bool = False  # a read-back was asked while busy: poll once more at once
    # the running poll
    block: int = 0
    ts: float = 0.0
    values: dict[str, Value] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def _points_of(profile: Profile) -> list[tuple[str, Register]]:
    return [(p.name, Register.model_validate(p.wire)) for p in profile.points if p.wire is not None]


class _ModbusDriver(Driver):
    """Shared by the TCP and RTU drivers: scheduling, decoding, backoff, actions."""

    profile_driver: ClassVar[str] = "modbus"
    device_model: ClassVar[type[BaseModel]] = ModbusDevice
    point_wire: ClassVar[type[BaseModel] | None] = Register
    action_wire: ClassVar[type[BaseModel] | None] = Write
    wire_required: ClassVar[bool] = True
    legacy_wire_key: ClassVar[str | None] = "register"
    OFFLINE_AFTER = 2  # failed polls in a row before a device is reported offline
    BACKOFF_MAX = 60.0

    def __init__(self, bus: BusSpec, devices: Sequence[BoundDevice]) -> None:
        super().__init__(bus, devices)
        self.polled: dict[str, _Device] = {}
        for d in devices:
            gap = d.options.max_gap if d.options.max_gap is not None else d.profile.defaults.max_gap
            points = _points_of(d.profile)
            assert isinstance(d.address, int)  # noqa: S101 - check_device guarantees it
            self.polled[d.id] = _Device(d, d.address, plan_reads(points, gap), len(points))
        self.client: Client | None = None
        self._idle: deque[Client] = deque()
        self.slot = BusSlot(1)
        self.requests = 0
        self.requests_saved = 0
        self.errors = 0
        self.polls = 0  # device polls started
        self.batches = 0  # timer wake-ups that started polls (#14: polls share wake-ups)
        self._schedule: Schedule[_Device] = Schedule(0.0)
        self._timer: asyncio.TimerHandle | None = None
        self._ready: deque[_Device] = deque()  # devices whose next block read is due
        self._waiting: deque[asyncio.Future[None]] = deque()  # idle workers
        self._done: deque[_Device] = deque()  # finished polls, for the sink
        self._delivering: asyncio.Future[None] | None = None

    # ---- config checks (called by `check`, no I/O) ------------------------------------

    @classmethod
    def check_profile(cls, profile: Profile) -> Problems:
        """Every register or write spec the codec would refuse, and writes of unknown args."""
        problems = super().check_profile(profile)
        for i, a in enumerate(profile.actions):
            arg = (a.wire or {}).get("arg")
            if isinstance(arg, str) and arg not in a.args:
                problems.append((f"actions[{i}].wire.arg", f"no argument {arg!r} in args"))
        return problems

    @classmethod
    def check_device(cls, device: BoundDevice) -> Problems:
        if not isinstance(device.address, int) or not 0 <= device.address <= 247:
            return [("address", "a Modbus device needs `address` = its unit id, 1-247")]
        return []

    # ---- running ---------------------------------------------------------------------

    def make_client(self) -> Client:
        raise NotImplementedError

    connections = 1  # a pymodbus client serves one request at a time: one per slot

    async def run(self, sink: DeviceSink) -> None:
        """Connect, then poll every device until cancelled.

        One timer for the bus (`loop.call_at`, re-armed for the earliest due poll) instead of
        one task per device: each wake-up queues every device due within the batch window,
        and one worker per connection takes their block reads in turn (pymodbus 3.x keeps
        one request in flight per connection, so there is nothing to pipeline on one). Each
        device's next block joins the back of the queue, as its task did under `BusSlot`, so
        a dead device holds a connection one timeout at a time. Finished samples go to the
        sink from one task, together; a device is rescheduled once its sample is handed over.
        """
        clients = [self.make_client() for _ in range(self.connections)]
        loop = asyncio.get_running_loop()
        try:
            for client in clients:
                if not await client.connect():
                    raise DriverError(f"cannot connect to {self.where()}")
            self._idle = deque(clients)
            self.client = clients[0]
            devs = list(self.polled.values())
            intervals = [d.device.poll_interval for d in devs]
            self._schedule = Schedule(batch_window(intervals))
            start = loop.time()
            for dev, offset in zip(
                devs, first_offsets(intervals, self._schedule.window), strict=True
            ):
                dev.busy, dev.again = False, False
                self._schedule.put(dev, start + offset)
            self._arm()
            async with asyncio.TaskGroup() as tg:
                for i in range(self.connections):
                    tg.create_task(self._worker(), name=f"modbus[{self.bus.id}]#{i}")
                tg.create_task(self._deliver(sink), name=f"modbus[{self.bus.id}] samples")
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.client = None
            self._idle.clear()
            self._ready.clear()
            self._done.clear()
            self._waiting.clear()
            self._delivering = None
            for client in clients:
                client.close()

    @contextlib.asynccontextmanager
    async def _connection(self, *, write: bool = False) -> AsyncIterator[Client]:
        """A bus slot and an idle connection for one request."""
        async with self.slot.hold(write=write):
            if not self._idle:
                raise ConnectionException("not connected")
            client = self._idle.popleft()
            try:
                yield client
            finally:
                self._idle.append(client)

    def where(self) -> str:
        raise NotImplementedError

    # ---- the bus's timer: one wake-up per batch of due devices ------------------------

    def _arm(self) -> None:
        """Set the one timer to the earliest due poll (none when nothing is scheduled)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self._schedule.next_wake()
        if due is not None:
            self._timer = asyncio.get_running_loop().call_at(due, self._wake)

    def _wake(self) -> None:
        self._timer = None
        batch = self._schedule.pop_due(asyncio.get_running_loop().time())
        if batch:
            self.batches += 1
        for dev, due in batch:
            dev.due = due
            self._start(dev)
        self._arm()

    def _start(self, dev: _Device) -> None:
        dev.busy = True
        dev.block, dev.ts = 0, 0.0
        dev.values, dev.failed = {}, []
        self.polls += 1
        if dev.blocks:
            self._queue(dev)
        else:
            self._finish(dev)

    def _queue(self, dev: _Device) -> None:
        self._ready.append(dev)
        if self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_result(None)

    def _reschedule(self, dev: _Device, ok: bool) -> None:
        """After the sample is handed over: when to poll again (as each device's own loop
        did before #14: on its period, or later while it backs off)."""
        now = asyncio.get_running_loop().time()
        interval = dev.device.poll_interval
        dev.busy = False
        if ok:
            dev.backoff = 0.0
            due = dev.due + interval
            if due < now:  # fell behind: do not try to catch up in a burst
                due = now + interval
        else:
            # A silent device: wait longer and longer (up to a minute) before asking again,
            # so it costs its bus one timeout per backoff, not one per poll.
            dev.backoff = min(self.BACKOFF_MAX, max(interval, dev.backoff * 2 or interval))
            due = now + (dev.backoff if dev.failures >= self.OFFLINE_AFTER else interval)
        if dev.again:  # a write asked for a read-back while this poll ran
            dev.again = False
            due = now
        if self._schedule.put(dev, due):
            self._arm()

    def _read_back(self, dev: _Device) -> None:
        """Poll `dev` now (after a write), keeping its period from then on."""
        if self._timer is None and not len(self._schedule) and not dev.busy:
            return  # not running
        if dev.busy:
            dev.again = True
            return
        now = asyncio.get_running_loop().time()
        dev.due = now  # its next regular poll: one period on
        self._schedule.discard(dev)
        self._start(dev)

    # ---- workers (one per connection) and the sample hand-over ------------------------

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._ready:
                fut = loop.create_future()
                self._waiting.append(fut)
                await fut
            dev = self._ready.popleft()
            block = dev.blocks[dev.block]
            try:
                raw = await self._read(dev.unit, block)
                dev.ts = dev.ts or time.time()  # when the device answered, not when queued
                dev.values.update(raw)
            except ConnectionException as e:
                raise DriverError(f"{self.where()}: connection lost ({e})") from None
            except (ModbusException, ValueError, TimeoutError) as e:
                self.errors += 1
                dev.failed.append(_short(e))
                log.debug(
                    "read failed: device=%s block=%s@%d error=%s",
                    dev.device.id,
                    block.table,
                    block.start,
                    _short(e),
                )
            dev.block += 1
            if dev.block < len(dev.blocks):
                self._queue(dev)  # its next block waits behind the others' (as with BusSlot)
            else:
                self._finish(dev)

    def _finish(self, dev: _Device) -> None:
        self.requests_saved += max(0, dev.points - len(dev.blocks))
        self._done.append(dev)
        if self._delivering is not None and not self._delivering.done():
            self._delivering.set_result(None)

    async def _deliver(self, sink: DeviceSink) -> None:
        """Hand finished polls to the sink, all that are ready each time it wakes."""
        loop = asyncio.get_running_loop()
        while True:
            while not self._done:
                self._delivering = loop.create_future()
                await self._delivering
            while self._done:
                dev = self._done.popleft()
                ok = await self._hand_over(dev, sink)
                self._reschedule(dev, ok)

    async def _hand_over(self, dev: _Device, sink: DeviceSink) -> bool:
        if dev.failed and not dev.values:
            dev.failures += 1
            await sink.sample(Sample(dev.device.id, time.time(), {}, Quality.BAD))
            if dev.failures == self.OFFLINE_AFTER:
                await sink.availability(dev.device.id, online=False, reason=dev.failed[-1])
            return False
        dev.failures = 0
        quality = Quality.UNCERTAIN if dev.failed else Quality.GOOD
        await sink.sample(Sample(dev.device.id, dev.ts or time.time(), dev.values, quality))
        return True

    async def _read(self, unit: int, block: ReadBlock) -> dict[str, int | float | bool]:
        async with self._connection() as client:
            self.requests += 1
            if block.table == "holding":
                rr = await client.read_holding_registers(
                    block.start, count=block.count, device_id=unit
                )
            elif block.table == "input":
                rr = await client.read_input_registers(
                    block.start, count=block.count, device_id=unit
                )
            elif block.table == "coil":
                rr = await client.read_coils(block.start, count=block.count, device_id=unit)
            else:
                rr = await client.read_discrete_inputs(
                    block.start, count=block.count, device_id=unit
                )
        if rr.isError():
            raise ModbusException(exception_reply(getattr(rr, "exception_code", None)))
        data = rr.bits if block.table in ("coil", "discrete") else rr.registers
        return block.extract(data)

    async def act(
        self, device: BoundDevice, action: str, args: Mapping[str, Any]
    ) -> Mapping[str, Value]:
        """Write what the profile's action says (a coil or registers), ahead of polls."""
        spec_data = next((a.wire for a in device.profile.actions if a.name == action), None)
        dev = self.polled.get(device.id)
        if spec_data is None or dev is None:
            raise ActionError(f"{device.id} has no action {action!r}")
        spec = Write.model_validate(spec_data)
        value = spec.value if spec.value is not None else args.get(spec.arg or "")
        if value is None or isinstance(value, str):
            raise ActionError(f"no value to write for {action!r}")
        try:
            words = encode(spec, value)
        except ValueError as e:
            raise ActionError(str(e)) from None
        if self.client is None:
            raise ActionError(f"bus {self.bus.id} is not connected")
        try:
            async with self._connection(write=True) as client:
                self.requests += 1
                if spec.table == "coil":
                    rr = await client.write_coil(spec.address, bool(words[0]), device_id=dev.unit)
                elif len(words) == 1:
                    rr = await client.write_register(spec.address, words[0], device_id=dev.unit)
                else:
                    rr = await client.write_registers(spec.address, words, device_id=dev.unit)
        except ModbusException as e:
            raise ActionError(f"device did not confirm the write: {_short(e)}") from None
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            raise ActionError(f"device refused the write ({exception_reply(code)})")
        self._read_back(dev)  # read back now, so the district sees the new state at once
        return {"written": value}

    def stats(self) -> dict[str, Any]:
        """Counters for the status: requests sent, requests saved by block reads, errors."""
        return {
            "requests": self.requests,
            "requests_saved": self.requests_saved,
            "errors": self.errors,
            "polls": self.polls,
            "batches": self.batches,
        }


class ModbusTcpDriver(_ModbusDriver):
    """Modbus TCP (gateways, IO modules on the LAN)."""

    key: ClassVar[str] = "modbus-tcp"
    bus_model: ClassVar[type[BaseModel]] = ModbusTcpBus

    def __init__(self, bus: BusSpec, devices: Sequence[BoundDevice]) -> None:
        super().__init__(bus, devices)
        self.connections = bus.options.max_concurrent
        self.slot = BusSlot(bus.options.max_concurrent)

    def where(self) -> str:
        return f"{self.bus.options.host}:{self.bus.options.port}"

    def make_client(self) -> Client:
        o: ModbusTcpBus = self.bus.options
        return AsyncModbusTcpClient(
            o.host, port=o.port, timeout=o.timeout, retries=o.retries, reconnect_delay=0
        )


class ModbusRtuDriver(_ModbusDriver):
    """Modbus RTU on an RS-485 serial line: one request at a time, with the frame gap."""

    key: ClassVar[str] = "modbus-rtu"
    bus_model: ClassVar[type[BaseModel]] = ModbusRtuBus

    def __init__(self, bus: BusSpec, devices: Sequence[BoundDevice]) -> None:
        super().__init__(bus, devices)
        self.slot = BusSlot(1, gap=frame_gap(bus.options.baudrate))

    def where(self) -> str:
        return str(self.bus.options.port)

    def make_client(self) -> Client:
        o: ModbusRtuBus = self.bus.options
        return AsyncModbusSerialClient(
            o.port,
            baudrate=o.baudrate,
            parity=o.parity,
            stopbits=o.stopbits,
            bytesize=o.bytesize,
            timeout=o.timeout,
            retries=o.retries,
            reconnect_delay=0,
        )


# The Modbus exception codes (Modbus Application Protocol v1.1b3, section 7).
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def exception_reply(code: object) -> str:
    """'exception 4 (device failure)': what an exception reply says, for a reason text."""
    name = EXCEPTION_NAMES.get(code) if isinstance(code, int) else None
    return f"exception {code} ({name})" if name else f"exception {code}"


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 160 else text[:157] + "..."
