"""Typed payloads of the firmware bridge messages (PROTOCOL.md, "Messages").

One frozen dataclass per message type, each with `encode()` (payload bytes) and
`decode(payload)`; `decode_message(frame)` and `message_frame(msg, seq)` join them to the
frame layer in `firmware_bridge.frame`. Pure code: no I/O. Every malformed payload raises
`FrameError` with the NACK reason a receiver answers with.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Self

from firmware_bridge.frame import (
    MAX_FW_CHUNK,
    PROTOCOL_VERSION,
    Flags,
    Frame,
    FrameError,
    MsgType,
    NackReason,
)


def _payload_error(message: str, reason: NackReason = NackReason.BAD_PAYLOAD) -> FrameError:
    return FrameError(message, "payload", reason)


# --------------------------------------------------------------------------- typed values

ValueKind = Literal["bool", "int8", "int16", "int32", "float32", "uint32", "string"]

_FIXED: dict[str, tuple[int, str, int, int]] = {
    # kind: (tag, struct format, min, max)
    "int8": (2, "<b", -(2**7), 2**7 - 1),
    "int16": (3, "<h", -(2**15), 2**15 - 1),
    "int32": (4, "<i", -(2**31), 2**31 - 1),
    "uint32": (6, "<I", 0, 2**32 - 1),
}
_BY_TAG: dict[int, ValueKind] = {
    2: "int8",
    3: "int16",
    4: "int32",
    5: "float32",
    6: "uint32",
    7: "string",
}


@dataclass(frozen=True, slots=True)
class Value:
    """A typed value: tag u8, then the value (tags 0/1 are false/true and carry no bytes)."""

    kind: ValueKind
    value: bool | int | float | str

    def __post_init__(self) -> None:
        v = self.value
        if self.kind == "bool":
            ok = isinstance(v, bool)
        elif self.kind in _FIXED:
            _, _, low, high = _FIXED[self.kind]
            ok = isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
        elif self.kind == "float32":
            ok = isinstance(v, float) and (not math.isfinite(v) or abs(v) <= 3.4028234663852886e38)
        else:
            ok = isinstance(v, str) and len(v.encode()) <= 255
        if not ok:
            raise _payload_error(f"{v!r} is not a valid {self.kind} value")

    def encode(self) -> bytes:
        """Tag and value bytes."""
        if self.kind == "bool":
            return b"\x01" if self.value else b"\x00"
        if self.kind == "float32":
            return b"\x05" + struct.pack("<f", self.value)
        if self.kind == "string":
            assert isinstance(self.value, str)  # noqa: S101 - checked in __post_init__
            return b"\x07" + _pack_str(self.value)
        tag, fmt, _, _ = _FIXED[self.kind]
        return bytes([tag]) + struct.pack(fmt, self.value)


def _pack_str(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise _payload_error(f"string of {len(raw)} UTF-8 bytes exceeds 255")
    return bytes([len(raw)]) + raw


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

    def u8(self) -> int:
        return self.take(1)[0]

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return int(value)

    def str(self) -> str:
        raw = self.take(self.u8())
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise _payload_error("string is not valid UTF-8") from None

    def value(self) -> Value:
        tag = self.u8()
        if tag <= 1:
            return Value("bool", tag == 1)
        kind = _BY_TAG.get(tag)
        if kind is None:
            raise _payload_error(f"unknown value tag {tag}")
        if kind == "float32":
            (f,) = struct.unpack("<f", self.take(4))
            return Value("float32", float(f))
        if kind == "string":
            return Value("string", self.str())
        _, fmt, _, _ = _FIXED[kind]
        return Value(kind, self.unpack(fmt))

    def points(self) -> tuple[Point, ...]:
        return tuple(Point(self.u8(), self.value()) for _ in range(self.u8()))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise _payload_error(f"{len(self.data) - self.pos} unexpected bytes after payload")


def _pack_points(points: tuple[Point, ...]) -> bytes:
    if len(points) > 255:
        raise _payload_error(f"{len(points)} points exceed 255")
    return bytes([len(points)]) + b"".join(p.encode() for p in points)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Hello:
    """Node -> host on start: supported versions and identity."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    proto_min: int
    proto_max: int
    uid: bytes
    model: str
    fw_version: str

    def encode(self) -> bytes:
        """Payload bytes."""
        if len(self.uid) != 8:
            raise _payload_error("uid must be 8 bytes")
        head = bytes([self.proto_min, self.proto_max]) + self.uid
        return head + _pack_str(self.model) + _pack_str(self.fw_version)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload."""
        r = _Reader(payload)
        msg = cls(r.u8(), r.u8(), r.take(8), r.str(), r.str())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class Welcome:
    """Host -> node: the chosen protocol version and the time (Unix ms)."""

    TYPE: ClassVar[MsgType] = MsgType.WELCOME
    version: int
    unix_ms: int

    def encode(self) -> bytes:
        """Payload bytes."""
        return struct.pack("<BQ", self.version, self.unix_ms)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload."""
        r = _Reader(payload)
        msg = cls(r.u8(), r.unpack("<Q"))
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class _Empty:
    def encode(self) -> bytes:
        """Empty payload."""
        return b""

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the (empty) payload."""
        _Reader(payload).end()
        return cls()


@dataclass(frozen=True, slots=True)
class Heartbeat(_Empty):
    """Either direction, when the sender has sent nothing for 5 s."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT


@dataclass(frozen=True, slots=True)
class FwVerify(_Empty):
    """Host -> node: check the sha256 of the received image."""

    TYPE: ClassVar[MsgType] = MsgType.FW_VERIFY


@dataclass(frozen=True, slots=True)
class FwCommit(_Empty):
    """Host -> node: boot the verified image."""

    TYPE: ClassVar[MsgType] = MsgType.FW_COMMIT


@dataclass(frozen=True, slots=True)
class FwAbort(_Empty):
    """Host -> node: discard the staged image (roll back)."""

    TYPE: ClassVar[MsgType] = MsgType.FW_ABORT


@dataclass(frozen=True, slots=True)
class Ack:
    """Acknowledges the frame with header seq `seq`."""

    TYPE: ClassVar[MsgType] = MsgType.ACK
    seq: int

    def encode(self) -> bytes:
        """Payload bytes."""
        return struct.pack("<H", self.seq)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload."""
        r = _Reader(payload)
        msg = cls(r.unpack("<H"))
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class Nack:
    """Refuses the frame with header seq `seq`, for `reason`."""

    TYPE: ClassVar[MsgType] = MsgType.NACK
    seq: int
    reason: int

    def encode(self) -> bytes:
        """Payload bytes."""
        return struct.pack("<HB", self.seq, self.reason)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload."""
        r = _Reader(payload)
        msg = cls(r.unpack("<H"), r.u8())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class Data:
    """Node -> host telemetry, not acknowledged: count u8 + points."""

    TYPE: ClassVar[MsgType] = MsgType.DATA
    points: tuple[Point, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        """Payload bytes."""
        return _pack_points(self.points)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload."""
        r = _Reader(payload)
        msg = cls(r.points())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class Event(Data):
    """Node -> host alarms and events: as DATA, but sent with NEEDS_ACK."""

    TYPE: ClassVar[MsgType] = MsgType.EVENT


@dataclass(frozen=True, slots=True)
class TimeSync:
    """Host -> node: the time, Unix ms."""

    TYPE: ClassVar[MsgType] = MsgType.TIME_SYNC
    unix_ms: int

    def encode(self) -> bytes:
        """Payload bytes."""
        return struct.pack("<Q", self.unix_ms)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload."""
        r = _Reader(payload)
        msg = cls(r.unpack("<Q"))
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class ConfigGet:
    """Host -> node: ask for a configuration value."""

    TYPE: ClassVar[MsgType] = MsgType.CONFIG_GET
    key: int

    def encode(self) -> bytes:
        """Payload bytes."""
        return bytes([self.key])

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload."""
        r = _Reader(payload)
        msg = cls(r.u8())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class ConfigSet:
    """Host -> node (NEEDS_ACK): set a configuration value."""

    TYPE: ClassVar[MsgType] = MsgType.CONFIG_SET
    key: int
    value: Value

    def encode(self) -> bytes:
        """Payload bytes."""
        return bytes([self.key]) + self.value.encode()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload."""
        r = _Reader(payload)
        msg = cls(r.u8(), r.value())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class ConfigValue(ConfigSet):
    """Node -> host: a configuration value (answer to CONFIG_GET)."""

    TYPE: ClassVar[MsgType] = MsgType.CONFIG_VALUE


@dataclass(frozen=True, slots=True)
class Action:
    """Host -> node (NEEDS_ACK): run action `action_id` with positional typed args."""

    TYPE: ClassVar[MsgType] = MsgType.ACTION
    action_id: int
    args: tuple[Value, ...] = ()

    def encode(self) -> bytes:
        """Payload bytes."""
        if len(self.args) > 255:
            raise _payload_error(f"{len(self.args)} args exceed 255")
        values = b"".join(a.encode() for a in self.args)
        return bytes([self.action_id, len(self.args)]) + values

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload."""
        r = _Reader(payload)
        action_id = r.u8()
        msg = cls(action_id, tuple(r.value() for _ in range(r.u8())))
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class ActionResult:
    """Node -> host (NEEDS_ACK): outcome of the ACTION whose header seq was `action_seq`."""

    TYPE: ClassVar[MsgType] = MsgType.ACTION_RESULT
    action_seq: int
    status: int
    message: str = ""

    def encode(self) -> bytes:
        """Payload bytes."""
        return struct.pack("<HB", self.action_seq, self.status) + _pack_str(self.message)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload."""
        r = _Reader(payload)
        msg = cls(r.unpack("<H"), r.u8(), r.str())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class FwBegin:
    """Host -> node: start (or resume) an update with this image."""

    TYPE: ClassVar[MsgType] = MsgType.FW_BEGIN
    size: int
    sha256: bytes
    version: str

    def encode(self) -> bytes:
        """Payload bytes."""
        if len(self.sha256) != 32:
            raise _payload_error("sha256 must be 32 bytes")
        return struct.pack("<I", self.size) + self.sha256 + _pack_str(self.version)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload."""
        r = _Reader(payload)
        msg = cls(r.unpack("<I"), r.take(32), r.str())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class FwChunk:
    """Host -> node: image bytes at `offset` (at most 200 bytes)."""

    TYPE: ClassVar[MsgType] = MsgType.FW_CHUNK
    offset: int
    data: bytes

    def encode(self) -> bytes:
        """Payload bytes."""
        if len(self.data) > MAX_FW_CHUNK:
            raise _payload_error(f"chunk of {len(self.data)} bytes exceeds {MAX_FW_CHUNK}")
        return struct.pack("<I", self.offset) + self.data

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload."""
        r = _Reader(payload)
        offset = r.unpack("<I")
        data = r.take(len(payload) - 4)
        if len(data) > MAX_FW_CHUNK:
            raise _payload_error(f"chunk of {len(data)} bytes exceeds {MAX_FW_CHUNK}")
        return cls(offset, data)


@dataclass(frozen=True, slots=True)
class FwStatus:
    """Node -> host: update state and the next offset the node wants."""

    TYPE: ClassVar[MsgType] = MsgType.FW_STATUS
    state: int
    next_offset: int

    def encode(self) -> bytes:
        """Payload bytes."""
        return struct.pack("<BI", self.state, self.next_offset)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse the payload."""
        r = _Reader(payload)
        msg = cls(r.u8(), r.unpack("<I"))
        r.end()
        return msg


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

MESSAGE_CLASSES: dict[MsgType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        Heartbeat,
        Ack,
        Nack,
        Data,
        Event,
        TimeSync,
        ConfigGet,
        ConfigSet,
        ConfigValue,
        Action,
        ActionResult,
        FwBegin,
        FwChunk,
        FwStatus,
        FwVerify,
        FwCommit,
        FwAbort,
    )
}

#: Types sent with NEEDS_ACK (PROTOCOL.md, "Delivery").
ACKED_TYPES = frozenset({MsgType.EVENT, MsgType.CONFIG_SET, MsgType.ACTION, MsgType.ACTION_RESULT})


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
