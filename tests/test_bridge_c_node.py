"""The agent's bridge driver against the compiled C reference node (firmware_bridge/c), over a
socat pty pair: the two sides are byte-compatible in a real session, not only on vectors."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from datetime import UTC, datetime

import pytest

from tests.harness.process import ROOT, need
from tests.harness.pty import PtyPair
from tests.harness.waiting import wait_for

# make builds firmware_bridge/c in place, as tests/test_bridge_c.py does: one xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bridge-c-build")]
C_DIR = ROOT / "firmware_bridge" / "c"


@pytest.fixture
def c_node(tmp_path):
    need("gcc", "gcc")
    make = shutil.which("make") or pytest.fail("make is missing: sudo apt-get install -y make")
    subprocess.run(
        [make, "-C", str(C_DIR), "example"], check=True, capture_output=True, timeout=120
    )
    pty = PtyPair(tmp_path / "pty")
    pty.start()
    log = (tmp_path / "node.log").open("wb")
    proc = subprocess.Popen(
        [str(C_DIR / "build" / "example_node"), str(pty.a)], stdout=log, stderr=log
    )
    yield pty
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    pty.stop()


def test_agent_talks_to_the_c_reference_node(c_node, broker, subscribers, make_agent):
    sub = subscribers(broker)
    agent = make_agent(
        broker.url,
        f'\n[[buses]]\nid = "lab"\ndriver = "bridge"\nport = "{c_node.b}"\n'
        '\n[[devices]]\nid = "lab-node"\nprofile = "c-example-node"\nbus = "lab"\n',
        allow='["node.toggle_door"]',
    )
    online = wait_for(
        lambda: [e for e in sub.events("state") if e["device"] == "lab-node" and e["online"]],
        20,
        "the C node identified",
    )[0]
    assert online["model"] == "c-example-node" and online["fw_version"] == "1.0.0"
    tele = wait_for(
        lambda: [e for e in sub.events("telemetry") if e["device"] == "lab-node"], 10, "DATA"
    )[0]
    assert tele["units"] == {"temperature": "°C"}
    assert isinstance(tele["values"]["temperature"], float)
    alarm = wait_for(lambda: sub.events("alarm"), 15, "the node's acked EVENT")[0]
    assert (alarm["alarm"], alarm["state"]) == ("alarm", "active")
    cmd = {"id": "cmd-c-node-door-1", "action": "toggle_door", "ts": datetime.now(UTC).isoformat()}
    sub.publish("campus/v1/pt-023/gw-main/cmd/lab-node", json.dumps(cmd).encode())
    reply = wait_for(
        lambda: [m.json() for m in sub.snapshot() if "/cmd-reply/" in m.topic], 15, "reply"
    )[0]
    assert reply["result"] == "ok", reply
    assert "door open" in json.dumps(reply)
    wait_for(
        lambda: any(e.get("door") is True for e in sub.events("state")), 10, "door state from DATA"
    )
    st = agent.wait_status(
        lambda s: s.get("buses", {}).get("lab", {}).get("frames", 0) > 3, 10, "frames"
    )
    assert st["buses"]["lab"]["crc_errors"] == 0
    assert agent.terminate() == 0
