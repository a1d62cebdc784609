"""The frame of a serial line card reader, as data: the spec (a profile's `card` point `wire`
table), a decoder that turns bytes into card reads and counted rejections, and an encoder
(the simulator's and the vectors').

A frame is the bytes between an optional `start` byte and an `end` byte (STX/ETX, or a line
ending). Its body is matched in full by a regular expression with named groups: `card`
(required), `checksum` (the XOR of the card's bytes, as the RDM6300 sends it) and `direction`
(mapped to in/out by `directions`: a gate reader's antenna). With `wiegand`, the card group
holds the raw Wiegand bits: their parity is checked and stripped.

Nothing here logs, and no message holds a card number: a rejection is a reason, not the data.
This module does no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.cards import CardNumber

Direction = Literal["in", "out"]
Reason = Literal["garbage", "half_frame", "checksum", "parity"]
REASONS: tuple[Reason, ...] = ("garbage", "half_frame", "checksum", "parity")
BASES = {"hex": 16, "decimal": 10, "binary": 2}
# Raw Wiegand lengths this driver checks: 26 (H10301) and 34 bits; the card is the bits
# between the two parity bits.
WIEGAND = (26, 34)


class FrameSpec(BaseModel):
    """The `wire` table of a card_serial profile's `card` point: how the reader frames a read."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: int | None = Field(default=None, ge=0, le=255)  # byte that opens a frame: 0x02
    end: int = Field(ge=0, le=255)  # byte that closes it: 0x03 (ETX), 0x0A (LF), 0x0D (CR)
    max_length: int = Field(default=64, ge=1, le=1024)  # body bytes; longer is garbage
    trim: bool = True  # strip ASCII spaces, CR and LF around the body
    pattern: str = Field(min_length=1, max_length=512)  # matches the whole body
    digits: Literal["hex", "decimal", "binary"] = "hex"  # how the card group is written
    group_size: int = Field(default=0, ge=0, le=16)  # card digits printed in groups of N
    checksum: Literal["none", "xor"] = "none"
    wiegand: list[Literal[26, 34]] = Field(default_factory=list)
    bits: int | None = Field(default=None, ge=1, le=128)  # card bits (not with wiegand)
    format: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")  # em4100, wiegand26, ...
    directions: dict[str, Direction] = Field(default_factory=dict)
    template: str = Field(min_length=1, max_length=512)  # how the reader writes a body

    @model_validator(mode="after")
    def _consistent(self) -> FrameSpec:
        try:
            rx = re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"pattern is not a regular expression: {e}") from None
        groups = set(rx.groupindex)
        if "card" not in groups:
            raise ValueError("pattern needs a named group (?P<card>...)")
        if self.start is not None and self.start == self.end:
            raise ValueError("start and end must be different bytes")
        if self.checksum == "xor":
            if "checksum" not in groups:
                raise ValueError("checksum = 'xor' needs a group (?P<checksum>..) in pattern")
            if self.digits != "hex":
                raise ValueError("checksum = 'xor' is over hex card digits: digits = 'hex'")
        if self.wiegand:
            if self.bits is not None:
                raise ValueError("with wiegand the card bits follow (24 or 32): remove `bits`")
            if self.digits == "decimal":
                raise ValueError("raw wiegand bits are written in hex or binary digits")
            if self.digits == "hex" and len(self.wiegand) != 1:
                raise ValueError("hex digits do not tell 26 from 34 bits: give one length")
        elif self.bits is None:
            raise ValueError("`bits` (the card's bit length) is required without wiegand")
        if self.directions and "direction" not in groups:
            raise ValueError("directions needs a group (?P<direction>..) in pattern")
        if "direction" in groups and not self.directions:
            raise ValueError("a (?P<direction>..) group needs `directions` = { value = 'in' }")
        if len(set(self.directions.values())) != len(self.directions):
            raise ValueError("directions: one value per direction")
        return self


def wiegand_check(raw: int, n: int) -> int | None:
    """The card bits of a raw Wiegand n-bit word, or None when a parity bit is wrong.
    Bit 1 (first sent) is even parity over the first half of the data, bit n odd parity
    over the second half."""
    data_bits = n - 2
    half = data_bits // 2
    data = (raw >> 1) & ((1 << data_bits) - 1)
    first, second = data >> half, data & ((1 << half) - 1)
    even, odd = raw >> (n - 1), raw & 1
    if (first.bit_count() + even) % 2 != 0 or (second.bit_count() + odd) % 2 != 1:
        return None
    return data


def wiegand_wrap(data: int, n: int) -> int:
    """The raw n-bit Wiegand word carrying `data` (n - 2 bits) with correct parity."""
    half = (n - 2) // 2
    first, second = data >> half, data & ((1 << half) - 1)
    even = first.bit_count() % 2
    odd = 1 - second.bit_count() % 2
    return (even << (n - 1)) | (data << 1) | odd


def xor_bytes(value: int, nbytes: int) -> int:
    out = 0
    for b in value.to_bytes(nbytes):
        out ^= b
    return out


@dataclass(frozen=True, slots=True)
class Read:
    """A decoded frame: the number and what the frame said about it."""

    number: CardNumber
    format: str
    direction: Direction | None = None


@dataclass
class Counters:
    frames: int = 0  # bodies delimited (valid or not)
    cards: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))

    def reject(self, reason: Reason) -> None:
        self.rejected[reason] += 1


class Decoder:
    """Bytes in, Reads out; every frame that is not a card is counted by its reason."""

    def __init__(self, spec: FrameSpec, counters: Counters | None = None) -> None:
        self.spec = spec
        self.counters = counters or Counters()
        self._rx = re.compile(spec.pattern)
        self._buf = bytearray()
        self._inside = spec.start is None  # line framing: always inside a line
        self._overlong = False
        self._stray = False  # bytes outside a frame since the last one was counted

    def feed(self, data: bytes) -> list[Read]:
        out: list[Read] = []
        spec = self.spec
        for b in data:
            if spec.start is not None and b == spec.start:
                if self._inside and (self._buf or self._overlong):
                    self.counters.reject("half_frame")  # a new frame cut the last one short
                self._flush_stray()
                self._begin()
                self._inside = True
            elif b == spec.end:
                if not self._inside:
                    self._stray = True
                    self._flush_stray()
                    continue
                self.counters.frames += 1
                if self._overlong:
                    self.counters.reject("garbage")
                else:
                    read = self._body(bytes(self._buf))
                    if read is not None:
                        out.append(read)
                self._begin()
                self._inside = spec.start is None
            elif not self._inside:
                self._stray = True
            elif len(self._buf) >= spec.max_length:
                self._overlong = True
                self._buf.clear()
            elif not self._overlong:
                self._buf.append(b)
        return out

    def close(self) -> None:
        """The line closed: a frame begun and not ended is a half frame."""
        framed = self.spec.start is not None
        pending = self._buf if framed else self._buf.strip(b" \t\r\n")
        if (self._inside or not framed) and (pending or self._overlong):
            self.counters.reject("half_frame")
        self._flush_stray()
        self._begin()
        self._inside = self.spec.start is None

    def _begin(self) -> None:
        self._buf.clear()
        self._overlong = False

    def _flush_stray(self) -> None:
        if self._stray:
            self.counters.reject("garbage")
            self._stray = False

    def _body(self, raw: bytes) -> Read | None:
        spec = self.spec
        if spec.trim:
            raw = raw.strip(b" \t\r\n")
        if spec.start is None and not raw:
            self.counters.frames -= 1  # an empty line (CR LF split) is no frame
            return None
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            self.counters.reject("garbage")
            return None
        m = self._rx.fullmatch(text)
        if m is None:
            self.counters.reject("garbage")
            return None
        digits = m["card"].replace(" ", "")
        try:
            value = int(digits, BASES[spec.digits])
        except ValueError:
            self.counters.reject("garbage")
            return None
        if spec.checksum == "xor":
            if len(digits) % 2:
                self.counters.reject("garbage")
                return None
            try:
                want = int(m["checksum"], 16)
            except (TypeError, ValueError):
                self.counters.reject("garbage")
                return None
            if xor_bytes(value, len(digits) // 2) != want:
                self.counters.reject("checksum")
                return None
        fmt = spec.format
        if spec.wiegand:
            n = len(digits) if spec.digits == "binary" else spec.wiegand[0]
            if n not in spec.wiegand or value.bit_length() > n:
                self.counters.reject("garbage")
                return None
            data = wiegand_check(value, n)
            if data is None:
                self.counters.reject("parity")
                return None
            value, bits, fmt = data, n - 2, f"wiegand{n}"
        else:
            assert spec.bits is not None  # noqa: S101 - the model requires it
            bits = spec.bits
            if value.bit_length() > bits:
                self.counters.reject("garbage")
                return None
        direction: Direction | None = None
        if spec.directions:
            direction = spec.directions.get(m["direction"] or "")
            if direction is None:
                self.counters.reject("garbage")
                return None
        self.counters.cards += 1
        return Read(CardNumber(value, bits), fmt, direction)


def encode(spec: FrameSpec, value: int, *, bits: int | None = None, direction: str = "") -> bytes:
    """One frame as the reader sends it (for the simulator and vectors: test data only).
    `bits`: the Wiegand length (26 or 34) when the spec is a Wiegand one."""
    if spec.wiegand:
        n = bits or spec.wiegand[0]
        raw, width_bits = wiegand_wrap(value, n), n
    else:
        raw, width_bits = value, spec.bits or value.bit_length()
    if spec.digits == "hex":
        card = f"{raw:0{(width_bits + 3) // 4}X}"
    elif spec.digits == "binary":
        card = f"{raw:0{width_bits}b}"
    else:
        card = str(raw)
    if spec.group_size:
        g = spec.group_size
        card = " ".join(card[i : i + g] for i in range(0, len(card), g))
    checksum = f"{xor_bytes(raw, (width_bits + 7) // 8):02X}" if spec.checksum == "xor" else ""
    label = next((k for k, v in spec.directions.items() if v == direction), "")
    body = spec.template.format(card=card, checksum=checksum, direction=label).encode("ascii")
    start = bytes([spec.start]) if spec.start is not None else b""
    return start + body + bytes([spec.end])
