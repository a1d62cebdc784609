"""Typed payloads of the firmware bridge messages (PROTOCOL.md, "Messages"), as one table.

Each message is a frozen dataclass whose fields name their wire format
(`seq: Annotated[int, U16]`), in payload order. One generic codec walks those formats: every
message has `encode()` (payload bytes) and `decode(payload)`, and `decode_message(frame)` and
`message_frame(msg, seq)` join them to the frame layer in `firmware_bridge.frame`. A new
message type is a new class in the `Message` union, not new parsing code. Pure code: no I/O.
Every malformed payload raises `FrameError` with the NACK reason a receiver answers with.
"""

from __future__ import annotations

import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import (
    Annotated,
    Any,
    ClassVar,
    Generic,
    Literal,
    Self,
    TypeVar,
    get_args,
    get_type_hints,
)

from firmware_bridge.codes import Flags, MsgType, NackReason
from firmware_bridge.errors import FrameError
from firmware_bridge.frame import MAX_FW_CHUNK, PROTOCOL_VERSION, Frame

T = TypeVar("T")


def _payload_error(message: str, reason: NackReason = NackReason.BAD_PAYLOAD) -> FrameError:
    return FrameError(message, "payload", reason)


class _Reader:
    """Cursor over a payload; every short read is a BAD_PAYLOAD `FrameError`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _payload_error(f"payload ends at byte {len(self.data)}, needed {self.pos + n}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def end(self) -> None:
        if self.pos != len(self.data):
            raise _payload_error(f"{len(self.data) - self.pos} unexpected bytes after payload")


# --------------------------------------------------------------------------- wire formats


class Wire(ABC, Generic[T]):
    """The wire format of one field: how a value of type T is written and read."""

    __slots__ = ()

    @abstractmethod
    def pack(self, name: str, value: T) -> bytes:
        """The value's bytes; `name` (the field's) goes into the error message."""

    @abstractmethod
    def unpack(self, r: _Reader) -> T:
        """Read the value at the reader's cursor."""


@dataclass(frozen=True, slots=True)
class Uint(Wire[int]):
    """An unsigned little-endian integer, by its struct format (`<B`, `<H`, `<I`, `<Q`)."""

    fmt: str

    def pack(self, name: str, value: int) -> bytes:
        try:
            return struct.pack(self.fmt, value)
        except struct.error:
            top = 2 ** (8 * struct.calcsize(self.fmt)) - 1
            raise _payload_error(f"{name} {value!r} is not an integer in 0..{top}") from None

    def unpack(self, r: _Reader) -> int:
        (value,) = struct.unpack(self.fmt, r.take(struct.calcsize(self.fmt)))
        return int(value)


@dataclass(frozen=True, slots=True)
class Fixed(Wire[bytes]):
    """Exactly `size` bytes (HELLO's uid, FW_BEGIN's sha256)."""

    size: int

    def pack(self, name: str, value: bytes) -> bytes:
        if len(value) != self.size:
            raise _payload_error(f"{name} must be {self.size} bytes")
        return bytes(value)

    def unpack(self, r: _Reader) -> bytes:
        return r.take(self.size)


@dataclass(frozen=True, slots=True)
class Rest(Wire[bytes]):
    """The rest of the payload, at most `limit` bytes (FW_CHUNK's data); `what` names it."""

    limit: int
    what: str

    def _check(self, value: bytes) -> bytes:
        if len(value) > self.limit:
            raise _payload_error(f"{self.what} of {len(value)} bytes exceeds {self.limit}")
        return value

    def pack(self, name: str, value: bytes) -> bytes:
        return bytes(self._check(value))

    def unpack(self, r: _Reader) -> bytes:
        return self._check(r.take(len(r.data) - r.pos))


class Str(Wire[str]):
    """`str`: length u8, then that many UTF-8 bytes."""

    __slots__ = ()

    def pack(self, name: str, value: str) -> bytes:
        raw = value.encode()
        if len(raw) > 255:
            raise _payload_error(f"string of {len(raw)} UTF-8 bytes exceeds 255")
        return bytes([len(raw)]) + raw

    def unpack(self, r: _Reader) -> str:
        raw = r.take(U8.unpack(r))
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise _payload_error("string is not valid UTF-8") from None


@dataclass(frozen=True, slots=True)
class Counted(Wire[tuple[T, ...]]):
    """count u8, then count items of one format (DATA's points, ACTION's args)."""

    item: Wire[T]

    def pack(self, name: str, value: tuple[T, ...]) -> bytes:
        if len(value) > 255:
            raise _payload_error(f"{len(value)} {name} exceed 255")
        return bytes([len(value)]) + b"".join(self.item.pack(name, v) for v in value)

    def unpack(self, r: _Reader) -> tuple[T, ...]:
        return tuple(self.item.unpack(r) for _ in range(U8.unpack(r)))


U8, U16, U32, U64 = Uint("<B"), Uint("<H"), Uint("<I"), Uint("<Q")
STR = Str()


# --------------------------------------------------------------------------- typed values

ValueKind = Literal["bool", "int8", "int16", "int32", "float32", "uint32", "string"]

_FORMATS: dict[ValueKind, tuple[int, str]] = {
    # kind: (tag, struct format of the value bytes); bool is tags 0/1, string tag 7 + `str`
    "int8": (2, "<b"),
    "int16": (3, "<h"),
    "int32": (4, "<i"),
    "float32": (5, "<f"),
    "uint32": (6, "<I"),
}
_STRING_TAG = 7
_BY_TAG: dict[int, ValueKind] = {tag: kind for kind, (tag, _) in _FORMATS.items()}
_BY_TAG[_STRING_TAG] = "string"
_INT_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True, slots=True)
class Value:
    """A typed value: tag u8, then the value (tags 0/1 are false/true and carry no bytes)."""

    kind: ValueKind
    value: bool | int | float | str

    def __post_init__(self) -> None:
        v = self.value
        if self.kind == "bool":
            ok = isinstance(v, bool)
        elif self.kind in _INT_RANGES:
            low, high = _INT_RANGES[self.kind]
            ok = isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
        elif self.kind == "float32":
            ok = isinstance(v, float) and (not math.isfinite(v) or abs(v) <= _FLOAT32_MAX)
        else:
            ok = isinstance(v, str) and len(v.encode()) <= 255
        if not ok:
            raise _payload_error(f"{v!r} is not a valid {self.kind} value")

    def encode(self) -> bytes:
        """Tag and value bytes."""
        if self.kind == "bool":
            return b"\x01" if self.value else b"\x00"
        if self.kind == "string":
            assert isinstance(self.value, str)  # noqa: S101 - checked in __post_init__
            return bytes([_STRING_TAG]) + STR.pack("string", self.value)
        tag, fmt = _FORMATS[self.kind]
        return bytes([tag]) + struct.pack(fmt, self.value)


class TypedValue(Wire[Value]):
    """`value`: tag u8, then the value's bytes (PROTOCOL.md 4.1)."""

    __slots__ = ()

    def pack(self, name: str, value: Value) -> bytes:
        return value.encode()

    def unpack(self, r: _Reader) -> Value:
        tag = U8.unpack(r)
        if tag <= 1:
            return Value("bool", tag == 1)
        kind = _BY_TAG.get(tag)
        if kind is None:
            raise _payload_error(f"unknown value tag {tag}")
        if kind == "string":
            return Value("string", STR.unpack(r))
        _, fmt = _FORMATS[kind]
        (raw,) = struct.unpack(fmt, r.take(struct.calcsize(fmt)))
        return Value(kind, float(raw) if kind == "float32" else int(raw))


@dataclass(frozen=True, slots=True)
class Point:
    """A point: id (index in the node's profile) and a typed value."""

    id: int
    value: Value

    def encode(self) -> bytes:
        """Point id byte and typed value."""
        if not 0 <= self.id <= 0xFF:
            raise _payload_error(f"point id {self.id} out of range 0..255")
        return bytes([self.id]) + self.value.encode()


class PointWire(Wire[Point]):
    """A point: point_id u8, then a value."""

    __slots__ = ()

    def pack(self, name: str, value: Point) -> bytes:
        return value.encode()

    def unpack(self, r: _Reader) -> Point:
        return Point(U8.unpack(r), VALUE.unpack(r))


VALUE = TypedValue()
POINTS = Counted(PointWire())
VALUES = Counted(VALUE)


# --------------------------------------------------------------------------- messages


class _Message:
    """What every message has: its TYPE, and the generic codec over its fields' formats."""

    __slots__ = ()
    TYPE: ClassVar[MsgType]

    def encode(self) -> bytes:
        """Payload bytes."""
        return b"".join(wire.pack(name, getattr(self, name)) for name, wire in _LAYOUT[type(self)])

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload, which must be consumed exactly."""
        r = _Reader(payload)
        values = [wire.unpack(r) for _, wire in _LAYOUT[cls]]
        r.end()
        make: Callable[..., Self] = cls
        return make(*values)


@dataclass(frozen=True, slots=True)
class Hello(_Message):
    """Node -> host on start: supported versions and identity."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    proto_min: Annotated[int, U8]
    proto_max: Annotated[int, U8]
    uid: Annotated[bytes, Fixed(8)]
    model: Annotated[str, STR]
    fw_version: Annotated[str, STR]


@dataclass(frozen=True, slots=True)
class Welcome(_Message):
    """Host -> node: the chosen protocol version and the time (Unix ms)."""

    TYPE: ClassVar[MsgType] = MsgType.WELCOME
    version: Annotated[int, U8]
    unix_ms: Annotated[int, U64]


@dataclass(frozen=True, slots=True)
class Heartbeat(_Message):
    """Either direction, when the sender has sent nothing for 5 s."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT


@dataclass(frozen=True, slots=True)
class Ack(_Message):
    """Acknowledges the frame with header seq `seq`."""

    TYPE: ClassVar[MsgType] = MsgType.ACK
    seq: Annotated[int, U16]


@dataclass(frozen=True, slots=True)
class Nack(_Message):
    """Refuses the frame with header seq `seq`, for `reason`."""

    TYPE: ClassVar[MsgType] = MsgType.NACK
    seq: Annotated[int, U16]
    reason: Annotated[int, U8]


@dataclass(frozen=True, slots=True)
class Data(_Message):
    """Node -> host telemetry, not acknowledged: count u8 + points."""

    TYPE: ClassVar[MsgType] = MsgType.DATA
    points: Annotated[tuple[Point, ...], POINTS] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Event(Data):
    """Node -> host alarms and events: as DATA, but sent with NEEDS_ACK."""

    TYPE: ClassVar[MsgType] = MsgType.EVENT


@dataclass(frozen=True, slots=True)
class TimeSync(_Message):
    """Host -> node: the time, Unix ms."""

    TYPE: ClassVar[MsgType] = MsgType.TIME_SYNC
    unix_ms: Annotated[int, U64]


@dataclass(frozen=True, slots=True)
class ConfigGet(_Message):
    """Host -> node: ask for a configuration value."""

    TYPE: ClassVar[MsgType] = MsgType.CONFIG_GET
    key: Annotated[int, U8]


@dataclass(frozen=True, slots=True)
class ConfigSet(_Message):
    """Host -> node (NEEDS_ACK): set a configuration value."""

    TYPE: ClassVar[MsgType] = MsgType.CONFIG_SET
    key: Annotated[int, U8]
    value: Annotated[Value, VALUE]


@dataclass(frozen=True, slots=True)
class ConfigValue(ConfigSet):
    """Node -> host: a configuration value (answer to CONFIG_GET)."""

    TYPE: ClassVar[MsgType] = MsgType.CONFIG_VALUE


@dataclass(frozen=True, slots=True)
class Action(_Message):
    """Host -> node (NEEDS_ACK): run action `action_id` with positional typed args."""

    TYPE: ClassVar[MsgType] = MsgType.ACTION
    action_id: Annotated[int, U8]
    args: Annotated[tuple[Value, ...], VALUES] = ()


@dataclass(frozen=True, slots=True)
class ActionResult(_Message):
    """Node -> host (NEEDS_ACK): outcome of the ACTION whose header seq was `action_seq`."""

    TYPE: ClassVar[MsgType] = MsgType.ACTION_RESULT
    action_seq: Annotated[int, U16]
    status: Annotated[int, U8]
    message: Annotated[str, STR] = ""


@dataclass(frozen=True, slots=True)
class FwBegin(_Message):
    """Host -> node: start (or resume) an update with this image."""

    TYPE: ClassVar[MsgType] = MsgType.FW_BEGIN
    size: Annotated[int, U32]
    sha256: Annotated[bytes, Fixed(32)]
    version: Annotated[str, STR]


@dataclass(frozen=True, slots=True)
class FwChunk(_Message):
    """Host -> node: image bytes at `offset` (at most 200 bytes)."""

    TYPE: ClassVar[MsgType] = MsgType.FW_CHUNK
    offset: Annotated[int, U32]
    data: Annotated[bytes, Rest(MAX_FW_CHUNK, "chunk")]


@dataclass(frozen=True, slots=True)
class FwStatus(_Message):
    """Node -> host: update state and the next offset the node wants."""

    TYPE: ClassVar[MsgType] = MsgType.FW_STATUS
    state: Annotated[int, U8]
    next_offset: Annotated[int, U32]


@dataclass(frozen=True, slots=True)
class FwVerify(_Message):
    """Host -> node: check the sha256 of the received image."""

    TYPE: ClassVar[MsgType] = MsgType.FW_VERIFY


@dataclass(frozen=True, slots=True)
class FwCommit(_Message):
    """Host -> node: boot the verified image."""

    TYPE: ClassVar[MsgType] = MsgType.FW_COMMIT


@dataclass(frozen=True, slots=True)
class FwAbort(_Message):
    """Host -> node: discard the staged image (roll back)."""

    TYPE: ClassVar[MsgType] = MsgType.FW_ABORT


Message = (
    Hello
    | Welcome
    | Heartbeat
    | Ack
    | Nack
    | Data
    | Event
    | TimeSync
    | ConfigGet
    | ConfigSet
    | ConfigValue
    | Action
    | ActionResult
    | FwBegin
    | FwChunk
    | FwStatus
    | FwVerify
    | FwCommit
    | FwAbort
)

#: The message table: type number -> class (every member of `Message`).
MESSAGE_CLASSES: dict[MsgType, type[Message]] = {cls.TYPE: cls for cls in get_args(Message)}

#: Types sent with NEEDS_ACK (PROTOCOL.md, "Delivery").
ACKED_TYPES = frozenset({MsgType.EVENT, MsgType.CONFIG_SET, MsgType.ACTION, MsgType.ACTION_RESULT})


def _layout(cls: type[Message]) -> tuple[tuple[str, Wire[Any]], ...]:
    """(field name, wire format) in payload order, from the `Annotated` field types."""
    hints = get_type_hints(cls, include_extras=True)
    layout = []
    for f in fields(cls):
        formats = [m for m in getattr(hints[f.name], "__metadata__", ()) if isinstance(m, Wire)]
        if len(formats) != 1:
            raise TypeError(f"{cls.__name__}.{f.name} needs one wire format: Annotated[T, <Wire>]")
        layout.append((f.name, formats[0]))
    return tuple(layout)


_LAYOUT: dict[type, tuple[tuple[str, Wire[Any]], ...]] = {
    cls: _layout(cls) for cls in MESSAGE_CLASSES.values()
}


def decode_message(frame: Frame) -> Message:
    """Parse a frame's payload by its type.

    Raises:
        FrameError: with reason UNSUPPORTED_TYPE or BAD_PAYLOAD (the NACK to send back).
    """
    try:
        cls = MESSAGE_CLASSES[MsgType(frame.type)]
    except ValueError:
        raise _payload_error(
            f"unsupported frame type {frame.type:#04x}", NackReason.UNSUPPORTED_TYPE
        ) from None
    try:
        return cls.decode(frame.payload)
    except FrameError:
        raise
    except (ValueError, struct.error) as exc:
        raise _payload_error(f"bad {cls.TYPE.name} payload: {exc}") from None


def message_frame(
    message: Message, seq: int, *, retransmit: bool = False, version: int = PROTOCOL_VERSION
) -> Frame:
    """Wrap a message in a frame with the flags PROTOCOL.md gives its type."""
    flags = Flags.NEEDS_ACK if message.TYPE in ACKED_TYPES else Flags.NONE
    if retransmit:
        flags |= Flags.RETRANSMIT
    return Frame(int(message.TYPE), seq, message.encode(), int(flags), version)
