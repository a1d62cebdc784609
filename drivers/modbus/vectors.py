"""The vector files a simulated Modbus unit is filled from (`tests/vectors/<profile-id>.toml`).

Reads and checks the `[[case]]` entries: per table (coil, discrete, holding, input) the
address -> value pairs a real device of that model answered with. A bad file raises
SimulatorError naming the file, case and field. Pure: no serving, no pymodbus.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TABLES = ("coil", "discrete", "holding", "input")
BIT_TABLES = ("coil", "discrete")

Registers = Mapping[str, Mapping[int, int]]  # table -> address -> uint16 (or 0/1 for bits)


class SimulatorError(Exception):
    """A bad command line or vector file; the message names the file, case and field."""

    exit_code = 2


@dataclass(frozen=True)
class Case:
    """One `[[case]]` of a vector file: the values of each table (others read as 0)."""

    name: str
    registers: Registers


def _address(key: str, where: str) -> int:
    try:
        address = int(key, 16) if key.lower().startswith("0x") else int(key, 10)
    except ValueError:
        raise SimulatorError(f"{where}: address {key!r} is not a number") from None
    if not 0 <= address <= 65535:
        raise SimulatorError(f"{where}: address {address} is outside 0-65535")
    return address


def _value(raw: object, table: str, where: str) -> int:
    if table in BIT_TABLES:
        if isinstance(raw, bool):
            return int(raw)
        if isinstance(raw, int) and raw in (0, 1):
            return raw
        raise SimulatorError(f"{where}: a {table} is 0 or 1 (or true/false), not {raw!r}")
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 0xFFFF:
        return raw
    raise SimulatorError(f"{where}: a register is a uint16 (0-65535, e.g. 0x00F5), not {raw!r}")


def load_cases(path: Path) -> list[Case]:
    """The `[[case]]` entries of a vector file, checked; SimulatorError names what is wrong."""
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise SimulatorError(f"{path}: cannot read the vector file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SimulatorError(f"{path}: not valid TOML: {exc}") from None
    raw_cases = doc.get("case")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise SimulatorError(f"{path}: no [[case]] entries")
    cases = []
    for number, raw_case in enumerate(raw_cases, 1):
        name = str(raw_case.get("name", f"#{number}"))
        where = f"{path}: case {number} ({name!r})"
        raw_registers = raw_case.get("registers")
        if not isinstance(raw_registers, dict):
            raise SimulatorError(f"{where}: no `registers = {{ input = {{ 1 = 0x00F5 }} }}` table")
        registers: dict[str, dict[int, int]] = {}
        for table, values in raw_registers.items():
            if table not in TABLES:
                raise SimulatorError(
                    f"{where}: registers.{table}: unknown table (tables: {', '.join(TABLES)})"
                )
            if not isinstance(values, dict):
                raise SimulatorError(f"{where}: registers.{table}: expected {{ address = value }}")
            registers[table] = {
                _address(key, f"{where}: registers.{table}"): _value(
                    value, table, f"{where}: registers.{table}.{key}"
                )
                for key, value in values.items()
            }
        cases.append(Case(name, registers))
    return cases
