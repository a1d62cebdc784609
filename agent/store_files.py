"""The outbox's files on disk: the start-up integrity check, moving a damaged file aside, size.

A damaged store must not stop a gateway: a file SQLite finds corrupt, or whose tables the
store cannot use (an `outbox` that is a view or has other columns), is moved aside (kept for
a post-mortem) and a fresh one started, jumping `seq` past anything the old one can have
issued. A folder the agent cannot write is not damage but a StoreError (the operator fixes
it). This module only reads, renames and (the folder, the reserve) creates the store's own
files; it never deletes a store.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

import aiosqlite

from agent.errors import StoreError
from agent.store_schema import schema_version as _schema_version

# (name, declared type, not null, primary key) of a column, as PRAGMA table_info gives them.
Column = tuple[str, str, int, int]


def _shape(con: sqlite3.Connection) -> dict[str, tuple[str, str, list[Column]]]:
    """name -> (type, table it belongs to, columns) of every object in a database."""
    out: dict[str, tuple[str, str, list[Column]]] = {}
    rows = con.execute("SELECT type, name, tbl_name FROM sqlite_master").fetchall()
    for kind, name, table in rows:
        cols: list[Column] = []
        if kind == "table":
            info = con.execute("SELECT * FROM pragma_table_info(?)", (name,)).fetchall()
            cols = [(str(c[1]), str(c[2]).upper(), int(c[3]), int(c[5])) for c in info]
        out[str(name)] = (str(kind), str(table), cols)
    return out


def schema_problem(path: Path, schema: str) -> str | None:
    """Why the store's tables cannot be used with `schema` (the CREATE statements the store
    runs), or None. An object of ours that is a view, a table with other columns (an older
    store's table missing only the newest trailing columns is fine: this check runs before
    the migrations of agent.store_schema add them), or a
    trigger on one of our tables would make every commit fail: the file is as good as
    damaged. A missing table is fine (it is created)."""
    mem = sqlite3.connect(":memory:")
    try:
        mem.executescript(schema)
        want = _shape(mem)
    finally:
        mem.close()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        have = _shape(con)
    finally:
        con.close()
    ours = {name for name, (kind, _, _) in want.items() if kind == "table"}
    for name, (kind, table, cols) in have.items():
        if kind == "trigger" and table in ours:
            return f"unexpected trigger {name!r} on table {table!r}"
        if name not in want:
            continue
        wkind, _, wcols = want[name]
        if kind != wkind:
            return f"{name!r} is a {kind}, not a {wkind}"
        # A store from an earlier version may lack columns added since (at the end, as
        # ALTER TABLE ADD COLUMN puts them): its migration adds them; anything else is damage.
        if cols != wcols and (not cols or cols != wcols[: len(cols)]):
            return f"table {name!r} has the columns ({_columns(cols)}), not ({_columns(wcols)})"
    return None


def _columns(cols: list[Column]) -> str:
    return ", ".join(f"{n} {t}{' NOT NULL' if nn else ''}".strip() for n, t, nn, _ in cols)


async def integrity_problem(path: Path, schema: str = "") -> str | None:
    """Make the store's folder (StoreError when this process cannot write there); then
    SQLite's quick_check of an existing store and its tables against `schema`: None when it
    is sound (or absent)."""
    make_folder(path)
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
        finally:
            await db.close()
        return schema_problem(path, schema) if schema else None
    except sqlite3.DatabaseError as e:
        return str(e)


def make_folder(path: Path) -> None:
    """Create the store's folder; StoreError when this process cannot write it or the
    store's files (a read-only folder: a config problem, not a damaged store)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the store folder {path.parent}: {e.strerror}") from None
    for p in (path.parent, path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if p.exists() and not os.access(p, os.W_OK):
            what = "folder" if p.is_dir() else "file"
            raise StoreError(
                f"the store {what} {p} is read-only for this user (uid {os.geteuid()}): give "
                "the agent's user write access, or set [store] path to a writable folder"
            )


def schema_version(path: Path) -> int | None:
    """The schema version of the store at `path` (PRAGMA user_version), read-only; None when
    there is no store there (for `campus-agent doctor`; agent.store_schema)."""
    return _schema_version(path)


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
