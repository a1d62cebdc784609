"""MQTT API v1, the contract with the district platform, in one place.

The only module that builds a `campus/v1` topic, names an envelope field, writes the gateway
status document or its last-will, or lists the command result codes. Everything else asks
here (a test fails when another module formats a topic). `docs/mqtt-api.md`, `docs/schema/`
and `docs/asyncapi.yaml` describe what this module produces; `agent/schema/` generates the
last two from it. Nothing here does I/O, and nothing here imports the rest of the agent.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import orjson

SCHEMA_VERSION = 1
TOPIC_ROOT = "campus/v1"  # the default topic prefix ([agent] topic_prefix)


class Kind(StrEnum):
    """The event kinds of the contract, in topic order."""

    ALARM = "alarm"
    ACCESS = "access"
    AUDIT = "audit"
    STATE = "state"
    TELEMETRY = "telemetry"


# The order in which event kinds appear in the documents (telemetry first, as in DESIGN.md).
EVENT_KINDS = (Kind.TELEMETRY, Kind.ALARM, Kind.ACCESS, Kind.STATE, Kind.AUDIT)


class Priority(IntEnum):
    """The store's classes of events. ALARM..TELEMETRY: send order after an outage, and
    (reversed) eviction order when the store is full. AUDIT (who commanded what) is sent
    after ACCESS (SEND_ORDER) and is never evicted for room: it has its own retention
    ([store] audit_keep), which telemetry or alarms cannot take. The numbers are stored."""

    ALARM = 0
    ACCESS = 1
    STATE = 2
    TELEMETRY = 3
    AUDIT = 4


SEND_ORDER = (Priority.ALARM, Priority.ACCESS, Priority.AUDIT, Priority.STATE, Priority.TELEMETRY)
SEND_RANK = {int(p): rank for rank, p in enumerate(SEND_ORDER)}  # 0: sent first
LAST_RANK = len(SEND_ORDER) - 1


PRIORITY = {
    Kind.ALARM: Priority.ALARM,
    Kind.ACCESS: Priority.ACCESS,
    Kind.AUDIT: Priority.AUDIT,
    Kind.STATE: Priority.STATE,
    Kind.TELEMETRY: Priority.TELEMETRY,
}
RETAINED = frozenset({Kind.STATE})

# ---- topics -------------------------------------------------------------------------------

STATUS = "status"
COMMAND = "cmd"
COMMAND_REPLY = "cmd-reply"
UNKNOWN_DEVICE = "_unknown"  # the reply topic's device when the command named none of ours


@dataclass(frozen=True, slots=True)
class Origin:
    """Where events come from, and every topic of one gateway.

    `Origin.template()` has the placeholders `{school}` and `{gateway}` in place of a real
    gateway's names: the documents use it, so that they show the topics the code builds.
    """

    prefix: str
    school: str
    gateway: str

    @classmethod
    def template(cls, prefix: str = TOPIC_ROOT) -> Origin:
        """The topics with `{school}` and `{gateway}` placeholders (for documents)."""
        return cls(prefix, "{school}", "{gateway}")

    @property
    def base(self) -> str:
        """{prefix}/{school}/{gateway}: an ACL confines a gateway to base/#."""
        return f"{self.prefix}/{self.school}/{self.gateway}"

    def topic(self, kind: Kind | str, category: str, device: str) -> str:
        """The event topic: {base}/{kind}/{category}/{device}."""
        return f"{self.base}/{kind}/{category}/{device}"

    def kind_filter(self, kind: Kind | str, device: str = "+") -> str:
        """Every event of one kind (of one device): {base}/{kind}/+/{device}."""
        return f"{self.base}/{kind}/+/{device}"

    @property
    def status_topic(self) -> str:
        return f"{self.base}/{STATUS}"

    def command_topic(self, device: str) -> str:
        return f"{self.base}/{COMMAND}/{device}"

    @property
    def command_filter(self) -> str:
        """What the agent subscribes to for commands."""
        return self.command_topic("+")

    def reply_topic(self, device: str) -> str:
        return f"{self.base}/{COMMAND_REPLY}/{device}"

    @property
    def reply_prefix(self) -> str:
        """Where replies go: the default prefix a response topic must start with."""
        return self.reply_topic("")

    @property
    def everything(self) -> str:
        """Every topic of this gateway: {base}/#."""
        return f"{self.base}/#"


def every_gateway_status(prefix: str = TOPIC_ROOT) -> str:
    """The retained status of every gateway of a district (what the platform subscribes to)."""
    return f"{prefix}/+/+/{STATUS}"


def device_of(topic: str) -> str:
    """The last level of a command or event topic: the device id."""
    return topic.rsplit("/", 1)[-1]


def topic_level(topic: str, origin_prefix: str = TOPIC_ROOT) -> str | None:
    """The level after {prefix}/{school}/{gateway}/ ('status', 'alarm', 'cmd-reply', ...)."""
    parts = topic.split("/")
    skip = len(origin_prefix.split("/")) + 2
    return parts[skip] if len(parts) > skip else None


# ---- events -------------------------------------------------------------------------------

# The envelope's fields, in payload order; a body field may not overwrite one of them.
ENVELOPE = (
    "v",
    "id",
    "seq",
    "ts",
    "school",
    "gateway",
    "device",
    "category",
    "profile",
    "kind",
    "location",
    "clock",
)
UNSYNCED = "unsynced"  # the `clock` field's only value


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
        doc["clock"] = UNSYNCED
    for key, value in ev.body.items():
        # A device value may not overwrite the envelope (a state point called "seq"...),
        # and JSON has no NaN or infinity: those readings become null.
        if key not in doc:
            doc[key] = value if not isinstance(value, float) or math.isfinite(value) else None
    # orjson keeps a 4 KiB allocation behind every result it returns; a backlog of
    # thousands of events would hold that much each. Copy to an exact-size bytes object.
    return bytes(memoryview(orjson.dumps(doc)))


def body_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    """An event payload without its envelope: what its kind adds."""
    return {k: v for k, v in doc.items() if k not in ENVELOPE}


# ---- the gateway's status -------------------------------------------------------------------

ONLINE = "online"
OFFLINE = "offline"


def status_document(
    origin: Origin, state: str, details: Mapping[str, Any] | None = None, ts: float | None = None
) -> bytes:
    """The retained status: `online` with the details, or `offline` (a clean stop)."""
    doc: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "state": state,
        "school": origin.school,
        "gateway": origin.gateway,
    }
    if details:
        doc.update(details)
    doc["ts"] = time.time() if ts is None else ts
    return orjson.dumps(doc)


def last_will(origin: Origin) -> bytes:
    """The status the broker publishes when the connection is lost: no time (sent later)."""
    return orjson.dumps(
        {"v": SCHEMA_VERSION, "state": OFFLINE, "school": origin.school, "gateway": origin.gateway}
    )


# ---- commands -------------------------------------------------------------------------------


class Result(StrEnum):
    """A command's outcome: the `result` of its reply and audit event."""

    OK = "ok"  # carried out
    REJECTED = "rejected"  # refused before the device was asked
    FAILED = "failed"  # the device was asked and did not do it


class Code(StrEnum):
    """Why: one fixed code per outcome (the `code` of a reply and audit event)."""

    OK = "ok"
    MALFORMED = "malformed"
    INVALID = "invalid"
    TOO_LARGE = "too_large"
    UNKNOWN_DEVICE = "unknown_device"
    UNSUPPORTED = "unsupported"
    NOT_ALLOWED = "not_allowed"
    BAD_ARGS = "bad_args"
    FROM_FUTURE = "from_future"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    BUSY = "busy"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    ACTION_FAILED = "action_failed"
    TIMEOUT = "timeout"


# The codes each result has (the schema ties them together).
COMMAND_CODES: dict[Result, tuple[Code, ...]] = {
    Result.OK: (Code.OK,),
    Result.REJECTED: (
        Code.MALFORMED,
        Code.INVALID,
        Code.TOO_LARGE,
        Code.UNKNOWN_DEVICE,
        Code.UNSUPPORTED,
        Code.NOT_ALLOWED,
        Code.BAD_ARGS,
        Code.FROM_FUTURE,
        Code.EXPIRED,
        Code.REPLAYED,
        Code.BUSY,
        Code.UNSIGNED,
        Code.BAD_SIGNATURE,
    ),
    Result.FAILED: (Code.ACTION_FAILED, Code.TIMEOUT),
}
RESULT_OF = {code: result for result, codes in COMMAND_CODES.items() for code in codes}


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What happened to one command: its code (the result follows), a reason, data."""

    code: Code
    detail: str
    data: Mapping[str, Any] | None = None

    @property
    def result(self) -> Result:
        return RESULT_OF[self.code]

    def record(self, command_id: str | None, action: str | None) -> dict[str, Any]:
        """The `command` object of the audit event."""
        return {
            "id": command_id,
            "action": action,
            "result": str(self.result),
            "code": str(self.code),
            "reason": self.detail,
        }


def reply_document(
    outcome: CommandOutcome, command_id: str | None, device: str, action: str | None
) -> bytes:
    """The reply to a command message, accepted or not."""
    doc: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "id": command_id,
        "device": device,
        "action": action,
        "result": str(outcome.result),
        "code": str(outcome.code),
        "reason": outcome.detail,
        "ts": rfc3339(time.time()),
    }
    if outcome.data:
        doc["data"] = dict(outcome.data)
    return orjson.dumps(doc)


def status_details(
    *,
    version: str,
    uptime: float,
    backlog: int,
    oldest_unsent_age: float | None,
    evicted: Mapping[str, int],
    lost_uncommitted: int,
    store_recovered: Mapping[str, Any] | None,
    publish_rate: float,
    refused: int,
    last_refusal: str | None,
    parked: int,
    status_topic_refused: str | None,
    devices: Mapping[str, tuple[bool | None, float, str]],
) -> dict[str, Any]:
    """What the `online` status adds: the gateway's health as the district sees it.

    `devices`: device id -> (online, since, reason).
    """
    return {
        "version": version,
        "uptime": round(uptime, 1),
        "backlog": backlog,
        "oldest_unsent_age": oldest_unsent_age,
        "evicted": dict(evicted),
        "lost_uncommitted": lost_uncommitted,
        "store_recovered": store_recovered,
        "publish_rate": publish_rate,
        "refused": {
            "count": refused,
            "last": last_refusal,
            "parked": parked,
            "status_topic": status_topic_refused,
        },
        "devices": {
            dev: {"online": online, "since": round(since, 3), "reason": reason}
            for dev, (online, since, reason) in sorted(devices.items())
        },
    }
