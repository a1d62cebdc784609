"""The outbox's files on disk: the start-up integrity check, moving a damaged file aside, size.

A damaged store must not stop a gateway: it is moved aside (kept for a post-mortem) and a
fresh one started, jumping `seq` past anything the old one can have issued. This module
only reads, renames and (the reserve) creates the store's own files; it never deletes a
store.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

import aiosqlite


async def integrity_problem(path: Path) -> str | None:
    """SQLite's quick_check of an existing store: None when it is sound (or absent)."""
    if not os.path.exists(path):  # noqa: ASYNC240 - one stat at start-up
        return None
    try:
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            async with db.execute("PRAGMA quick_check") as cur:
                rows = await cur.fetchall()
            result = ", ".join(str(r[0]) for r in rows)
            if result != "ok":
                return result[:500]
            async with db.execute("SELECT count(*) FROM sqlite_master WHERE name='outbox'") as cur:
                await cur.fetchone()
        finally:
            await db.close()
    except sqlite3.DatabaseError as e:
        return str(e)
    return None


def salvage_seq_of(path: Path) -> int:
    """The highest seq a damaged store still shows, or 0 when it cannot be read."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT max(seq) FROM outbox").fetchone()
            return int(row[0] or 0)
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def move_aside(path: Path) -> Path:
    """Rename the store and its WAL/SHM to `<name>.damaged-<time>`; the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(Path(str(target) + suffix))
    return target


def file_bytes(path: Path) -> int:
    """Bytes on disk of the database and its WAL (what the cap is about)."""
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(str(path) + suffix).st_size
    return total


def ensure_reserve(reserve: Path, size: int) -> str | None:
    """Create the reserve file (space the store can give back on a full disk) when the disk
    has room for it and more; why not, or None."""
    if reserve.exists():
        return None
    try:
        st = os.statvfs(reserve.parent)
        if st.f_bavail * st.f_frsize < 4 * size:
            return None
        fd = os.open(reserve, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError as e:
        with contextlib.suppress(OSError):
            reserve.unlink()
        return e.strerror or str(e)
    return None
