"""`campus-agent tail --local`: what the gateway publishes, read from the running agent's
own stream (/api/events on its status page server) with no broker credentials; a client
too slow to read it is dropped and counted, and the agent does not wait for it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from agent.status_live import DROPPED
from tests.harness.agent import AgentProcess, env_device, fence_device
from tests.harness.process import ROOT
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.slow

TOKEN = "tail-token-0123456789abcdef"


def tail(agent: AgentProcess, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "agent.cli", "tail", "--local", "--config", str(agent.config)]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False
    )


def with_token(agent: AgentProcess) -> None:
    (agent.dir / "page.token").write_text(TOKEN)
    (agent.dir / "page.token").chmod(0o600)


def test_tail_local_prints_what_a_subscriber_on_the_broker_sees(
    tmp_path, broker, subscribers, make_agent
):
    sub = subscribers(broker)
    agent = make_agent(
        broker.url,
        env_device(rate=10) + fence_device(alarm_every="1s"),
        status_page='token_file = "page.token"',
        start=False,
    )
    with_token(agent)  # a configured token: tail --local reads it from the config
    agent.start()
    agent.wait_status(lambda s: s["broker"]["connected"], 15, "connection")
    run = tail(agent, "--raw", "--count", "40")
    assert run.returncode == 0, run.stderr
    assert f"listening on http://127.0.0.1:{agent.status_port}/api/events" in run.stderr
    printed = {}
    for line in run.stdout.splitlines():
        topic, _, payload = line.partition(" ")
        doc = json.loads(payload)
        printed[doc["id"]] = (topic, doc)
    assert len(printed) == 40
    assert {d["kind"] for _, d in printed.values()} >= {"telemetry", "alarm"}

    def at_broker() -> dict[str, tuple[str, dict]]:
        return {
            m.json()["id"]: (m.topic, m.json()) for m in sub.snapshot() if "/status" not in m.topic
        }

    wait_for(lambda: printed.keys() <= at_broker().keys(), 20, "the same events at the broker")
    seen = at_broker()
    for event_id, (topic, doc) in printed.items():
        assert seen[event_id] == (topic, doc)  # the same topic, the same payload

    # The CLI's readable form and --kind, as `campus-agent tail` prints them.
    run = tail(agent, "--kind", "alarm", "--count", "2")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 2 and all(ln.startswith("alarm     fence/north-fence") for ln in lines)
    assert agent.terminate() == 0
    assert not [ln for ln in agent.log_lines() if TOKEN in ln]


def test_tail_local_says_when_the_agent_is_not_running_or_the_page_is_off(broker, make_agent):
    agent = make_agent(broker.url, fence_device(), start=False)
    run = tail(agent, "--count", "1")
    assert run.returncode == 3
    assert "the agent is not running" in run.stderr
    assert f"http://127.0.0.1:{agent.status_port}/api/events" in run.stderr
    off = make_agent(broker.url, fence_device(), status_page="enabled = false", start=False)
    run = tail(off, "--count", "1")
    assert run.returncode == 2
    assert "the status page is off" in run.stderr and "enabled = false" in run.stderr
    assert run.stdout == ""


def test_the_agent_stopping_ends_a_local_tail_and_waits_for_nothing(broker, make_agent):
    agent = make_agent(broker.url, env_device(rate=5))
    agent.wait_status(lambda s: s["broker"]["connected"], 15, "connection")
    cmd = [sys.executable, "-m", "agent.cli", "tail", "--local", "--config", str(agent.config)]
    follower = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        agent.wait_status(lambda s: s["status_page"]["tail_clients"] == 1, 15, "the tail connected")
        assert agent.terminate(timeout=15) == 0
        out, err = follower.communicate(timeout=15)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 1
    assert "the agent ended the stream (it is stopping)" in err
    assert out.count("telemetry env/a101-env") >= 1
    assert "the agent runs on" not in agent.log_text()


def test_a_client_that_does_not_read_is_dropped_and_counted_and_the_agent_goes_on(
    broker, subscribers, make_agent
):
    sub = subscribers(broker)
    agent = make_agent(broker.url, env_device(rate=1000))
    agent.wait_status(lambda s: s["broker"]["connected"], 15, "connection")
    with socket.socket() as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", agent.status_port))
        slow.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        # It reads nothing: the kernel's buffers fill, then its queue in the agent.
        st = agent.wait_status(
            lambda s: s["status_page"]["tails_dropped"] == 1, 90, "the slow client dropped"
        )
        assert st["status_page"]["tail_clients"] == 0
        n = len(sub.events("telemetry"))
        wait_for(lambda: len(sub.events("telemetry")) > n + 100, 15, "events flowing on")
        # What it gets, once it reads: what was buffered, then why it ended.
        slow.settimeout(20)
        data = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            chunk = slow.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    lines = [ln for ln in data.split(b"\r\n") if ln.startswith(b"{")]
    assert lines and lines[-1].split(b"\n")[0] + b"\n" == DROPPED
    assert agent.terminate() == 0
