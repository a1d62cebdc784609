"""The agent as a subprocess (`python -m agent.cli run`): its config, its starts, its end.

`AgentProcess` runs the agent on `folder/agent.toml`, one log file per start; it is stopped
the way an operator or a crash stops it: SIGTERM (`terminate`: it drains and exits), SIGKILL
(`kill`), or any signal (`signal`, e.g. SIGHUP to reload). It reads the agent's status file
and log; it never touches the agent's store while the agent runs. `env_device` and
`fence_device` are the config fragments of the synthetic devices the tests and the soak use.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.harness.process import ChildProcess, read_json
from tests.harness.waiting import wait_for

STATUS_KEYS = ("written", "backlog", "store", "broker", "publish_rate", "buses")

# The synthetic devices of the end-to-end tests and the soak: config fragments for a bus
# `sim` (driver "synthetic"). The env device's profile makes every reading an event.
FENCE_DEVICE_ID = "north-fence"
ENV_DEVICE = """
[[devices]]
id = "a101-env"
profile = "synthetic-load"
bus = "sim"
location = {{ building = "A", floor = 1, room = "101" }}
rate = {rate}
"""
FENCE_DEVICE = """
[[devices]]
id = "{id}"
profile = "synthetic-fence"
bus = "sim"
poll_interval = "{poll}"
alarm_every = "{alarm_every}"
"""


def env_device(rate: float = 20) -> str:
    """A synthetic env sensor producing `rate` readings (events) a second."""
    return ENV_DEVICE.format(rate=rate)


def fence_device(alarm_every: str = "1s", poll: str = "100ms") -> str:
    """A synthetic fence whose alarm is raised and cleared every `alarm_every`."""
    return FENCE_DEVICE.format(id=FENCE_DEVICE_ID, alarm_every=alarm_every, poll=poll)


class AgentProcess(ChildProcess):
    """An agent process with its own folder: config, store (`outbox.db`), status, logs."""

    def __init__(self, folder: Path, config: Path | None = None, *, log_level: str = "debug"):
        super().__init__()
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config or folder / "agent.toml"
        self.store = folder / "outbox.db"
        self.status_path = folder / "outbox.db.status.json"
        self.log_level = log_level
        self.status_port: int | None = None  # its [status_page] port, when the test set one

    def write_config(self, text: str) -> Path:
        self.config.write_text(text, encoding="utf-8")
        return self.config

    def start(self, wrapper: Sequence[str] = (), log_level: str | None = None) -> int:
        """Start it (under `wrapper`, e.g. a namespace); its PID. Does not wait: see
        wait_status."""
        log = self.dir / f"agent-{len(self.logs)}.log"
        cmd = [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)]
        cmd += ["--log-level", log_level or self.log_level]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return self.spawn([*wrapper, *cmd], log, env=env).pid

    def status(self) -> dict[str, Any]:
        """The last status the agent wrote ({} before the first); `status.json` when the
        config moves it there."""
        path = self.status_path if self.status_path.exists() else self.dir / "status.json"
        return read_json(path) or {}

    def live_status(self) -> dict[str, Any]:
        """The status file if the running process wrote it, else {}."""
        st = self.status()
        return st if self.alive() and st.get("pid") == self.pid else {}

    def wait_status(
        self, pred: Callable[[dict[str, Any]], Any], timeout: float, what: str
    ) -> dict[str, Any]:
        """The first status for which `pred` holds; on timeout, say what it last reported."""
        last: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            nonlocal last
            s = self.status()
            if s:
                last = s
            return s if s and pred(s) else None

        try:
            found: dict[str, Any] = wait_for(check, timeout, what)
            return found
        except AssertionError as e:
            # A timeout alone does not tell why.
            seen = {k: last.get(k) for k in STATUS_KEYS if k in last}
            raise type(e)(f"{e}; alive={self.alive()} last status: {seen}") from None

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (a crash) and reap it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait for its exit code; SIGKILL and None if it lingers past `timeout`."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def log_lines(self, level: str = "") -> list[str]:
        """The lines of all its logs that contain `level` (all lines for '')."""
        out: list[str] = []
        for p in self.logs:
            with contextlib.suppress(OSError):
                out += [ln for ln in p.read_text(errors="replace").splitlines() if level in ln]
        return out


def demo_config(folder: Path, port: int = 1883, text: str | None = None) -> Path:
    """examples/demo.toml in `folder` as agent.toml (broker port `port`), with the card key
    it names (0600); `text` replaces the file's text (a variant of it)."""
    src = Path(__file__).resolve().parent.parent.parent / "examples" / "demo.toml"
    key = folder / "card.key"
    key.write_text("demo-card-key-" + "x" * 32)
    key.chmod(0o600)
    cfg = folder / "agent.toml"
    cfg.write_text((text if text is not None else src.read_text()).replace("PORT", str(port)))
    return cfg


def demo_text() -> str:
    """The text of examples/demo.toml."""
    return (Path(__file__).resolve().parent.parent.parent / "examples" / "demo.toml").read_text()
