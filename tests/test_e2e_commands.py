"""Commands from the district: allowlisted, validated, expiring, replay-proof, audited."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.harness.agent import env_device, fence_device
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.slow

CMD = "campus/v1/pt-023/gw-main/cmd/"
REPLY = "campus/v1/pt-023/gw-main/cmd-reply/"


def now_iso(delta: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta)).isoformat().replace("+00:00", "Z")


def command(action: str, cid: str, **kw) -> bytes:
    return json.dumps({"id": cid, "action": action, "ts": now_iso(), **kw}).encode()


def replies(sub, cid=None):
    out = []
    for m in sub.snapshot():
        if "/cmd-reply/" in m.topic:
            doc = m.json()
            if cid is None or doc["id"] == cid:
                out.append(doc)
    return out


def wait_reply(sub, cid, timeout=10):
    return wait_for(lambda: replies(sub, cid), timeout, f"a reply to {cid}")[0]


def audits(sub):
    return [e["command"] for e in sub.events("audit")]


def test_allowlisted_command_is_carried_out_replied_and_audited(broker, subscribers, make_agent):
    sub = subscribers(broker, v5=True)
    agent = make_agent(broker.url, fence_device(alarm_every="1h"))
    agent.wait_status(lambda s: s["broker"]["connected"], 10, "connection")
    sub.publish(CMD + "north-fence", command("disarm", "cmd-disarm-0001"))
    r = wait_reply(sub, "cmd-disarm-0001")
    assert r["result"] == "ok" and r["code"] == "ok"
    assert r["data"]["armed"] is False
    wait_for(
        lambda: any(a["id"] == "cmd-disarm-0001" and a["result"] == "ok" for a in audits(sub)),
        10,
        "audit",
    )
    wait_for(
        lambda: any(e.get("armed") is False for e in sub.events("state")), 10, "armed=false state"
    )
    agent.wait_status(lambda s: s["commands"]["accepted"] == 1, 5, "accepted count")
    assert agent.terminate() == 0


HOSTILE = [
    (b"{not json", "malformed"),
    (b"[1, 2, 3]", "malformed"),
    (json.dumps({"id": "cmd-missing-action", "ts": now_iso()}).encode(), "invalid"),
    (json.dumps({"id": "x", "action": "arm", "ts": now_iso()}).encode(), "invalid"),
    (
        json.dumps(
            {"id": "cmd-extra-key-01", "action": "arm", "ts": now_iso(), "sudo": True}
        ).encode(),
        "invalid",
    ),
    (command("explode", "cmd-unsupported-01"), "unsupported"),
    (command("fail", "cmd-not-allowed-01"), "not_allowed"),
    (command("arm", "cmd-bad-args-0001", args={"force": True}), "bad_args"),
    (
        json.dumps({"id": "cmd-expired-00001", "action": "arm", "ts": now_iso(-3600)}).encode(),
        "expired",
    ),
    (
        json.dumps(
            {"id": "cmd-expired-00002", "action": "arm", "ts": now_iso(), "expires": now_iso(-5)}
        ).encode(),
        "expired",
    ),
    (
        json.dumps({"id": "cmd-future-000001", "action": "arm", "ts": now_iso(3600)}).encode(),
        "from_future",
    ),
    (b'{"id": "' + b"A" * 20000 + b'"}', "too_large"),
    # The contract says RFC 3339 text; a number of seconds is refused, not guessed at.
    (
        json.dumps({"id": "cmd-ts-number-01", "action": "arm", "ts": time.time()}).encode(),
        "invalid",
    ),
]


def test_hostile_and_malformed_commands_are_rejected_with_reasons(broker, subscribers, make_agent):
    sub = subscribers(broker)
    agent = make_agent(
        broker.url,
        env_device(rate=50) + fence_device(alarm_every="300ms"),
        allow='["fence.arm", "fence.disarm"]',
    )
    agent.wait_status(lambda s: s["broker"]["connected"], 10, "connection")
    for payload, _ in HOSTILE:
        sub.publish(CMD + "north-fence", payload)
    sub.publish(CMD + "no-such-device", command("arm", "cmd-unknown-dev-1"))
    sub.publish(CMD + "a101-env", command("arm", "cmd-env-cannot-arm"))
    expected = sorted([code for _, code in HOSTILE] + ["unknown_device", "unsupported"])
    wait_for(lambda: len(replies(sub)) >= len(expected), 15, "a reply to every command")
    got = sorted(r["code"] for r in replies(sub))
    assert got == expected
    assert all(r["result"] == "rejected" and r["reason"] for r in replies(sub))
    assert {r["device"] for r in replies(sub)} >= {"north-fence", "no-such-device"}
    unknown = next(m for m in sub.snapshot() if m.topic.endswith("/cmd-reply/_unknown"))
    assert unknown.json()["code"] == "unknown_device"
    st = agent.wait_status(
        lambda s: sum(s["commands"]["rejected"].values()) == len(expected), 5, "counts"
    )
    assert st["commands"]["rejected"]["malformed"] == 2
    assert st["commands"]["accepted"] == 0
    wait_for(lambda: len(audits(sub)) >= len(expected), 10, "an audit event for every command")
    assert agent.alive()
    # Nothing was lost while the agent was being attacked.
    last = agent.wait_status(lambda s: s["store"]["last_seq"] > 200, 20, "events")["store"][
        "last_seq"
    ]
    wait_for(lambda: {e["seq"] for e in sub.events()} >= set(range(1, last + 1)), 20, "every seq")
    assert agent.terminate() == 0


def test_replayed_command_is_rejected_even_after_restart(broker, subscribers, make_agent):
    sub = subscribers(broker)
    agent = make_agent(broker.url, fence_device(alarm_every="1h"))
    agent.wait_status(lambda s: s["broker"]["connected"], 10, "connection")
    payload = command("arm", "cmd-replay-000001")
    sub.publish(CMD + "north-fence", payload)
    assert wait_reply(sub, "cmd-replay-000001")["result"] == "ok"
    assert agent.terminate() == 0
    agent.start()
    agent.wait_status(
        lambda s: s["broker"]["connected"] and s["pid"] == agent.proc.pid, 10, "reconnect"
    )
    sub.publish(CMD + "north-fence", payload)
    wait_for(lambda: len(replies(sub, "cmd-replay-000001")) == 2, 10, "the second reply")
    assert replies(sub, "cmd-replay-000001")[1]["code"] == "replayed"
    assert agent.terminate() == 0


def test_failed_action_is_reported_as_failed(broker, subscribers, make_agent):
    sub = subscribers(broker)
    agent = make_agent(broker.url, fence_device(alarm_every="1h"))
    agent.wait_status(lambda s: s["broker"]["connected"], 10, "connection")
    sub.publish(CMD + "north-fence", command("fail", "cmd-fail-0000001"))
    r = wait_reply(sub, "cmd-fail-0000001")
    assert (r["result"], r["code"]) == ("failed", "action_failed")
    assert "refused" in r["reason"]
    assert agent.terminate() == 0


def test_mqtt5_response_topic_and_correlation_data(broker, subscribers, make_agent):
    sub = subscribers(broker, v5=True)
    agent = make_agent(
        broker.url,
        fence_device(alarm_every="1h"),
        allow='["fence.arm"]\nresponse_topics = "campus/district/replies/"',
    )
    agent.wait_status(lambda s: s["broker"]["connected"], 10, "connection")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "campus/district/replies/42"
    props.CorrelationData = b"corr-\x00\x01"
    sub.publish(CMD + "north-fence", command("arm", "cmd-v5-resp-0001"), properties=props)
    msg = wait_for(
        lambda: [m for m in sub.snapshot() if m.topic == "campus/district/replies/42"], 10, "reply"
    )[0]
    assert msg.json()["result"] == "ok"
    assert msg.properties.CorrelationData == b"corr-\x00\x01"
    assert replies(sub, "cmd-v5-resp-0001")  # also on the gateway's reply topic
    assert agent.terminate() == 0


def test_response_topic_outside_the_allowed_prefix_is_ignored_and_counted(
    broker, subscribers, make_agent
):
    """A request may not make the gateway publish on another gateway's alarm topic (#9)."""
    sub = subscribers(broker, v5=True)
    agent = make_agent(broker.url, fence_device(alarm_every="1h"))
    agent.wait_status(lambda s: s["broker"]["connected"], 10, "connection")
    hostile = "campus/v1/other/gw9/alarm/fence/x"
    own = REPLY + "north-fence/district-42"
    for cid, topic in (("cmd-hostile-rt-01", hostile), ("cmd-own-rt-000001", own)):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = topic
        sub.publish(CMD + "north-fence", command("arm", cid), properties=props)
        wait_reply(sub, cid)
    wait_for(lambda: [m for m in sub.snapshot() if m.topic == own], 10, "reply on its own topic")
    st = agent.wait_status(
        lambda s: s["commands"]["response_topics_refused"] == 1, 10, "refusal counted"
    )
    assert st["commands"]["accepted"] == 2
    assert [m for m in sub.snapshot() if m.topic == hostile] == []
    assert agent.terminate() == 0
