"""Logs: a line per state change, never one per event; under systemd, lines for the journal.

The real agent with a busy device and a fence raising alarms, against a real mosquitto that
goes away and comes back. journald itself cannot run here (no systemd as PID 1): what the
agent sees of it is the JOURNAL_STREAM variable naming its stderr (systemd.exec(5)), which
the test sets up exactly so, at the OS level."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.agent import AgentProcess, env_device, fence_device
from tests.harness.broker import Broker
from tests.harness.ports import free_port
from tests.harness.subscriber import Subscriber
from tests.harness.waiting import wait_for


def test_a_busy_gateway_logs_its_state_changes_not_its_events(
    broker: Broker,
    subscribers: Callable[..., Subscriber],
    make_agent: Callable[..., AgentProcess],
) -> None:
    sub = subscribers(broker)
    agent = make_agent(
        broker.url, env_device(rate=50) + fence_device(alarm_every="300ms"), start=False
    )
    agent.start(log_level="info")
    wait_for(
        lambda: len(sub.events("alarm")) >= 6 and len(sub.events("telemetry")) >= 100, 30, "events"
    )
    broker.stop()
    agent.wait_status(lambda s: not s["broker"]["connected"] and s["backlog"] > 50, 20, "a backlog")
    broker.start()
    agent.wait_status(lambda s: s["broker"]["connected"] and s["backlog"] < 30, 30, "the drain")
    wait_for(lambda: len(sub.events("telemetry")) >= 1000, 60, "a thousand readings")
    assert agent.terminate() == 0
    lines = agent.log_lines()
    events = len(sub.events("telemetry")) + len(sub.events("alarm"))
    # started, 2 devices online, connected, lost, cannot reach (once, however many tries),
    # connected again, stopping, disconnected, stopped: about ten, for hundreds of events.
    assert len(lines) <= 15, "\n".join(lines)
    assert events > 20 * len(lines)
    assert sum("broker connected" in ln for ln in lines) == 2, "\n".join(lines)


def test_under_systemd_each_line_carries_its_journal_priority_and_no_timestamp(
    tmp_path: Path, make_agent: Callable[..., AgentProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"  # a warning: the broker cannot be reached
    agent = make_agent(dead, env_device(rate=1), start=False)
    log = agent.dir / "agent-0.log"
    log.touch()
    st = log.stat()  # the agent's stderr will be this file: journald's stream, to the agent
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    agent.start(log_level="info")
    wait_for(lambda: any("cannot reach" in ln for ln in agent.log_lines()), 20, "the warning")
    agent.terminate()
    lines = agent.log_lines()
    assert lines[0].startswith("<6>INFO agent.runtime: agent started"), lines[0]
    warning = next(ln for ln in lines if "cannot reach" in ln)
    assert warning.startswith("<4>WARNING agent.publisher: "), warning
    assert all(ln.startswith("<") for ln in lines), lines

    # A JOURNAL_STREAM inherited by a process whose stderr is elsewhere is not ours.
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    other = make_agent(dead, env_device(rate=1), start=False, name="other")
    other.start(log_level="info")
    wait_for(lambda: any("agent started" in ln for ln in other.log_lines()), 20, "a line")
    other.terminate()
    first = other.log_lines()[0]
    assert first[:4].isdigit() and " INFO agent.runtime: agent started" in first, first


def test_the_agent_writes_no_log_file_and_the_unit_leaves_its_output_to_the_journal() -> None:
    """No log file to rotate: no file handler anywhere in the code, and the unit does not
    redirect stdout or stderr (their default is the journal)."""
    root = Path(__file__).resolve().parent.parent
    handlers = [
        str(p.relative_to(root))
        for folder in ("agent", "drivers", "firmware_bridge")
        for p in (root / folder).rglob("*.py")
        if "FileHandler" in p.read_text() or "SysLogHandler" in p.read_text()
    ]
    assert handlers == []
    unit = (root / "systemd" / "campus-agent.service").read_text().splitlines()
    keys = {ln.split("=", 1)[0] for ln in unit if "=" in ln and not ln.startswith("#")}
    assert not keys & {"StandardOutput", "StandardError", "LogsDirectory"}
