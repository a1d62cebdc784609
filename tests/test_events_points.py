"""Event encoding and point semantics: pure code, real profiles."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

from agent.contract import Kind, NewEvent, Origin, encode, rfc3339, uuid7
from agent.points import DevicePoints, StormLimit
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


def _inline(points: str, defaults: str = "") -> DevicePoints:
    import tomllib

    from agent.profiles import parse_profile

    text = 'id = "t"\nvendor = "v"\nmodel = "m"\ncategory = "env"\ndriver = "synthetic"\nsource = "s"\n'
    text += f"[defaults]\n{defaults}\n{points}"
    return DevicePoints(
        BoundDevice("d", parse_profile(tomllib.loads(text), "inline"), "sim", None, 1.0)
    )


def test_report_by_exception_deadband_and_heartbeat():
    pts = _inline('[[points]]\nname = "t"\nunit = "°C"\ndeadband = 0.5\n', 'heartbeat = "60s"')
    sent = []
    for ts, v in [(0, 20.0), (1, 20.2), (2, 20.4), (3, 20.6), (4, 20.7), (70, 20.7), (71, 20.7)]:
        for e in pts.events(Sample("d", float(ts), {"t": v})):
            sent.append((ts, e.body["values"]["t"]))
    # 20.2 and 20.4 are within 0.5 of 20.0; 20.6 is not; 20.7 is within 0.5 of 20.6;
    # at 70 s the heartbeat sends the unchanged value.
    assert sent == [(0, 20.0), (3, 20.6), (70, 20.7)]
    assert pts.suppressed == 4


def test_chattering_zone_does_not_flood_with_debounce():
    pts = _inline('[[points]]\nname = "zone"\nkind = "alarm"\ndebounce = "2s"\n')
    edges = []
    t = 0.0
    for _ in range(20):  # 0.5 s on, 0.5 s off: chatter
        for active in (True, False):
            edges += [e.body["state"] for e in pts.events(Sample("d", t, {"zone": active}))]
            t += 0.5
    assert edges == []
    for _ in range(6):  # then a real alarm, held 3 s
        edges += [e.body["state"] for e in pts.events(Sample("d", t, {"zone": True}))]
        t += 0.5
    assert edges == ["active"]


def test_failed_read_reports_bad_quality_once():
    pts = _inline('[[points]]\nname = "t"\n')
    out = pts.events(Sample("d", 0.0, {"t": 1.0}))
    assert out[0].body["quality"] == "good"
    bad1 = pts.events(Sample("d", 1.0, {}, Quality.BAD))
    bad2 = pts.events(Sample("d", 2.0, {}, Quality.BAD))
    assert [e.body for e in bad1] == [{"values": {}, "units": {}, "quality": "bad"}]
    assert bad2 == []
    back = pts.events(Sample("d", 3.0, {"t": 1.0}))
    assert back[0].body["quality"] == "good", "the first good reading after a failure is sent"


def test_an_alarm_storm_is_coalesced_first_and_latest_edges_kept():
    """A flapping node sent 74k critical alarms in 15 s and starved the other buses: above
    the storm rate a device's edges are held, the latest of each point sent every report
    interval with a state event counting them, and the end of the storm said."""
    p = load_profile_file(PROFILES / "synthetic" / "synthetic-fence.toml")
    limit = StormLimit(rate=2.0, burst=3, report=1.0)
    pts = DevicePoints(BoundDevice("north-fence", p, "sim", None, 1.0), limit)
    out: list[NewEvent] = []
    t = 1000.0
    pts.events(Sample("north-fence", t, {"zone_3": False}))  # the baseline
    for i in range(1000):  # 1000 edges in 2 s: a flapping zone
        t += 0.002
        out += pts.events(Sample("north-fence", t, {"zone_3": i % 2 == 0}))
    alarms = [e for e in out if e.kind is Kind.ALARM]
    storm = [e.body for e in out if e.kind is Kind.STATE]
    # The burst went out as edges; then the storm: held, the latest sent once a second.
    assert [a.body["state"] for a in alarms[:3]] == ["active", "cleared", "active"]
    assert len(alarms) <= 3 + 2  # the burst, and at most one latest edge per report
    assert storm[0]["alarm_storm"] is True
    assert all(s["alarm_storm"] for s in storm)
    # The zone stops flapping (last edge: cleared at i = 999); time passes without edges.
    for _ in range(5):
        t += 1.0
        out += pts.events(Sample("north-fence", t, {"zone_3": False}))
    alarms = [e for e in out if e.kind is Kind.ALARM]
    storm = [e.body for e in out if e.kind is Kind.STATE]
    assert storm[-1]["alarm_storm"] is False
    assert storm[-1]["alarm_storm_edges"] == 1000 - 3
    # What the district saw last is what the zone is: cleared.
    assert alarms[-1].body["state"] == "cleared"
    # Edges alternate as sent: never the same state twice in a row.
    states = [a.body["state"] for a in alarms]
    assert all(a != b for a, b in itertools.pairwise(states))
    # After the storm, an edge goes out at once again.
    t += 1.0
    after = pts.events(Sample("north-fence", t, {"zone_3": True}))
    assert [e.body["state"] for e in after if e.kind is Kind.ALARM] == ["active"]


def test_a_held_storm_edge_is_sent_by_the_timer_when_samples_stop():
    """The last edge of a storm must not wait for a sample that may never come."""
    p = load_profile_file(PROFILES / "synthetic" / "synthetic-fence.toml")
    pts = DevicePoints(BoundDevice("north-fence", p, "sim", None, 1.0), StormLimit(1.0, 1, 5.0))
    pts.events(Sample("north-fence", 0.0, {"zone_3": False}))
    first = pts.events(Sample("north-fence", 0.01, {"zone_3": True}))
    held = pts.events(Sample("north-fence", 0.02, {"zone_3": False}))
    held += pts.events(Sample("north-fence", 0.03, {"zone_3": True}))
    held += pts.events(Sample("north-fence", 0.04, {"zone_3": False}))  # the node goes silent
    assert [e.body["state"] for e in first if e.kind is Kind.ALARM] == ["active"]
    assert not [e for e in held if e.kind is Kind.ALARM]
    later = pts.tick(10.0)  # the runtime's timer
    assert [e.body["state"] for e in later if e.kind is Kind.ALARM] == ["cleared"]
    assert later[-1].body["alarm_storm"] is False
