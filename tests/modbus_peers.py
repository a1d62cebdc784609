"""Modbus peers for tests: the device simulator as a process, and a socat pty pair.

`ModbusSim` runs `python -m drivers.modbus.simulator` over TCP (on a port the kernel picks,
read back from the simulator's stats file) or over RTU on a pty, and waits until it serves:
until the stats file names where it listens, which the simulator writes only once its TCP
socket listens or its serial port is open.
`PtyPair` is a socat pseudo-terminal pair with stable link names (`.a`, `.b`), whose cable
can be pulled and plugged back in mid-test. Both are stopped by the PID they started.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from conftest import ROOT, need, wait_for


class ModbusSim:
    """The Modbus simulator in a subprocess; start() waits until it serves.

    `devices` maps unit id -> vector file; `every` maps unit id -> seconds per case.
    Without `rtu` it serves TCP on `host`, port chosen by the kernel at the first start and
    kept across stop()/start(). With `rtu` (a pty path) it serves RTU there.
    """

    def __init__(
        self,
        workdir: Path,
        devices: Mapping[int, Path | str],
        *,
        every: Mapping[int, float] | None = None,
        dead: Sequence[int] = (),
        rtu: Path | str | None = None,
        baud: int = 9600,
        noise: float = 0.0,
        seed: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.devices = dict(devices)
        self.every = dict(every or {})
        self.dead = list(dead)
        self.rtu = str(rtu) if rtu is not None else None
        self.baud = baud
        self.noise = noise
        self.seed = seed
        self.host = host
        self.port = 0
        self.stats_path = self.dir / "stats.json"
        self.logs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "drivers.modbus.simulator", "--stats", str(self.stats_path)]
        if self.rtu is not None:
            cmd += ["--rtu", self.rtu, "--baud", str(self.baud)]
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
            cmd += ["--tcp", f"{host}:{self.port}"]
        for unit, path in self.devices.items():
            every = f":every={self.every[unit]}" if unit in self.every else ""
            cmd += ["--device", f"{unit}={path}{every}"]
        for unit in self.dead:
            cmd += ["--dead", str(unit)]
        if self.noise:
            cmd += ["--noise", str(self.noise)]
        if self.seed is not None:
            cmd += ["--seed", str(self.seed)]
        return cmd

    def start(self, timeout: float = 15) -> None:
        self.stats_path.unlink(missing_ok=True)
        log = self.dir / f"simulator-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*self.command(), "--log-level", "debug"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

        def serving() -> bool:
            if not self.alive():
                raise AssertionError(f"the Modbus simulator exited: {self.log_text()[-3000:]}")
            # The simulator writes `listen` only once its socket listens or its port is open,
            # so this is the readiness signal for both. (No test connection for TCP: it
            # would count in the stats' `connections`.)
            listen = self.stats().get("listen")
            if not listen:
                return False
            if self.rtu is None:
                self.port = int(listen["port"])
            return True

        wait_for(serving, timeout, "the Modbus simulator to serve")

    def stats(self) -> dict[str, Any]:
        """The last stats the simulator wrote ({} before the first write)."""
        try:
            doc = json.loads(self.stats_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def wait_stats(
        self, pred: Callable[[dict[str, Any]], Any], timeout: float, what: str
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.stats()
            return s if s and pred(s) else None

        found: dict[str, Any] = wait_for(check, timeout, what)
        return found

    def requests(self, unit: int, function_code: int) -> int:
        """How many requests with this function code the server received for this unit."""
        return int(self.stats().get("requests", {}).get(str(unit), {}).get(str(function_code), 0))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM and wait; the exit code (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code


class PtyPair:
    """Two linked pseudo-terminals from socat, reachable as `.a` and `.b` in `workdir`.

    pull_cable() stops socat (both ends see the line go away, the links disappear);
    plug_cable() starts it again with the same link names (new ptys behind them).
    """

    def __init__(self, workdir: Path) -> None:
        self.bin = need("socat", "socat")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.a = self.dir / "a"
        self.b = self.dir / "b"
        self.log = self.dir / "socat.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> None:
        for link in (self.a, self.b):
            link.unlink(missing_ok=True)  # stale from a SIGKILLed socat
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    self.bin,
                    "-d",
                    "-d",
                    f"pty,raw,echo=0,link={self.a}",
                    f"pty,raw,echo=0,link={self.b}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

        def linked() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"socat exited: {self.log.read_text()[-2000:]}")
            return self.a.exists() and self.b.exists()

        wait_for(linked, timeout, "socat to create both pty links")

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        for link in (self.a, self.b):
            link.unlink(missing_ok=True)

    def pull_cable(self) -> None:
        """Close the line mid-test: both ends get an error, the link names vanish."""
        self.stop()

    def plug_cable(self) -> None:
        """Bring the line back under the same link names."""
        self.start()
