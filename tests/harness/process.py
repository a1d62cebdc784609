"""What every peer process shares: its binary, its start with a log, its stop by PID.

`need` finds a system binary or fails with the command that installs it (a missing binary
is a failure, never a skip). `ChildProcess` is a process we started: `spawn` it with its
output in a log file, `alive`, `stop` (SIGTERM, SIGKILL if it lingers) by the PID we got.
`stop_process` does the same for any Popen we hold; `read_json` reads the JSON files the
peers rewrite while they run. Nothing here signals a process by name.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent  # the checkout: cwd of the peers


class PeerFailedError(AssertionError, RuntimeError):
    """A peer exited or never came up: a test fails, a benchmark stops (see waiting.TimedOutError)."""


class MissingBinaryError(RuntimeError):
    """A system binary the harness needs is not installed; the message says how to install it."""


def need(binary: str, package: str) -> str:
    """The path of `binary` (PATH, then /usr/sbin where Debian puts daemons), or
    MissingBinaryError naming the apt package."""
    found = shutil.which(binary)
    if found:
        return found
    if Path(f"/usr/sbin/{binary}").exists():
        return f"/usr/sbin/{binary}"
    raise MissingBinaryError(
        f"{binary} is not installed: run `sudo apt-get install -y {package}` (tests/setup.sh does)"
    )


def stop_process(
    proc: subprocess.Popen[bytes] | None,
    timeout: float = 10.0,
    sig: signal.Signals = signal.SIGTERM,
) -> int | None:
    """Signal the process we started (by its PID; SIGTERM), SIGKILL it if it lingers past
    `timeout`; its exit code (None: no process)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None if it is missing, half-written or not an object."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class ChildProcess:
    """A process we start (`spawn`) and stop (`stop`) by its PID; `logs`: one file a start
    (or one file all starts append to)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(
        self,
        cmd: Sequence[str],
        log: Path,
        *,
        append: bool = False,
        stderr_only: bool = False,
        cwd: Path | None = ROOT,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `cmd` with its output (stdout and stderr, or stderr only) in `log`."""
        if log not in self.logs:
            self.logs.append(log)
        with log.open("ab" if append else "wb") as out:
            self.proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if stderr_only else out,
                stderr=out if stderr_only else subprocess.STDOUT,
                cwd=cwd,
                env=None if env is None else dict(env),
            )
        return self.proc

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, SIGKILL after `timeout`; the exit code (None if it was not started)."""
        proc, self.proc = self.proc, None
        return stop_process(proc, timeout)

    def log_text(self) -> str:
        """Everything its starts wrote."""
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def log_tail(self, limit: int = 2000) -> str:
        return self.log_text()[-limit:]
