"""The processes of the systems under test: the agent, and the base it shares with others.

`BenchProcess` is a process the bench starts with its output in a log file, watches (`pid`,
`alive`, `check_alive`, `log_tail`), SIGKILLs (`kill`) and stops (`stop`: its stop signal,
then SIGKILL if it lingers) by the PID it started, never by name; `start` again after a
`kill` or `stop` runs the same command again (a restart). `AgentProcess` is
`python -m agent.cli run` on a config, read through its status file
(`outbox.db.status.json` beside the config). The ThingsBoard IoT Gateway of the peer
benchmark (bench/peer_systems.py's `PeerGateway`) and the Modbus simulators
(bench/modbus_devices.py's `Simulator`) are BenchProcesses too.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.peers import read_json, stop_process
from tests.harness.waiting import TimedOutError, wait_for

ROOT = Path(__file__).resolve().parent.parent


class BenchProcess:
    """A process we start, its output in `log`; signalled by its PID only.

    `append_log`: each start appends to the log after a `---- start N at T` line (else the
    log is rewritten at each start).
    """

    name = "process"
    stop_signal = signal.SIGTERM
    stop_timeout = 20.0
    append_log = False

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> int:
        """Start the process (again, after a kill or stop); its PID."""
        raise NotImplementedError

    def launch(self, cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> int:
        """Start `cmd`, stdout and stderr to the log (`env`: ours if None); its PID."""
        self.starts += 1
        with self.log.open("ab" if self.append_log else "wb") as out:
            if self.append_log:
                out.write(f"---- start {self.starts} at {time.time():.3f}\n".encode())
                out.flush()
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env
            )
        return self.proc.pid

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise, with the end of its log, if the process has exited."""
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"{self.name} exited (code {code}):\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL (a crash, as the benchmark means it) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float | None = None) -> int | None:
        """The stop signal, SIGKILL if it lingers past `timeout`; the exit code."""
        proc, self.proc = self.proc, None
        wait = self.stop_timeout if timeout is None else timeout
        return stop_process(proc, wait, self.stop_signal)

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def source_digest() -> str:
    """sha256 (12 hex) of the agent's and drivers' Python sources: the working tree changes
    under a long run on a shared machine, and this says which code each start ran."""
    h = hashlib.sha256()
    for folder in ("agent", "drivers"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


class AgentProcess(BenchProcess):
    """`python -m agent.cli run` on a config (SIGTERM: it drains and exits 0).

    `sources`: note `source_digest()` at each start, in `self.sources` (the peer benchmark's
    long runs).
    """

    name = "agent"

    def __init__(self, config: Path, *, sources: bool = False) -> None:
        super().__init__(config.parent / "agent.log")
        self.config = config
        self.status_file = config.parent / "outbox.db.status.json"
        self.sources: list[str] | None = [] if sources else None

    def start(self) -> int:
        if self.sources is not None:
            self.sources.append(source_digest())
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        return self.launch(self.command(), cwd=ROOT, env=env)

    def command(self) -> list[str]:
        """`python -m agent.cli run` on the config (a subclass may wrap it)."""
        cmd = [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)]
        return [*cmd, "--log-level", "warning"]

    def status(self) -> dict[str, Any] | None:
        return read_json(self.status_file)

    def written(self) -> float:
        """The `written` stamp of the current status file (0 if there is none yet)."""
        doc = self.status()
        return float(doc.get("written", 0)) if doc else 0.0

    def wait_status(self, newer_than: float, timeout: float) -> dict[str, Any]:
        """The next status document written after `newer_than` (its `written` stamp)."""

        def fresh() -> dict[str, Any] | None:
            self.check_alive()
            doc = self.status() or {}
            return doc if doc.get("pid") and float(doc.get("written", 0)) > newer_than else None

        try:
            found: dict[str, Any] = wait_for(fresh, timeout, "agent status", every=0.02)
        except TimedOutError:
            raise RuntimeError(f"agent status not refreshed within {timeout:g}s") from None
        return found

    def wait_for(
        self,
        ready: Callable[[dict[str, Any]], bool],
        timeout: float,
        failure: Callable[[dict[str, Any]], str],
    ) -> dict[str, Any]:
        """The first status document that is `ready`; after `timeout` s, raise `failure(doc)`
        with the end of the log."""
        last: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            nonlocal last
            self.check_alive()
            last = self.status() or last
            return last if last.get("pid") and ready(last) else None

        try:
            found: dict[str, Any] = wait_for(check, timeout, "agent status", every=0.02)
        except TimedOutError:
            raise RuntimeError(f"{failure(last)}:\n{self.log_tail()}") from None
        return found
