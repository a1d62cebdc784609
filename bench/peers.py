"""The processes a benchmark starts and watches: a private mosquitto, and /proc figures.

The peers themselves are tests/harness, shared with the tests; this module gives the
benchmarks their names for them. `Mosquitto` is the harness broker as a benchmark runs it:
a temporary folder, a free 127.0.0.1 port, persistence off, no queue or in-flight limits,
warnings and errors logged only, so that the broker measures nothing but forwarding and
acking; a subclass may add lines through `_write_conf`. It is stopped by the PID we
started, never by name. `ProcStat` reads a process's CPU time and resident memory from
/proc (Linux). `free_port`, `stop_process` (by PID), `read_json` (the status and stats files
the processes rewrite while they run), `mosquitto_binary` and `mosquitto_version` are the
harness's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.harness.broker import Broker, mosquitto_binary, mosquitto_version
from tests.harness.ports import HOST, free_port
from tests.harness.process import read_json, stop_process

__all__ = [
    "HOST",
    "Mosquitto",
    "ProcStat",
    "cpu_seconds",
    "free_port",
    "mosquitto_binary",
    "mosquitto_version",
    "read_json",
    "stop_process",
]


class Mosquitto(Broker):
    """A throwaway mosquitto on a free loopback port; use as a context manager.

    `port` pins the port, so that a broker stopped and started again comes back where its
    clients expect it (the drain benchmark); by default a free port is picked now.
    """

    def __init__(self, *, port: int = 0, start_timeout: float = 10.0) -> None:
        super().__init__(None, port=port, notice_log=False, start_timeout=start_timeout)


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
