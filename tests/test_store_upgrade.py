"""Upgrades keep the store (#13): a store written by 0.1.0 (tests/fixtures/store-0.1.0.db, made
by the real 0.1.0 agent: tests/fixtures/README.md) is migrated and drained with nothing lost;
a store of a newer release is refused and left as it is; a failed migration leaves the store
at its old version; opening a current store writes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.contract import Origin, Priority
from agent.store import Store
from agent.store_files import schema_version
from agent.store_schema import (
    EXIT_STORE_TOO_NEW,
    MIGRATIONS,
    SCHEMA_VERSION,
    backup_path,
)
from tests.harness.agent import AgentProcess, env_device
from tests.harness.process import ROOT
from tests.harness.subscriber import Subscriber
from tests.harness.waiting import wait_for

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "store-0.1.0.db"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "store-0.1.0.json").read_text())
ORIGIN = Origin("campus/v1", "pt-023", "gw-main")


def user_version(path: Path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(con.execute("PRAGMA user_version").fetchone()[0])
    finally:
        con.close()


def place_fixture(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "outbox.db"
    shutil.copyfile(FIXTURE, store)
    return store


def exit_code(agent: AgentProcess, timeout: float = 30) -> int | None:
    wait_for(lambda: not agent.alive(), timeout, "the agent to exit")
    return agent.stop()


def test_the_fixture_is_what_0_1_0_left_and_the_migrations_are_in_order():
    # Read from the header (bytes 60-63): an SQLite connection, even read-only, would leave
    # -wal/-shm files beside the committed fixture. 0.1.0 checkpointed its WAL at exit.
    header = FIXTURE.read_bytes()[:100]
    assert header.startswith(b"SQLite format 3\0")
    assert int.from_bytes(header[60:64], "big") == 0 and MANIFEST["user_version"] == 0
    assert set(MANIFEST["by_kind"]) >= {"alarm", "audit", "state", "telemetry"}
    assert FIXTURE.stat().st_size < 300_000
    assert [m.to for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


@pytest.mark.asyncio
async def test_a_0_1_0_store_is_migrated_in_place_with_a_backup(tmp_path):
    store = place_fixture(tmp_path)
    s = Store(store, ORIGIN, max_size=64 << 20)
    await s.open()
    try:
        assert s.stats.recovered is None, s.stats.recovered
        assert s.stats.upgraded is not None
        assert (s.stats.upgraded["from_version"], s.stats.upgraded["to_version"]) == (0, 1)
        assert await s.count() == MANIFEST["count"]
        # 0.1.0 kept audit events in the access class; 0.2.0 gives them their own.
        audit = [e["seq"] for e in MANIFEST["events"] if e["kind"] == "audit"]
        assert audit and all(e["prio"] == 1 for e in MANIFEST["events"] if e["kind"] == "audit")
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        try:
            prios = {
                seq: prio
                for seq, prio in con.execute(
                    f"SELECT seq, prio FROM outbox WHERE seq IN ({','.join('?' * len(audit))})",  # noqa: S608
                    audit,
                )
            }
            others = con.execute(
                "SELECT seq, prio FROM outbox WHERE prio != ?", (int(Priority.AUDIT),)
            ).fetchall()
        finally:
            con.close()
        assert prios == dict.fromkeys(audit, int(Priority.AUDIT))
        want = {e["seq"]: e["prio"] for e in MANIFEST["events"] if e["kind"] != "audit"}
        assert dict(others) == want
        # The ids 0.1.0 remembered are kept (they expire as they did: the fixture's have by
        # now), with room for the outcome a replay of a new command is told.
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        try:
            kept = con.execute("SELECT id, outcome FROM commands_seen").fetchall()
        finally:
            con.close()
        assert len(kept) == MANIFEST["commands_seen"] and all(o is None for _, o in kept)
        assert await s.remember_command("cmd-new-000001", time.time() + 600) is True
        await s.note_command_outcome("cmd-new-000001", "ok")
        assert await s.remember_command("cmd-new-000001", time.time() + 600) == "ok"
    finally:
        await s.close()
    assert user_version(store) == SCHEMA_VERSION == schema_version(store)
    bak = backup_path(store, 0)
    assert s.stats.upgraded["backup"] == str(bak)
    assert user_version(bak) == 0
    con = sqlite3.connect(f"file:{bak}?mode=ro", uri=True)
    assert con.execute("SELECT count(*) FROM outbox").fetchone()[0] == MANIFEST["count"]
    con.close()
    assert not [p for p in tmp_path.iterdir() if "damaged" in p.name]


@pytest.mark.asyncio
async def test_opening_a_current_store_again_writes_nothing(tmp_path):
    store = tmp_path / "o.db"
    s = Store(store, ORIGIN, max_size=64 << 20)
    await s.open()
    assert s.stats.upgraded is None
    await s.close()
    assert user_version(store) == SCHEMA_VERSION
    before = store.read_bytes()
    for _ in range(2):
        s = Store(store, ORIGIN, max_size=64 << 20)
        await s.open()
        assert s.stats.upgraded is None and s.stats.schema_version == SCHEMA_VERSION
        await s.close()
        assert store.read_bytes() == before
    assert not list(tmp_path.glob("*.bak"))


def test_a_0_1_0_backlog_is_migrated_and_drained_exactly_as_recorded(
    broker, subscribers, make_agent
):
    """The real agent on a copy of the 0.1.0 store, against a real mosquitto: every event of
    the manifest arrives once, byte for byte as 0.1.0 stored it; the refused (parked) audit
    events after a reload (SIGHUP retries refused events), as in 0.1.0; nothing else with an
    old seq."""
    sub: Subscriber = subscribers(broker, v5=True)
    agent = make_agent(broker.url, env_device(rate=2), start=False)
    place_fixture(agent.dir)
    agent.start()
    events = MANIFEST["events"]
    by_hash = {e["sha256"]: e for e in events}
    last_old = max(MANIFEST["seqs"])

    def arrived() -> list[tuple[dict[str, Any], Any]]:
        out = []
        for m in sub.snapshot():
            if (e := by_hash.get(hashlib.sha256(m.payload).hexdigest())) is not None:
                out.append((e, m))
        return out

    unparked = [e for e in events if not e["parked"]]
    wait_for(lambda: len(arrived()) >= len(unparked), 60, "the 0.1.0 backlog", every=0.2)
    st = agent.wait_status(lambda s: s["store"].get("schema_version") is not None, 10, "status")
    assert st["store"]["schema_version"] == SCHEMA_VERSION
    assert st["store"]["upgraded"]["from_version"] == 0
    assert Path(st["store"]["upgraded"]["backup"]).exists()
    shown = subprocess.run(
        [sys.executable, "-m", "agent.cli", "status", "--config", str(agent.config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert f"schema v{SCHEMA_VERSION}" in shown and "upgraded at this start from schema v0" in shown
    agent.signal(signal.SIGHUP)
    wait_for(lambda: len(arrived()) >= len(events), 60, "the parked audit events", every=0.2)
    assert agent.terminate() == 0
    got = arrived()
    assert sorted(e["seq"] for e, _ in got) == MANIFEST["seqs"], "lost or duplicated"
    for e, m in got:
        doc = m.json()
        assert m.topic == e["topic"]
        assert (doc["id"], doc["seq"], doc["kind"]) == (e["id"], e["seq"], e["kind"])
    old = [d for d in sub.events() if d["seq"] <= last_old]
    assert sorted(d["seq"] for d in old) == MANIFEST["seqs"], "an event not in the manifest"
    assert user_version(agent.store) == SCHEMA_VERSION
    assert "store upgraded" in agent.log_text()


def test_a_store_of_a_newer_release_is_refused_and_left_as_it_is(broker, make_agent):
    agent = make_agent(broker.url, env_device(rate=2), start=False)
    store = place_fixture(agent.dir)
    con = sqlite3.connect(store)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    before = store.read_bytes()
    agent.start()
    assert exit_code(agent) == EXIT_STORE_TOO_NEW
    log = agent.log_text()
    assert f"schema version {SCHEMA_VERSION + 1}" in log and "newer release" in log, log
    assert "Install that release again" in log and "Traceback" not in log
    assert store.read_bytes() == before
    names = sorted(p.name for p in agent.dir.iterdir())
    assert not [n for n in names if "damaged" in n or n.endswith(".bak")], names
    assert schema_version(store) == SCHEMA_VERSION + 1


def test_a_migration_that_cannot_run_leaves_the_store_at_its_old_version(broker, make_agent):
    """Another process holds the store's write lock (a second agent on the same folder, a
    copy tool): the migration's transaction cannot run; the agent says why and exits 2, the
    store is still 0.1.0's, byte for byte; once the lock is gone it migrates."""
    agent = make_agent(broker.url, env_device(rate=2), start=False)
    store = place_fixture(agent.dir)
    before = store.read_bytes()
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        agent.start()
        assert exit_code(agent) == 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    log = agent.log_text()
    assert "could not upgrade the store" in log and "locked" in log, log
    assert "left at version 0" in log and "Traceback" not in log, log
    assert store.read_bytes() == before and user_version(store) == 0
    agent.start()
    agent.wait_status(lambda s: s["store"].get("schema_version") == SCHEMA_VERSION, 20, "up")
    assert agent.terminate() == 0
    assert user_version(store) == SCHEMA_VERSION


# Run inside a mount namespace of its own (unshare -m): a tmpfs for the store, the fixture in
# it, the rest of the tmpfs filled but `room` bytes, then the agent; its files copied out.
SMALL_DISK = """\
import os, shutil, subprocess, sys
disk, fixture, out, room = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", disk], check=True)
shutil.copyfile(fixture, os.path.join(disk, "outbox.db"))
st = os.statvfs(disk)
with open(os.path.join(disk, "filler"), "wb") as f:
    f.write(bytes(st.f_bavail * st.f_frsize - room))
code = subprocess.run(sys.argv[5:]).returncode
for name in os.listdir(disk):
    if name.startswith("outbox.db"):
        shutil.copyfile(os.path.join(disk, name), os.path.join(out, name))
sys.exit(code)
"""


def test_a_migration_that_fails_midway_on_a_full_disk_is_rolled_back(broker, make_agent):
    """The store on a full tmpfs (its own mount namespace): no room for the backup (the
    migration goes on without it) and none for the migration's WAL: its COMMIT fails after
    the ALTER and the UPDATE ran. The agent exits 2 saying so; the store is 0.1.0's, byte
    for byte, at version 0; it is not moved aside as damaged."""
    unshare = shutil.which("unshare") or pytest.fail(
        "unshare is missing: apt-get install util-linux"
    )
    agent = make_agent(broker.url, env_device(rate=2), start=False)
    disk, out = agent.dir / "small-disk", agent.dir / "out"
    disk.mkdir()
    out.mkdir()
    text = agent.config.read_text().replace('path = "outbox.db"', 'path = "small-disk/outbox.db"')
    agent.config.write_text(text.replace("[agent]\n", '[agent]\nstatus_file = "status.json"\n'))
    script = agent.dir / "small_disk.py"
    script.write_text(SMALL_DISK)
    ns = [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-r", "-m"]
    # 40 KiB: the -shm (32 KiB) fits, the migration's WAL frames do not.
    wrapper = [*ns, sys.executable, str(script), str(disk), str(FIXTURE), str(out), str(40 << 10)]
    agent.start(wrapper=wrapper)
    assert exit_code(agent) == 2, agent.log_text()
    log = agent.log_text()
    assert "could not upgrade the store" in log and "full" in log, log
    # Midway: the ALTER TABLE and the UPDATE ran; writing them out failed.
    assert "(at COMMIT)" in log and "left at version 0" in log and "Traceback" not in log, log
    assert "no room for a backup" in log
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if "damaged" in n], names
    assert (out / "outbox.db").read_bytes() == FIXTURE.read_bytes()
