"""The RS-485 line as libosdp wants it: non-blocking read/write/flush on one serial port.

libosdp calls these from `refresh()` (on the event loop, holding the GIL), so nothing here
may block. A port that goes away (a USB adapter pulled, the other end of a test pty closed)
is reopened at most once a second by `read`; meanwhile reads are empty and writes are
dropped, and libosdp sees a reader that does not answer.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from typing import Any

import serial  # type: ignore[import-untyped]

log = logging.getLogger(__name__)
_ids = itertools.count(1)
REOPEN_EVERY = 1.0


class SerialChannel:
    """One bus: `.id` is distinct per bus (libosdp groups readers on one line by it)."""

    def __init__(self, port: str, baudrate: int) -> None:
        self.id = next(_ids)
        self.port = port
        self.baudrate = baudrate
        self.serial: serial.Serial | None = None
        self.fd = -1
        self.rx = 0
        self.tx = 0
        self.errors = 0
        self.reopens = 0
        self._next_open = 0.0

    def open(self) -> None:
        """Open the port now; OSError / serial.SerialException when it cannot be."""
        s = serial.Serial(self.port, self.baudrate, timeout=0, write_timeout=0, exclusive=True)
        self.serial, self.fd = s, s.fileno()
        os.set_blocking(self.fd, False)

    def close(self) -> None:
        if self.serial is not None:
            with contextlib.suppress(OSError, serial.SerialException):
                self.serial.close()
        self.serial, self.fd = None, -1

    def _lost(self, e: BaseException) -> None:
        if self.serial is not None:
            log.warning("osdp port lost: port=%s error=%s", self.port, e)
        self.errors += 1
        self.close()
        self._next_open = time.monotonic() + REOPEN_EVERY

    def _reopen(self) -> bool:
        if time.monotonic() < self._next_open:
            return False
        try:
            self.open()
        except (OSError, serial.SerialException) as e:
            self._next_open = time.monotonic() + REOPEN_EVERY
            del e
            return False
        self.reopens += 1
        log.info("osdp port reopened: port=%s", self.port)
        return True

    # ---- osdp.Channel ---------------------------------------------------------------------

    def read(self, max_bytes: int) -> bytes:
        if self.fd < 0 and not self._reopen():
            return b""
        try:
            data = os.read(self.fd, max_bytes)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as e:  # EIO: the line is gone
            self._lost(e)
            return b""
        # b"": no data (a tty in raw mode with VMIN 0 says so, not EAGAIN); a line that is
        # gone raises EIO above.
        self.rx += len(data)
        return data

    def write(self, buf: bytes) -> int:
        if self.fd < 0:
            return len(buf)  # dropped: nobody hears it; libosdp times the reader out
        try:
            n = os.write(self.fd, buf)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            self._lost(e)
            return len(buf)
        self.tx += n
        return n

    def flush(self) -> None:
        if self.serial is not None:
            try:
                self.serial.reset_input_buffer()
            except (OSError, serial.SerialException) as e:
                self._lost(e)

    def stats(self) -> dict[str, Any]:
        return {"rx_bytes": self.rx, "tx_bytes": self.tx, "port_errors": self.errors}
