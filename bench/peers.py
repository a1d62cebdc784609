"""The processes a benchmark starts and watches: a private mosquitto, and /proc figures.

`Mosquitto` runs a broker of our own on a free 127.0.0.1 port with a generated config in a
temporary folder (persistence off, no queue or in-flight limits, so the broker measures
nothing but forwarding and acking). It is stopped by the PID we started, never by name.
`ProcStat` reads a process's CPU time and resident memory from /proc (Linux).
`stop_process` stops any process we started, by its PID; `read_json` reads the JSON files
(status, stats) the processes rewrite while they run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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


def mosquitto_binary() -> str:
    """The mosquitto executable (PATH first, then /usr/sbin where Debian puts it)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if Path("/usr/sbin/mosquitto").exists():
        return "/usr/sbin/mosquitto"
    raise RuntimeError("mosquitto is not installed: sudo apt-get install -y mosquitto")


def mosquitto_version(binary: str | None = None) -> str:
    """'2.0.11', or '?' if the binary does not say."""
    try:
        out = subprocess.run(
            [binary or mosquitto_binary(), "-h"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    for word in out.split():
        if word[:1].isdigit() and "." in word:
            return word
    return "?"


class Mosquitto:
    """A mosquitto process on a free loopback port; use as a context manager.

    `port` pins the port, so that a broker stopped and started again comes back where its
    clients expect it (the drain benchmark); the default picks a free port at each start.
    """

    def __init__(self, *, port: int = 0, start_timeout: float = 10.0) -> None:
        self.binary = mosquitto_binary()
        self.host = HOST
        self.fixed_port = port  # 0: a free port at every start()
        self.port = port
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.dir: Path | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _write_conf(self, d: Path) -> Path:
        lines = [
            # mosquitto drops privileges to `mosquitto` when started as root, and then
            # cannot write its log in our folder; stay root instead (bench only).
            "user root" if os.geteuid() == 0 else "",
            "persistence false",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "allow_anonymous true",
            f"log_dest file {d}/mosquitto.log",
            "log_type error",
            "log_type warning",
            f"listener {self.port} {self.host}",
        ]
        conf = d / "mosquitto.conf"
        conf.write_text("\n".join(line for line in lines if line) + "\n")
        return conf

    def log_tail(self, limit: int = 2000) -> str:
        if self.dir is None:
            return ""
        try:
            return (self.dir / "mosquitto.log").read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def start(self) -> None:
        """Start the broker and return once it accepts TCP connections (or raise)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-mosquitto-")
        self.dir = Path(self._tmp.name)
        self.port = self.fixed_port or free_port(self.host)
        conf = self._write_conf(self.dir)
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"mosquitto exited at start: {tail or '(no log)'}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"mosquitto did not listen on {self.host}:{self.port} "
                    f"within {self.start_timeout:g}s"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM the broker we started (by its PID), SIGKILL it if it lingers."""
        proc, self.proc = self.proc, None
        stop_process(proc)
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ProcStat:
    """CPU time and resident memory of one process, read from /proc/<pid>."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        """utime + stime of all the process's threads, in seconds."""
        raw = Path(f"/proc/{self.pid}/stat").read_text()
        # The command name (field 2) may hold spaces: split after its closing parenthesis.
        fields = raw[raw.rindex(")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
        return (utime + stime) / self.TICK

    def rss_mib(self) -> float:
        """VmRSS in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def rss_while(self, running: Callable[[], bool], check: Callable[[], None]) -> list[float]:
        """VmRSS (MiB) now, then every 0.25 s while `running()`; `check()`, called before each
        sleep, raises if the process is gone."""
        rss = [self.rss_mib()]
        while running():
            check()
            time.sleep(0.25)
            rss.append(self.rss_mib())
        return rss


def cpu_seconds(stats: Iterable[ProcStat]) -> float:
    """utime + stime of several processes together, in seconds."""
    return sum(s.cpu_seconds() for s in stats)
