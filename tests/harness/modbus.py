"""The Modbus device simulator (`python -m drivers.modbus.simulator`) as a subprocess.

`ModbusSim` serves the register vectors of a few units over TCP (on a port the kernel picks,
read back from the simulator's stats file) or over RTU on a serial port (a pty of
`pty.PtyPair`), and start() waits until it serves: until the stats file names where it
listens, which the simulator writes only once its TCP socket listens or its serial port is
open. (No test connection for TCP: it would count in the stats' `connections`.) It is
stopped by the PID we started.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.harness.process import ChildProcess, PeerFailedError, read_json
from tests.harness.waiting import wait_for


class ModbusSim(ChildProcess):
    """The Modbus simulator in a subprocess; start() waits until it serves.

    `devices` maps unit id -> vector file; `every` maps unit id -> seconds per case; `dead`
    units stay silent; `failing` units answer exception 4 while their file exists. Without `rtu` it serves TCP on `host`, port chosen by the kernel at
    the first start and kept across stop()/start(). With `rtu` (a pty path) it serves RTU
    there at `baud`. One log file per start, at `log_level`.
    """

    def __init__(
        self,
        folder: Path,
        devices: Mapping[int, Path | str],
        *,
        every: Mapping[int, float] | None = None,
        dead: Sequence[int] = (),
        failing: Mapping[int, Path] | None = None,
        rtu: Path | str | None = None,
        baud: int = 9600,
        noise: float = 0.0,
        seed: int | None = None,
        host: str = "127.0.0.1",
        log_level: str = "debug",
    ) -> None:
        super().__init__()
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.devices = dict(devices)
        self.every = dict(every or {})
        self.dead = list(dead)
        self.failing = dict(failing or {})
        self.rtu = str(rtu) if rtu is not None else None
        self.baud = baud
        self.noise = noise
        self.seed = seed
        self.host = host
        self.port = 0
        self.log_level = log_level
        self.stats_path = self.dir / "stats.json"

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
        for unit, flag in self.failing.items():
            cmd += ["--failing", f"{unit}={flag}"]
        if self.noise:
            cmd += ["--noise", str(self.noise)]
        if self.seed is not None:
            cmd += ["--seed", str(self.seed)]
        return [*cmd, "--log-level", self.log_level]

    def start(self, timeout: float = 15.0) -> None:
        self.stats_path.unlink(missing_ok=True)
        self.spawn(self.command(), self.dir / f"simulator-{len(self.logs)}.log")

        def serving() -> bool:
            if not self.alive():
                raise PeerFailedError(f"the Modbus simulator exited: {self.log_tail(3000)}")
            listen = self.stats().get("listen")
            if not listen:
                return False
            if self.rtu is None:
                self.port = int(listen["port"])
            return True

        wait_for(serving, timeout, "the Modbus simulator to serve")

    def stats(self) -> dict[str, Any]:
        """The last stats the simulator wrote ({} before the first write)."""
        return read_json(self.stats_path) or {}

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
