"""The Modbus device simulator (drivers/modbus/simulator.py), tested with pymodbus's own client
over TCP and over RTU on a socat pty pair."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.modbus.simulator import SimulatedUnit, Stats, load_cases
from tests.harness.modbus import ModbusSim
from tests.harness.process import ROOT
from tests.harness.pty import PtyPair
from tests.harness.waiting import eventually

pytestmark = pytest.mark.asyncio

TIMEOUT = 0.4  # client timeout per request; the simulator answers in milliseconds

# Throwaway vector files in the format of tests/vectors/<id>.toml: an XY-MD02-like sensor
# (input registers 1 and 2) and a DI8-like fence panel (discrete inputs 0..7).
ENV_VECTORS = """\
source = "test data for the simulator"
[[case]]
name = "room_air"
registers = { input = { 1 = 0x00F5, 2 = 0x01C2 } }
expect = { temperature = 24.5, humidity = 45.0 }
[[case]]
name = "freezing"
registers = { input = { 1 = 0xFFF6, 2 = 0x0320 } }
expect = { temperature = -1.0, humidity = 80.0 }
"""
FENCE_VECTORS = """\
source = "test data for the simulator"
[[case]]
name = "zone_3_active"
registers = { discrete = { 0 = 0, 1 = 0, 2 = 1, 3 = 0, 4 = 0, 5 = 0, 6 = 0, 7 = 1 } }
expect = { zone_3 = true }
[[case]]
name = "all_clear"
registers = { discrete = { 0 = 0, 1 = 0, 2 = 0, 3 = 0, 4 = 0, 5 = 0, 6 = 0, 7 = 1 } }
expect = { zone_3 = false }
"""
ENV_CASES = ([0, 0x00F5, 0x01C2, 0], [0, 0xFFF6, 0x0320, 0])  # input registers 0..3
FENCE_CASES = (
    [False, False, True, False, False, False, False, True],
    [False, False, False, False, False, False, False, True],
)  # discrete inputs 0..7
ENV, FENCE, DEAD, UNKNOWN = 1, 2, 3, 9
SIMULATOR = [sys.executable, "-m", "drivers.modbus.simulator"]


@pytest.fixture
def vectors(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "vectors"
    d.mkdir()
    (d / "env.toml").write_text(ENV_VECTORS)
    (d / "fence.toml").write_text(FENCE_VECTORS)
    return {"env": d / "env.toml", "fence": d / "fence.toml"}


@pytest.fixture
def make_sim(tmp_path: Path, vectors: dict[str, Path]) -> Iterator[Callable[..., ModbusSim]]:
    """ModbusSim factory: serves ENV and FENCE from the vectors unless told otherwise."""
    made: list[ModbusSim] = []

    def make(**kw: Any) -> ModbusSim:
        kw.setdefault("devices", {ENV: vectors["env"], FENCE: vectors["fence"]})
        sim = ModbusSim(tmp_path / f"sim-{len(made)}", **kw)
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.stop()


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    pair = PtyPair(tmp_path / "pty")
    pair.start()
    yield pair
    pair.stop()


@contextlib.asynccontextmanager
async def tcp_client(sim: ModbusSim, **kw: Any) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient(sim.host, port=sim.port, timeout=TIMEOUT, retries=0, **kw)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


@contextlib.asynccontextmanager
async def rtu_client(pair: PtyPair) -> AsyncIterator[AsyncModbusSerialClient]:
    client = AsyncModbusSerialClient(str(pair.a), baudrate=9600, timeout=TIMEOUT, retries=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


async def read_env(client: AsyncModbusTcpClient | AsyncModbusSerialClient) -> list[int]:
    rr = await client.read_input_registers(0, count=4, device_id=ENV)
    assert not rr.isError(), rr
    return list(rr.registers)


async def read_fence(client: AsyncModbusTcpClient | AsyncModbusSerialClient) -> list[bool]:
    rr = await client.read_discrete_inputs(0, count=8, device_id=FENCE)
    assert not rr.isError(), rr
    return list(rr.bits[:8])


async def test_tcp_serves_the_first_case_of_each_vector_file(
    make_sim: Callable[..., ModbusSim],
) -> None:
    sim = make_sim()
    sim.start()
    async with tcp_client(sim) as client:
        assert await read_env(client) == ENV_CASES[0]
        assert await read_fence(client) == FENCE_CASES[0]
        # Whole ranges read, unnamed addresses are 0: the tables cover the vectors plus slack.
        hr = await client.read_holding_registers(0, count=16, device_id=ENV)
        assert hr.registers == [0] * 16
        coils = await client.read_coils(0, count=16, device_id=FENCE)
        assert coils.bits == [False] * 16
        # Far past the table: the device's "illegal data address", as a real one answers.
        beyond = await client.read_input_registers(5000, count=1, device_id=ENV)
        assert beyond.isError()
        assert beyond.exception_code == 2
    assert sim.stop() == 0


async def test_rtu_on_a_pty_pair_serves_the_same_values(
    make_sim: Callable[..., ModbusSim], pty_pair: PtyPair
) -> None:
    sim = make_sim(rtu=pty_pair.b)
    sim.start()
    assert sim.stats()["listen"] == {"transport": "rtu", "device": str(pty_pair.b), "baud": 9600}
    async with rtu_client(pty_pair) as client:
        assert await read_env(client) == ENV_CASES[0]
        assert await read_fence(client) == FENCE_CASES[0]


async def test_every_cycles_through_the_cases(make_sim: Callable[..., ModbusSim]) -> None:
    sim = make_sim(every={ENV: 0.3, FENCE: 0.3})
    sim.start()
    async with tcp_client(sim) as client:
        for case in (1, 0, 1):  # the fence alarms, clears and alarms again; the sensor follows

            async def at_case(case: int = case) -> bool:
                return await read_fence(client) == FENCE_CASES[case]

            await eventually(at_case, 3, f"the fence to show case {case}")
        seen = set()

        async def both_env_cases() -> bool:
            seen.add(tuple(await read_env(client)))
            return len(seen) == 2

        await eventually(both_env_cases, 3, "the sensor to show both cases")
        assert seen == {tuple(c) for c in ENV_CASES}


async def test_dead_unit_times_out_while_live_units_answer(
    make_sim: Callable[..., ModbusSim],
) -> None:
    sim = make_sim(dead=[DEAD])
    sim.start()
    async with tcp_client(sim) as client:
        assert await read_env(client) == ENV_CASES[0]
        for unit in (DEAD, UNKNOWN):  # --dead, and a unit nobody serves: both stay silent
            started = time.monotonic()
            with pytest.raises(ModbusException, match="No response"):
                await client.read_input_registers(0, count=2, device_id=unit)
            assert time.monotonic() - started >= TIMEOUT * 0.9
        assert await read_env(client) == ENV_CASES[0]
    # The server did receive them: silence is the simulator's choice, not a lost request.
    sim.wait_stats(
        lambda s: (
            s["requests"].get(str(DEAD)) == {"4": 1} and s["requests"].get(str(UNKNOWN)) == {"4": 1}
        ),
        3,
        "the requests to the silent units to be counted",
    )


async def test_writes_are_visible_to_later_reads_and_recorded(
    make_sim: Callable[..., ModbusSim],
) -> None:
    sim = make_sim(every={ENV: 0.2})  # case changes rewrite only the vector's addresses
    sim.start()
    async with tcp_client(sim) as client:
        assert not (await client.write_register(5, 0xBEEF, device_id=ENV)).isError()
        assert not (await client.write_registers(7, [1, 2], device_id=ENV)).isError()
        assert not (await client.write_coil(3, True, device_id=FENCE)).isError()
        assert not (await client.write_coils(4, [False, True], device_id=FENCE)).isError()
        await asyncio.sleep(0.5)  # across a case change or two
        hr = await client.read_holding_registers(0, count=10, device_id=ENV)
        assert hr.registers == [0, 0, 0, 0, 0, 0xBEEF, 0, 1, 2, 0]
        coils = await client.read_coils(0, count=8, device_id=FENCE)
        assert coils.bits[:8] == [False, False, False, True, False, True, False, False]
    stats = sim.wait_stats(lambda s: len(s["writes"]) == 6, 3, "the writes to be recorded")
    assert stats["writes"] == [
        [ENV, "holding", 5, 0xBEEF],
        [ENV, "holding", 7, 1],
        [ENV, "holding", 8, 2],
        [FENCE, "coil", 3, 1],
        [FENCE, "coil", 4, 0],
        [FENCE, "coil", 5, 1],
    ]


async def test_stats_count_requests_per_unit_and_function_code(
    make_sim: Callable[..., ModbusSim],
) -> None:
    sim = make_sim(dead=[DEAD])
    sim.start()
    before = sim.stats()
    assert before["requests"] == {}
    assert before["started"] <= time.time()
    async with tcp_client(sim) as client:
        for _ in range(3):
            await read_env(client)
        for _ in range(2):
            await read_fence(client)
        await client.read_holding_registers(0, count=2, device_id=ENV)
        await client.write_register(0, 1, device_id=ENV)
        with pytest.raises(ModbusException):
            await client.read_coils(0, count=1, device_id=DEAD)
    expected = {
        str(ENV): {"3": 1, "4": 3, "6": 1},
        str(FENCE): {"2": 2},
        str(DEAD): {"1": 1},
    }
    sim.wait_stats(lambda s: s["requests"] == expected, 3, f"requests == {expected}")
    # SIGTERM: a clean exit, and a last write of the stats file.
    assert sim.stop() == 0
    final = sim.stats()
    assert final["requests"] == expected
    assert final["connections"] == 1
    assert final["started"] == before["started"]


async def test_noise_sends_garbage_that_the_client_reports_as_an_error(
    make_sim: Callable[..., ModbusSim],
) -> None:
    sim = make_sim(noise=0.5, seed=1)
    sim.start()
    received: list[bytes] = []

    def record(sending: bool, data: bytes) -> bytes:
        if not sending:
            received.append(data)
        return data

    outcomes = []
    async with tcp_client(sim, trace_packet=record) as client:
        for _ in range(8):
            received.clear()
            try:
                rr = await client.read_input_registers(0, count=4, device_id=ENV)
            except ModbusException:
                outcomes.append("error")
                assert received, "nothing came back: garbage expected, not silence"
                continue
            assert not rr.isError(), rr
            assert rr.registers == ENV_CASES[0]  # garbage never decodes as a reading
            outcomes.append("ok")
    # Some of each, and the client recovered after garbage without reconnecting.
    assert "ok" in outcomes
    assert "error" in outcomes
    stats = sim.wait_stats(lambda s: s["requests"] == {str(ENV): {"4": 8}}, 3, "8 requests")
    assert stats["garbled"] == outcomes.count("error")
    assert stats["connections"] == 1
    assert sim.stop() == 0


async def test_rtu_reopens_the_port_after_the_cable_is_pulled(
    make_sim: Callable[..., ModbusSim], pty_pair: PtyPair
) -> None:
    sim = make_sim(rtu=pty_pair.b)
    sim.start()
    async with rtu_client(pty_pair) as client:
        assert not (await client.write_register(5, 42, device_id=ENV)).isError()
    pty_pair.pull_cable()
    await asyncio.sleep(0.3)
    assert sim.alive()
    pty_pair.plug_cable()
    sim.wait_stats(lambda s: s["connections"] == 2, 5, "the simulator to reopen the pty")
    async with rtu_client(pty_pair) as client:
        assert await read_env(client) == ENV_CASES[0]
        hr = await client.read_holding_registers(5, count=1, device_id=ENV)
        assert hr.registers == [42]  # the registers outlive the outage
    assert sim.stop() == 0


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (
            '[[case]]\nname = "x"\nregisters = { input = { 1 = 70000 } }\n',
            "case 1 ('x'): registers.input.1: a register is a uint16 (0-65535, e.g. 0x00F5), not 70000",
        ),
        (
            '[[case]]\nname = "x"\nregisters = { inputs = { 1 = 1 } }\n',
            "case 1 ('x'): registers.inputs: unknown table (tables: coil, discrete, holding, input)",
        ),
        (
            '[[case]]\nname = "x"\nregisters = { discrete = { 0 = 2 } }\n',
            "case 1 ('x'): registers.discrete.0: a discrete is 0 or 1 (or true/false), not 2",
        ),
        ('source = "no cases"\n', "no [[case]] entries"),
    ],
)
async def test_bad_vector_file_is_refused_naming_file_case_and_field(
    tmp_path: Path, vector: str, message: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(vector)
    done = subprocess.run(
        [*SIMULATOR, "--tcp", "127.0.0.1:0", "--device", f"1={bad}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 2
    assert done.stderr == f"simulator: {bad}: {message}\n"


@pytest.mark.parametrize(
    "vector", sorted((ROOT / "tests" / "vectors").glob("*.toml")), ids=lambda p: p.stem
)
async def test_every_profile_vector_file_can_be_served(vector: Path) -> None:
    cases = load_cases(vector)
    unit = SimulatedUnit(1, cases, None, Stats())
    for case in cases:
        for table, values in case.registers.items():
            assert max(values) < unit.size(table)  # whole-range reads of the points succeed
    unit.sim_device()  # pymodbus accepts the layout
