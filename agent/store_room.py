"""Keeping the outbox inside its room: the byte cap, a full disk, and audit retention.

A mixin of agent.store.Store (kept apart so that each file reads in one sitting): when the
files pass 80 % of `[store] max_size` the oldest events are evicted down to 70 %, by class
(EVICT_ORDER: telemetry first, alarms last; never audit events, which have their own
retention, `audit_keep` and a quarter of the cap); a full disk releases the reserve file
and caps the store at the size it reached. Every eviction is counted by class, in the meta
table too (the counts survive restarts), and logged at most every 30 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite

from agent.contract import Priority
from agent.store_files import ensure_reserve

log = logging.getLogger("agent.store")

PRIORITY_NAMES = {p.value: p.name.lower() for p in Priority}
# Room is made by evicting these, in this order; never audit events (their own retention).
EVICT_ORDER = (Priority.TELEMETRY, Priority.STATE, Priority.ACCESS, Priority.ALARM)
AUDIT_KEEP = 20_000  # the default of [store] audit_keep
SET_NEXT_SEQ = "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', ?)"


class RoomKeeping:
    """The store's cap, full-disk and retention logic (state lives in Store.__init__)."""

    path: Path
    max_size: int
    audit_keep: int
    reserve: Path
    reserve_size: int
    evictions: int
    stats: Any
    _require_db: Callable[[], aiosqlite.Connection]
    _next_seq: int
    _page_size: int
    _last_check: float
    _added_bytes: int
    _last_evict_log: float
    _disk_limited: bool

    async def _measure(self) -> int:
        db = self._require_db()
        async with db.execute("PRAGMA page_count") as cur:
            row = await cur.fetchone()
            pages = int(row[0]) if row else 0
        async with db.execute("PRAGMA freelist_count") as cur:
            row = await cur.fetchone()
            free = int(row[0]) if row else 0
        try:
            wal_size = os.stat(str(self.path) + "-wal").st_size
        except FileNotFoundError:
            wal_size = 0
        used = (pages - free) * self._page_size + wal_size
        self.stats.used_bytes = used
        return used

    async def _enforce_cap(self) -> None:
        if self.stats.last_error is None:
            self._ensure_reserve()
        # Evict above 80 % of the cap, down to 70 %: the file only grows while live data
        # grows (freed pages are reused), so between two checks (every cap/32 bytes
        # written) and with the WAL bounded at cap/16, the files stay under the cap.
        self._last_check = time.monotonic()
        self._added_bytes = 0
        used = await self._measure()
        if used > self.max_size * 0.8:
            await self._evict_locked(used - int(self.max_size * 0.7))
        await self._trim_audit()

    async def _trim_audit(self) -> None:
        """Audit events beyond `audit_keep`, or beyond a quarter of the cap (oldest first):
        their own retention, which no other class's pressure takes."""
        db = self._require_db()
        async with db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox WHERE prio = ?",
            (int(Priority.AUDIT),),
        ) as cur:
            row = await cur.fetchone()
        count, size = (int(row[0]), int(row[1])) if row else (0, 0)
        excess = count - self.audit_keep
        quarter = self.max_size // 4
        if size > quarter and count:  # rows of about the mean size, with SQLite's overhead
            excess = max(excess, int((size - quarter * 0.9) / (size / count)) + 1)
        if excess > 0:
            await self._delete_oldest({Priority.AUDIT: excess})

    async def _make_room(self, failed: int = 0) -> None:
        """The disk is full: release the reserve file, then evict inside our own file.

        Deleting rows needs room in the WAL too, which a full disk does not have: the reserve
        (a file of zeros made at start-up) is that room. Freed pages are then reused, so the
        store goes on working inside the size it has reached. `failed`: the bytes of the batch
        the disk refused; at least twice that is evicted, so that the retry fits in pages
        already ours (evicting only down to 70 % of a cap the file had just reached could
        free less than the batch needs, and the retry then failed the same way forever).
        From now on commits are small and the room is checked after each
        (Store._disk_limited), until the agent restarts.
        """
        db = self._require_db()
        self._disk_limited = True
        if self.reserve.exists():
            size = self.reserve.stat().st_size
            self.reserve.unlink()
            log.warning("disk full: released the %d-byte reserve beside the store", size)
        # From now on the store lives within the size its file has reached: the cap becomes
        # that size (so inserts reuse freed pages and a checkpoint never grows the file),
        # and the WAL is kept well inside the room the reserve gave back.
        try:
            db_size = os.stat(self.path).st_size
        except OSError:
            db_size = self.max_size
        limited = max(256 << 10, db_size)
        if limited < self.max_size:
            log.warning(
                "disk full: store capped at %d bytes (was %d) until the agent restarts",
                limited,
                self.max_size,
            )
            self.max_size = limited
            wal_pages = max(8, self.reserve_size // 4 // self._page_size)
            with contextlib.suppress(sqlite3.Error):
                await db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
                await db.execute(f"PRAGMA journal_size_limit={wal_pages * self._page_size}")
        with contextlib.suppress(sqlite3.Error):
            await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await self._measure()
        try:
            await self._evict_locked(
                max(self.stats.used_bytes - int(self.max_size * 0.7), 2 * failed)
            )
        except sqlite3.Error as e:
            log.debug("eviction on a full disk failed: %r", str(e))
        with contextlib.suppress(sqlite3.Error):
            await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _ensure_reserve(self) -> None:
        if problem := ensure_reserve(self.reserve, self.reserve_size):
            log.debug("no reserve beside the store: %s", problem)

    def _log_eviction(self) -> None:
        # An overflow evicts many times a second: say so at most every 30 s.
        now = time.monotonic()
        if now - self._last_evict_log >= 30.0:
            self._last_evict_log = now
            log.warning(
                "store full (cap %d bytes): evicted so far %s",
                self.max_size,
                ", ".join(f"{k}={v}" for k, v in self.stats.evicted.items() if v),
            )

    async def _evict_locked(self, need: int) -> None:
        """Delete about `need` bytes of events: oldest telemetry first, alarms last."""
        db = self._require_db()
        async with db.execute("SELECT count(*) FROM outbox") as cur:
            row = await cur.fetchone()
            count = int(row[0]) if row else 0
        if count == 0:
            return
        per_row = max(64, (self.stats.used_bytes or need) // count)
        await self._delete_oldest(dict.fromkeys(EVICT_ORDER, max(1, need // per_row + 1)), True)

    async def _delete_oldest(self, want: dict[Priority, int], shared: bool = False) -> None:
        """Evict the oldest events of each class, up to `want[prio]`; `shared`: one budget
        for all, taken from the classes in the order given."""
        db = self._require_db()
        done: dict[str, int] = {}
        budget = next(iter(want.values()), 0)
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(SET_NEXT_SEQ, (self._next_seq,))
            for prio, limit in want.items():
                take = budget if shared else limit
                if take <= 0:
                    continue
                cur = await db.execute(
                    "DELETE FROM outbox WHERE seq IN "
                    "(SELECT seq FROM outbox WHERE prio = ? ORDER BY seq LIMIT ?)",
                    (int(prio), take),
                )
                n = max(cur.rowcount, 0)
                if n:
                    name = PRIORITY_NAMES[int(prio)]
                    done[name] = n
                    await db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        (f"evicted.{name}", self.stats.evicted[name] + n),
                    )
                    budget -= n
            await db.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                await db.execute("ROLLBACK")
            raise
        for name, n in done.items():  # counted only once the deletion is committed
            self.stats.evicted[name] += n
            self.stats.backlog -= n
        if done:
            self.evictions += 1  # the publisher drops rows it fetched before this
            self._log_eviction()
        with contextlib.suppress(sqlite3.Error):
            await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await self._measure()
