"""A driver that lives outside this repository: installed as a distribution with an entry point
in `campus_agent.drivers`, nothing else. `check` validates its bus, device and `wire` tables
with its own models, and a real agent runs it end to end (events and a command), with no core
file touched. The distribution is installed the way pip leaves one on disk (a package and its
`.dist-info` with `entry_points.txt`) in a folder on the agent's PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.harness.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent

DRIVER = '''\
"""A lab counter: each device counts up by its points' `wire.step` every poll."""

import asyncio
import time
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from agent.driver import Driver
from agent.errors import ActionError
from agent.sample import Sample


class CounterWire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    step: int = Field(ge=1)


class CounterBus(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    start: int = 0
    swallow_one_cancel: bool = False  # what asyncio.wait_for could do in Python 3.11


class CounterDriver(Driver):
    key: ClassVar[str] = "lab-counter"
    profile_driver: ClassVar[str] = "lab-counter"
    bus_model: ClassVar[type[BaseModel]] = CounterBus
    point_wire: ClassVar[type[BaseModel] | None] = CounterWire
    wire_required: ClassVar[bool] = True

    def __init__(self, bus, devices):
        super().__init__(bus, devices)
        self.counts = {d.id: bus.options.start for d in devices}
        self.polls = 0

    async def run(self, sink):
        swallow = self.bus.options.swallow_one_cancel
        while True:
            try:
                await self._poll(sink)
            except asyncio.CancelledError:
                if not swallow:
                    raise
                swallow = False

    async def _poll(self, sink):
        while True:
            for d in self.devices:
                self.counts[d.id] += 1
                values = {p.name: self.counts[d.id] * p.wire["step"] for p in d.profile.points}
                await sink.sample(Sample(d.id, time.time(), values))
            self.polls += 1
            await asyncio.sleep(min(d.poll_interval for d in self.devices))

    async def act(self, device, action, args):
        if action != "reset":
            raise ActionError(f"no action {action!r}")
        self.counts[device.id] = 0
        return {"count": 0}

    def stats(self):
        return {"polls": self.polls}
'''

PROFILE = """\
id = "lab-counter"
vendor = "STEAM lab"
model = "Counter"
category = "node"
driver = "lab-counter"
source = "tests/test_driver_plugin.py"

[defaults]
poll_interval = "100ms"
heartbeat = "0s"

[[points]]
name = "count"
wire = {{ step = {step} }}

[[actions]]
name = "reset"
"""


def install_plugin(site: Path) -> dict[str, str]:
    """Put the distribution where pip would, on a PYTHONPATH of its own; the environment."""
    pkg = site / "campus_lab_counter"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(DRIVER)
    info = site / "campus_lab_counter-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: campus-lab-counter\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[campus_agent.drivers]\nlab-counter = campus_lab_counter:CounterDriver\n"
    )
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}


def site_config(folder: Path, url: str, step: str, bus_extra: str = "") -> Path:
    (folder / "lab-counter.toml").write_text(PROFILE.format(step=step))
    config = folder / "agent.toml"
    config.write_text(
        textwrap.dedent(f"""\
            [agent]
            school = "pt-023"
            gateway = "gw-main"
            status_interval = "1s"

            [mqtt]
            url = "{url}"
            reconnect_min = "200ms"
            reconnect_max = "1s"

            [store]
            path = "outbox.db"

            [commands]
            allow = ["node.reset"]

            [[buses]]
            id = "lab"
            driver = "lab-counter"
            start = 100
            {bus_extra}

            [[devices]]
            id = "counter-1"
            profile = "lab-counter.toml"
            bus = "lab"
        """)
    )
    return config


def check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "agent.cli", "check", "--config", str(config)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def test_check_validates_an_out_of_tree_drivers_tables_with_its_own_models(tmp_path, broker):
    env = install_plugin(tmp_path / "site")
    good = check(site_config(tmp_path, broker.url, "2"), env)
    assert good.returncode == 0, good.stderr
    bad = check(site_config(tmp_path, broker.url, '"two"'), env)
    assert bad.returncode == 2
    assert "lab-counter.toml: points[0].wire.step: Input should be a valid integer" in bad.stderr
    without = check(site_config(tmp_path, broker.url, "2"), dict(os.environ))
    assert "unknown driver 'lab-counter'" in without.stderr


def test_an_out_of_tree_driver_runs_end_to_end(tmp_path, broker, subscribers, monkeypatch):
    from tests.harness.agent import AgentProcess

    monkeypatch.setenv("PYTHONPATH", install_plugin(tmp_path / "site")["PYTHONPATH"])
    sub = subscribers(broker)
    agent = AgentProcess(tmp_path, site_config(tmp_path, broker.url, "2"))
    agent.start()
    try:
        wait_for(lambda: len(sub.events("telemetry")) >= 3, 20, "counter telemetry")
        counts = [e["values"]["count"] for e in sub.events("telemetry")]
        assert counts[:3] == [202, 204, 206]
        assert sub.events("telemetry")[0]["category"] == "node"
        request = {"id": "reset-0001", "action": "reset", "ts": datetime.now(UTC).isoformat()}
        sub.publish("campus/v1/pt-023/gw-main/cmd/counter-1", json.dumps(request).encode())
        reply = wait_for(
            lambda: [m.json() for m in sub.snapshot() if "/cmd-reply/" in m.topic], 10, "reply"
        )[0]
        assert (reply["result"], reply["data"]) == ("ok", {"count": 0})
        wait_for(lambda: sub.events("telemetry")[-1]["values"]["count"] < 50, 10, "count reset")
        status = agent.wait_status(lambda s: s.get("buses", {}).get("lab"), 10, "bus stats")
        assert status["buses"]["lab"]["polls"] > 0
    finally:
        assert agent.terminate() == 0


@pytest.mark.parametrize("core", ["agent/registry.py", "pyproject.toml"])
def test_the_plugin_is_named_in_no_core_file(core):
    assert "lab-counter" not in (ROOT / core).read_text()


def test_a_driver_that_swallows_a_cancellation_does_not_hang_the_stop(
    tmp_path, broker, monkeypatch
):
    """In Python 3.11 asyncio.wait_for swallowed a cancellation when the call it awaited
    completed at that moment: a card reader unplugged as the agent stopped hung the stop."""
    from tests.harness.agent import AgentProcess

    monkeypatch.setenv("PYTHONPATH", install_plugin(tmp_path / "site")["PYTHONPATH"])
    config = site_config(tmp_path, broker.url, "2", "swallow_one_cancel = true")
    agent = AgentProcess(tmp_path, config)
    agent.start()
    agent.wait_status(lambda s: s.get("buses", {}).get("lab", {}).get("polls", 0) > 2, 20, "polls")
    assert agent.terminate(timeout=30) == 0
    assert any("stopped: drained=True" in line for line in agent.log_lines())
