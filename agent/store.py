"""The outbox: every event is committed to SQLite before anything else happens to it.

Group commit (one transaction every few milliseconds), priorities, a byte cap measured on
the real files (WAL included) with eviction of the oldest telemetry first, delete on PUBACK,
and a start-up integrity check that moves a damaged file aside instead of refusing to run
(agent/store_files.py); an older store's schema is migrated first, a newer one's refused
(agent/store_schema.py). The cap, a full disk and audit retention: agent/store_room.py.
This module never talks to the network; topics and payloads come from agent.contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from agent.clock import ClockState
from agent.contract import (
    LAST_RANK,
    PRIORITY,
    RETAINED,
    SEND_ORDER,
    SEND_RANK,
    NewEvent,
    Origin,
    Priority,
    encode,
    uuid7,
)
from agent.errors import StoreError, StoreFullError
from agent.store_files import integrity_problem, move_aside, salvage_seq_of
from agent.store_room import AUDIT_KEEP, PRIORITY_NAMES, SET_NEXT_SEQ, RoomKeeping
from agent.store_schema import SCHEMA, SCHEMA_VERSION, migrate, refuse_newer

log = logging.getLogger(__name__)

MAX_PENDING = 200_000  # events held in memory while the disk refuses writes
MAX_BATCH = 2_000  # events per transaction: bounds how long one commit holds the loop
# Events per transaction once the disk has been full: a 2,000-event batch grows the file
# (through the WAL) by more than eviction freed, and the checkpoint that must then extend
# the file fails on the full disk again and again (issue #14, docs/durability.md).
DISK_FULL_BATCH = 100
HIGH_WATER = 20_000  # a producer waits for a commit above this many queued events
ACK_DELAY = 0.25  # acknowledged events alone wait this long to be deleted (with new inserts)
GROUP = 8  # telemetry committed without waiting longer once this many events are queued
# What a commit inserts: seq, prio, created, topic, payload, retain.
Row = tuple[int, int, float, str, bytes, int]
# The next seq survives in the rows themselves (max(seq) + 1 at start-up) until rows are
# deleted: every transaction that deletes rows writes it down (SET_NEXT_SEQ).


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A committed event: what the publisher sends."""

    seq: int
    priority: int
    topic: str
    payload: bytes
    retain: bool


@dataclass
class StoreStats:
    """Counters and gauges the status reports."""

    committed: int = 0
    transactions: int = 0  # commits that added events
    committed_by_priority: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(PRIORITY_NAMES.values(), 0)
    )
    delivered: int = 0
    backlog: int = 0
    evicted: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(PRIORITY_NAMES.values(), 0)
    )
    lost_uncommitted: int = 0
    parked: int = 0
    last_parked_reason: str | None = None
    used_bytes: int = 0
    last_error: str | None = None
    recovered: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION
    upgraded: dict[str, Any] | None = None  # from which version, the backup (agent.store_schema)


class Store(RoomKeeping):
    """SQLite (WAL) outbox with group commit. One instance per agent process."""

    def __init__(
        self,
        path: Path,
        origin: Origin,
        *,
        max_size: int,
        commit_interval: float = 0.005,
        telemetry_delay: float = 0.05,
        synchronous: str = "full",
        clock: ClockState | None = None,
        audit_keep: int = AUDIT_KEEP,
    ) -> None:
        self.path = path
        self.audit_keep = audit_keep
        self.origin = origin
        self.max_size = max_size
        self.commit_interval = commit_interval
        self.telemetry_delay = telemetry_delay
        self.synchronous = synchronous
        self.clock = clock or ClockState("trust")
        self.stats = StoreStats()
        self.last_seq = 0
        self.new_data = asyncio.Event()  # set after a commit that added rows
        self.evictions = 0  # eviction rounds so far
        self.min_new_rank = LAST_RANK  # the most urgent class (SEND_RANK) since the last fetch
        self._db: aiosqlite.Connection | None = None
        self._rdb: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._pending: list[NewEvent] = []
        self._acks: list[int] = []
        self._parks: list[tuple[int, str]] = []
        self._wake = asyncio.Event()
        self._events_queued = asyncio.Event()
        self._urgent = asyncio.Event()  # an event that must not wait for a group is queued
        self._pending_since = 0.0  # when the oldest queued event was queued (monotonic)
        # Per priority: may rows exist beyond the publisher's cursor? (a generation counter
        # keeps a commit that lands during a fetch from being forgotten). Lets a fetch at
        # low rates ask one query instead of four.
        self._maybe_unsent = [True] * len(Priority)
        self._generation = [0] * len(Priority)
        self._committed = asyncio.Event()
        self._next_seq = 1
        self._page_size = 4096
        self._check_every = 0.5
        self._last_check = 0.0
        self._added_bytes = 0
        self._row_bytes = 512  # a committed row's bytes as the cap counts them (mean, updated)
        self._disk_limited = False  # the disk has been full: small batches, room checked each
        self._last_evict_log = -1e9
        self.reserve = path.with_name(path.name + ".reserve")
        self.reserve_size = min(4 << 20, max(256 << 10, max_size // 32))
        # Told each committed batch (the status page's live view, agent/status_live.py); it
        # runs in the commit, so it must be quick and must not raise.
        self.on_commit: Callable[[Sequence[NewEvent], Sequence[Row]], None] | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the outbox; a damaged file is moved aside and a fresh one started.

        A store of an older schema version is migrated first; one written by a newer release
        raises StoreTooNewError before anything touches the file (agent.store_schema)."""
        salvage_seq = 0
        refuse_newer(self.path)  # reads only: a newer store must not be judged "damaged"
        reason = await integrity_problem(self.path, SCHEMA)  # StoreError: cannot write there
        if reason is not None:
            salvage_seq = salvage_seq_of(self.path)
            moved = move_aside(self.path)
            self.stats.recovered = {"at": time.time(), "reason": reason, "moved_to": str(moved)}
            log.error(
                "store damaged, moved aside and started fresh: path=%s moved_to=%s reason=%r",
                self.path,
                moved,
                reason,
            )
        version = refuse_newer(self.path)  # None: no store (or a fresh start after damage)
        if version is not None and (done := migrate(self.path, version)) is not None:
            self.stats.upgraded = dataclasses.asdict(done)
        self._ensure_reserve()
        db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db = db
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        # The WAL counts against the cap: checkpoint (and truncate) it every cap/16 bytes.
        wal_bytes = min(4 << 20, self.max_size // 16)
        await db.execute(f"PRAGMA wal_autocheckpoint={max(8, wal_bytes // 4096)}")
        await db.execute(f"PRAGMA journal_size_limit={wal_bytes}")
        await db.executescript(SCHEMA)
        if version is None:
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._rdb = await aiosqlite.connect(self.path, isolation_level=None)
        await self._rdb.execute("PRAGMA query_only=1")
        async with db.execute("PRAGMA page_size") as cur:
            row = await cur.fetchone()
            self._page_size = int(row[0]) if row else 4096
        async with db.execute("SELECT value FROM meta WHERE key='next_seq'") as cur:
            row = await cur.fetchone()
        meta_seq = int(row[0]) if row else 1
        async with db.execute("SELECT max(seq), count(*) FROM outbox") as cur:
            row = await cur.fetchone()
        max_seq = int(row[0]) if row and row[0] is not None else 0
        self.stats.backlog = int(row[1]) if row else 0
        self._next_seq = max(meta_seq, max_seq + 1, 1)
        if reason is not None:
            # The counter was in the damaged file. Jump past anything it can have issued:
            # the salvaged value if any, else the clock in microseconds (always ahead of a
            # counter that has issued fewer events than microseconds have passed).
            self._next_seq = max(self._next_seq, salvage_seq + 1, int(time.time() * 1e6))
        self.last_seq = self._next_seq - 1
        async with db.execute("SELECT key, value FROM meta WHERE key LIKE 'evicted.%'") as cur:
            async for key, value in cur:
                self.stats.evicted[str(key).removeprefix("evicted.")] = int(value)
        async with db.execute("SELECT count(*) FROM outbox WHERE parked IS NOT NULL") as cur:
            row = await cur.fetchone()
            self.stats.parked = int(row[0]) if row else 0
        await self._measure()
        if self.stats.backlog:
            self.new_data.set()
            self.min_new_rank = 0

    async def close(self) -> None:
        """Commit what is queued and close the database."""
        if self._db is None:
            return
        with contextlib.suppress(sqlite3.Error, StoreFullError):
            await self.commit_now()
        if self._rdb is not None:
            await self._rdb.close()
            self._rdb = None
        await self._db.close()
        self._db = None

    # ---- writing ---------------------------------------------------------------------

    def add(self, ev: NewEvent) -> None:
        """Queue an event for the next group commit (not yet captured)."""
        if not self.clock.synced():
            ev.unsynced = True
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(ev)
        if PRIORITY[ev.kind] != Priority.TELEMETRY or len(self._pending) >= GROUP:
            self._urgent.set()
        if len(self._pending) > MAX_PENDING:
            self._shed_pending()
        self._wake.set()
        self._events_queued.set()

    async def add_wait(self, ev: NewEvent) -> None:
        """Queue an event; wait for a commit if too much is queued (back-pressure)."""
        self.add(ev)
        while len(self._pending) > HIGH_WATER:
            self._committed.clear()
            await self._committed.wait()

    def ack(self, seqs: Iterable[int]) -> None:
        """The broker acknowledged these events: delete them at the next commit."""
        self._acks.extend(seqs)
        self._wake.set()

    def park(self, seq: int, reason: str) -> None:
        """The broker refused this event (MQTT 5 PUBACK failure): keep it, stop sending it."""
        self._parks.append((seq, reason))
        self.stats.last_parked_reason = reason
        self._wake.set()

    async def run(self) -> None:
        """The commit loop: one transaction per commit interval while there is work."""
        while True:
            await self._wake.wait()
            if not self._pending:
                # Only acknowledgements: delete them with the next insert, or after
                # ACK_DELAY. At low rates this halves the transactions (one per event, not
                # two), and a crash can resend at most ACK_DELAY of acknowledged events.
                self._events_queued.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ACK_DELAY):  # no task per wait, as wait_for
                        await self._events_queued.wait()
            await asyncio.sleep(self.commit_interval)
            if self._pending and not self._urgent.is_set():
                # Telemetry alone waits (up to telemetry_delay) for a group: at 100 events/s
                # that is one transaction, one fetch and one wake-up per few events instead
                # of per event. Anything else, or a full group, is committed at once.
                wait = self._pending_since + self.telemetry_delay - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._urgent.wait()
            try:
                await self.commit_now()
            except (StoreFullError, sqlite3.Error) as e:
                # Nothing queued is dropped: the batch is back in the queue; try again soon.
                self.stats.last_error = f"store: {e}"
                await asyncio.sleep(1.0)
                self._wake.set()

    async def commit_now(self) -> int:
        """Commit the events queued at the call (and every ack and park); return events
        added. One transaction per batch (MAX_BATCH, fewer under a small cap or after a
        disk-full): a stop or a close commits the whole queue, not its first batch. Events
        queued meanwhile wait for the next call, so a busy producer cannot hold the lock."""
        added = 0
        async with self._lock:
            queued = len(self._pending)
            while True:
                added += await self._commit_locked()
                if added >= queued or not self._pending:
                    return added

    async def _commit_locked(self) -> int:
        self._wake.clear()
        if not (self._pending or self._acks or self._parks):
            return 0
        db = self._require_db()
        limit = self._batch_limit()
        batch, self._pending = self._pending[:limit], self._pending[limit:]
        if self._pending:
            self._wake.set()  # more is queued: commit again right after this one
            self._pending_since = 0.0
        else:
            self._urgent.clear()
        acks, self._acks = self._acks, []
        parks, self._parks = self._parks, []
        seq = self._next_seq
        rows: list[Row] = []
        now = time.time()
        top = LAST_RANK
        by_prio = [0] * len(Priority)
        for ev in batch:
            kind = ev.kind
            prio = int(PRIORITY[kind])
            top = min(top, SEND_RANK[prio])
            by_prio[prio] += 1
            payload = encode(self.origin, ev, seq, uuid7(int(ev.ts * 1000)))
            topic = self.origin.topic(kind, ev.category, ev.device)
            rows.append((seq, prio, now, topic, payload, 1 if kind in RETAINED else 0))
            seq += 1
        added = sum(len(r[4]) + 64 for r in rows)  # the bytes the cap counts for them
        try:
            # The whole transaction in one trip to the connection's thread: one wake-up
            # there and one back, not one per statement (issue #14).
            deleted = await on_thread(db, _transaction, rows, seq, acks, parks)
        except sqlite3.Error as e:
            # _transaction rolled back. Nothing of this batch is captured: put it back in
            # front, same seqs.
            self._pending[:0] = batch
            self._pending_since = 0.0
            self._acks[:0] = acks
            self._parks[:0] = parks
            if self.stats.last_error is None:  # once per episode, not once per retry
                log.error("store commit failed, will retry: path=%s error=%r", self.path, str(e))
            self.stats.last_error = f"commit failed: {e}"
            if _is_full(e):
                await self._make_room(added)
            raise StoreFullError(str(e)) from e
        self.stats.last_error = None
        self._next_seq = seq
        self.last_seq = seq - 1
        self.stats.committed += len(rows)
        self.stats.transactions += 1 if rows else 0
        for prio, n in enumerate(by_prio):
            if n:
                self.stats.committed_by_priority[PRIORITY_NAMES[prio]] += n
                self._maybe_unsent[prio] = True
                self._generation[prio] += 1
        self.stats.delivered += deleted
        self.stats.backlog += len(rows) - deleted
        self.stats.parked += len(parks)
        self._committed.set()
        if rows:
            self.min_new_rank = min(self.min_new_rank, top)
            self.new_data.set()
            if self.on_commit is not None:
                self.on_commit(batch, rows)
        self._added_bytes += added
        if rows:
            self._row_bytes = max(64, (self._row_bytes * 3 + added // len(rows)) // 4)
        if (
            self._disk_limited  # every commit, while the disk is what limits the store
            or self._added_bytes > self.max_size // 32
            or time.monotonic() - self._last_check > self._check_every
        ):
            await self._enforce_cap()
        return len(rows)

    def _batch_limit(self) -> int:
        """Events in the next transaction: MAX_BATCH, DISK_FULL_BATCH once the disk has been
        full, and never more than the cap check's stride (max_size/32, by the mean row): a
        bigger batch would grow the file past the cap before the check after it could
        evict (only a small cap binds: 1 GiB allows 2,000 events of 16 KiB)."""
        limit = DISK_FULL_BATCH if self._disk_limited else MAX_BATCH
        return min(limit, max(GROUP, self.max_size // 32 // self._row_bytes))

    def _shed_pending(self) -> None:
        # The disk refuses writes and memory is filling: drop the oldest queued telemetry.
        for i, ev in enumerate(self._pending):
            if PRIORITY[ev.kind] == Priority.TELEMETRY:
                del self._pending[i]
                self.stats.lost_uncommitted += 1
                return
        self.stats.lost_uncommitted += 1
        del self._pending[0]

    # ---- the byte cap ----------------------------------------------------------------

    # ---- reading ---------------------------------------------------------------------

    async def fetch(self, after: dict[int, int], limit: int) -> list[StoredEvent]:
        """Up to `limit` unsent events of the most urgent priority that has any.

        `after` maps priority -> the last seq already handed to the publisher on this
        connection; rows at or below it are not returned again.
        """
        # A connection of its own: WAL readers see only committed rows and do not wait
        # for the writer, so the publisher never waits behind a group commit.
        rdb = self._rdb
        if rdb is None:
            raise StoreError("store is not open")
        self.min_new_rank = LAST_RANK
        self.new_data.clear()
        wanted = [(int(p), after.get(int(p), 0)) for p in SEND_ORDER if self._maybe_unsent[p]]
        if not wanted:
            return []
        generations = list(self._generation)
        # Every priority that may hold unsent rows, asked in one trip to the reader's thread.
        asked, rows = await on_thread(rdb, _fetch, wanted, limit)
        for prio, _ in wanted[:asked]:
            if generations[prio] == self._generation[prio]:
                # Everything beyond the cursor was returned (or there was nothing).
                self._maybe_unsent[prio] = False
        if len(rows) >= limit:
            self._maybe_unsent[wanted[asked - 1][0]] = True  # a full page: there may be more
        return [StoredEvent(int(r[0]), int(r[1]), str(r[2]), bytes(r[3]), bool(r[4])) for r in rows]

    def rescan(self) -> None:
        """The publisher's cursors went back (a new session, a dropped buffer): look again."""
        self._maybe_unsent = [True] * len(Priority)

    async def unpark_all(self) -> int:
        """Make refused events eligible again (after a reconnect or a config change)."""
        db = self._require_db()
        async with self._lock:
            cur = await db.execute("UPDATE outbox SET parked = NULL WHERE parked IS NOT NULL")
            n = max(cur.rowcount, 0)
        self.stats.parked = 0
        self.rescan()
        if n:
            self.min_new_rank = 0
            self.new_data.set()
        return n

    async def oldest_age(self) -> float | None:
        """Seconds since the oldest unsent event was committed, or None if none is."""
        db = self._require_db()
        async with db.execute("SELECT created FROM outbox ORDER BY seq LIMIT 1") as cur:
            row = await cur.fetchone()
        return None if row is None else max(0.0, time.time() - float(row[0]))

    async def count(self) -> int:
        """The number of stored (unacknowledged) events, counted in the file."""
        db = self._require_db()
        async with db.execute("SELECT count(*) FROM outbox") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # ---- command replay memory -------------------------------------------------------

    async def remember_command(self, command_id: str, expires: float) -> bool | str:
        """Record a command id: True; or, if it was seen before (a replay), the outcome code
        noted for it ("" if none yet). Survives restarts."""
        db = self._require_db()
        async with self._lock:
            await db.execute("DELETE FROM commands_seen WHERE expires < ?", (time.time(),))
            try:
                await db.execute(
                    "INSERT INTO commands_seen (id, expires) VALUES (?, ?)", (command_id, expires)
                )
            except sqlite3.IntegrityError:
                async with db.execute(
                    "SELECT outcome FROM commands_seen WHERE id = ?", (command_id,)
                ) as cur:
                    row = await cur.fetchone()
                return str(row[0]) if row and row[0] else ""
        return True

    async def note_command_outcome(self, command_id: str, code: str) -> None:
        """Keep a command's outcome with its id: a replay is told what the first one did."""
        db = self._require_db()
        async with self._lock:
            await db.execute(
                "UPDATE commands_seen SET outcome = ? WHERE id = ?", (code, command_id)
            )

    def _require_db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db


INSERT = "INSERT INTO outbox (seq, prio, created, topic, payload, retain) VALUES (?, ?, ?, ?, ?, ?)"
FETCH = (
    "SELECT seq, prio, topic, payload, retain FROM outbox "
    "WHERE prio = ? AND seq > ? AND parked IS NULL ORDER BY seq LIMIT ?"
)


T = TypeVar("T")


async def on_thread(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run fn(sqlite3_connection, *args) on the connection's own thread, in one trip.

    aiosqlite runs each call on its thread and wakes the loop with the result: a
    transaction of five statements was five trips (ten wake-ups, futexes under perf).
    aiosqlite has no public "run this function" call; its private _execute is that call
    (present from 0.17 to 0.22; pyproject pins aiosqlite < 1, tests/test_store.py covers it).
    """
    conn: sqlite3.Connection = db._conn
    result: T = await db._execute(fn, conn, *args)  # type: ignore[no-untyped-call]
    return result


def _transaction(
    conn: sqlite3.Connection,
    rows: list[Row],
    next_seq: int,
    acks: list[int],
    parks: list[tuple[int, str]],
) -> int:
    """One group commit, on the connection's thread; rolled back on any error. Rows deleted."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        if rows:
            conn.executemany(INSERT, rows)
        deleted = 0
        if acks:
            conn.execute(SET_NEXT_SEQ, (next_seq,))
            for i in range(0, len(acks), 500):
                chunk = acks[i : i + 500]
                cur = conn.execute(
                    f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))})",  # noqa: S608
                    chunk,
                )
                deleted += max(cur.rowcount, 0)
        if parks:
            conn.executemany(
                "UPDATE outbox SET parked = ? WHERE seq = ?", [(r, s) for s, r in parks]
            )
        conn.execute("COMMIT")
    except sqlite3.Error:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return deleted


def _fetch(
    conn: sqlite3.Connection, wanted: list[tuple[int, int]], limit: int
) -> tuple[int, list[Any]]:
    """The first of `wanted` (priority, after) with unsent rows: (priorities asked, rows)."""
    for n, (prio, after) in enumerate(wanted, 1):
        rows = conn.execute(FETCH, (prio, after, limit)).fetchall()
        if rows:
            return n, rows
    return len(wanted), []


def _is_full(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(e)
