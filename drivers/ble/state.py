"""The BLE driver's small state file: the last accepted BTHome encryption counter per sensor.

bthome-ble keeps the counter in memory from 0, so after every restart a recorded encrypted
advert would be accepted again. The driver keeps the highest counter it accepted per device
address here (JSON, written atomically, 0600) and refuses any advert whose counter is not
above it. A lost or unreadable file starts empty (logged): the window reopens once, as it
would with bthome-ble alone.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class CounterStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.counters: dict[str, int] = {}
        self.dirty = False
        self.writes = 0
        self.write_errors = 0

    def load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("ble state file %s unreadable (%s): counters start empty", self.path, e)
            return
        found = doc.get("bthome_counters") if isinstance(doc, dict) else None
        if not isinstance(found, dict):
            return
        self.counters = {
            str(k): v for k, v in found.items() if isinstance(v, int) and 0 <= v < 2**32
        }

    def last(self, address: str) -> int | None:
        return self.counters.get(address)

    def accept(self, address: str, counter: int) -> None:
        self.counters[address] = counter
        self.dirty = True

    def flush(self) -> None:
        """Write the file if something changed (atomically: a temp file renamed over it)."""
        if not self.dirty:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"bthome_counters": self.counters}, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            self.write_errors += 1
            log.warning("ble state file %s not written: %s", self.path, e)
            return
        self.dirty = False
        self.writes += 1
