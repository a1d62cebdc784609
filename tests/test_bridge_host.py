"""The firmware bridge host and driver against the Python node simulator on a socat pty pair:
the host alone (in-process, counting exactly what it delivers) and a real agent process with a
real broker (telemetry, alarms, commands, cable pulled, firmware updates)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.errors import ImageRejectedError
from firmware_bridge.host import Host, NodeInfo
from firmware_bridge.messages import Point
from firmware_bridge.update import run_update
from tests.harness.process import ROOT
from tests.harness.pty import PtyPair
from tests.harness.waiting import wait_for

CMD = "campus/v1/pt-023/gw-main/cmd/"


class NodeSim:
    """firmware_bridge.simulator in a subprocess, with its stats file."""

    def __init__(self, workdir: Path, port: Path, kind: str, *extra: str) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stats_path = self.dir / "sim.json"
        self.log = self.dir / "sim.log"
        self.cmd = [
            sys.executable,
            "-m",
            "firmware_bridge.simulator",
            "--port",
            str(port),
            "--kind",
            kind,
            "--fw-dir",
            str(self.dir / "fw"),
            "--stats",
            str(self.stats_path),
            "--log-level",
            "debug",
            *extra,
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def line(tmp_path):
    pty = PtyPair(tmp_path / "pty")
    pty.start()
    yield pty
    pty.stop()


@pytest.fixture
def node(tmp_path, line):
    made: list[NodeSim] = []

    def start(kind: str, *extra: str) -> NodeSim:
        sim = NodeSim(tmp_path / f"node-{len(made)}", line.a, kind, *extra)
        made.append(sim)
        return sim

    yield start
    for sim in made:
        sim.stop()


# ---------------------------------------------------------------- the host alone


class Recorder:
    def __init__(self) -> None:
        self.online: list[NodeInfo] = []
        self.offline: list[str] = []
        self.readings: list[tuple[Point, ...]] = []
        self.alarms: list[tuple[Point, ...]] = []

    async def node_online(self, info: NodeInfo) -> None:
        self.online.append(info)

    async def node_offline(self, reason: str) -> None:
        self.offline.append(reason)

    async def data(self, points: tuple[Point, ...], ts: float) -> None:
        self.readings.append(points)

    async def event(self, points: tuple[Point, ...], ts: float) -> None:
        self.alarms.append(points)


async def until(pred, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


@pytest.mark.asyncio
async def test_retransmitted_alarms_are_delivered_once_and_garbage_is_counted(line, node):
    sim = node("fence", "--drop-acks", "3", "--alarm-every", "0.4", "--garbage-every", "0.3")
    rec = Recorder()
    host = Host(str(line.b), rec)
    task = asyncio.create_task(host.run())
    try:
        await until(lambda: rec.online, 10, "HELLO")
        assert rec.online[0].model == "campus-fence-node" and rec.online[0].fw_version == "1.0.0"
        await until(
            lambda: sim.stats().get("acks_dropped") == 3 and len(rec.alarms) >= 5, 15, "events"
        )
        await until(lambda: host.stats()["garbage"] >= 6, 5, "garbage")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)  # the simulator writes its stats every 100 ms
        st, s = host.stats(), sim.stats()
        # Zone 1 toggles with every new EVENT, so a duplicate delivery would show as the same
        # value twice in a row: every EVENT was delivered once, although three of them were
        # sent again after their ACK was ignored.
        values = [points[0].value.value for points in rec.alarms]
        assert values == [i % 2 == 0 for i in range(len(values))]
        assert len(rec.alarms) <= s["events"]
        assert s["event_transmissions"] > s["events"]
        assert st["duplicates"] >= 3 and st["retransmissions"] >= 3
        assert st["events"] == len(rec.alarms)
        assert st["crc_errors"] >= 1 and st["cobs_errors"] >= 1 and st["too_short"] >= 1
        assert rec.readings and st["online"] is True
    finally:
        task.cancel()


@pytest.mark.asyncio
async def test_silent_node_goes_offline_and_is_welcomed_again_after_hello_required(line, node):
    sim = node("sensor", "--data-every", "0.2")
    rec = Recorder()
    host = Host(str(line.b), rec, silence=1.0, heartbeat=0.5)
    task = asyncio.create_task(host.run())
    try:
        await until(lambda: rec.online and rec.readings, 10, "HELLO and DATA")
        sim.proc.send_signal(signal.SIGSTOP)  # the node hangs: the port stays open
        try:
            await until(lambda: rec.offline, 5, "offline after silence")
            assert rec.offline == ["no frame for 1s"]
        finally:
            sim.proc.send_signal(signal.SIGCONT)
        # Its next DATA is answered NACK HELLO_REQUIRED; it says HELLO and is online again.
        await until(lambda: len(rec.online) >= 2 and host.online, 10, "back online")
        assert host.stats()["nacks_sent"] >= 1
    finally:
        task.cancel()


# ---------------------------------------------------------------- the whole agent


def bridge_bus(port: Path, extra: str = "") -> str:
    return (
        f'\n[[buses]]\nid = "node-1"\ndriver = "bridge"\nport = "{port}"\n'
        f'silence_timeout = "3s"\n{extra}\n'
    )


def bridge_device(dev_id: str, profile: str) -> str:
    return f'\n[[devices]]\nid = "{dev_id}"\nprofile = "{profile}"\nbus = "node-1"\n'


def command(action: str, cid: str, **kw: Any) -> bytes:
    from datetime import UTC, datetime

    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"id": cid, "action": action, "ts": ts, **kw}).encode()


def reply(sub, cid: str) -> dict[str, Any]:
    def find():
        for m in sub.snapshot():
            if "/cmd-reply/" in m.topic and m.json()["id"] == cid:
                return m.json()
        return None

    return wait_for(find, 15, f"a reply to {cid}")


def states(sub, dev: str) -> list[dict[str, Any]]:
    return [e for e in sub.events("state") if e["device"] == dev]


@pytest.mark.slow
def test_sensor_node_telemetry_and_cable_pulled_and_plugged_back(
    line, node, broker, subscribers, make_agent
):
    sim = node("sensor", "--data-every", "0.2", "--garbage-every", "0.5")
    sub = subscribers(broker)
    agent = make_agent(
        broker.url,
        bridge_bus(line.b) + bridge_device("a101-node", "campus-sensor-node"),
        allow="[]",
    )
    tele = wait_for(
        lambda: [e for e in sub.events("telemetry") if e["device"] == "a101-node"], 15, "telemetry"
    )[0]
    assert tele["category"] == "env" and tele["quality"] == "good"
    assert tele["units"] == {"temperature": "°C", "humidity": "%RH", "battery": "V"}
    assert 21.0 <= tele["values"]["temperature"] <= 22.0
    assert tele["values"]["humidity"] == pytest.approx(45.5)
    assert tele["values"]["battery"] == pytest.approx(3.25)
    online = wait_for(lambda: [e for e in states(sub, "a101-node") if e["online"]], 5, "online")
    assert online[0]["fw_version"] == "1.0.0" and online[0]["model"] == "campus-sensor-node"
    line.pull_cable()
    wait_for(lambda: [e for e in states(sub, "a101-node") if e["online"] is False], 10, "offline")
    offline = next(e for e in states(sub, "a101-node") if e["online"] is False)
    assert "serial port" in offline["reason"]
    time.sleep(1.0)
    seen = len(sub.events("telemetry"))
    line.plug_cable()
    wait_for(lambda: [e for e in states(sub, "a101-node")[-1:] if e["online"]], 15, "online again")
    wait_for(lambda: len(sub.events("telemetry")) > seen, 10, "telemetry again")
    assert agent.alive() and sim.proc.poll() is None
    bus = agent.wait_status(
        lambda s: s["buses"]["node-1"]["garbage"] >= 3, 10, "garbage counted in the status"
    )["buses"]["node-1"]
    assert bus["sessions"] >= 2 and bus["frames"] > 0 and bus["crc_errors"] >= 1
    assert "driver failed" not in agent.log_text()
    assert agent.terminate() == 0


@pytest.mark.slow
def test_fence_node_alarms_once_per_edge_and_arm_command_round_trip(
    line, node, broker, subscribers, make_agent
):
    sim = node("fence", "--drop-acks", "2", "--alarm-every", "1")
    sub = subscribers(broker, v5=True)
    agent = make_agent(
        broker.url, bridge_bus(line.b) + bridge_device("gate-fence", "campus-fence-node")
    )
    wait_for(lambda: len(sub.events("alarm")) >= 4, 20, "four alarm edges")
    agent.wait_status(lambda s: s["broker"]["connected"], 10, "connected")
    sub.publish(CMD + "gate-fence", command("disarm", "cmd-bridge-disarm-1"))
    r = reply(sub, "cmd-bridge-disarm-1")
    assert r["result"] == "ok", r
    assert r["data"] == {"status": "ok", "message": "disarmed"}
    sub.publish(CMD + "gate-fence", command("arm", "cmd-bridge-arm-0001"))
    assert reply(sub, "cmd-bridge-arm-0001")["result"] == "ok"
    sub.publish(CMD + "gate-fence", command("arm", "cmd-bridge-arm-0002"))
    r = reply(sub, "cmd-bridge-arm-0002")
    assert r["result"] == "failed" and r["reason"] == "node answered rejected: already armed"
    wait_for(lambda: sim.stats()["actions"] == {"disarm": 1, "arm": 2}, 2, "actions at the node")
    wait_for(
        lambda: any(e.get("armed") is False for e in states(sub, "gate-fence")), 10, "armed=false"
    )
    assert agent.terminate() == 0
    alarms = [e for e in sub.events("alarm") if e["device"] == "gate-fence"]
    # Edges alternate: a retransmitted EVENT never shows up as a second edge.
    assert [a["state"] for a in alarms] == ["active", "cleared"] * (len(alarms) // 2) + [
        "active"
    ] * (len(alarms) % 2)
    assert all(a["zone"] == "1" and a["severity"] == "critical" for a in alarms)
    bus = agent.status()["buses"]["node-1"]
    assert bus["duplicates"] >= 2 and bus["events"] == len(alarms)


def fw_states(sub, dev: str) -> list[str]:
    return [e["fw_state"] for e in states(sub, dev) if "fw_state" in e]


def updating_agent(make_agent, broker, sub, line, fw_dir, *, device, profile):
    """An agent whose bridge bus may send images from fw_dir to `device`, online and
    connected; the profile's category allowlists its firmware_update."""
    category = {"campus-fence-node": "fence", "campus-sensor-node": "env"}[profile]
    agent = make_agent(
        broker.url,
        bridge_bus(line.b, f'firmware_dir = "{fw_dir}"') + bridge_device(device, profile),
        allow=f'["{category}.firmware_update"]',
    )
    wait_for(lambda: [e for e in states(sub, device) if e["online"]], 15, "online")
    agent.wait_status(lambda s: s["broker"]["connected"], 10, "connected")
    return agent


@pytest.mark.slow
def test_firmware_update_interrupted_by_a_pulled_cable_resumes_and_is_reported(  # noqa: PLR0917 - fixtures
    tmp_path, line, node, broker, subscribers, make_agent
):
    fw_dir = tmp_path / "firmware"
    fw_dir.mkdir()
    image = os.urandom(40_000)
    (fw_dir / "fence-2.0.0.bin").write_bytes(image)
    sim = node("fence", "--alarm-every", "0")
    sub = subscribers(broker)
    agent = updating_agent(
        make_agent, broker, sub, line, fw_dir, device="gate-fence", profile="campus-fence-node"
    )
    sub.publish(
        CMD + "gate-fence",
        command(
            "firmware_update",
            "cmd-fw-update-0001",
            args={"file": "fence-2.0.0.bin", "version": "2.0.0"},
        ),
    )
    r = reply(sub, "cmd-fw-update-0001")
    assert r["result"] == "ok" and r["data"]["fw_state"] == "started"
    assert r["data"]["sha256"] == hashlib.sha256(image).hexdigest()
    wait_for(lambda: sim.stats().get("fw_chunks", 0) >= 40, 20, "part of the image sent")
    line.pull_cable()
    wait_for(lambda: "interrupted" in fw_states(sub, "gate-fence"), 10, "interrupted")
    time.sleep(0.5)
    line.plug_cable()
    wait_for(lambda: "done" in fw_states(sub, "gate-fence"), 30, "update done")
    s = wait_for(lambda: sim.stats()["running"] == "2.0.0" and sim.stats(), 2, "new firmware")
    assert s["reboots"] == 1
    # The second FW_BEGIN resumed where the node stood, not at 0.
    assert len(s["fw_begins"]) == 2 and s["fw_begins"][1][1] >= 40 * 200
    assert s["fw_chunks"] < len(image) // 200 + 20
    done = [e for e in states(sub, "gate-fence") if e.get("fw_state") == "done"][-1]
    assert done["fw_version"] == "2.0.0" and done["fw_progress"] == 100

    assert agent.terminate() == 0


@pytest.mark.asyncio
async def test_corrupted_image_is_rejected_by_sha256_and_aborted(line, node):
    sim = node("sensor", "--corrupt-writes", "1")
    rec = Recorder()
    host = Host(str(line.b), rec)
    task = asyncio.create_task(host.run())
    try:
        await until(lambda: rec.online, 10, "HELLO")
        seen: list[str] = []

        async def progress(state: str, done: int, total: int) -> None:
            seen.append(state)

        with pytest.raises(ImageRejectedError, match="sha256 does not match"):
            await run_update(host, os.urandom(1000), "9.9.9", progress)
        assert seen[-1] == "verifying"
        s = await until(
            lambda: sim.stats().get("fw_verify_failed") == 1 and sim.stats(), 5, "stats"
        )
        assert s["running"] == "1.0.0" and s["fw_state"] == 4  # ROLLED_BACK: aborted
        assert rec.online[-1].fw_version == "1.0.0" and len(rec.online) == 1
    finally:
        task.cancel()


@pytest.mark.slow
def test_firmware_cli_starts_an_update_and_shows_its_progress(  # noqa: PLR0917 - fixtures
    tmp_path, line, node, broker, subscribers, make_agent
):
    import subprocess
    import sys

    from tests.harness.process import ROOT

    fw_dir = tmp_path / "firmware"
    fw_dir.mkdir()
    (fw_dir / "sensor-1.1.0.bin").write_bytes(os.urandom(12_000))
    node("sensor", "--data-every", "1")
    sub = subscribers(broker)
    agent = updating_agent(
        make_agent, broker, sub, line, fw_dir, device="a101-node", profile="campus-sensor-node"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "firmware",
            "--config",
            str(agent.config),
            "a101-node",
            "sensor-1.1.0.bin",
            "--version",
            "1.1.0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "update started: sensor-1.1.0.bin (12000 bytes)" in r.stdout
    assert "a101-node: done 100%" in r.stdout
    audits = [e["command"] for e in sub.events("audit")]
    assert any(a["action"] == "firmware_update" and a["result"] == "ok" for a in audits)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "firmware",
            "--config",
            str(agent.config),
            "a101-node",
            "../../etc/passwd",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "refused:" in r.stderr
    assert agent.terminate() == 0


@pytest.mark.slow
def test_a_driver_that_raises_still_gets_one_reply_and_one_audit(  # noqa: PLR0917 - fixtures
    tmp_path, line, node, broker, subscribers, make_agent
):
    """A firmware file name with a NUL made the driver raise ValueError: the command got no
    reply and no audit event, and its id was spent (#9). Now: one of each, and the id stays
    spent (a second try is a replay)."""
    fw_dir = tmp_path / "firmware"
    fw_dir.mkdir()
    node("fence", "--alarm-every", "0")
    sub = subscribers(broker)
    agent = updating_agent(
        make_agent, broker, sub, line, fw_dir, device="gate-fence", profile="campus-fence-node"
    )
    bad = command("firmware_update", "cmd-fw-nul-00001", args={"file": "fence\u0000.bin"})
    sub.publish(CMD + "gate-fence", bad)
    r = reply(sub, "cmd-fw-nul-00001")
    assert (r["result"], r["code"]) == ("failed", "action_failed")
    assert "ValueError" in r["reason"]
    sub.publish(CMD + "gate-fence", bad)
    audits = wait_for(
        lambda: (
            [e["command"] for e in sub.events("audit") if e["command"]["id"] == "cmd-fw-nul-00001"][
                1:
            ]
            and [e["command"] for e in sub.events("audit")]
        ),
        10,
        "two audit events",
    )
    codes = [a["code"] for a in audits if a["id"] == "cmd-fw-nul-00001"]
    assert codes == ["action_failed", "replayed"]
    replies = [
        m.json()
        for m in sub.snapshot()
        if "/cmd-reply/" in m.topic and m.json()["id"] == "cmd-fw-nul-00001"
    ]
    assert [x["code"] for x in replies] == ["action_failed", "replayed"]
    assert agent.terminate() == 0


# ---------------------------------------------------------------- firmware files and versions


def _fw_dir(tmp_path):
    d = tmp_path / "firmware"
    d.mkdir()
    return d


@pytest.mark.slow
def test_fifo_symlink_out_and_oversized_files_are_refused_in_the_reply(  # noqa: PLR0917 - fixtures
    tmp_path,
    line,
    node,
    broker,
    subscribers,
    make_agent,
):
    fw_dir = _fw_dir(tmp_path)
    os.mkfifo(fw_dir / "fifo.bin")  # reading it would block until a writer came
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"not firmware")
    (fw_dir / "out.bin").symlink_to(outside)
    with (fw_dir / "huge.bin").open("wb") as f:
        f.truncate((16 << 20) + 1)  # sparse: one byte over the 16 MiB cap
    (fw_dir / "empty.bin").touch()
    node("fence", "--alarm-every", "0")
    sub = subscribers(broker)
    agent = updating_agent(
        make_agent, broker, sub, line, fw_dir, device="gate-fence", profile="campus-fence-node"
    )
    cases = {
        "fifo.bin": "not a regular file",
        "out.bin": "outside the bus's firmware_dir",
        "huge.bin": "16777217 bytes: it must be 1 to 16777216 bytes",
        "empty.bin": "0 bytes",
    }
    for i, (name, why) in enumerate(cases.items()):
        cid = f"cmd-fw-file-{i:04d}"
        sub.publish(CMD + "gate-fence", command("firmware_update", cid, args={"file": name}))
        r = reply(sub, cid)
        assert (r["result"], r["code"]) == ("failed", "action_failed"), r
        assert why in r["reason"], r
    # The agent is not stuck on the FIFO: it still reads the node and writes its status.
    n = len(states(sub, "gate-fence"))
    agent.wait_status(lambda s: s["buses"]["node-1"]["fw_updates"]["started"] == 0, 5, "status")
    assert not [e for e in states(sub, "gate-fence")[n:] if e.get("fw_state")]
    assert agent.terminate() == 0


@pytest.mark.slow
def test_version_longer_than_the_protocol_allows_is_refused_when_the_command_arrives(  # noqa: PLR0917 - fixtures
    tmp_path,
    line,
    node,
    broker,
    subscribers,
    make_agent,
):
    """64 characters pass the profile's max_length, but 64 four-byte characters are 256 UTF-8
    bytes: more than FW_BEGIN's `str` can carry. The update used to start, reply ok, and die
    in the background without a word."""
    fw_dir = _fw_dir(tmp_path)
    (fw_dir / "fence-2.0.0.bin").write_bytes(os.urandom(2000))
    sim = node("fence", "--alarm-every", "0")
    sub = subscribers(broker)
    agent = updating_agent(
        make_agent, broker, sub, line, fw_dir, device="gate-fence", profile="campus-fence-node"
    )
    version = "\U0001f600" * 64
    cid = "cmd-fw-version-01"
    sub.publish(
        CMD + "gate-fence",
        command("firmware_update", cid, args={"file": "fence-2.0.0.bin", "version": version}),
    )
    r = reply(sub, cid)
    assert (r["result"], r["code"]) == ("rejected", "bad_args"), r
    assert "1 to 255 UTF-8 bytes, not 256" in r["reason"]
    wait_for(lambda: [e for e in sub.events("audit") if e["command"]["id"] == cid], 10, "the audit")
    assert not sim.stats().get("fw_begins")
    assert agent.status()["buses"]["node-1"]["fw_updates"]["started"] == 0
    assert agent.terminate() == 0


@pytest.mark.slow
def test_a_background_update_failure_is_audited_under_its_command(  # noqa: PLR0917 - fixtures
    tmp_path, line, node, broker, subscribers, make_agent
):
    """The reply to firmware_update is `ok` when the transfer starts; a later failure (here the
    node's flash corrupts a chunk, so the image is rejected) left only fw_state. Now it is an
    audit event too, with the id of the command that started it (#9)."""
    fw_dir = _fw_dir(tmp_path)
    (fw_dir / "fence-2.0.0.bin").write_bytes(os.urandom(8_000))
    node("fence", "--alarm-every", "0", "--corrupt-writes", "1")
    sub = subscribers(broker)
    agent = updating_agent(
        make_agent, broker, sub, line, fw_dir, device="gate-fence", profile="campus-fence-node"
    )
    cid = "cmd-fw-corrupt-001"
    sub.publish(
        CMD + "gate-fence",
        command("firmware_update", cid, args={"file": "fence-2.0.0.bin", "version": "2.0.0"}),
    )
    assert reply(sub, cid)["code"] == "ok"  # started
    audits = wait_for(
        lambda: [e["command"] for e in sub.events("audit") if e["command"]["id"] == cid][1:],
        30,
        "the audit event of the failure",
    )
    assert (audits[0]["result"], audits[0]["code"]) == ("failed", "action_failed")
    assert audits[0]["action"] == "firmware_update" and "sha256" in audits[0]["reason"]
    assert any(e.get("fw_state") == "rejected" for e in states(sub, "gate-fence"))
    assert agent.terminate() == 0
