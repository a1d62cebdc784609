"""The JSON Schema (draft 2020-12) of every MQTT API v1 payload, and the AsyncAPI document.

Built in code from the enums, patterns and models that produce the payloads, written to
`docs/` by `python -m agent.schema --write docs` and compared by `--check docs` (the schema
test does the same): a difference between the code and the committed contract is a version
change, never a silent one. This module never connects, publishes or reads device data.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from agent.commands import MAX_PAYLOAD, CommandRequest
from agent.config import TOPIC_SAFE
from agent.events import RETAINED, SCHEMA_VERSION, Kind, Priority
from agent.profiles import ID_PATTERN, NAME_PATTERN, Category, Severity
from agent.sample import Quality

Json = dict[str, Any]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"
SCHEMA_DIR = "schema"
ASYNCAPI_FILE = "asyncapi.yaml"
TOPIC_ROOT = "campus/v1"

# The order in which event kinds appear in the documents (telemetry first, as in DESIGN.md).
EVENT_KINDS = (Kind.TELEMETRY, Kind.ALARM, Kind.ACCESS, Kind.STATE, Kind.AUDIT)

# Command outcomes: the `result` of a reply or audit event, and the `code`s each result has.
COMMAND_CODES: dict[str, tuple[str, ...]] = {
    "ok": ("ok",),
    "rejected": (
        "malformed",
        "invalid",
        "too_large",
        "unknown_device",
        "unsupported",
        "not_allowed",
        "bad_args",
        "from_future",
        "expired",
        "replayed",
    ),
    "failed": ("action_failed", "timeout"),
}
# What a card reader reports; a reader that decides nothing reports "read".
ACCESS_RESULTS = ("read", "granted", "denied")
CATEGORY_PATTERN = r"^[a-z][a-z0-9-]*$"
TS_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
VALUE: Json = {"type": ["number", "boolean", "string"]}


def event_file(kind: Kind) -> str:
    """The schema file name of an event kind: 'event-telemetry.json'."""
    return f"event-{kind}.json"


def _rfc3339_ts(description: str) -> Json:
    return {
        "type": "string",
        "format": "date-time",
        "pattern": TS_PATTERN,
        "description": description,
    }


def _result_codes(description: str) -> tuple[Json, Json, list[Json]]:
    """`result` and `code` properties, and the rules that tie each code to its result."""
    result: Json = {"enum": list(COMMAND_CODES), "description": description}
    codes = [c for group in COMMAND_CODES.values() for c in group]
    code: Json = {"enum": codes, "description": "Why: one fixed code per outcome."}
    rules: list[Json] = [
        {
            "if": {"properties": {"result": {"const": res}}, "required": ["result"]},
            "then": {"properties": {"code": {"enum": list(group)}}},
        }
        for res, group in COMMAND_CODES.items()
    ]
    return result, code, rules


# ---- events -----------------------------------------------------------------------------


def _envelope(kind: Kind) -> tuple[Json, list[str]]:
    """The envelope's properties and required names, shared by every event kind."""
    audit = kind is Kind.AUDIT
    props: Json = {
        "v": {"const": SCHEMA_VERSION, "description": "Payload schema version."},
        "id": {
            "type": "string",
            "format": "uuid",
            "pattern": UUID_PATTERN,
            "description": "Unique event id (a UUIDv7), the same on every redelivery: "
            "consumers de-duplicate on it.",
        },
        "seq": {
            "type": "integer",
            "minimum": 1,
            "description": "Per-gateway sequence number, strictly increasing in creation "
            "order across restarts; a gap means events were lost.",
        },
        "ts": _rfc3339_ts(
            "When the reading (or command outcome) happened: RFC 3339 UTC with milliseconds."
        ),
        "school": {"type": "string", "pattern": TOPIC_SAFE, "description": "School code."},
        "gateway": {
            "type": "string",
            "pattern": TOPIC_SAFE,
            "description": "Gateway id, unique within the school.",
        },
        "device": (
            {
                "type": "string",
                "pattern": TOPIC_SAFE,
                "description": "The device the command was for, or the gateway id when the "
                "command named no device of this gateway.",
            }
            if audit
            else {
                "type": "string",
                "pattern": ID_PATTERN,
                "description": "Device id from the site config.",
            }
        ),
        "category": {
            "type": "string",
            "pattern": CATEGORY_PATTERN,
            "examples": [*get_args(Category), *(["gateway"] if audit else [])],
            "description": "The device profile's category"
            + (' ("gateway" when the command named no device).' if audit else "."),
        },
        "profile": {
            "type": "string",
            "pattern": ID_PATTERN,
            "description": "The device profile id"
            + (' ("gateway" when the command named no device).' if audit else "."),
        },
        "kind": {"const": str(kind), "description": "The event kind (also in the topic)."},
        "location": {
            "type": "object",
            "minProperties": 1,
            "properties": {
                "building": {"type": ["string", "integer"]},
                "floor": {"type": ["string", "integer"]},
                "room": {"type": ["string", "integer"]},
            },
            "additionalProperties": {"type": ["string", "integer"]},
            "description": "Where the device is, from the site config (building, floor, room).",
        },
        "clock": {
            "const": "unsynced",
            "description": "Present only when the gateway's clock was not known to be "
            "synchronised when the event was stamped.",
        },
    }
    required = ["v", "id", "seq", "ts", "school", "gateway", "device", "category", "profile"]
    return props, [*required, "kind"]


def _telemetry_body() -> tuple[Json, list[str]]:
    return {
        "values": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": NAME_PATTERN},
            "additionalProperties": VALUE,
            "description": "Point name -> value, scaled to its unit.",
        },
        "units": {
            "type": "object",
            "propertyNames": {"pattern": NAME_PATTERN},
            "additionalProperties": {"type": "string"},
            "description": "Point name -> unit, for the values that have one.",
        },
        "quality": {
            "enum": [str(q) for q in Quality],
            "description": "How far the reading can be trusted.",
        },
    }, ["values", "units", "quality"]


def _alarm_body() -> tuple[Json, list[str]]:
    return {
        "alarm": {"type": "string", "pattern": NAME_PATTERN, "description": "Alarm point."},
        "state": {"enum": ["active", "cleared"], "description": "The edge: raised or cleared."},
        "severity": {"enum": list(get_args(Severity)), "description": "From the profile."},
        "zone": {"type": "string", "description": "The zone an operator sees, if any."},
        "value": {**VALUE, "description": "The reading that caused the edge."},
    }, ["alarm", "state", "severity", "value"]


def _access_body() -> tuple[Json, list[str]]:
    card: Json = {
        "type": "object",
        "properties": {
            "hash": {
                "type": "string",
                "minLength": 1,
                "description": "Keyed hash (HMAC with the school's secret) of the card number.",
            },
            "format": {
                "type": "string",
                "pattern": r"^[a-z0-9][a-z0-9_-]*$",
                "description": "Card/reader format, e.g. em4100, wiegand26, wiegand34, osdp.",
            },
            "raw": {
                "type": "string",
                "minLength": 1,
                "description": "The card number itself: only where the site config sets "
                'privacy.card_id = "raw".',
            },
        },
        "required": ["hash", "format"],
        "additionalProperties": False,
    }
    return {
        "card": card,
        "result": {
            "enum": list(ACCESS_RESULTS),
            "description": "read: the reader only reported the card; granted/denied: the "
            "reader's controller decided.",
        },
        "reader": {
            "type": "string",
            "minLength": 1,
            "description": "Which reader (head, door, direction) of the device read it.",
        },
    }, ["card", "result", "reader"]


def _state_body() -> tuple[Json, list[str]]:
    return {
        "online": {"type": "boolean", "description": "Whether the device answers."},
        "reason": {"type": "string", "description": "Why it went offline (when it did)."},
    }, ["online"]


def _audit_body() -> tuple[Json, list[str]]:
    result, code, rules = _result_codes("ok: carried out; rejected: refused; failed: tried.")
    command: Json = {
        "type": "object",
        "properties": {
            "id": {"type": ["string", "null"], "description": "The request id (null if none)."},
            "action": {"type": ["string", "null"], "description": "The requested action."},
            "result": result,
            "code": code,
            "reason": {"type": "string", "description": "Human-readable detail."},
            "requested_device": {
                "type": "string",
                "maxLength": 64,
                "description": "The device the topic named, when it is not on this gateway.",
            },
        },
        "required": ["id", "action", "result", "code", "reason"],
        "additionalProperties": False,
        "allOf": rules,
    }
    return {"command": command}, ["command"]


_BODIES = {
    Kind.TELEMETRY: (_telemetry_body, "A reading of a device's telemetry points."),
    Kind.ALARM: (_alarm_body, "An alarm edge: an alarm point became active or cleared."),
    Kind.ACCESS: (_access_body, "A card presented at a reader."),
    Kind.STATE: (_state_body, "A device's availability and what it reports about itself."),
    Kind.AUDIT: (_audit_body, "A command the gateway received, and what it did with it."),
}


def event_schema(kind: Kind) -> Json:
    """The schema of one event kind: the envelope and the body of that kind."""
    body, what = _BODIES[kind]
    env_props, env_required = _envelope(kind)
    body_props, body_required = body()
    doc: Json = {
        "$schema": DIALECT,
        "title": f"campus/v1 {kind} event",
        "description": f"{what} Published on {TOPIC_ROOT}/{{school}}/{{gateway}}/{kind}/"
        f"{{category}}/{{device}}, QoS 1, retained: {'yes' if kind in RETAINED else 'no'}.",
        "type": "object",
        "properties": {**env_props, **body_props},
        "required": [*env_required, *body_required],
        # State events carry whatever the device reports about itself (firmware, battery...).
        "additionalProperties": VALUE if kind is Kind.STATE else False,
    }
    return doc


# ---- status and commands ------------------------------------------------------------------


def status_schema() -> Json:
    """The retained gateway status, and the last-will / clean-stop "offline" form of it."""
    base = ["v", "state", "school", "gateway"]
    online = [
        "ts",
        "version",
        "uptime",
        "backlog",
        "oldest_unsent_age",
        "evicted",
        "publish_rate",
        "refused",
        "devices",
    ]
    count: Json = {"type": "integer", "minimum": 0}
    device: Json = {
        "type": "object",
        "properties": {
            "online": {
                "type": ["boolean", "null"],
                "description": "null until the device was first heard from or given up on.",
            },
            "since": {"type": "number", "description": "Since when (Unix seconds)."},
            "reason": {"type": "string", "description": "Why it is offline, else empty."},
        },
        "required": ["online", "since", "reason"],
        "additionalProperties": False,
    }
    return {
        "$schema": DIALECT,
        "title": "campus/v1 gateway status",
        "description": f"Published retained on {TOPIC_ROOT}/{{school}}/{{gateway}}/status, "
        'QoS 1. The last-will publishes the "offline" form (v, state, school, gateway); '
        "a clean stop adds ts.",
        "type": "object",
        "properties": {
            "v": {"const": SCHEMA_VERSION},
            "state": {"enum": ["online", "offline"]},
            "school": {"type": "string", "pattern": TOPIC_SAFE},
            "gateway": {"type": "string", "pattern": TOPIC_SAFE},
            "ts": {
                "type": "number",
                "description": "When the document was built, Unix seconds (the last-will "
                "has no ts: the broker sends it when the connection is lost).",
            },
            "version": {"type": "string", "description": "Agent version."},
            "uptime": {"type": "number", "minimum": 0, "description": "Seconds."},
            "backlog": {**count, "description": "Events stored and not yet acknowledged."},
            "oldest_unsent_age": {
                "type": ["number", "null"],
                "description": "Age in seconds of the oldest unsent event; null when none.",
            },
            "evicted": {
                "type": "object",
                "properties": {p.name.lower(): count for p in Priority},
                "required": [p.name.lower() for p in Priority],
                "additionalProperties": False,
                "description": "Events evicted from a full store since it was created, by "
                "priority class (audit counts as access): this is the loss a seq gap shows.",
            },
            "lost_uncommitted": {
                **count,
                "description": "Events dropped before they were committed (the disk refused "
                "writes and memory filled): they never got a seq, so no gap shows them.",
            },
            "store_recovered": {
                "type": ["object", "null"],
                "description": "Set when a damaged store was moved aside at start-up: "
                "{at, reason, moved_to}. What it held is lost; seq jumps forward.",
            },
            "publish_rate": {
                "type": "number",
                "minimum": 0,
                "description": "Acknowledged events per second, smoothed.",
            },
            "refused": {
                "type": "object",
                "properties": {
                    "count": {**count, "description": "Events the broker refused (MQTT 5)."},
                    "last": {"type": ["string", "null"]},
                    "parked": {**count, "description": "Refused events kept in the store."},
                    "status_topic": {
                        "type": ["string", "null"],
                        "description": "Why the broker refused this status topic, if it did.",
                    },
                },
                "required": ["count", "last", "parked", "status_topic"],
                "additionalProperties": False,
            },
            "devices": {
                "type": "object",
                "propertyNames": {"pattern": ID_PATTERN},
                "additionalProperties": device,
                "description": "Device id -> availability.",
            },
        },
        "required": base,
        "additionalProperties": False,
        "if": {"properties": {"state": {"const": "online"}}, "required": ["state"]},
        "then": {"required": online},
        "else": {"propertyNames": {"enum": [*base, "ts"]}},
    }


def command_request_schema() -> Json:
    """The command a district sends: CommandRequest's own schema, with the dialect."""
    model = CommandRequest.model_json_schema()
    return {
        **model,
        "$schema": DIALECT,
        "title": "campus/v1 command request",
        "description": f"Sent by the district on {TOPIC_ROOT}/{{school}}/{{gateway}}/cmd/"
        f"{{device}}, at most {MAX_PAYLOAD} bytes. ts and expires are RFC 3339 date-times "
        "with an offset.",
    }


def command_reply_schema() -> Json:
    """The reply to every command message, accepted or not."""
    result, code, rules = _result_codes("ok: carried out; rejected: refused; failed: tried.")
    return {
        "$schema": DIALECT,
        "title": "campus/v1 command reply",
        "description": f"Published on {TOPIC_ROOT}/{{school}}/{{gateway}}/cmd-reply/{{device}} "
        "(device '_unknown' when the topic named no device of this gateway), QoS 1, not "
        "retained; also on the MQTT 5 response topic, with the correlation data, when given.",
        "type": "object",
        "properties": {
            "v": {"const": SCHEMA_VERSION},
            "id": {
                "type": ["string", "null"],
                "description": "The request's id; null when the request could not be parsed.",
            },
            "device": {"type": "string", "description": "The device named by the topic."},
            "action": {
                "type": ["string", "null"],
                "description": "The request's action; null when it could not be parsed.",
            },
            "result": result,
            "code": code,
            "reason": {"type": "string", "description": "Human-readable detail."},
            "ts": _rfc3339_ts("When the reply was made."),
            "data": {
                "type": "object",
                "additionalProperties": VALUE,
                "description": "What the device reported after the action (result ok only).",
            },
        },
        "required": ["v", "id", "device", "action", "result", "code", "reason", "ts"],
        "additionalProperties": False,
        "allOf": rules,
    }


def schemas() -> dict[str, Json]:
    """Every payload's schema, by file name."""
    out = {event_file(k): event_schema(k) for k in EVENT_KINDS}
    out["status.json"] = status_schema()
    out["command-request.json"] = command_request_schema()
    out["command-reply.json"] = command_reply_schema()
    return out


# ---- examples -----------------------------------------------------------------------------

_WHERE = {"school": "pt-023", "gateway": "gw-main"}
_FENCE = {
    **_WHERE,
    "device": "north-fence",
    "category": "fence",
    "profile": "generic-di8-fence",
}

EXAMPLES: dict[str, list[Json]] = {
    "event-telemetry.json": [
        {
            "v": 1,
            "id": "01a20896-3f88-7786-a20e-a004d989f408",
            "seq": 48213,
            "ts": "2026-11-23T13:26:34.120Z",
            **_WHERE,
            "device": "a101-env",
            "category": "env",
            "profile": "xy-md02",
            "kind": "telemetry",
            "location": {"building": "A", "floor": 1, "room": "101"},
            "values": {"temperature": 22.4, "humidity": 48.1},
            "units": {"temperature": "°C", "humidity": "%RH"},
            "quality": "good",
        }
    ],
    "event-alarm.json": [
        {
            "v": 1,
            "id": "01a20896-335c-709e-b238-6e52439449ef",
            "seq": 48210,
            "ts": "2026-11-23T13:26:31.004Z",
            **_FENCE,
            "kind": "alarm",
            "alarm": "zone_3",
            "state": "active",
            "severity": "critical",
            "zone": "3",
            "value": True,
        }
    ],
    "event-access.json": [
        {
            "v": 1,
            "id": "01a20896-ae97-74f2-a5c3-eeb79a864992",
            "seq": 48240,
            "ts": "2026-11-23T13:27:02.551Z",
            **_WHERE,
            "device": "main-gate-reader",
            "category": "card",
            "profile": "rdm6300",
            "kind": "access",
            "card": {"hash": "5f0c2e9a41d7b3c8e6a1f4d2b9c07e35", "format": "em4100"},
            "result": "read",
            "reader": "entrance",
        }
    ],
    "event-state.json": [
        {
            "v": 1,
            "id": "01a20896-ccdc-765f-828f-abfeddf67070",
            "seq": 48244,
            "ts": "2026-11-23T13:27:10.300Z",
            **_FENCE,
            "kind": "state",
            "online": False,
            "armed": True,
            "reason": "ModbusTimeoutError: no answer from unit 1",
        }
    ],
    "event-audit.json": [
        {
            "v": 1,
            "id": "01a20897-8f12-7528-924c-d2c5d63bd102",
            "seq": 48301,
            "ts": "2026-11-23T13:28:00.018Z",
            **_FENCE,
            "kind": "audit",
            "command": {
                "id": "dist-20261123-000042",
                "action": "arm",
                "result": "ok",
                "code": "ok",
                "reason": "done",
            },
        }
    ],
    "status.json": [
        {
            "v": 1,
            "state": "online",
            **_WHERE,
            "ts": 1795440480.2,
            "version": "0.1.0",
            "uptime": 86412.5,
            "backlog": 3,
            "oldest_unsent_age": 0.4,
            "evicted": {"alarm": 0, "access": 0, "state": 0, "telemetry": 0},
            "publish_rate": 41.3,
            "lost_uncommitted": 0,
            "store_recovered": None,
            "refused": {"count": 0, "last": None, "parked": 0, "status_topic": None},
            "devices": {
                "a101-env": {"online": True, "since": 1795354068.1, "reason": ""},
                "north-fence": {"online": True, "since": 1795354068.3, "reason": ""},
            },
        },
        {"v": 1, "state": "offline", **_WHERE},
    ],
    "command-request.json": [
        {
            "id": "dist-20261123-000042",
            "action": "arm",
            "args": {},
            "ts": "2026-11-23T13:27:59Z",
            "expires": "2026-11-23T13:28:59Z",
        }
    ],
    "command-reply.json": [
        {
            "v": 1,
            "id": "dist-20261123-000042",
            "device": "north-fence",
            "action": "arm",
            "result": "ok",
            "code": "ok",
            "reason": "done",
            "ts": "2026-11-23T13:28:00.018Z",
            "data": {"armed": True},
        },
        {
            "v": 1,
            "id": "dist-20261123-000043",
            "device": "north-fence",
            "action": "erase",
            "result": "rejected",
            "code": "unsupported",
            "reason": "profile 'generic-di8-fence' declares no action 'erase'",
            "ts": "2026-11-23T13:28:05.120Z",
        },
    ],
}


# ---- AsyncAPI -----------------------------------------------------------------------------

_PARAMS: dict[str, Json] = {
    "school": {"description": "District-assigned school code ([agent] school)."},
    "gateway": {"description": "Gateway id, unique within the school ([agent] gateway)."},
    "category": {
        "description": "The device profile's category.",
        "examples": list(get_args(Category)),
    },
    "device": {"description": "Device id from the site config."},
}
_BINDING_VERSION = "0.2.0"


def _ref(pointer: str) -> Json:
    return {"$ref": pointer}


def _message(name: str, file: str, title: str, summary: str) -> Json:
    msg: Json = {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "payload": {"schemaFormat": SCHEMA_FORMAT, "schema": _ref(f"./{SCHEMA_DIR}/{file}")},
        "examples": [
            {"name": f"{name}-{i + 1}", "payload": ex} for i, ex in enumerate(EXAMPLES[file])
        ],
    }
    return msg


def _channel(address: str, message: str, params: Sequence[str], description: str) -> Json:
    return {
        "address": address,
        "description": description,
        "parameters": {p: _PARAMS[p] for p in params},
        "messages": {message: _ref(f"#/components/messages/{message}")},
    }


def _operation(action: str, channel: str, message: str, *, retain: bool, summary: str) -> Json:
    return {
        "action": action,
        "summary": summary,
        "channel": _ref(f"#/channels/{channel}"),
        "messages": [_ref(f"#/channels/{channel}/messages/{message}")],
        "bindings": {"mqtt": {"qos": 1, "retain": retain, "bindingVersion": _BINDING_VERSION}},
    }


def asyncapi() -> Json:
    """The AsyncAPI 3.0 document of the topics, from the gateway's point of view."""
    base = f"{TOPIC_ROOT}/{{school}}/{{gateway}}"
    channels: Json = {
        "status": _channel(
            f"{base}/status",
            "status",
            ["school", "gateway"],
            "Gateway status, retained; the last-will sets it to offline.",
        )
    }
    operations: Json = {
        "publishStatus": _operation(
            "send", "status", "status", retain=True, summary="Publish the gateway status."
        )
    }
    messages: Json = {
        "status": _message(
            "status", "status.json", "Gateway status", "Retained status, or the last-will."
        )
    }
    for kind in EVENT_KINDS:
        _, what = _BODIES[kind]
        channels[kind] = _channel(
            f"{base}/{kind}/{{category}}/{{device}}",
            kind,
            ["school", "gateway", "category", "device"],
            f"Events of kind {kind}. {what}",
        )
        operations[f"publish{kind.capitalize()}"] = _operation(
            "send", kind, kind, retain=kind in RETAINED, summary=f"Publish {kind} events."
        )
        messages[kind] = _message(kind, event_file(kind), f"{kind.capitalize()} event", what)
    channels["command"] = _channel(
        f"{base}/cmd/{{device}}",
        "commandRequest",
        ["school", "gateway", "device"],
        "Commands from the district; the gateway subscribes to cmd/+.",
    )
    channels["commandReply"] = _channel(
        f"{base}/cmd-reply/{{device}}",
        "commandReply",
        ["school", "gateway", "device"],
        "The reply to every command message ('_unknown' when the device is not on the "
        "gateway). It is also sent to the MQTT 5 response topic of the request, with its "
        "correlation data, when the request carries one.",
    )
    receive = _operation(
        "receive",
        "command",
        "commandRequest",
        retain=False,
        summary="Receive a command, check it, carry it out, reply and audit it.",
    )
    receive["reply"] = {
        "channel": _ref("#/channels/commandReply"),
        "messages": [_ref("#/channels/commandReply/messages/commandReply")],
    }
    operations["receiveCommand"] = receive
    operations["publishCommandReply"] = _operation(
        "send", "commandReply", "commandReply", retain=False, summary="Reply to a command."
    )
    request = _message(
        "commandRequest",
        "command-request.json",
        "Command request",
        "An allowlisted, time-limited, de-duplicated request for an action.",
    )
    request["bindings"] = {
        "mqtt": {
            "responseTopic": {"type": "string", "description": "Optional (MQTT 5)."},
            "correlationData": {"type": "string", "description": "Echoed in the reply."},
            "bindingVersion": _BINDING_VERSION,
        }
    }
    messages["commandRequest"] = request
    messages["commandReply"] = _message(
        "commandReply", "command-reply.json", "Command reply", "The outcome of one command."
    )
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Campus edge agent MQTT API",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": "The contract between a school gateway and the district platform: "
            "see docs/mqtt-api.md. Topic root campus/v1 (configurable prefix). Delivery is "
            "QoS 1, at-least-once: de-duplicate events on id. Any change to this document "
            "or to the schemas is a version change.",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "district": {
                "host": "{broker}",
                "protocol": "secure-mqtt",
                "protocolVersion": "5.0",
                "description": "The district broker: TLS with client certificates; MQTT 5, "
                "with MQTT 3.1.1 as a fallback (no response topic, no refusal codes).",
                "variables": {
                    "broker": {
                        "default": "broker.edu.example:8883",
                        "description": "Host and port of the district broker.",
                    }
                },
                "bindings": {
                    "mqtt": {
                        "cleanSession": True,
                        "lastWill": {
                            "topic": f"{base}/status",
                            "qos": 1,
                            "retain": True,
                            "message": '{"v":1,"state":"offline","school":…,"gateway":…}',
                        },
                        "bindingVersion": _BINDING_VERSION,
                    }
                },
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


# ---- YAML and files ---------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _yaml_key(key: str) -> str:
    if _PLAIN_KEY.match(key) and key.lower() not in _YAML_WORDS:
        return key
    return json.dumps(key, ensure_ascii=False)


def _yaml_inline(value: Any) -> str:
    # JSON scalars (strings always double-quoted) are valid YAML 1.2 and never ambiguous.
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(value, ensure_ascii=False)


def _yaml_lines(value: Any, depth: int) -> list[str]:
    pad = "  " * depth
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{_yaml_key(key)}:")
                lines.extend(_yaml_lines(item, depth + 1))
            else:
                lines.append(f"{pad}{_yaml_key(key)}: {_yaml_inline(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                sub = _yaml_lines(item, depth + 1)
                lines.append(f"{pad}- {sub[0][len(pad) + 2 :]}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {_yaml_inline(item)}")
    else:
        lines.append(pad + _yaml_inline(value))
    return lines


def to_yaml(doc: Json) -> str:
    """Block-style YAML of a JSON document (no YAML library needed)."""
    return "\n".join(_yaml_lines(doc, 0)) + "\n"


def rendered() -> dict[str, str]:
    """Every generated file's text, by path relative to the docs directory."""
    out = {
        f"{SCHEMA_DIR}/{name}": json.dumps(doc, indent=2, sort_keys=True) + "\n"
        for name, doc in schemas().items()
    }
    out[ASYNCAPI_FILE] = (
        "# Generated by `python -m agent.schema --write docs`: do not edit by hand.\n"
        + to_yaml(asyncapi())
    )
    return out


def write_docs(directory: Path) -> list[Path]:
    """Write every generated file under `directory`; return the paths written."""
    written = []
    for rel, text in rendered().items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def check_docs(directory: Path) -> list[str]:
    """The files under `directory` that differ from the generated ones (or are missing/extra)."""
    expected = rendered()
    problems = []
    for rel, text in expected.items():
        path = directory / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from the code")
    schema_dir = directory / SCHEMA_DIR
    if schema_dir.is_dir():
        for path in sorted(schema_dir.glob("*.json")):
            if f"{SCHEMA_DIR}/{path.name}" not in expected:
                problems.append(f"{path}: not generated by the code (remove it)")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m agent.schema --write DIR | --check DIR`."""
    parser = argparse.ArgumentParser(
        prog="python -m agent.schema",
        description="Generate or check the MQTT API's JSON Schemas and AsyncAPI document.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", metavar="DIR", type=Path, help="write DIR/schema/*.json ...")
    mode.add_argument("--check", metavar="DIR", type=Path, help="exit 1 if DIR is out of date")
    args = parser.parse_args(argv)
    if args.write is not None:
        for path in write_docs(args.write):
            sys.stdout.write(f"wrote {path}\n")
        return 0
    problems = check_docs(args.check)
    for line in problems:
        sys.stderr.write(line + "\n")
    if problems:
        sys.stderr.write(
            "the MQTT API documents do not match the code: a change to the contract is a "
            "version change; if it is intended, run `python -m agent.schema --write docs`\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
