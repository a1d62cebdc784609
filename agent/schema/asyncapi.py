"""The AsyncAPI 3.0 document of the MQTT API's topics, from the gateway's point of view.

Channels are the topics agent.contract builds (with {school}/{gateway} placeholders);
messages point at the JSON Schemas and carry the examples. Never imported by the agent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

from agent.contract import EVENT_KINDS, RETAINED, SCHEMA_VERSION, TOPIC_ROOT, Origin
from agent.profiles import Category
from agent.schema.examples import EXAMPLES
from agent.schema.payloads import BODIES, SCHEMA_DIR, SCHEMA_FORMAT, event_file

Json = dict[str, Any]

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
    t = Origin.template()
    channels: Json = {
        "status": _channel(
            t.status_topic,
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
        _, what = BODIES[kind]
        channels[kind] = _channel(
            t.topic(kind, "{category}", "{device}"),
            kind,
            ["school", "gateway", "category", "device"],
            f"Events of kind {kind}. {what}",
        )
        operations[f"publish{kind.capitalize()}"] = _operation(
            "send", kind, kind, retain=kind in RETAINED, summary=f"Publish {kind} events."
        )
        messages[kind] = _message(kind, event_file(kind), f"{kind.capitalize()} event", what)
    channels["command"] = _channel(
        t.command_topic("{device}"),
        "commandRequest",
        ["school", "gateway", "device"],
        "Commands from the district; the gateway subscribes to cmd/+.",
    )
    channels["commandReply"] = _channel(
        t.reply_topic("{device}"),
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
            f"see docs/mqtt-api.md. Topic root {TOPIC_ROOT} (configurable prefix). Delivery is "
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
                            "topic": t.status_topic,
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
