"""The soak's accounting: every seq from 1 to the last committed, received, stored or evicted.

`account` takes what the run recorded (the checker's receipts, the store snapshots taken
while the agent was down, the agent runs, the faults and the status samples) and says what
was lost, duplicated, reordered or late; `read_store` reads an agent's SQLite store, only
while no agent runs on it. bench/README.md ("soak") explains every figure.
"""

from __future__ import annotations

import bisect
import math
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from bench.soak_config import ALARM_EVERY, FENCE
from bench.soak_schedule import FaultRecord, Run
from bench.stats import median, rounded

BACKLOG_WINDOW = 100  # a backlog at least this large: the store may be filling
MARGIN = 3.0  # seconds added around every window in which eviction can have happened

# One receipt at the checker: (received, seq, id, kind, ts, device, alarm, state, retained).
Record = tuple[float, int, str, str, str, str, str | None, str | None, bool]
# One status sample: (time, status known, backlog, evicted, used bytes, connected).
Sample = tuple[float, bool, int, int, int, bool]


@dataclass
class StoreSnapshot:
    """What an agent's SQLite store held: unsent rows (seq -> (kind, id)), counters."""

    next_seq: int = 1
    rows: dict[int, tuple[str, str]] = field(default_factory=dict)
    evicted: dict[str, int] = field(default_factory=dict)


def read_store(path: Path) -> StoreSnapshot:
    """Read the store of a stopped (or killed) agent. Never while one runs on it."""
    snap = StoreSnapshot()
    if not path.exists():
        return snap
    con = sqlite3.connect(path)
    try:
        for key, value in con.execute("SELECT key, value FROM meta"):
            if key == "next_seq":
                snap.next_seq = int(value)
            elif str(key).startswith("evicted."):
                snap.evicted[str(key).removeprefix("evicted.")] = int(value)
        for seq, payload in con.execute("SELECT seq, payload FROM outbox"):
            doc = orjson.loads(payload)
            snap.rows[int(seq)] = (str(doc.get("kind")), str(doc.get("id")))
    finally:
        con.close()
    # The store's own rule (agent/store.py, open): meta holds next_seq only as of the last
    # transaction that deleted rows; the rows themselves hold it until then.
    snap.next_seq = max(snap.next_seq, max(snap.rows, default=0) + 1)
    return snap


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _overlap(a: float, b: float, intervals: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, y) - max(a, x)) for x, y in intervals)


def _touches(a: float, b: float, intervals: list[tuple[float, float]]) -> bool:
    return any(a <= y and x <= b for x, y in intervals)


def backlog_windows(
    samples: list[Sample],
) -> list[tuple[float, float]]:
    """Intervals in which the store may have been filling: a backlog of BACKLOG_WINDOW or
    more, or no live status (agent down or starting). Eviction happens only well above that
    (80 % of the cap), and it takes the oldest telemetry, which was created after the
    backlog last was small."""
    out = []
    start: float | None = None
    last_t = 0.0
    for t, known, backlog, *_ in samples:
        high = (not known) or backlog >= BACKLOG_WINDOW
        if high and start is None:
            start = last_t or t
        elif not high and start is not None:
            out.append((start, t))
            start = None
        last_t = t
    if start is not None:
        out.append((start, math.inf))
    return out


def account(
    *,
    records: list[Record],
    final_status: dict[str, Any],
    final_store: StoreSnapshot,
    snapshots: list[StoreSnapshot],
    runs: list[Run],
    faults: list[FaultRecord],
    samples: list[Sample],
    t0: float = 0.0,
) -> dict[str, Any]:
    """Every seq from 1 to the last committed: received, still stored, or evicted."""
    # -- what the checker got
    first: dict[str, Record] = {}
    ids_by_seq: dict[int, set[str]] = defaultdict(set)
    duplicates = retained_replays = 0
    for rec in records:
        _recv, seq, eid, *_rest, retain = rec
        if eid in first:
            if retain:
                retained_replays += 1
            else:
                duplicates += 1
            continue
        first[eid] = rec
        ids_by_seq[seq].add(eid)
    seq_reused = sorted(s for s, ids in ids_by_seq.items() if len(ids) > 1)
    ts_by_seq = {seq: _ts(rec[4]) for seq, ids in ids_by_seq.items() for rec in [first[min(ids)]]}

    store = final_status.get("store", {})
    last = max(int(store.get("last_seq", 0)), final_store.next_seq - 1)
    received = {s for s in ids_by_seq if s <= last}
    beyond = sorted(s for s in ids_by_seq if s > last)
    stored = set(final_store.rows)
    missing = sorted(set(range(1, last + 1)) - received - stored)

    evicted = {k: int(v) for k, v in final_status.get("evicted", {}).items()}
    for cls, n in final_store.evicted.items():
        evicted[cls] = max(evicted.get(cls, 0), n)
    evicted_total = sum(evicted.values())
    lost_by_count = max(0, len(missing) - evicted_total)
    slack = max(0, evicted_total - len(missing))

    # -- missing seqs created while the store cannot have been filling: not evictions
    broker_down = _merge(iv for f in faults for iv in f.broker_down)
    agent_down = _merge(iv for f in faults for iv in f.agent_down)
    windows = _merge(
        (a - MARGIN, b + MARGIN) for a, b in [*backlog_windows(samples), *broker_down, *agent_down]
    )
    got = sorted(received)
    unexplained: list[list[int]] = []
    i = 0
    while i < len(missing):
        j = i
        while j + 1 < len(missing) and missing[j + 1] == missing[j] + 1:
            j += 1
        lo_i = bisect.bisect_left(got, missing[i]) - 1
        hi_i = bisect.bisect_right(got, missing[j])
        lo = ts_by_seq[got[lo_i]] if lo_i >= 0 else -math.inf
        hi = ts_by_seq[got[hi_i]] if hi_i < len(got) else math.inf
        if not _touches(lo, hi, windows):
            unexplained.append([missing[i], missing[j]])
        i = j + 1
    n_unexplained = sum(b - a + 1 for a, b in unexplained)

    # -- alarms
    alarms = sorted((r for r in first.values() if r[3] == "alarm"), key=lambda r: r[1])
    alarm_ids = {r[2] for r in alarms}
    snapshot_alarms = {
        eid: seq for snap in snapshots for seq, (kind, eid) in snap.rows.items() if kind == "alarm"
    }
    final_alarm_ids = {eid for kind, eid in final_store.rows.values() if kind == "alarm"}
    committed_not_received = sorted(
        seq
        for eid, seq in snapshot_alarms.items()
        if eid not in alarm_ids and eid not in final_alarm_ids
    )
    bounds = sorted(r.hwm for r in runs[:-1] if r.how in ("kill", "died"))
    by_point: dict[tuple[int, str, str], list[tuple[int, str]]] = defaultdict(list)
    for r in alarms:
        run_i = bisect.bisect_left(bounds, r[1])
        by_point[(run_i, r[5], str(r[6]))].append((r[1], str(r[7])))
    breaks: list[dict[str, Any]] = []
    for (run_i, dev, name), seq_states in sorted(by_point.items()):
        want = "active"
        for seq, state in seq_states:
            if state != want:
                breaks.append({"run": run_i, "device": dev, "alarm": name, "seq": seq})
            want = "cleared" if state == "active" else "active"
    evicted_alarms = evicted.get("alarm", 0)
    alarms_lost = len(committed_not_received) + len(breaks) + evicted_alarms

    # -- alarm delay: device time -> receipt; without broker/agent downtime; steady state
    blocked = _merge([*broker_down, *agent_down])
    fault_spans = _merge(
        (f.start - 1.0, f.end + MARGIN) for f in faults if f.broker_down or f.agent_down
    )
    raw, excl, steady = [], [], []
    worst: dict[str, tuple[float, Any]] = {}
    for r in alarms:
        if r[8]:
            continue  # a retained replay: not a delivery
        ts = _ts(r[4])
        d = r[0] - ts
        raw.append(d)
        excl.append(d - _overlap(ts, r[0], blocked))
        figures = {"raw": d, "excl_outages": excl[-1]}
        if not _touches(ts, r[0], fault_spans):
            steady.append(d)
            figures["steady"] = d
        for name, value in figures.items():
            if name not in worst or value > worst[name][0]:
                worst[name] = (value, r)
    worst_alarms = {
        name: {
            "delay_s": round(value, 3),
            "seq": r[1],
            "device": r[5],
            "alarm": r[6],
            "state": r[7],
            "ts_s": round(_ts(r[4]) - t0, 3),
            "received_s": round(r[0] - t0, 3),
        }
        for name, (value, r) in worst.items()
    }

    # -- the synthetic fence's edges: expected at every ALARM_EVERY boundary while it ran
    fence_ts = sorted(_ts(r[4]) for r in alarms if r[5] == FENCE)
    expected = missed = 0
    missed_at: list[float] = []
    for run in runs:
        if run.ready is None or run.ended is None:
            continue
        k = math.ceil((run.ready + 1.5) / ALARM_EVERY)
        while k * ALARM_EVERY < run.ended - 1.5:
            b = k * ALARM_EVERY
            expected += 1
            j = bisect.bisect_left(fence_ts, b - 0.002)
            if not (j < len(fence_ts) and fence_ts[j] <= b + 1.0):
                missed += 1
                missed_at.append(round(b - t0, 3))
            k += 1

    # -- order within device and kind (first deliveries)
    last_seq_of: dict[tuple[str, str], int] = {}
    out_of_order = 0
    for rec in sorted(first.values(), key=lambda r: r[0]):
        key = (rec[5], rec[3])
        if rec[1] < last_seq_of.get(key, 0):
            out_of_order += 1
        last_seq_of[key] = max(rec[1], last_seq_of.get(key, 0))

    used = [s[4] for s in samples if s[1]]
    kinds = Counter(r[3] for r in first.values())
    events_lost = max(lost_by_count, n_unexplained) + len(seq_reused)
    return {
        "ok": alarms_lost == 0 and events_lost == 0,
        "events": {
            "last_seq": last,
            "received_unique": len(received),
            "received_by_kind": dict(kinds),
            "messages": len(records),
            "still_stored": len(stored),
            "evicted": evicted,
            "evicted_total": evicted_total,
            "lost_uncommitted_last_run": int(final_status.get("lost_uncommitted", 0)),
            "missing": len(missing),
            "lost": events_lost,
            "lost_by_count": lost_by_count,
            "unexplained_gaps": unexplained[:50],
            "unexplained_missing": n_unexplained,
            "evicted_but_delivered_max": slack,
            "seq_reused": seq_reused[:50],
            "beyond_last_seq": beyond[:50],
            "duplicates": duplicates,
            "duplicate_ratio": round(duplicates / max(1, len(received)), 5),
            "retained_replays": retained_replays,
            "out_of_order": out_of_order,
        },
        "alarms": {
            "received": len(alarms),
            "seen_in_store_after_kill": len(snapshot_alarms),
            "lost": alarms_lost,
            "committed_not_received": committed_not_received[:50],
            "alternation_breaks": breaks[:50],
            "evicted": evicted_alarms,
            "fence_edges_expected": expected,
            "fence_edges_missed": missed,
            "fence_edges_missed_at": missed_at[:50],
            "delay_max_s": rounded(max(raw, default=None), 3),
            "delay_max_excl_outages_s": rounded(max(excl, default=None), 3),
            "delay_steady_max_s": rounded(max(steady, default=None), 3),
            "delay_steady_p50_s": rounded(median(steady), 3),
            "delay_p50_s": rounded(median(raw), 3),
            "delay_p99_s": rounded(_upper_quantile(raw, 0.99), 3),
            "steady_samples": len(steady),
            "worst": worst_alarms,
        },
        "store": {
            "used_bytes_max": max(used, default=0),
            "max_size": final_status.get("store", {}).get("max_size"),
            "backlog_max": max((s[2] for s in samples if s[1]), default=0),
        },
        "outages_s": {
            "broker_down": round(sum(b - a for a, b in broker_down), 1),
            "agent_down": round(sum(b - a for a, b in agent_down), 1),
        },
    }


def _upper_quantile(xs: list[float], q: float) -> float | None:
    """The value at index floor(q*n) of the sorted values: the soak has always quoted its
    p99 so (one rank above bench.stats.quantile's nearest rank when q*n is whole), kept so
    that results/soak.json stays comparable with earlier runs."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]
