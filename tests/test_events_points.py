"""Event encoding and point semantics: pure code, real profiles."""

from __future__ import annotations

import json
import math
from pathlib import Path

from agent.events import Kind, NewEvent, Origin, encode, rfc3339, uuid7
from agent.points import DevicePoints
from agent.profiles import load_profile_file
from agent.sample import BoundDevice, Quality, Sample

PROFILES = Path(__file__).parent.parent / "device_profiles"
ORIGIN = Origin("campus/v1", "pt-023", "gw-main")


def fence() -> DevicePoints:
    p = load_profile_file(PROFILES / "synthetic" / "synthetic-fence.toml")
    return DevicePoints(BoundDevice("north-fence", p, "sim", None, 1.0))


def test_uuid7_layout():
    u = uuid7(1_700_000_000_123)
    assert u[14] == "7"
    assert u[19] in "89ab"
    assert int(u.replace("-", "")[:12], 16) == 1_700_000_000_123
    assert uuid7() != uuid7()


def test_rfc3339_has_milliseconds_and_z():
    assert rfc3339(1_795_440_480.2505) == "2026-11-23T13:28:00.250Z"


def test_alarm_edges_only_on_change():
    pts = fence()
    kinds = []
    for t, active in enumerate([False, False, True, True, False, True]):
        for e in pts.events(Sample("north-fence", 1000.0 + t, {"zone_3": active})):
            kinds.append((e.kind, e.body.get("state")))
    assert kinds == [(Kind.ALARM, "active"), (Kind.ALARM, "cleared"), (Kind.ALARM, "active")]


def test_state_event_carries_whole_state_and_telemetry_units():
    pts = fence()
    out = pts.events(Sample("north-fence", 1.0, {"voltage": 8.1, "armed": True}))
    tele = next(e for e in out if e.kind == Kind.TELEMETRY)
    assert tele.body == {"values": {"voltage": 8.1}, "units": {"voltage": "kV"}, "quality": "good"}
    state = next(e for e in out if e.kind == Kind.STATE)
    assert state.body == {"online": True, "armed": True}
    off = pts.availability(2.0, online=False, reason="timeout", info={})
    assert off.body == {"online": False, "armed": True, "reason": "timeout"}


def test_non_finite_reading_becomes_null_with_bad_quality():
    pts = fence()
    (tele,) = pts.events(Sample("north-fence", 1.0, {"voltage": math.nan}))
    assert tele.body["values"] == {"voltage": None}
    assert tele.body["quality"] == Quality.BAD


def test_device_values_cannot_overwrite_the_envelope():
    ev = NewEvent(
        Kind.STATE, "d", "env", "p", 1.0, {"online": True, "seq": 999, "id": "x", "ok": 1}
    )
    doc = json.loads(encode(ORIGIN, ev, 7, "id-7"))
    assert doc["seq"] == 7
    assert doc["id"] == "id-7"
    assert doc["ok"] == 1


def test_unknown_points_are_counted_not_published():
    pts = fence()
    out = pts.events(Sample("north-fence", 1.0, {"voltage": 8.0, "bogus": 1}))
    assert pts.unknown_points == 1
    assert all("bogus" not in json.dumps(e.body) for e in out)
