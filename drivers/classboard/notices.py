"""District notices for the boards, kept in the driver's own SQLite file (aiosqlite).

A notice (id, title, body, level, targets, valid from/to) is posted or revoked by a command
on the hub device. It is kept on disk so that it survives a restart of the agent and an
outage of a board: a board that comes back gets every notice still valid for it. Receipts
(fetched, displayed, dismissed, failed, expired before delivery) are kept per board, so a
restart does not report them twice. The board-side ids of swipe batches are kept here too,
so that a replayed batch is recognised after a restart. Text only: markup is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import orjson

Level = Literal["info", "urgent", "emergency"]
LEVELS: tuple[Level, ...] = ("emergency", "urgent", "info")  # the order boards show them
NOTICE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
TARGET = re.compile(r"^(school|(board|class|building):[A-Za-z0-9._-]{1,64})$")
# Markup: a tag, an entity, or a script URL. Notices are text; the board shows them as text.
MARKUP = re.compile(r"<\s*[/!A-Za-z?]|&[#A-Za-z0-9]+;|javascript:", re.IGNORECASE)
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
BATCH_KEEP = 8 * 86400.0  # replayed batches are recognised this long (> swipe max age)
CLOSED_KEEP = 30 * 86400.0  # an expired or revoked notice is forgotten after this

SCHEMA = """
CREATE TABLE IF NOT EXISTS notices (
  id TEXT PRIMARY KEY, doc TEXT NOT NULL, rev INTEGER NOT NULL,
  valid_to REAL, revoked INTEGER NOT NULL DEFAULT 0, closed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS receipts (
  notice TEXT NOT NULL, board TEXT NOT NULL, status TEXT NOT NULL, ts REAL NOT NULL,
  PRIMARY KEY (notice, board, status)
);
CREATE TABLE IF NOT EXISTS batches (
  board TEXT NOT NULL, batch TEXT NOT NULL, ts REAL NOT NULL, PRIMARY KEY (board, batch)
);
"""


class NoticeError(ValueError):
    """A notice the district sent that cannot be taken (the command's reply says why)."""


@dataclass(frozen=True)
class Board:
    """Who a board is, for targeting: its id, class and building."""

    id: str
    klass: str | None
    building: str | None


@dataclass(frozen=True)
class Notice:
    id: str
    title: str
    body: str
    level: Level
    targets: tuple[str, ...]
    valid_from: float
    valid_to: float | None
    posted: float
    rev: int = 1
    revoked: bool = False

    def for_board(self, b: Board) -> bool:
        for t in self.targets:
            kind, _, name = t.partition(":")
            if (
                kind == "school"
                or (kind == "board" and name == b.id)
                or (kind == "class" and name == b.klass)
                or (kind == "building" and name == b.building)
            ):
                return True
        return False

    def valid(self, now: float) -> bool:
        return (
            not self.revoked
            and self.valid_from <= now
            and (self.valid_to is None or now < self.valid_to)
        )

    def document(self) -> dict[str, Any]:
        """The notice as a board gets it (GET /api/v1/notices)."""
        return {
            "id": self.id,
            "rev": self.rev,
            "title": self.title,
            "body": self.body,
            "level": self.level,
            "valid_from": iso(self.valid_from),
            "valid_to": iso(self.valid_to) if self.valid_to is not None else None,
            "posted": iso(self.posted),
        }

    def stored(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "body": self.body,
            "level": self.level,
            "targets": list(self.targets),
            "valid_from": self.valid_from,
            "valid_to": self.valid_to,
            "posted": self.posted,
        }


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _time(name: str, raw: object, default: float | None) -> float | None:
    if raw is None or raw == "":
        return default
    if not isinstance(raw, str):
        raise NoticeError(f"{name}: an RFC 3339 time, e.g. 2026-09-01T08:00:00+08:00")
    try:
        t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise NoticeError(f"{name}: not an RFC 3339 time") from None
    if t.tzinfo is None:
        raise NoticeError(f"{name}: give the offset (Z or +08:00)")
    return t.timestamp()


def _text(name: str, raw: object, limit: int, *, lines: bool) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise NoticeError(f"{name}: non-empty text")
    if len(raw) > limit:
        raise NoticeError(f"{name}: at most {limit} characters")
    if MARKUP.search(raw):
        raise NoticeError(f"{name}: text only; markup (<…>, &…;) is refused")
    if CONTROL.search(raw) or (not lines and "\n" in raw):
        raise NoticeError(f"{name}: control characters are refused")
    return raw


def parse_notice(args: dict[str, Any], now: float) -> Notice:
    """A notice from the `notice_post` action's args; NoticeError says what is wrong."""
    nid = args.get("id")
    if not isinstance(nid, str) or not NOTICE_ID.match(nid):
        raise NoticeError("id: 1-64 letters, digits, . _ : -")
    level = args.get("level", "info")
    if level not in LEVELS:
        raise NoticeError("level: info, urgent or emergency")
    raw_targets = args.get("targets", "school")
    if not isinstance(raw_targets, str):
        raise NoticeError("targets: comma-separated text")
    targets = tuple(t.strip() for t in raw_targets.split(",") if t.strip())
    if not targets or len(targets) > 200:
        raise NoticeError("targets: 1 to 200 of school, board:ID, class:NAME, building:NAME")
    bad = [t for t in targets if not TARGET.match(t)]
    if bad:
        raise NoticeError(
            f"targets: {bad[0][:70]!r} is not school, board:ID, class:NAME or building:NAME"
        )
    valid_from = _time("valid_from", args.get("valid_from"), now)
    valid_to = _time("valid_to", args.get("valid_to"), None)
    assert valid_from is not None  # noqa: S101 - it has a default
    if valid_to is not None and valid_to <= valid_from:
        raise NoticeError("valid_to: must be after valid_from")
    if valid_to is not None and valid_to <= now:
        raise NoticeError("valid_to: already past")
    return Notice(
        id=nid,
        title=_text("title", args.get("title"), 120, lines=False),
        body=_text("body", args.get("body"), 2000, lines=True),
        level=level,
        targets=targets,
        valid_from=valid_from,
        valid_to=valid_to,
        posted=now,
    )


class NoticeBook:
    """The notices and receipts on disk, with an in-memory copy of the notices."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: aiosqlite.Connection | None = None
        self.notices: dict[str, Notice] = {}
        self._changed = asyncio.Event()

    async def open(self) -> None:
        self.db = await aiosqlite.connect(self.path)
        await self.db.executescript(SCHEMA)
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.commit()
        now = time.time()
        await self.db.execute("DELETE FROM batches WHERE ts < ?", (now - BATCH_KEEP,))
        await self.db.execute(
            "DELETE FROM notices WHERE closed = 1 AND coalesce(valid_to, 0) < ?",
            (now - CLOSED_KEEP,),
        )
        await self.db.execute("DELETE FROM receipts WHERE notice NOT IN (SELECT id FROM notices)")
        await self.db.commit()
        async with self.db.execute("SELECT doc, rev, revoked FROM notices") as cur:
            async for doc, rev, revoked in cur:
                d = orjson.loads(doc)
                self.notices[d["id"]] = Notice(
                    id=d["id"],
                    title=d["title"],
                    body=d["body"],
                    level=d["level"],
                    targets=tuple(d["targets"]),
                    valid_from=d["valid_from"],
                    valid_to=d["valid_to"],
                    posted=d["posted"],
                    rev=rev,
                    revoked=bool(revoked),
                )

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
            self.db = None

    def _conn(self) -> aiosqlite.Connection:
        if self.db is None:
            raise RuntimeError("notice book is not open")
        return self.db

    # ---- changes wake the long polls ---------------------------------------------------

    def changed(self) -> asyncio.Event:
        """An event set at the next change of any notice (take it before reading)."""
        return self._changed

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ---- notices -----------------------------------------------------------------------

    async def post(self, notice: Notice) -> Notice:
        """Keep a notice; one with the same id is replaced (a new revision, new receipts)."""
        old = self.notices.get(notice.id)
        notice = replace(notice, rev=(old.rev + 1) if old else 1)
        db = self._conn()
        await db.execute(
            "INSERT OR REPLACE INTO notices (id, doc, rev, valid_to, revoked, closed) "
            "VALUES (?, ?, ?, ?, 0, 0)",
            (notice.id, orjson.dumps(notice.stored()).decode(), notice.rev, notice.valid_to),
        )
        await db.execute("DELETE FROM receipts WHERE notice = ?", (notice.id,))
        await db.commit()
        self.notices[notice.id] = notice
        self.notify()
        return notice

    async def revoke(self, nid: str) -> bool:
        n = self.notices.get(nid)
        if n is None or n.revoked:
            return False
        db = self._conn()
        await db.execute("UPDATE notices SET revoked = 1, closed = 1 WHERE id = ?", (nid,))
        await db.commit()
        self.notices[nid] = replace(n, revoked=True)
        self.notify()
        return True

    def current(self, board: Board, now: float) -> list[Notice]:
        """The notices a board shows now: emergency first, then the newest."""
        out = [n for n in self.notices.values() if n.valid(now) and n.for_board(board)]
        out.sort(key=lambda n: (LEVELS.index(n.level), -n.posted, n.id))
        return out

    def active(self, now: float) -> int:
        return sum(1 for n in self.notices.values() if n.valid(now))

    def next_change(self, now: float) -> float | None:
        """When a notice next becomes valid or expires (the long polls must be told)."""
        times = [
            t
            for n in self.notices.values()
            if not n.revoked
            for t in (n.valid_from, n.valid_to)
            if t is not None and t > now
        ]
        return min(times, default=None)

    async def expire(self, now: float, boards: Iterable[Board]) -> list[tuple[str, str]]:
        """Close the notices whose time is over: (board, notice) for each targeted board
        that never fetched it (expired before delivery)."""
        db = self._conn()
        out: list[tuple[str, str]] = []
        boards = list(boards)
        async with db.execute(
            "SELECT id FROM notices WHERE closed = 0 AND valid_to IS NOT NULL AND valid_to <= ?",
            (now,),
        ) as cur:
            ids = [r[0] async for r in cur]
        for nid in ids:
            n = self.notices.get(nid)
            if n is None:
                continue
            for b in boards:
                if (
                    n.for_board(b)
                    and not await self.has_receipt(nid, b.id, "fetched")
                    and await self.receipt(nid, b.id, "expired", now)
                ):
                    out.append((b.id, nid))
            await db.execute("UPDATE notices SET closed = 1 WHERE id = ?", (nid,))
        if ids:
            await db.commit()
        return out

    # ---- receipts and batches ----------------------------------------------------------

    async def receipt(self, nid: str, board: str, status: str, ts: float) -> bool:
        """Record a receipt; False if this board already gave it for this notice."""
        db = self._conn()
        cur = await db.execute(
            "INSERT OR IGNORE INTO receipts (notice, board, status, ts) VALUES (?, ?, ?, ?)",
            (nid, board, status, ts),
        )
        await db.commit()
        return cur.rowcount == 1

    async def has_receipt(self, nid: str, board: str, status: str) -> bool:
        async with self._conn().execute(
            "SELECT 1 FROM receipts WHERE notice = ? AND board = ? AND status = ?",
            (nid, board, status),
        ) as cur:
            return await cur.fetchone() is not None

    async def batch_seen(self, board: str, batch: str, ts: float) -> bool:
        """Record a board's batch id; True if it was already taken (a replay)."""
        db = self._conn()
        cur = await db.execute(
            "INSERT OR IGNORE INTO batches (board, batch, ts) VALUES (?, ?, ?)",
            (board, batch, ts),
        )
        await db.commit()
        return cur.rowcount == 0


def etag(notices: list[Notice]) -> str:
    """The ETag of a board's notice list: changes when a notice is added, changed, removed."""
    h = hashlib.sha256()
    for n in notices:
        h.update(f"{n.id}\x00{n.rev}\n".encode())
    return '"' + h.hexdigest()[:20] + '"'
