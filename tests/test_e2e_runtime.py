"""The agent process: reload, supervision, shutdown, a damaged store, and the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.agent import env_device, fence_device
from tests.harness.process import ROOT
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.slow


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_sighup_adds_and_removes_devices_without_losing_events(broker, subscribers, make_agent):
    sub = subscribers(broker)
    agent = make_agent(broker.url, env_device(rate=100))
    wait_for(lambda: len(sub.events("telemetry")) > 50, 20, "env telemetry")
    text = agent.config.read_text()
    head = text[: text.index("[[devices]]")]
    agent.config.write_text(head + fence_device(alarm_every="300ms"))
    agent.signal(signal.SIGHUP)
    wait_for(lambda: sub.events("alarm"), 20, "alarms from the added fence")
    st = agent.wait_status(
        lambda s: s["reloads"] == 1 and "a101-env" not in s["devices"], 10, "reload"
    )
    assert "north-fence" in st["devices"]
    n_env = len([e for e in sub.events("telemetry") if e["device"] == "a101-env"])
    time.sleep(1.0)  # the removed device must stay silent; nothing to poll for
    assert len([e for e in sub.events("telemetry") if e["device"] == "a101-env"]) == n_env
    last = agent.status()["store"]["last_seq"]
    wait_for(lambda: {e["seq"] for e in sub.events()} >= set(range(1, last + 1)), 20, "every seq")
    assert agent.terminate() == 0


def test_bad_config_on_sighup_is_refused_and_old_one_keeps_running(broker, subscribers, make_agent):
    sub = subscribers(broker)
    agent = make_agent(broker.url, env_device(rate=50))
    wait_for(lambda: len(sub.events("telemetry")) > 10, 20, "telemetry")
    good = agent.config.read_text()
    agent.config.write_text(good.replace('bus = "sim"', 'bus = "rs485-9"'))
    agent.signal(signal.SIGHUP)
    st = agent.wait_status(lambda s: s["last_reload_error"], 10, "the refusal")
    assert "devices[0].bus: no bus named 'rs485-9'; buses are: sim" in st["last_reload_error"]
    n = len(sub.events("telemetry"))
    wait_for(lambda: len(sub.events("telemetry")) > n + 20, 10, "events from the old config")
    assert agent.alive()
    assert agent.terminate() == 0


def test_failing_driver_is_restarted_and_device_reported_offline_then_online(
    broker, subscribers, make_agent
):
    sub = subscribers(broker)
    agent = make_agent(
        broker.url, env_device(rate=20).replace("rate = 20", 'rate = 20\ncrash_after = "700ms"')
    )

    def states():
        return [e for e in sub.events("state") if e["device"] == "a101-env"]

    wait_for(
        lambda: [e["online"] for e in states()][:3] == [True, False, True],
        20,
        "online, offline, online",
    )
    offline = states()[1]
    assert "synthetic fault injected" in offline["reason"]
    st = agent.wait_status(lambda s: s["driver_restarts"].get("sim", 0) >= 1, 10, "restart count")
    assert st["driver_restarts"]["sim"] >= 1
    assert agent.terminate() == 0


def test_sigterm_with_backlog_exits_zero_promptly(broker, make_agent):
    broker.stop()
    agent = make_agent(broker.url, env_device(rate=500))
    agent.wait_status(lambda s: s["backlog"] > 500, 20, "a backlog")
    t0 = time.monotonic()
    assert agent.terminate(timeout=15) == 0
    assert time.monotonic() - t0 < 10
    st = agent.status()
    assert st["pid"] is None and st["backlog"] > 500


def test_damaged_store_is_moved_aside_and_agent_starts(broker, subscribers, make_agent):
    sub = subscribers(broker)
    agent = make_agent(broker.url, env_device(rate=20), start=False)
    (agent.dir / "outbox.db").write_bytes(b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 4096)
    agent.start()
    st = agent.wait_status(lambda s: s["store"]["recovered"], 20, "recovery in status")
    moved = Path(st["store"]["recovered"]["moved_to"])
    assert moved.exists() and moved.read_bytes().startswith(b"SQLite format 3")
    wait_for(lambda: len(sub.events("telemetry")) > 5, 20, "events after recovery")
    r = cli("status", "--config", str(agent.config))
    assert "DAMAGED FILE moved to" in r.stdout
    assert agent.terminate() == 0


def test_status_and_tail_commands(broker, make_agent):
    agent = make_agent(broker.url, env_device(rate=20) + fence_device(alarm_every="500ms"))
    agent.wait_status(
        lambda s: s["broker"]["connected"] and s["devices"]["north-fence"]["online"], 20, "up"
    )
    r = cli("status", "--config", str(agent.config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "agent:    running" in r.stdout
    assert f"broker:   connected to {broker.url}" in r.stdout
    assert "a101-env" in r.stdout and "north-fence" in r.stdout
    r = cli("tail", "--config", str(agent.config), "--count", "8", "--kind", "telemetry")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 8
    assert any(
        line.startswith("telemetry env/a101-env") and "temperature=" in line for line in lines
    )
    assert agent.terminate() == 0
    r = cli("status", "--config", str(agent.config))
    assert r.returncode == 3
    assert "NOT RUNNING" in r.stdout


def test_tail_escapes_control_characters_from_the_wire(broker, subscribers, make_agent):
    """A node's fw_version with an ANSI escape reached the operator's terminal as it was:
    tail must print C0, DEL and C1 characters (ESC, CSI...) as visible escapes."""
    agent = make_agent(broker.url, env_device(), start=False)  # only its config is used
    sub = subscribers(broker)
    evil = "\x1b[31m2.0\x07\x7f\u009b1m\r\nfake line"
    doc = {
        "v": 1,
        "seq": 7,
        "ts": "2026-12-01T10:00:00.000Z",
        "kind": "state",
        "category": "node",
        "device": "gate\x1b[2Jnode",
        "fw_version": evil,
    }
    # mosquitto refuses control characters in topics (MQTT 5 §1.5.4), not in payloads.
    sub.publish(
        "campus/v1/pt-023/gw-main/state/node/gate-node", json.dumps(doc).encode(), retain=True
    )
    raw = "\x1b[31mred\u009b2J\r\nfake line".encode()  # not JSON: printed as it came by --raw
    sub.publish("campus/v1/pt-023/gw-main/state/node/raw-node", raw, retain=True)
    for mode, shown in (([], "\\x1b[31m2.0"), (["--raw"], "\\x1b[31mred\\x9b2J\\x0d\\x0a")):
        r = cli("tail", "--config", str(agent.config), "--count", "2", *mode)
        assert r.returncode == 0, r.stderr
        out = r.stdout
        for c in ("\x1b", "\x07", "\x7f", "\u009b", "\r"):
            assert c not in out, (mode, out)
        assert out.count("\n") == 2, (mode, out)  # no CR LF from the wire started a line
        assert shown in out, (mode, out)
