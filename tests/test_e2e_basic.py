"""End to end: a real agent process, a real mosquitto, a real subscriber."""

from __future__ import annotations

from tests.harness.agent import env_device, fence_device
from tests.harness.waiting import wait_for


def test_events_arrive_with_contract_topics(broker, subscribers, make_agent):
    sub = subscribers(broker)
    agent = make_agent(broker.url, env_device(rate=20) + fence_device(alarm_every="1s"))
    wait_for(
        lambda: len(sub.events("alarm")) >= 2 and len(sub.events("telemetry")) >= 20, 20, "events"
    )
    for m in sub.snapshot():
        parts = m.topic.split("/")
        assert parts[:4] == ["campus", "v1", "pt-023", "gw-main"]
        assert parts[4] in ("status", "telemetry", "alarm", "state")
    tele = sub.events("telemetry")[0]
    assert tele["device"] == "a101-env"
    assert tele["units"] == {"temperature": "°C", "humidity": "%RH", "co2": "ppm"}
    assert tele["location"] == {"building": "A", "floor": 1, "room": "101"}
    alarm = sub.events("alarm")[0]
    assert alarm["alarm"] == "zone_3"
    assert alarm["severity"] == "critical"
    assert alarm["state"] in ("active", "cleared")
    assert agent.terminate() == 0
