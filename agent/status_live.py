"""What the status page shows beyond the runtime's own state: each device's last values, the
active alarms, the recent warnings and errors, and the stream of committed events.

`LiveView.committed` is the store's `on_commit` hook: it runs inside every commit, so per
event it does one dict assignment and never formats anything; the
page's JSON is built only when someone asks for it. Everything here is bounded: one entry
per device and kind, per alarm point, the last RECENT_ERRORS log records, and QUEUE_SIZE
events per `tail --local` client (a client that falls that far behind is dropped and
counted: it never slows the agent). This module does no I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from agent.contract import Kind, NewEvent
from agent.store import Row

log = logging.getLogger(__name__)

RECENT_ERRORS = 20
QUEUE_SIZE = 2_000  # events a local tail may be behind before it is dropped
MAX_CLIENTS = 8
MESSAGE_CHARS = 300
# The last line a client too slow to keep up gets before its stream ends.
DROPPED = b'{"error":"dropped","detail":"this client fell too far behind the events"}\n'


@dataclass(frozen=True, slots=True)
class LogEntry:
    ts: float
    level: str
    logger: str
    message: str


class RecentErrors(logging.Handler):
    """The last RECENT_ERRORS WARNING+ records, for the page (installed by the runtime)."""

    def __init__(self, size: int = RECENT_ERRORS) -> None:
        super().__init__(logging.WARNING)
        self.entries: deque[LogEntry] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the record
            message = str(record.msg)
        self.entries.append(
            LogEntry(record.created, record.levelname, record.name, message[:MESSAGE_CHARS])
        )

    def docs(self) -> list[dict[str, Any]]:
        """Newest first."""
        return [
            {"ts": e.ts, "level": e.level, "logger": e.logger, "message": e.message}
            for e in reversed(self.entries)
        ]


class Tail:
    """One `tail --local` client: a bounded queue of NDJSON lines; None ends it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_SIZE + 2)
        self.dropped = False


class LiveView:
    """The last telemetry and state event of each device, the alarm points' last edges, the
    tails. (Access and audit events are not kept: an audit event may name any device id a
    command gave, which would make this unbounded.)"""

    def __init__(self) -> None:
        self.last: dict[tuple[str, Kind], NewEvent] = {}
        self.alarms: dict[tuple[str, str], NewEvent] = {}
        self.errors = RecentErrors()
        self.tails: set[Tail] = set()
        self.tails_dropped = 0
        self.tails_served = 0
        self.failures = 0

    # ---- the hot path -----------------------------------------------------------------

    def committed(self, events: Sequence[NewEvent], rows: Sequence[Row]) -> None:
        """The store committed these events (rows: their seq, topic and payload)."""
        last, alarms = self.last, self.alarms
        try:
            for ev in events:
                kind = ev.kind
                if kind is Kind.TELEMETRY or kind is Kind.STATE:
                    last[(ev.device, kind)] = ev
                elif kind is Kind.ALARM:
                    alarms[(ev.device, ev.body.get("alarm", ""))] = ev
            if self.tails:
                self._fan_out(rows)
        except Exception:  # the page must never stop the store's commits
            self.failures += 1
            if self.failures == 1:
                log.exception("status page: the live view failed; the agent runs on")

    def _fan_out(self, rows: Sequence[Row]) -> None:
        lines = [b'{"topic":' + orjson.dumps(r[3]) + b',"payload":' + r[4] + b"}\n" for r in rows]
        for tail in list(self.tails):
            q = tail.queue
            if q.maxsize - q.qsize() < len(lines) + 2:  # places kept for DROPPED and the end
                self.drop(tail)
                continue
            for line in lines:
                q.put_nowait(line)

    # ---- tails --------------------------------------------------------------------------

    def open_tail(self) -> Tail | None:
        """A new client's queue, or None when MAX_CLIENTS are reading already."""
        if len(self.tails) >= MAX_CLIENTS:
            return None
        tail = Tail()
        self.tails.add(tail)
        self.tails_served += 1
        return tail

    def close_tail(self, tail: Tail) -> None:
        self.tails.discard(tail)

    def drop(self, tail: Tail) -> None:
        """A client too far behind: end its stream (counted)."""
        self.tails.discard(tail)
        tail.dropped = True
        self.tails_dropped += 1
        while not tail.queue.empty():  # its backlog is gone: it reconnects if it wants
            tail.queue.get_nowait()
        tail.queue.put_nowait(DROPPED)
        tail.queue.put_nowait(None)

    def end_all(self) -> None:
        """Shutdown: every stream ends after what it has queued."""
        for tail in list(self.tails):
            self.tails.discard(tail)
            if not tail.queue.full():
                tail.queue.put_nowait(None)

    # ---- what the page shows ------------------------------------------------------------

    def device_doc(self, device: str) -> dict[str, Any]:
        """The device's last values (point, value, unit) and time, and its last state."""
        doc: dict[str, Any] = {"values": [], "values_ts": None, "quality": None, "state": {}}
        tele = self.last.get((device, Kind.TELEMETRY))
        if tele is not None:
            units = tele.body.get("units") or {}
            doc["values"] = [
                {"point": k, "value": v, "unit": units.get(k, "")}
                for k, v in (tele.body.get("values") or {}).items()
            ]
            doc["values_ts"] = tele.ts
            doc["quality"] = tele.body.get("quality")
        state = self.last.get((device, Kind.STATE))
        if state is not None:
            doc["state"] = {
                k: v
                for k, v in state.body.items()
                if k not in ("online", "reason") and isinstance(v, str | int | float | bool)
            }
        return doc

    def active_alarms(self, devices: set[str]) -> list[dict[str, Any]]:
        """Alarm points whose last edge was `active`, of the configured devices; newest first."""
        out = [
            {
                "device": dev,
                "alarm": alarm,
                "severity": ev.body.get("severity"),
                "zone": ev.body.get("zone"),
                "since": ev.ts,
            }
            for (dev, alarm), ev in self.alarms.items()
            if dev in devices and ev.body.get("state") == "active"
        ]
        return sorted(out, key=lambda a: -float(a["since"]))

    def forget(self, devices: set[str]) -> None:
        """Drop what is known of devices no longer configured (after a reload)."""
        self.last = {k: v for k, v in self.last.items() if k[0] in devices}
        self.alarms = {k: v for k, v in self.alarms.items() if k[0] in devices}

    def status(self) -> dict[str, Any]:
        return {
            "tail_clients": len(self.tails),
            "tails_served": self.tails_served,
            "tails_dropped": self.tails_dropped,
            "failures": self.failures,
        }
