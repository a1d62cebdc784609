"""The JSON Schema (draft 2020-12) of every MQTT API v1 payload, built from the code.

Built from the enums, patterns and models that produce the payloads (agent.contract and the
models it names), so that the committed schema cannot drift from what the agent sends.
Never imported by the running agent.
"""

from __future__ import annotations

from typing import Any, get_args

from agent.commands import MAX_PAYLOAD, CommandRequest
from agent.config import TOPIC_SAFE
from agent.contract import (
    COMMAND_CODES,
    EVENT_KINDS,
    RETAINED,
    SCHEMA_VERSION,
    TOPIC_ROOT,
    Kind,
    Origin,
    Priority,
)
from agent.profiles import ID_PATTERN, NAME_PATTERN, Category, Severity
from agent.sample import Quality

Json = dict[str, Any]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"
SCHEMA_DIR = "schema"
ASYNCAPI_FILE = "asyncapi.yaml"

# What a card reader reports; a reader that decides nothing reports "read".
ACCESS_RESULTS = ("read", "granted", "denied")
CATEGORY_PATTERN = r"^[a-z][a-z0-9-]*$"
TS_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
VALUE: Json = {"type": ["number", "boolean", "string"]}
_T = Origin.template()  # the topics, with {school} and {gateway} placeholders


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
    common: Json = {
        "format": {
            "type": "string",
            "pattern": r"^[a-z0-9][a-z0-9_-]*$",
            "description": "Card/reader format, e.g. em4100, wiegand26, wiegand34, osdp-wiegand.",
        },
        "bits": {
            "type": "integer",
            "minimum": 1,
            "maximum": 512,
            "description": "The card number's length in bits as the reader reported it.",
        },
    }
    hashed: Json = {
        "type": "object",
        "properties": {
            "hash": {
                "type": "string",
                "pattern": "^[0-9a-f]{32}$",
                "description": "128 bits of HMAC-SHA256 of the canonical card number with the "
                "school's key (docs/privacy.md), hex.",
            },
            "key_id": {
                "type": "string",
                "pattern": r"^[A-Za-z0-9._-]{1,32}$",
                "description": "Which school key made the hash (rotation).",
            },
            **common,
        },
        "required": ["hash", "key_id", "format", "bits"],
        "additionalProperties": False,
    }
    raw: Json = {
        "type": "object",
        "properties": {
            "raw": {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "The card number itself, in decimal: only where the site "
                'config sets [privacy] card_id = "raw".',
            },
            **common,
        },
        "required": ["raw", "format", "bits"],
        "additionalProperties": False,
    }
    return {
        "card": {
            "oneOf": [hashed, raw],
            "description": "The card: hashed (the default) or, where the site says so, raw; "
            "never both.",
        },
        "result": {
            "enum": list(ACCESS_RESULTS),
            "description": "read: the reader only reported the card; granted/denied: the "
            "reader's controller decided.",
        },
        "reader": {
            "type": "string",
            "minLength": 1,
            "description": "Which reader head of the device read it.",
        },
        "reads": {
            "type": "integer",
            "minimum": 1,
            "description": "Reads of this card at this reader within [privacy] dedup_window "
            "(a card held on a reader is one swipe).",
        },
        "door": {
            "type": "string",
            "minLength": 1,
            "description": "The door or gate, from the device's config.",
        },
        "direction": {
            "enum": ["in", "out"],
            "description": "In or out, from the reader's config or the card data.",
        },
    }, ["card", "result", "reader", "reads"]


def _state_body() -> tuple[Json, list[str]]:
    return {
        "online": {"type": "boolean", "description": "Whether the device answers."},
        "reason": {"type": "string", "description": "Why it went offline (when it did)."},
        "alarm_storm": {
            "type": "boolean",
            "description": "Present while the device sends more alarm edges than "
            "[alarms] storm_rate allows (true), and once when that ends (false): its edges "
            "are coalesced, the latest of each alarm point sent every storm_report.",
        },
        "alarm_storm_edges": {
            "type": "integer",
            "minimum": 0,
            "description": "Alarm edges coalesced since the storm began.",
        },
        "alarm_storm_since": {
            "type": "number",
            "description": "When the storm began (Unix seconds).",
        },
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
            "signed_by": {
                "type": "string",
                "maxLength": 64,
                "description": "The id of the district key whose signature was verified "
                "(absent: the command was not signed).",
            },
            "dropped": {
                "type": "integer",
                "minimum": 1,
                "description": "code busy: how many commands this event sums up (dropped "
                "over the rate limit since the previous such event; id and action null).",
            },
        },
        "required": ["id", "action", "result", "code", "reason"],
        "additionalProperties": False,
        "allOf": rules,
    }
    return {"command": command}, ["command"]


BODIES = {
    Kind.TELEMETRY: (_telemetry_body, "A reading of a device's telemetry points."),
    Kind.ALARM: (_alarm_body, "An alarm edge: an alarm point became active or cleared."),
    Kind.ACCESS: (_access_body, "A card presented at a reader."),
    Kind.STATE: (_state_body, "A device's availability and what it reports about itself."),
    Kind.AUDIT: (_audit_body, "A command the gateway received, and what it did with it."),
}


def event_schema(kind: Kind) -> Json:
    """The schema of one event kind: the envelope and the body of that kind."""
    body, what = BODIES[kind]
    env_props, env_required = _envelope(kind)
    body_props, body_required = body()
    doc: Json = {
        "$schema": DIALECT,
        "title": f"{TOPIC_ROOT} {kind} event",
        "description": f"{what} Published on {_T.topic(kind, '{category}', '{device}')}, QoS 1, "
        f"retained: {'yes' if kind in RETAINED else 'no'}.",
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
        "title": f"{TOPIC_ROOT} gateway status",
        "description": f"Published retained on {_T.status_topic}, "
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
                "priority class: this is the loss a seq gap shows. audit: only beyond "
                "[store] audit_keep (audit events are never evicted for room).",
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
        "title": f"{TOPIC_ROOT} command request",
        "description": f"Sent by the district on {_T.command_topic('{device}')}, "
        f"at most [commands] max_payload bytes (default {MAX_PAYLOAD}). ts and expires are "
        "RFC 3339 date-time strings "
        "with an offset.",
    }


def command_reply_schema() -> Json:
    """The reply to every command message, accepted or not."""
    result, code, rules = _result_codes("ok: carried out; rejected: refused; failed: tried.")
    return {
        "$schema": DIALECT,
        "title": f"{TOPIC_ROOT} command reply",
        "description": f"Published on {_T.reply_topic('{device}')} "
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
