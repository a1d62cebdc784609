"""The outbox's schema, its version (`PRAGMA user_version`) and the migrations between versions.

A store records the version of its schema in SQLite's header (`user_version`). At open, before
anything else reads or writes it (agent.store.Store.open):

- no file, or a file without our tables: created at SCHEMA_VERSION;
- version 0 with our tables: written by 0.1.0 (or a 0.2.0 pre-release), which did not set a
  version. A copy is made first with SQLite's backup API (`<store>.v0.bak`, kept: see
  docs/durability.md), then every migration from its version to SCHEMA_VERSION runs in ONE
  transaction: a failure (a full disk...) rolls everything back and the store stays at its old
  version, intact (StoreError: the agent exits 2 with the reason);
- SCHEMA_VERSION: nothing is written (opening a current store is a no-op);
- newer than SCHEMA_VERSION: written by a later release. The store is not touched, not moved
  aside: StoreTooNewError, and the agent exits EXIT_STORE_TOO_NEW (the unit does not restart it).

A migration is a function of a sqlite3 connection inside that transaction; add one to
MIGRATIONS (in order, from version N to N+1) and bump SCHEMA_VERSION with every change to
SCHEMA. It must be idempotent for version 0 (a 0.2.0 pre-release store already has some of
the changes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StoreError

log = logging.getLogger("agent.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY,
    prio    INTEGER NOT NULL,
    created REAL    NOT NULL,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    retain  INTEGER NOT NULL,
    parked  TEXT
);
CREATE INDEX IF NOT EXISTS outbox_prio_seq ON outbox (prio, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS commands_seen (
  id TEXT PRIMARY KEY, expires REAL NOT NULL, outcome TEXT
);
"""
SCHEMA_VERSION = 1
# Which release wrote which version (for the messages): the newest release of each.
WRITTEN_BY = {0: "0.1.0", 1: "0.2.0"}
EXIT_STORE_TOO_NEW = 4  # systemd/campus-agent.service: RestartPreventExitStatus=2 4


class StoreTooNewError(StoreError):
    """The store was written by a newer release (a downgrade): it is left as it is."""

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version
        super().__init__(
            f"the store {path} has schema version {version}, written by a newer release of "
            f"campus-agent than this one (which knows versions up to {SCHEMA_VERSION}); it was "
            "left unchanged. Install that release again (its events are still in the store), "
            f"or, knowing that its unsent events stay behind, move {path} (and its -wal/-shm "
            "files) aside and start this release with a fresh store"
        )


def _v0_to_v1(con: sqlite3.Connection) -> None:
    """0.1.0 -> 0.2.0: commands_seen gets the outcome of each command (a replay is told what
    the first one did); audit events, stored by 0.1.0 in the access class (prio 1), move to
    their own class (prio 4: sent after access, never evicted for room, own retention)."""
    columns = {str(r[1]) for r in con.execute("PRAGMA table_info(commands_seen)")}
    if "outcome" not in columns:
        con.execute("ALTER TABLE commands_seen ADD COLUMN outcome TEXT")
    con.execute(
        "UPDATE outbox SET prio = 4 WHERE prio = 1 AND json_valid(CAST(payload AS TEXT)) "
        "AND json_extract(CAST(payload AS TEXT), '$.kind') = 'audit'"
    )


@dataclass(frozen=True)
class Migration:
    """From version `to - 1` to `to`."""

    to: int
    what: str
    apply: Callable[[sqlite3.Connection], None]


MIGRATIONS = (Migration(1, "0.1.0 -> 0.2.0: command outcomes, audit class", _v0_to_v1),)
# MIGRATIONS[n] takes a store from version n to n + 1 (tests/test_store_upgrade.py checks).


@dataclass
class Upgrade:
    """What opening did to an older store (reported in the status and the log)."""

    from_version: int
    to_version: int
    backup: str | None
    at: float


def schema_version(path: Path) -> int | None:
    """The schema version of the store at `path` (read-only: the file is not changed), or
    None when there is no store there or it is not a database this release can read."""
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("PRAGMA user_version").fetchone()
            tables = con.execute(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='outbox'"
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    version = int(row[0]) if row else 0
    return version if version or (tables and tables[0]) else None


def refuse_newer(path: Path) -> int | None:
    """Raise StoreTooNewError when the store was written by a newer release; its version
    (None: no store yet). Reads only, before anything else opens the file."""
    version = schema_version(path)
    if version is not None and version > SCHEMA_VERSION:
        raise StoreTooNewError(path, version)
    return version


def backup_path(path: Path, version: int) -> Path:
    return path.with_name(f"{path.name}.v{version}.bak")


def _backup(path: Path, version: int) -> Path | None:
    """A consistent copy of the store (SQLite's backup API, the WAL included) next to it,
    when the disk has room for it and as much again; None (logged) when it has not."""
    target = backup_path(path, version)
    size = sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists())
    if shutil.disk_usage(path.parent).free < 2 * size + (16 << 20):
        log.warning(
            "store upgrade: no room for a backup of %s (%d bytes) on this disk; migrating "
            "without one (the migration itself is one transaction)",
            path,
            size,
        )
        return None
    tmp = target.with_name(target.name + ".tmp")
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    except sqlite3.Error as e:
        tmp.unlink(missing_ok=True)
        log.warning("store upgrade: backup of %s failed (%s); migrating without one", path, e)
        return None
    finally:
        src.close()
    os.replace(tmp, target)
    return target


def migrate(path: Path, version: int) -> Upgrade | None:
    """Bring the store at `path` (at `version`, from refuse_newer) to SCHEMA_VERSION: None when
    it already is (nothing written), else what was done. StoreError when a migration fails:
    the store is then rolled back to `version`, unchanged."""
    if version >= SCHEMA_VERSION:
        return None
    backup = _backup(path, version)
    con = sqlite3.connect(path, isolation_level=None)
    step = "BEGIN (the store's write lock)"
    try:
        con.execute("BEGIN IMMEDIATE")
        for m in MIGRATIONS[version:]:
            step = f"the migration to version {m.to} ({m.what})"
            m.apply(con)
        step = "COMMIT"
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.execute("COMMIT")
    except sqlite3.Error as e:
        with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
            con.execute("ROLLBACK")
        raise StoreError(
            f"could not upgrade the store {path} from schema version {version} to "
            f"{SCHEMA_VERSION}: {e} (at {step}); it was left at version {version}, unchanged"
            + (f" (a copy: {backup})" if backup else "")
        ) from None
    finally:
        con.close()
    done = Upgrade(version, SCHEMA_VERSION, str(backup) if backup else None, time.time())
    log.warning(
        "store upgraded: path=%s schema %d -> %d (written by %s) backup=%s",
        path,
        version,
        SCHEMA_VERSION,
        WRITTEN_BY.get(version, "?"),
        backup,
    )
    return done


def stamp_new(con: sqlite3.Connection) -> None:
    """A store just created: mark it with the current version."""
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
