"""Whether the gateway's clock can be trusted: the kernel's synchronisation state (adjtimex).

A gateway without a real-time clock boots with a wrong time; events stamped before NTP has
synchronised the clock say so ("clock": "unsynced") instead of pretending. Reads the kernel
only; never sets the time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Any


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (Linux); only `modes` and the return value are used.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 256)]


class ClockState:
    """Whether the kernel says the system clock is synchronised (adjtimex, Linux).

    A gateway without an RTC boots with a wrong time; events stamped before NTP has
    synchronised the clock carry "clock": "unsynced" instead of pretending.
    """

    TIME_ERROR = 5

    def __init__(self, mode: str = "auto", recheck: float = 30.0) -> None:
        self.mode = mode
        self._recheck = recheck
        self._checked = 0.0
        self._synced = True
        self._adjtimex: Any = None
        if mode == "auto":
            name = ctypes.util.find_library("c")
            if name:
                self._adjtimex = getattr(ctypes.CDLL(name, use_errno=True), "adjtimex", None)

    def synced(self) -> bool:
        """True unless the kernel reports the clock as unsynchronised (cached)."""
        if self._adjtimex is None:
            return True
        now = time.monotonic()
        if now - self._checked > self._recheck:
            self._checked = now
            tx = _Timex()
            state = self._adjtimex(ctypes.byref(tx))
            self._synced = state not in (-1, self.TIME_ERROR)
        return self._synced
