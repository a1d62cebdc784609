"""The outbox, in process against real SQLite files: group commit, seq, priorities, the cap,
recovery of a damaged file, and replay memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time

import pytest

from agent.contract import Kind, NewEvent, Origin, Priority
from agent.store import Store
from tests.harness.waiting import eventually

pytestmark = pytest.mark.asyncio
ORIGIN = Origin("campus/v1", "pt-023", "gw-main")


def ev(kind: Kind = Kind.TELEMETRY, n: int = 0, pad: int = 0) -> NewEvent:
    body = {"values": {"n": n, "pad": "x" * pad}, "units": {}, "quality": "good"}
    if kind == Kind.ALARM:
        body = {"alarm": "zone_1", "state": "active", "severity": "critical", "value": True}
    return NewEvent(kind, "dev-1", "env", "synthetic-env", time.time(), body)


async def open_store(path, **kw) -> Store:
    s = Store(path, ORIGIN, max_size=kw.pop("max_size", 64 << 20), **kw)
    await s.open()
    return s


async def test_group_commit_assigns_consecutive_seqs_that_survive_reopen(tmp_path):
    s = await open_store(tmp_path / "o.db")
    for i in range(1000):
        s.add(ev(n=i))
    assert await s.commit_now() == 1000
    rows = await s.fetch({}, 2000)
    assert [r.seq for r in rows] == list(range(1, 1001))
    doc = json.loads(rows[0].payload)
    assert doc["seq"] == 1 and doc["v"] == 1 and doc["kind"] == "telemetry"
    assert rows[0].topic == "campus/v1/pt-023/gw-main/telemetry/env/dev-1"
    s.ack(r.seq for r in rows)
    await s.commit_now()
    assert await s.count() == 0
    await s.close()
    s2 = await open_store(tmp_path / "o.db")
    s2.add(ev())
    await s2.commit_now()
    (row,) = await s2.fetch({}, 10)
    assert row.seq == 1001, "seq must keep increasing across restarts, even with an empty outbox"
    await s2.close()


async def test_alarms_are_fetched_before_older_telemetry(tmp_path):
    s = await open_store(tmp_path / "o.db")
    for i in range(50):
        s.add(ev(n=i))
    s.add(ev(Kind.ALARM))
    await s.commit_now()
    first = await s.fetch({}, 10)
    assert [r.priority for r in first] == [0]
    assert first[0].seq == 51
    rest = await s.fetch({0: 51}, 100)
    assert [r.seq for r in rest] == list(range(1, 51))
    await s.close()


async def test_cap_evicts_oldest_telemetry_first_and_keeps_alarms(tmp_path):
    cap = 256 * 1024
    s = await open_store(tmp_path / "o.db", max_size=cap)
    for i in range(3000):
        s.add(ev(Kind.ALARM if i % 100 == 0 else Kind.TELEMETRY, n=i, pad=200))
        if i % 50 == 0:
            await s.commit_now()
    await s.commit_now()
    assert s.stats.evicted["telemetry"] > 1000
    assert s.stats.evicted["alarm"] == 0
    rows = await s.fetch({}, 10_000)
    assert sum(1 for r in rows if r.priority == 0) == 30  # every alarm is still there
    tele = sorted(r.seq for r in (await s.fetch({0: 10**9}, 10_000)))
    kept = set(tele)
    evicted = [q for q in range(1, 3001) if q not in kept and (q - 1) % 100 != 0]
    assert max(evicted) < min(tele), "not the oldest telemetry"
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir() if p.name in ("o.db", "o.db-wal"))
    assert on_disk <= cap
    await s.close()
    s2 = await open_store(tmp_path / "o.db", max_size=cap)
    assert s2.stats.evicted["telemetry"] == s.stats.evicted["telemetry"]  # counts persist
    await s2.close()


async def test_a_backlog_of_queued_events_is_committed_within_the_cap(tmp_path):
    """Commits that fell behind (a loaded machine) leave thousands of events queued: each
    commit must stay small enough for the cap check after it, or one transaction grows the
    file past the cap for good (freed pages are reused, never given back)."""
    cap = 256 * 1024
    s = await open_store(tmp_path / "o.db", max_size=cap)
    for i in range(3000):
        s.add(ev(n=i, pad=200))
    sizes: list[int] = []  # the files after each transaction, before the cap check

    def measure(batch: object, rows: object) -> None:
        files = ("o.db", "o.db-wal")
        sizes.append(sum(p.stat().st_size for p in tmp_path.iterdir() if p.name in files))

    s.on_commit = measure
    assert await s.commit_now() == 3000  # the whole queue, in as many transactions as it takes
    assert len(sizes) > 1
    assert max(sizes) <= cap, f"{max(sizes)} bytes on disk for a {cap}-byte cap"
    assert s.stats.evicted["telemetry"] > 1000
    await s.close()


async def test_only_alarms_left_then_oldest_alarms_go(tmp_path):
    s = await open_store(tmp_path / "o.db", max_size=256 * 1024)
    for i in range(3000):
        s.add(ev(Kind.ALARM, n=i))
        if i % 50 == 0:
            await s.commit_now()
    await s.commit_now()
    assert s.stats.evicted["alarm"] > 0
    rows = await s.fetch({}, 10_000)
    assert rows[-1].seq == 3000  # the newest are kept
    await s.close()


def audit(n: int) -> NewEvent:
    command = {"id": f"cmd-{n:08d}", "action": "disarm", "result": "ok", "code": "ok"}
    return NewEvent(Kind.AUDIT, "dev-1", "fence", "f", time.time(), {"command": command})


async def test_audit_events_survive_a_full_store_of_alarms(tmp_path):
    """5,000 alarm edges on a full store evicted all 50 command audit events: who commanded
    what now has its own retention, which alarm or telemetry pressure cannot take."""
    s = await open_store(tmp_path / "o.db", max_size=256 * 1024)
    for i in range(50):
        s.add(audit(i))
    await s.commit_now()
    for i in range(5000):
        s.add(ev(Kind.ALARM, n=i))
        if i % 50 == 0:
            await s.commit_now()
    await s.commit_now()
    assert s.stats.evicted["alarm"] > 0  # the store was full
    assert s.stats.evicted["audit"] == 0
    rows = await s.fetch({}, 10_000)  # audit comes right after alarms and access
    audits = [r for r in await s.fetch({0: 10**9}, 10_000) if r.priority == Priority.AUDIT]
    assert [json.loads(r.payload)["command"]["id"] for r in audits] == [
        f"cmd-{i:08d}" for i in range(50)
    ]
    assert rows and all(r.priority == Priority.ALARM for r in rows)
    await s.close()


async def test_a_store_from_before_the_outcome_column_is_upgraded_not_moved_aside(tmp_path):
    """The replay table gained `outcome` (#9): an existing gateway's store must keep its
    backlog and its remembered ids across the upgrade."""
    path = tmp_path / "o.db"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, prio INTEGER NOT NULL, created REAL "
        "NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL, parked "
        "TEXT); CREATE INDEX outbox_prio_seq ON outbox (prio, seq); CREATE TABLE meta (key TEXT"
        " PRIMARY KEY, value); CREATE TABLE commands_seen (id TEXT PRIMARY KEY, expires REAL "
        "NOT NULL);"
    )
    con.execute("INSERT INTO outbox VALUES (7, 0, 1.0, 't', x'7b7d', 0, NULL)")
    con.execute("INSERT INTO commands_seen VALUES ('cmd-old-000001', ?)", (time.time() + 600,))
    con.commit()
    con.close()
    s = await open_store(path)
    assert s.stats.recovered is None
    assert [r.seq for r in await s.fetch({}, 10)] == [7]
    assert await s.remember_command("cmd-old-000001", time.time() + 600) == ""
    assert await s.remember_command("cmd-new-000001", time.time() + 600) is True
    await s.note_command_outcome("cmd-new-000001", "ok")
    assert await s.remember_command("cmd-new-000001", time.time() + 600) == "ok"
    await s.close()
    assert not [p for p in tmp_path.iterdir() if "damaged" in p.name or ".bad" in p.name]


async def test_audit_retention_keeps_the_newest_within_its_own_limit(tmp_path):
    s = await open_store(tmp_path / "o.db", max_size=64 << 20, audit_keep=100)
    for i in range(300):
        s.add(audit(i))
    await s.commit_now()
    await s._enforce_cap()  # the cap check (every max_size/32 bytes or every few seconds)
    kept = [json.loads(r.payload)["command"]["id"] for r in await s.fetch({}, 10_000)]
    assert kept == [f"cmd-{i:08d}" for i in range(200, 300)]
    assert s.stats.evicted["audit"] == 200
    await s.close()


async def test_damaged_file_is_moved_aside_and_a_fresh_store_started(tmp_path):
    path = tmp_path / "o.db"
    s = await open_store(path)
    for _ in range(10):
        s.add(ev())
    await s.commit_now()
    await s.close()
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # smash the header and schema page
    path.write_bytes(bytes(data))
    s2 = await open_store(path)
    rec = s2.stats.recovered
    assert rec is not None and "moved_to" in rec
    assert (tmp_path / rec["moved_to"]).exists()
    s2.add(ev())
    await s2.commit_now()
    (row,) = await s2.fetch({}, 10)
    assert row.seq > 10, "seq must not go back after a recovery"
    await s2.close()


async def test_commands_are_remembered_across_reopen(tmp_path):
    s = await open_store(tmp_path / "o.db")
    assert await s.remember_command("cmd-1", time.time() + 60)
    assert not await s.remember_command("cmd-1", time.time() + 60)
    await s.close()
    s2 = await open_store(tmp_path / "o.db")
    assert not await s2.remember_command("cmd-1", time.time() + 60)
    assert await s2.remember_command("cmd-2", time.time() + 60)
    await s2.close()


async def test_parked_events_are_not_fetched_until_retried(tmp_path):
    s = await open_store(tmp_path / "o.db")
    for _ in range(3):
        s.add(ev())
    await s.commit_now()
    s.park(2, "Not authorized")
    await s.commit_now()
    assert [r.seq for r in await s.fetch({}, 10)] == [1, 3]
    assert await s.unpark_all() == 1
    assert [r.seq for r in await s.fetch({}, 10)] == [1, 2, 3]
    await s.close()


async def test_concurrent_commits_never_reuse_a_seq(tmp_path):
    s = await open_store(tmp_path / "o.db")

    async def producer(k):
        for i in range(200):
            s.add(ev(n=k * 1000 + i))
            if i % 7 == 0:
                await s.commit_now()

    await asyncio.gather(*(producer(k) for k in range(5)))
    await s.commit_now()
    con = sqlite3.connect(tmp_path / "o.db")
    (n, lo, hi) = con.execute("SELECT count(*), min(seq), max(seq) FROM outbox").fetchone()
    assert (n, lo, hi) == (1000, 1, 1000)
    await s.close()


async def test_telemetry_waits_for_a_group_and_an_alarm_does_not(tmp_path):
    s = await open_store(tmp_path / "o.db", telemetry_delay=30.0)
    runner = asyncio.create_task(s.run())
    try:
        for i in range(3):
            s.add(ev(n=i))
        await asyncio.sleep(0.3)
        assert s.stats.committed == 0, "three readings alone should wait for the group"
        s.add(ev(Kind.ALARM))
        await eventually(
            lambda: s.stats.committed == 4, 10, "the alarm to take the readings along", every=0.01
        )
        assert s.stats.transactions == 1
        for i in range(8):  # a full group does not wait for telemetry_delay
            s.add(ev(n=i))
        await eventually(
            lambda: s.stats.committed == 12, 10, "a full group to be committed", every=0.01
        )
        assert s.stats.transactions == 2
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await s.close()


async def test_telemetry_delay_zero_commits_each_reading_at_once(tmp_path):
    s = await open_store(tmp_path / "o.db", telemetry_delay=0.0)
    runner = asyncio.create_task(s.run())
    try:
        s.add(ev())
        await eventually(
            lambda: s.stats.committed == 1, 10, "a lone reading to be committed", every=0.01
        )
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await s.close()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("CREATE VIEW outbox AS SELECT 1 AS seq", "'outbox' is a view, not a table"),
        ("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, body TEXT)", "has the columns"),
        (
            "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, prio INTEGER NOT NULL, created REAL "
            "NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL, "
            "parked TEXT NOT NULL)",
            "parked TEXT NOT NULL",
        ),
        (
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value);"
            "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, prio INTEGER NOT NULL, created REAL "
            "NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL, "
            "parked TEXT);"
            "CREATE TRIGGER no_insert BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'no'); END",
            "unexpected trigger 'no_insert'",
        ),
    ],
)
async def test_an_outbox_the_store_cannot_use_is_moved_aside_like_a_damaged_file(
    tmp_path, damage, says
):
    """A file SQLite finds sound but whose `outbox` is a view, has other columns or a
    trigger that refuses inserts: before, every commit failed for ever (the agent hung with
    its events in memory). Now it is moved aside and a fresh store takes events."""
    path = tmp_path / "o.db"
    con = sqlite3.connect(path)
    con.executescript(damage)
    con.close()
    s = await open_store(path)
    try:
        rec = s.stats.recovered
        assert rec is not None, "the unusable store was opened as it is"
        assert says in rec["reason"]
        assert (tmp_path / rec["moved_to"]).exists()
        s.add(ev(Kind.ALARM))
        assert await asyncio.wait_for(s.commit_now(), 10) == 1
        (row,) = await s.fetch({}, 10)
        assert row.priority == 0
    finally:
        # An unusable outbox left open keeps its events queued: close gives up after 10 s.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(s.close(), 10)


async def test_a_sound_store_is_not_moved_aside(tmp_path):
    path = tmp_path / "o.db"
    s = await open_store(path)
    s.add(ev())
    await s.commit_now()
    await s.close()
    s2 = await open_store(path)
    assert s2.stats.recovered is None
    assert s2.stats.backlog == 1
    await s2.close()
