"""A serial line for tests: two linked pseudo-terminals from socat, whose cable can be pulled.

`PtyPair` makes `a` and `b` in its folder (symlinks to the two ptys); `pull_cable()` stops
socat (both ends see the line go away, the links vanish) and `plug_cable()` starts it again
under the same link names (new ptys behind them). socat is stopped by the PID we started.
"""

from __future__ import annotations

from pathlib import Path

from tests.harness.process import ChildProcess, PeerFailedError, need
from tests.harness.waiting import wait_for


class PtyPair(ChildProcess):
    """Two linked pseudo-terminals from socat, reachable as `.a` and `.b` in `folder`."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.binary = need("socat", "socat")
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.a = self.dir / "a"
        self.b = self.dir / "b"
        self.log = self.dir / "socat.log"

    def start(self, timeout: float = 10.0) -> None:
        """Start socat; return once both links exist."""
        for link in (self.a, self.b):
            link.unlink(missing_ok=True)  # stale from a SIGKILLed socat
        end = "pty,raw,echo=0,link="
        cmd = [self.binary, "-d", "-d", f"{end}{self.a}", f"{end}{self.b}"]
        self.spawn(cmd, self.log, append=True, stderr_only=True)

        def linked() -> bool:
            if not self.alive():
                raise PeerFailedError(f"socat exited: {self.log_tail()}")
            return self.a.exists() and self.b.exists()

        wait_for(linked, timeout, "socat to create both pty links")

    def stop(self, timeout: float = 10.0) -> int | None:
        code = super().stop(timeout)
        for link in (self.a, self.b):
            link.unlink(missing_ok=True)
        return code

    def pull_cable(self) -> None:
        """Close the line mid-test: both ends get an error, the link names vanish."""
        self.stop()

    def plug_cable(self) -> None:
        """Bring the line back under the same link names."""
        self.start()
