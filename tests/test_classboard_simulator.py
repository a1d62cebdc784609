"""The board simulator (python -m drivers.classboard.simulator) against the real agent.

Two simulated boards heartbeat, swipe and long-poll; a district notice reaches both and
their receipts come back (the simulator's stats say when); one board dies and is reported
offline, the other stays online.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from tests.classboard_peer import (
    ALLOW,
    PRIVACY,
    Board,
    fast_profile,
    hub_config,
    new_port,
    write_secrets,
)
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.slow


def test_simulated_boards_swipe_get_a_notice_and_one_dies(
    broker, subscribers, make_agent, tmp_path
):
    sub = subscribers(broker, v5=True)
    port = new_port()
    folder = tmp_path / "agent"
    write_secrets(folder)
    fast_profile(folder)
    agent = make_agent(
        broker.url, hub_config(port, profile="fast-board"), extra=PRIVACY, allow=ALLOW, start=False
    )
    agent.write_config('profile_dirs = ["profiles"]\n' + agent.config.read_text())
    agent.start()
    agent.wait_status(lambda s: s["broker"]["connected"], 15, "connection")
    wait_for(lambda: Board(port, "c3-2-board").notices(wait=0)[0] == 200, 15, "the hub")
    stats = tmp_path / "sim.json"
    sim = subprocess.Popen(
        [sys.executable, "-m", "drivers.classboard.simulator", "--url", f"http://127.0.0.1:{port}",
         "--boards", "2", "--names", "c3-2-board,c3-3-board", "--token-dir", str(folder / "tokens"),
         "--interval", "2", "--swipes", "3", "--die", "1", "--die-after", "4", "--duration", "16",
         "--stats", str(stats)],
    )  # fmt: skip
    try:
        wait_for(lambda: len(sub.events("access")) >= 6, 15, "6 access events")
        ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        sent = time.time()
        cmd = {"id": "cmd-sim-notice-01", "action": "notice_post", "ts": ts,
               "args": {"id": "assembly", "title": "Assembly", "body": "At 10:00.", "level": "urgent"}}  # fmt: skip
        sub.publish("campus/v1/pt-023/gw-main/cmd/boards-hub", json.dumps(cmd).encode())
        wait_for(
            lambda: (
                {e["device"] for e in sub.events("state") if e.get("notice_status") == "displayed"}
                >= {"c3-3-board"}
            ),
            10,
            "the living board's receipt",
        )
        off = wait_for(
            lambda: [
                e
                for e in sub.events("state")
                if e["device"] == "c3-2-board" and e["online"] is False
            ],
            20,
            "the dead board offline",
        )
        assert "no heartbeat" in off[0]["reason"]
        assert sim.wait(30) == 0
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    doc = json.loads(stats.read_text())
    assert doc["boards"]["c3-2-board"]["dead"] is True
    got = doc["notices"]["assembly@1"]["c3-3-board"]
    assert got["received"] >= sent - 1 and got["receipted"] >= got["received"]
    assert not any(e["online"] is False for e in sub.events("state") if e["device"] == "c3-3-board")
    assert agent.terminate() == 0
