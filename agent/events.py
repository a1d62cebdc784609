"""Events of the MQTT API v1: kinds, priorities, topics, ids and the JSON envelope.

An event is encoded to its JSON bytes exactly once, when the store commits it and gives it
its `seq`; after that the store and the publisher move bytes. Nothing here does I/O.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import random
import time
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import orjson

SCHEMA_VERSION = 1


class Kind(StrEnum):
    """The event kinds of the contract, in topic order."""

    ALARM = "alarm"
    ACCESS = "access"
    AUDIT = "audit"
    STATE = "state"
    TELEMETRY = "telemetry"


class Priority(IntEnum):
    """Send order after an outage, and (reversed) eviction order when the store is full."""

    ALARM = 0
    ACCESS = 1
    STATE = 2
    TELEMETRY = 3


PRIORITY = {
    Kind.ALARM: Priority.ALARM,
    Kind.ACCESS: Priority.ACCESS,
    Kind.AUDIT: Priority.ACCESS,
    Kind.STATE: Priority.STATE,
    Kind.TELEMETRY: Priority.TELEMETRY,
}
RETAINED = frozenset({Kind.STATE})


# Event ids must be unique, not secret: a generator seeded once from the OS costs ~0.1 µs per
# id where os.urandom costs a system call per event.
_rng = random.Random(os.urandom(32))  # uniqueness, not secrecy


def uuid7(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version, 74 random bits."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = _rng.getrandbits(74)
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_second = -1
_second_text = ""


def rfc3339(ts: float) -> str:
    """Seconds since the epoch -> '2026-11-23T13:26:34.123Z'."""
    global _second, _second_text  # noqa: PLW0603 - a one-entry cache: events come in bursts
    whole = int(ts)
    if whole != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = whole
    # +1 µs: 0.001 s is stored as 0.000999…; truncating that would say .000.
    return f"{_second_text}.{int((ts - whole) * 1000 + 0.001):03d}Z"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where events come from: the gateway identity and the topic prefix."""

    prefix: str
    school: str
    gateway: str

    def topic(self, kind: Kind, category: str, device: str) -> str:
        """The event topic: {prefix}/{school}/{gateway}/{kind}/{category}/{device}."""
        return f"{self.prefix}/{self.school}/{self.gateway}/{kind}/{category}/{device}"

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.school}/{self.gateway}"


@dataclass(slots=True)
class NewEvent:
    """An event created by the core and not yet committed (it has no seq or id yet)."""

    kind: Kind
    device: str
    category: str
    profile: str
    ts: float
    body: dict[str, Any]
    location: dict[str, Any] | None = None
    unsynced: bool = False


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A committed event: what the publisher sends."""

    seq: int
    priority: int
    topic: str
    payload: bytes
    retain: bool


def encode(origin: Origin, ev: NewEvent, seq: int, event_id: str) -> bytes:
    """The JSON payload of an event: the envelope, then the body of its kind."""
    doc: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "id": event_id,
        "seq": seq,
        "ts": rfc3339(ev.ts),
        "school": origin.school,
        "gateway": origin.gateway,
        "device": ev.device,
        "category": ev.category,
        "profile": ev.profile,
        "kind": str(ev.kind),
    }
    if ev.location:
        doc["location"] = ev.location
    if ev.unsynced:
        doc["clock"] = "unsynced"
    for key, value in ev.body.items():
        # A device value may not overwrite the envelope (a state point called "seq"...),
        # and JSON has no NaN or infinity: those readings become null.
        if key not in doc:
            doc[key] = value if not isinstance(value, float) or math.isfinite(value) else None
    # orjson keeps a 4 KiB allocation behind every result it returns; a backlog of
    # thousands of events would hold that much each. Copy to an exact-size bytes object.
    return bytes(memoryview(orjson.dumps(doc)))


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (Linux); only `modes` and the return value are used.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 256)]


class ClockState:
    """Whether the kernel says the system clock is synchronised (adjtimex, Linux).

    A gateway without an RTC boots with a wrong time; events stamped before NTP has
    synchronised the clock carry "clock": "unsynced" instead of pretending.
    """

    TIME_ERROR = 5

    def __init__(self, mode: str = "auto", recheck: float = 30.0) -> None:
        self.mode = mode
        self._recheck = recheck
        self._checked = 0.0
        self._synced = True
        self._adjtimex: Any = None
        if mode == "auto":
            name = ctypes.util.find_library("c")
            if name:
                self._adjtimex = getattr(ctypes.CDLL(name, use_errno=True), "adjtimex", None)

    def synced(self) -> bool:
        """True unless the kernel reports the clock as unsynchronised (cached)."""
        if self._adjtimex is None:
            return True
        now = time.monotonic()
        if now - self._checked > self._recheck:
            self._checked = now
            tx = _Timex()
            state = self._adjtimex(ctypes.byref(tx))
            self._synced = state not in (-1, self.TIME_ERROR)
        return self._synced
