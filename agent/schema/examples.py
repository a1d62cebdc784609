"""Example payloads of every schema: shown in the AsyncAPI document and validated by the tests.

Never imported by the running agent.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

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
            "card": {
                "hash": "5f0c2e9a41d7b3c8e6a1f4d2b9c07e35",
                "key_id": "pt-023-2026a",
                "format": "em4100",
                "bits": 40,
            },
            "result": "read",
            "reader": "main",
            "reads": 2,
            "door": "main-gate",
            "direction": "in",
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
            "version": "0.2.0",
            "uptime": 86412.5,
            "backlog": 3,
            "oldest_unsent_age": 0.4,
            "evicted": {"alarm": 0, "access": 0, "state": 0, "telemetry": 0, "audit": 0},
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
