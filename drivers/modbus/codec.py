"""Modbus register encoding, pure: profile register specs, decoding, encoding, block planning.

No I/O here (sans-IO): the driver reads what `plan_reads` says and hands the words to
`extract`. Hypothesis and vector tests exercise this module without any peer.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Table = Literal["holding", "input", "coil", "discrete"]
RegType = Literal["int16", "uint16", "int32", "uint32", "float32", "bool"]
BIT_TABLES = ("coil", "discrete")
WORDS = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
MAX_REGISTERS = 125  # per read request (Modbus application protocol, function 03/04)
MAX_BITS = 2000  # per read request (functions 01/02)


class Register(BaseModel):
    """Where a point lives on the wire and how it is encoded (a profile's `register = {…}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    table: Table
    address: int = Field(ge=0, le=65535)
    type: RegType | None = None
    word_order: Literal["big", "little"] = "big"
    byte_order: Literal["big", "little"] = "big"
    bit: int | None = Field(default=None, ge=0, le=15)

    @model_validator(mode="after")
    def _consistent(self) -> Register:
        if self.table in BIT_TABLES:
            if self.type not in (None, "bool"):
                raise ValueError(f'a {self.table} is one bit: omit `type` (or write type = "bool")')
            if self.bit is not None:
                raise ValueError(f"`bit` is for registers; a {self.table} is already one bit")
        elif self.bit is None and self.type in (None, "bool"):
            raise ValueError(
                f"a {self.table} register needs `type` (int16, uint16, int32, uint32, float32) "
                "or `bit` (0-15)"
            )
        elif self.bit is not None and self.type not in (None, "uint16"):
            raise ValueError("`bit` picks one bit of a 16-bit register: omit `type`")
        return self

    @property
    def width(self) -> int:
        """How many registers (or bits) the value spans."""
        if self.table in BIT_TABLES or self.bit is not None or self.type is None:
            return 1
        return WORDS.get(self.type, 1)

    @property
    def is_bit(self) -> bool:
        return self.table in BIT_TABLES or self.bit is not None


class Write(BaseModel):
    """What an action writes (a profile's action `register = {…}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    table: Literal["holding", "coil"]
    address: int = Field(ge=0, le=65535)
    type: Literal["int16", "uint16", "int32", "uint32", "float32"] = "uint16"
    word_order: Literal["big", "little"] = "big"
    byte_order: Literal["big", "little"] = "big"
    value: bool | int | float | None = None  # a fixed value (arm = write 1)
    arg: str | None = None  # or the value of this action argument

    @model_validator(mode="after")
    def _one_source(self) -> Write:
        if (self.value is None) == (self.arg is None):
            raise ValueError("give exactly one of `value` (fixed) or `arg` (from the command)")
        return self


def _swap(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def decode(reg: Register, words: Sequence[int]) -> int | float | bool:
    """Registers (uint16 each) or bits as read -> the raw value of `reg` (before scaling)."""
    if reg.table in BIT_TABLES:
        return bool(words[0])
    if reg.bit is not None:
        return bool((words[0] >> reg.bit) & 1)
    ws = [w & 0xFFFF for w in words[: reg.width]]
    if reg.byte_order == "little":
        ws = [_swap(w) for w in ws]
    if reg.word_order == "little":
        ws.reverse()
    raw = b"".join(w.to_bytes(2, "big") for w in ws)
    t = reg.type
    if t == "int16":
        return int(struct.unpack(">h", raw)[0])
    if t == "uint16":
        return int(struct.unpack(">H", raw)[0])
    if t == "int32":
        return int(struct.unpack(">i", raw)[0])
    if t == "uint32":
        return int(struct.unpack(">I", raw)[0])
    value = float(struct.unpack(">f", raw)[0])
    # float32 has ~7 significant digits; do not publish float64 noise such as 229.8000030517578.
    return float(f"{value:.7g}") if math.isfinite(value) else value


def encode(spec: Write, value: bool | int | float) -> list[int]:
    """A value to write -> register words (or [0/1] for a coil); ValueError if out of range."""
    if spec.table == "coil":
        return [1 if value else 0]
    t = spec.type
    if t == "float32":
        raw = struct.pack(">f", float(value))
    else:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number for a {t} register")
        fmt = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I"}[t]
        try:
            raw = struct.pack(fmt, int(value))
        except struct.error:
            raise ValueError(f"{value!r} does not fit a {t} register") from None
    ws = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if spec.word_order == "little":
        ws.reverse()
    if spec.byte_order == "little":
        ws = [_swap(w) for w in ws]
    return ws


@dataclass
class ReadBlock:
    """One read request: a table, a start address, a count, and the points it carries."""

    table: Table
    start: int
    count: int
    points: list[tuple[str, Register]] = field(default_factory=list)

    def extract(self, data: Sequence[int] | Sequence[bool]) -> dict[str, int | float | bool]:
        """The raw value of every point in this block, from the words/bits read."""
        if len(data) < self.count:
            raise ValueError(f"short response: {len(data)} of {self.count}")
        out: dict[str, int | float | bool] = {}
        for name, reg in self.points:
            i = reg.address - self.start
            out[name] = decode(reg, [int(x) for x in data[i : i + reg.width]])
        return out


def plan_reads(points: Sequence[tuple[str, Register]], max_gap: int) -> list[ReadBlock]:
    """Group points into as few read requests as the gap rule and protocol limits allow.

    Two points share a request when they are in the same table and at most `max_gap` unused
    registers (or bits) lie between them, and the request stays within the protocol's
    maximum (125 registers or 2000 bits). max_gap = 0 merges only adjacent points;
    a negative max_gap reads every point on its own.
    """
    by_table: dict[str, list[tuple[str, Register]]] = {}
    for name, reg in points:
        by_table.setdefault(reg.table, []).append((name, reg))
    blocks: list[ReadBlock] = []
    for table in ("holding", "input", "coil", "discrete"):
        items = sorted(by_table.get(table, []), key=lambda p: (p[1].address, p[0]))
        limit = MAX_BITS if table in BIT_TABLES else MAX_REGISTERS
        current: ReadBlock | None = None
        for name, reg in items:
            end = reg.address + reg.width
            if current is not None and max_gap >= 0:
                gap = reg.address - (current.start + current.count)
                if (
                    gap <= max_gap
                    and max(end, current.start + current.count) - current.start <= limit
                ):
                    current.count = max(end, current.start + current.count) - current.start
                    current.points.append((name, reg))
                    continue
            current = ReadBlock(reg.table, reg.address, reg.width, [(name, reg)])
            blocks.append(current)
    return blocks


def words_for(case: Mapping[str, Mapping[int, int]], block: ReadBlock) -> list[int]:
    """The words a device holding `case` (table -> address -> value) answers for `block`."""
    values = case.get(block.table, {})
    return [int(values.get(a, 0)) for a in range(block.start, block.start + block.count)]
