"""The store's trips to its SQLite threads (issue #14): a group commit, and a fetch, each
cost one trip to the connection's thread (one wake-up there, one back), whatever they hold.

Counted as the voluntary context switches of the store's own SQLite threads (Linux
/proc/self/task/<tid>/status): each trip wakes a thread blocked on its queue. With
synchronous=off nothing else blocks those threads (no fsync), so the count is the trips.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.contract import Kind, NewEvent, Origin
from agent.store import Store

# One xdist worker runs every test that measures (tests/run.sh: --dist loadgroup).
pytestmark = [pytest.mark.asyncio, pytest.mark.xdist_group("measures")]
ORIGIN = Origin("campus/v1", "pt-023", "gw-main")


def ev(kind: Kind = Kind.TELEMETRY, n: int = 0) -> NewEvent:
    body = {"values": {"n": n}, "units": {}, "quality": "good"}
    if kind == Kind.ALARM:
        body = {"alarm": "zone_1", "state": "active", "severity": "critical", "value": True}
    return NewEvent(kind, "dev-1", "env", "synthetic-env", time.time(), body)


def switches(tids: list[int]) -> int:
    total = 0
    for tid in tids:
        for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


async def open_counted(path: Path) -> tuple[Store, list[int]]:
    before = set(threading.enumerate())  # the objects: a dead thread's ident is reused
    s = Store(path, ORIGIN, max_size=64 << 20, synchronous="off")
    await s.open()
    tids = [
        t.native_id for t in threading.enumerate() if t not in before and t.native_id is not None
    ]
    assert len(tids) == 2, "the store runs a writer and a reader connection"
    return s, tids


async def test_a_group_commit_with_inserts_acks_and_parks_is_one_trip(tmp_path):
    s, tids = await open_counted(tmp_path / "o.db")
    for i in range(40):
        s.add(ev(n=i))
    await s.commit_now()  # warm-up: the first commit also measures the files (the cap)
    rows = await s.fetch({}, 100)
    commits = 10
    start = switches(tids)
    for i in range(commits):
        for j in range(5):
            s.add(ev(n=100 + 5 * i + j))
        s.ack([rows[3 * i].seq, rows[3 * i + 1].seq])
        s.park(rows[3 * i + 2].seq, "quota exceeded")
        assert await s.commit_now() == 5
    trips = switches(tids) - start
    # Before: BEGIN, INSERT, next_seq, DELETE, UPDATE, COMMIT: six trips per commit (>= 60).
    assert trips <= commits * 2, f"{trips} SQLite thread wake-ups for {commits} commits"
    assert await s.count() == 40 + 5 * commits - 2 * commits
    assert s.stats.parked == commits and s.stats.delivered == 2 * commits
    await s.close()


async def test_a_fetch_that_asks_every_priority_is_one_trip(tmp_path):
    s, tids = await open_counted(tmp_path / "o.db")
    s.add(ev(n=1))
    await s.commit_now()
    fetches = 10
    start = switches(tids)
    for _ in range(fetches):
        s.rescan()  # every priority may hold rows: only telemetry does, asked last
        (row,) = await s.fetch({}, 100)
    trips = switches(tids) - start
    # Before: one query, one trip per priority (five per fetch here).
    assert trips <= fetches * 2, f"{trips} SQLite thread wake-ups for {fetches} fetches"
    assert row.seq == 1
    s.add(ev(Kind.ALARM))
    await s.commit_now()
    assert [r.priority for r in await s.fetch({}, 100)] == [0], "alarms still come first"
    await s.close()
