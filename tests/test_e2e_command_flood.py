"""The command channel under abuse: floods, oversize packets, foreign topics (issue #9).

Each test reproduces an attack against the real agent and a real mosquitto: before the
command gate, 100k one-byte commands made 100k tasks, replies and audit events, and a 200 MB
command was read whole before its size was checked.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from agent.command_gate import CommandGate, TokenBucket
from agent.config_sections import CommandsSection
from agent.contract import Origin
from tests.harness.agent import fence_device
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.slow

CMD = "campus/v1/pt-023/gw-main/cmd/"
FLOOD_LIMITS = """
rate = 5
burst = 10
queue = 10
busy_replies = 2
busy_audit_interval = "1s"
"""


def _command(cid: str, action: str = "arm") -> bytes:
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json.dumps({"id": cid, "action": action, "ts": ts}).encode()


def _replies(sub):
    return [m.json() for m in sub.snapshot() if "/cmd-reply/" in m.topic]


def _audits(sub):
    return [e["command"] for e in sub.events("audit")]


def test_a_command_flood_is_dropped_counted_and_summed_up_not_answered_one_by_one(
    broker, subscribers, make_agent
):
    sub = subscribers(broker, v5=True)
    agent = make_agent(
        broker.url,
        fence_device(alarm_every="200ms"),
        allow='["fence.arm"]',
        extra="",
        start=False,
    )
    text = agent.config.read_text().replace("[commands]\n", "[commands]\n" + FLOOD_LIMITS, 1)
    agent.write_config(text)
    agent.start()
    agent.wait_status(lambda s: s["broker"]["connected"], 10, "connection")
    flood = 5000
    for i in range(flood):
        info = sub.client.publish(CMD + "north-fence", b"x" if i % 2 else b"{}", qos=0)
    info.wait_for_publish(10)
    alarms_before = len(sub.events("alarm"))
    # The agent keeps doing its job during and after the flood: alarms go on arriving.
    wait_for(lambda: len(sub.events("alarm")) > alarms_before + 5, 15, "alarms after the flood")
    # A legitimate command still gets through once the flood is over.
    sub.publish(CMD + "north-fence", _command("cmd-after-flood-1"))
    wait_for(
        lambda: any(r["id"] == "cmd-after-flood-1" and r["code"] == "ok" for r in _replies(sub)),
        15,
        "the command after the flood carried out",
    )
    assert agent.terminate() == 0
    c = agent.status()["commands"]  # written at the stop, after the last summary
    handled = c["accepted"] + c["failed"] + sum(c["rejected"].values())
    assert c["queued"] == 0 and c["dropped_busy"] > 0
    # Everything the broker delivered was either handled (one reply each) or dropped.
    replies = _replies(sub)
    busy = [r for r in replies if r["code"] == "busy"]
    assert len(replies) - len(busy) == handled
    assert len(busy) == c["busy_replies"] and 0 < len(busy) < c["dropped_busy"]
    assert all(r["result"] == "rejected" and r["device"] == "north-fence" for r in busy)
    # One audit event per handled command, and the drops summed up in a few more.
    audits = _audits(sub)
    summed = [a for a in audits if a["code"] == "busy"]
    assert len(audits) - len(summed) == handled
    assert sum(a["dropped"] for a in summed) == c["dropped_busy"]
    assert len(summed) < 30 < c["dropped_busy"]
    assert all(a["id"] is None and a["result"] == "rejected" for a in summed)
    # Log lines about the drops are rate-limited too.
    drop_lines = [line for line in agent.log_lines("WARNING") if "command dropped" in line]
    assert 1 <= len(drop_lines) < 30


def test_an_oversize_command_is_never_delivered_to_an_mqtt5_gateway(
    broker, subscribers, make_agent
):
    sub = subscribers(broker, v5=True)
    agent = make_agent(broker.url, fence_device(alarm_every="1h"), allow='["fence.arm"]')
    agent.wait_status(lambda s: s["broker"]["connected"], 10, "connection")
    # Over [mqtt] max_packet_size (20 KiB): the broker does not send it at all.
    sub.publish(CMD + "north-fence", b'{"id": "' + b"A" * 4_000_000 + b'"}')
    # Over [commands] max_payload (16 KiB) but under the packet size: refused with a reason.
    sub.publish(CMD + "north-fence", b'{"id": "' + b"B" * 17_000 + b'"}')
    sub.publish(CMD + "north-fence", _command("cmd-after-oversize"))
    wait_for(lambda: any(r["id"] == "cmd-after-oversize" for r in _replies(sub)), 10, "reply")
    codes = sorted(r["code"] for r in _replies(sub))
    assert codes == ["ok", "too_large"]
    agent.wait_status(lambda s: s["commands"]["accepted"] == 1, 5, "the status to catch up")
    assert agent.status()["commands"]["rejected"] == {"too_large": 1}
    assert agent.terminate() == 0


def _gate(handled: list[str], cfg: CommandsSection | None = None) -> CommandGate:
    async def handle(topic: str, payload: bytes, rt: str | None, corr: bytes | None) -> None:
        handled.append(topic)

    return CommandGate(
        cfg or CommandsSection(),
        Origin("campus/v1", "pt-023", "gw-main"),
        handle=handle,
        reply=lambda *a: True,
        known=lambda d: d == "north-fence",
        record=lambda ev: None,
    )


def test_only_this_gateways_command_topics_are_routed():
    """amqtt handed a new `cmd/+` subscriber the retained messages of another client's
    `campus/#`: the agent answered its own status with `rejected` replies and audits."""

    async def scenario() -> tuple[list[str], CommandGate]:
        handled: list[str] = []
        gate = _gate(handled)
        runner = asyncio.create_task(gate.run())
        for topic in (
            "campus/v1/pt-023/gw-main/status",
            "campus/v1/pt-023/gw-main/state/fence/north-fence",
            "campus/v1/pt-023/gw-main/cmd/a/b",
            "campus/v1/pt-023/gw-main/cmd/",
            "campus/v1/pt-023/gw-other/cmd/north-fence",
            CMD + "north-fence",
        ):
            gate.offer(topic, b"{}", None, None)
        while gate.status()["queued"]:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        runner.cancel()
        return handled, gate

    handled, gate = asyncio.run(scenario())
    assert handled == [CMD + "north-fence"]
    assert gate.status()["foreign_topics"] == 5


def test_token_bucket_allows_the_burst_then_the_rate():
    bucket = TokenBucket(rate=0.001, burst=3)
    assert [bucket.take() for _ in range(5)] == [True, True, True, False, False]
