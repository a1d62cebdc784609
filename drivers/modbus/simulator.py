"""A Modbus device simulator on pymodbus's own server, for tests, the demo and benchmarks.

It stays in the product on purpose (like the synthetic driver): anyone can run a site config
against "devices" that answer like the real ones, without hardware. Each simulated unit is
filled from a profile's vector file (`tests/vectors/<profile-id>.toml`), so it answers with
readings taken from a named device.

    python -m drivers.modbus.simulator (--tcp HOST:PORT | --rtu DEVICE [--baud 9600])
        --device UNIT=VECTOR_FILE[:every=SECONDS] [--device ...] [--dead UNIT ...]
        [--failing UNIT=FILE ...] [--stats FILE] [--noise FRACTION] [--seed N]

- `--device` serves one unit id. Its coils, discrete inputs, holding and input registers hold the
  vector file's first `[[case]]`; with `every=S` it moves to the next case every S seconds (round
  robin), so an alarm sets and clears and a reading changes. Addresses a case does not name read as
  0. Each table spans addresses 0-1023, or further to cover every address any case names plus 16;
  reads beyond get the exception "illegal data address", as from a real device.
- Writes (coils, holding registers) are accepted, visible to later reads, and recorded. A case
  change rewrites only the addresses the vector file names, so written values elsewhere stay.
- `--dead UNIT` is a unit that never answers: the client times out. Unit ids that are served by
  neither option are silent too, as on an RS-485 line.
- `--failing UNIT=FILE`: while FILE exists, the `--device` unit UNIT answers every request with
  exception 4 "device failure" (a unit whose sensor is broken); remove FILE to heal it.
- `--stats FILE` is rewritten atomically every 0.2 s and at exit, with what the server really
  received (counted from the decoded requests, dead units included):
  `{"started": <unix time>, "listen": {...}, "connections": n, "garbled": n,
  "requests": {"<unit>": {"<function code>": n}}, "writes": [[unit, table, address, value]]}`.
  `listen` is `{"transport": "tcp", "host": h, "port": p}` (the bound port, so `:0` works)
  or `{"transport": "rtu", "device": path, "baud": b}`; with `--rtu` the first write happens
  once the port is open. `connections` counts accepted TCP clients, or serial port opens.
- `--noise F` replaces a fraction F of the responses with random bytes of the same length (garbage
  on the line); `--seed` makes the choice repeatable.
- `--rtu` reopens the port when it goes away (the pty closed: "the cable was pulled") and comes
  back, keeping the registers.

SIGTERM or SIGINT stops it cleanly (exit 0). It listens only where it is told.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from drivers.modbus.vectors import BIT_TABLES, TABLES, Case, SimulatorError, load_cases

log = logging.getLogger(__name__)

# The table each function code touches (read coils, write single coil, ... read/write multiple).
FUNCTION_TABLES = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    3: "holding",
    6: "holding",
    16: "holding",
    22: "holding",
    23: "holding",
    4: "input",
}
SLACK = 16  # addresses past the highest one a vector file uses, so whole-range reads succeed
MIN_TABLE = 1024  # every table spans at least 0-1023: room for writes the vectors do not name
STATS_EVERY = 0.2  # seconds between stats file writes
REOPEN_EVERY = 0.2  # seconds between attempts to reopen a lost serial port


class ListenError(SimulatorError):
    """The TCP address cannot be listened on (in use, or not an address of this host)."""

    exit_code = 1


@dataclass(frozen=True)
class DeviceSpec:
    """One `--device UNIT=VECTOR_FILE[:every=SECONDS]`."""

    unit: int
    path: Path
    every: float | None = None


_DEVICE = re.compile(r"^(?P<unit>[^=]+)=(?P<path>.+?)(?::every=(?P<every>[^:]*))?$")


def _unit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 255:
        raise argparse.ArgumentTypeError(f"unit id {text!r} is not a number from 1 to 255")
    return int(text)


def parse_device(text: str) -> DeviceSpec:
    """`3=tests/vectors/di8.toml:every=2` -> DeviceSpec(3, Path(...), 2.0)."""
    match = _DEVICE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected UNIT=VECTOR_FILE or UNIT=VECTOR_FILE:every=SECONDS"
        )
    every = None
    if match["every"] is not None:
        try:
            every = float(match["every"].removesuffix("s"))
        except ValueError:
            every = 0.0
        if not 0 < every < 1e9:
            raise argparse.ArgumentTypeError(f"{text!r}: every= takes seconds > 0")
    return DeviceSpec(_unit(match["unit"]), Path(match["path"]), every)


def parse_failing(text: str) -> tuple[int, Path]:
    """`3=/tmp/broken` -> (3, Path("/tmp/broken"))."""
    unit, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected UNIT=FILE")
    return _unit(unit), Path(path)


def parse_tcp(text: str) -> tuple[str, int]:
    """`127.0.0.1:1502` or `[::1]:0` -> (host, port); port 0 lets the kernel choose."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:0")
    return host, int(port)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a fraction from 0 to 1")
    return value


@dataclass
class Stats:
    """What the server received and did; written to the --stats file as JSON."""

    started: float = field(default_factory=time.time)
    listen: dict[str, object] = field(default_factory=dict)
    connections: int = 0
    garbled: int = 0
    requests: dict[int, dict[int, int]] = field(default_factory=dict)
    writes: list[tuple[int, str, int, int]] = field(default_factory=list)

    def count(self, unit: int, function_code: int) -> None:
        per_unit = self.requests.setdefault(unit, {})
        per_unit[function_code] = per_unit.get(function_code, 0) + 1

    def as_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "listen": self.listen,
            "connections": self.connections,
            "garbled": self.garbled,
            "requests": {
                str(unit): {str(fc): n for fc, n in sorted(codes.items())}
                for unit, codes in sorted(self.requests.items())
            },
            "writes": [list(w) for w in self.writes],
        }

    def write(self, path: Path) -> None:
        """Replace `path` atomically (write a sibling, then rename over it)."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.as_json()) + "\n")
        os.replace(tmp, path)


class SimulatedUnit:
    """One unit id: its memory layout, its current case, and the writes it accepts."""

    def __init__(
        self,
        unit: int,
        cases: Sequence[Case],
        every: float | None,
        stats: Stats,
        *,
        clock: Callable[[], float] = time.monotonic,
        failing_while: Path | None = None,
    ) -> None:
        self.unit = unit
        self.failing_while = failing_while
        self.cases = list(cases)
        self.every = every
        self.stats = stats
        self.clock = clock
        self.t0 = clock()
        # Every address any case names, per table: a case change rewrites exactly these.
        self.used: dict[str, set[int]] = {t: set() for t in TABLES}
        for case in self.cases:
            for table, values in case.registers.items():
                self.used[table].update(values)
        self.applied: dict[str, int] = dict.fromkeys(TABLES, -1)

    def size(self, table: str) -> int:
        """How many addresses the table holds, from 0 (a multiple of 16, at most 65536)."""
        used = self.used[table]
        size = max(MIN_TABLE, (max(used) + 1 if used else 0) + SLACK)
        return min(-(-size // 16) * 16, 65536)

    def sim_device(self) -> SimDevice:
        """The pymodbus device: four separate tables, bits addressed one by one."""
        bits = [
            [SimData(0, values=[False] * self.size(t), datatype=DataType.BITS)] for t in BIT_TABLES
        ]
        words = [
            [SimData(0, count=self.size(t), values=0, datatype=DataType.REGISTERS)]
            for t in ("holding", "input")
        ]
        return SimDevice(
            self.unit,
            simdata=(bits[0], bits[1], words[0], words[1]),
            use_bit_addressing=True,
            action=self.on_access,
        )

    def case_index(self) -> int:
        if self.every is None or len(self.cases) == 1:
            return 0
        return int((self.clock() - self.t0) // self.every) % len(self.cases)

    async def on_access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        _count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus's SimDevice action, called on every valid access before it is served.

        It brings the table up to the current case (in place, as pymodbus asks) and records
        writes. `registers` is the whole table; for coils and discrete inputs it holds 16
        bits per entry, and `start_address` is in those entries.
        """
        if self.failing_while is not None and self.failing_while.exists():
            return ExcCodes.DEVICE_FAILURE
        table = FUNCTION_TABLES.get(function_code)
        if table is None:
            return None
        index = self.case_index()
        if self.applied[table] != index:
            values = self.cases[index].registers.get(table, {})
            for addr in self.used[table]:
                value = values.get(addr, 0)
                if table in BIT_TABLES:
                    slot, mask = addr // 16 - start_address, 1 << (addr % 16)
                    registers[slot] = registers[slot] | mask if value else registers[slot] & ~mask
                else:
                    registers[addr - start_address] = value
            self.applied[table] = index
        if set_values is not None:
            for offset, value in enumerate(set_values):
                self.stats.writes.append((self.unit, table, address + offset, int(value)))
        return None


class ServedUnits(SimCore):
    """pymodbus's datastore, but silent for unit ids it does not serve.

    pymodbus 3.16's SimCore raises KeyError for an unknown unit (or answers it from unit 0),
    so `ignore_missing_devices=True` never takes effect and the client gets exception 4
    "device failure". The server stays silent only on NoSuchIdException, raised here.
    """

    def _check(self, device_id: int) -> None:
        if device_id not in self.devices:
            raise NoSuchIdException(f"unit {device_id} is not served")

    async def async_getValues(  # noqa: N802  # pymodbus's name
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        self._check(device_id)
        return await super().async_getValues(device_id, func_code, address, count)

    async def async_setValues(  # noqa: N802  # pymodbus's name
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        self._check(device_id)
        return await super().async_setValues(device_id, func_code, address, values)


class Simulator:
    """The served units, the hooks pymodbus calls, and the TCP/RTU serving loops."""

    def __init__(
        self,
        units: Sequence[SimulatedUnit],
        stats: Stats,
        *,
        noise: float = 0.0,
        rng: random.Random | None = None,
        on_listen: Callable[[], None] = lambda: None,
    ) -> None:
        self.devices = [u.sim_device() for u in units]
        self.core = ServedUnits(self.devices)  # one memory for the whole run, across reopens
        self.stats = stats
        self.noise = noise
        self.rng = rng or random.Random()
        self.on_listen = on_listen
        self._lost = asyncio.Event()

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """pymodbus hook: every decoded request (sending=False) and response (True)."""
        if not sending:
            self.stats.count(pdu.dev_id, pdu.function_code)
        return pdu

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus hook: the raw bytes received, and those about to be sent (replaceable)."""
        if sending and self.noise and self.rng.random() < self.noise:
            self.stats.garbled += 1
            return self.rng.randbytes(len(data))
        return data

    def trace_connect(self, connected: bool) -> None:
        """pymodbus hook: a client connected (TCP) or the port opened (RTU), or went away."""
        if connected:
            self.stats.connections += 1
        else:
            self._lost.set()

    async def serve_tcp(self, host: str, port: int, stop: asyncio.Event) -> None:
        server = ModbusTcpServer(
            self.devices,
            address=(host, port),
            ignore_missing_devices=True,
            trace_packet=self.trace_packet,
            trace_pdu=self.trace_pdu,
            trace_connect=self.trace_connect,
        )
        server.context = self.core
        if not await server.listen():
            raise ListenError(f"cannot listen on {host}:{port} (in use, or not an address here)")
        bound = port
        if isinstance(server.transport, asyncio.Server) and server.transport.sockets:
            bound = int(server.transport.sockets[0].getsockname()[1])
        self.stats.listen = {"transport": "tcp", "host": host, "port": bound}
        log.info("serving Modbus TCP on %s port %d", host, bound)
        self.on_listen()
        try:
            await stop.wait()
        finally:
            server.close()

    async def serve_rtu(self, device: str, baud: int, parity: str, stop: asyncio.Event) -> None:
        waiting_logged = False
        while not stop.is_set():
            self._lost.clear()
            server = ModbusSerialServer(
                self.devices,
                port=device,
                baudrate=baud,
                parity=parity,
                ignore_missing_devices=True,
                trace_packet=self.trace_packet,
                trace_pdu=self.trace_pdu,
                trace_connect=self.trace_connect,
            )
            server.context = self.core
            if not await server.listen():
                if not waiting_logged:
                    log.warning("waiting for serial port %s to appear", device)
                    waiting_logged = True
                await _wait(stop, REOPEN_EVERY)
                continue
            waiting_logged = False
            self.stats.listen = {"transport": "rtu", "device": device, "baud": baud}
            log.info("serving Modbus RTU on %s at %d baud", device, baud)
            self.on_listen()
            stopped = asyncio.ensure_future(stop.wait())
            lost = asyncio.ensure_future(self._lost.wait())
            try:
                await asyncio.wait({stopped, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
                lost.cancel()
                server.close()
            if not stop.is_set():
                log.warning("serial port %s went away; reopening it when it is back", device)
                await _wait(stop, REOPEN_EVERY)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m drivers.modbus.simulator",
        description="Serve simulated Modbus units filled from profile vector files.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", type=parse_tcp, metavar="HOST:PORT", help="e.g. 127.0.0.1:0")
    where.add_argument("--rtu", metavar="DEVICE", help="a serial port or pty, e.g. a socat link")
    p.add_argument("--baud", type=int, default=9600, help="RTU baud rate (default 9600)")
    p.add_argument("--parity", choices=("N", "E", "O"), default="N", help="RTU parity (N)")
    p.add_argument(
        "--device",
        type=parse_device,
        action="append",
        default=[],
        metavar="UNIT=VECTOR_FILE[:every=SECONDS]",
        help="serve this unit with the vector file's cases (repeatable)",
    )
    p.add_argument(
        "--dead",
        type=_unit,
        nargs="+",
        action="extend",
        default=[],
        metavar="UNIT",
        help="a unit id that never answers (repeatable)",
    )
    p.add_argument(
        "--failing",
        type=parse_failing,
        action="append",
        default=[],
        metavar="UNIT=FILE",
        help="the --device unit answers exception 4 while FILE exists (repeatable)",
    )
    p.add_argument("--stats", type=Path, metavar="FILE", help="write request counts here")
    p.add_argument(
        "--noise",
        type=_fraction,
        default=0.0,
        metavar="FRACTION",
        help="answer this fraction of requests with random bytes (0 to 1)",
    )
    p.add_argument("--seed", type=int, help="seed for --noise (repeatable garbage)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


async def _run(args: argparse.Namespace, units: Sequence[SimulatedUnit], stats: Stats) -> None:
    stats_path: Path | None = args.stats

    def write_stats() -> None:
        if stats_path is not None:
            stats.write(stats_path)

    sim = Simulator(
        units, stats, noise=args.noise, rng=random.Random(args.seed), on_listen=write_stats
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def keep_writing() -> None:
        while not stop.is_set():
            await _wait(stop, STATS_EVERY)
            if stats.listen:
                write_stats()

    writer = asyncio.create_task(keep_writing(), name="simulator.stats")
    try:
        if args.tcp is not None:
            host, port = args.tcp
            await sim.serve_tcp(host, port, stop)
        else:
            await sim.serve_rtu(args.rtu, args.baud, args.parity, stop)
    finally:
        stop.set()
        await writer
        if stats.listen:
            write_stats()


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT: 0 on a clean stop, 1 if it cannot listen, 2 on bad input."""
    parser = _parser()
    args = parser.parse_args(argv)
    unit_ids = [d.unit for d in args.device]
    if not unit_ids and not args.dead:
        parser.error("give at least one --device (or --dead) unit")
    if dup := sorted({u for u in unit_ids if unit_ids.count(u) > 1}):
        parser.error(f"unit {dup[0]} is given twice with --device")
    if both := sorted(set(unit_ids) & set(args.dead)):
        parser.error(f"unit {both[0]} is both a --device and --dead")
    failing = dict(args.failing)
    if stray := sorted(set(failing) - set(unit_ids)):
        parser.error(f"unit {stray[0]} is --failing but not a --device")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stats = Stats()
    try:
        units = [
            SimulatedUnit(
                d.unit, load_cases(d.path), d.every, stats, failing_while=failing.get(d.unit)
            )
            for d in args.device
        ]
        if args.dead:
            log.info("dead units (never answer): %s", ", ".join(map(str, args.dead)))
        asyncio.run(_run(args, units, stats))
    except SimulatorError as exc:
        sys.stderr.write(f"simulator: {exc}\n")
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
