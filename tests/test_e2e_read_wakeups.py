"""The publisher reads the broker's PUBACKs with one recv per wake-up (issue #14), not
paho's three (type, length, body) per packet. A real agent, a real mosquitto; the agent's
recvfrom calls counted by strace while it delivers a steady stream."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess

import pytest

from tests.harness.agent import env_device
from tests.harness.waiting import wait_for

# One xdist worker runs every test that measures (tests/run.sh: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("measures")


def acked(agent) -> int:  # type: ignore[no-untyped-def]
    return int(agent.live_status().get("broker", {}).get("acked", 0))


def test_pubacks_are_read_with_one_recv_per_wake_up(broker, subscribers, make_agent):
    assert shutil.which("strace"), "strace is part of the test environment (Debian's)"
    sub = subscribers(broker)
    agent = make_agent(broker.url, env_device(rate=200))
    wait_for(lambda: acked(agent) > 200, 30, "the agent delivering")
    a0 = acked(agent)
    strace = subprocess.Popen(
        ["strace", "-f", "-c", "-e", "trace=recvfrom", "-p", str(agent.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: acked(agent) > a0 + 1500, 60, "1500 more PUBACKs")
    finally:
        strace.send_signal(signal.SIGINT)
        _, report = strace.communicate(timeout=30)
    a1 = acked(agent)
    m = re.search(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)(?:\s+\d+)?\s+recvfrom\s*$", report, re.M)
    assert m, report
    calls = int(m.group(1))
    # Before: three recvfrom per PUBACK (type byte, length byte, body) and one more per
    # wake-up that finds nothing (EAGAIN): over three per PUBACK.
    assert calls < 1.5 * (a1 - a0), f"{calls} recvfrom for about {a1 - a0} PUBACKs"
    assert len(sub.events("telemetry")) > 0
    assert agent.terminate() == 0
