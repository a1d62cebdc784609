"""The soak's faults: the seeded schedule drawn in advance, and the record of what happened.

`make_schedule(seed, seconds)` gives one fault of each REQUIRED kind first (in a seeded
order), then random ones by WEIGHTS, each with its durations; bench/soak.py carries them
out and keeps a `FaultRecord` (wall-clock outage intervals) for each, and a `Run` for each
agent process. Plain data: nothing here starts or stops anything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

KINDS = ("broker", "cap", "kill", "kill+broker", "cable", "quiet")
REQUIRED = ("broker", "cap", "kill", "cable", "quiet")  # first, in a seeded order
WEIGHTS = (3, 1, 3, 1, 2, 2)


@dataclass
class Planned:
    """One fault of the schedule, with its random durations drawn in advance."""

    kind: str
    gap: float  # seconds of normal running before it
    down: float = 0.0  # broker stopped / cable out / quiet
    restart_after: float = 0.0  # agent killed -> started again
    before_kill: float = 0.0  # kill+broker: broker down this long before the kill


def make_schedule(seed: int, seconds: float) -> list[Planned]:
    """The seeded schedule: one fault of each required kind (shuffled), then random ones.

    Long enough for `seconds` at the shortest durations; the run stops taking faults from
    it once `seconds` have passed and every required kind has run.
    """
    rng = random.Random(seed)
    first = list(REQUIRED)
    rng.shuffle(first)
    out: list[Planned] = []
    planned = 0.0
    while first or planned < seconds * 2:
        kind = first.pop(0) if first else rng.choices(KINDS, WEIGHTS)[0]
        f = Planned(kind, gap=round(rng.uniform(1.0, 4.0), 2))
        if kind == "broker":
            f.down = round(rng.uniform(2.0, 8.0), 2)
        elif kind == "cap":
            f.down = round(rng.uniform(0.0, 2.0), 2)  # after eviction is seen
        elif kind == "kill":
            f.restart_after = round(rng.uniform(0.2, 2.0), 2)
        elif kind == "kill+broker":
            f.before_kill = round(rng.uniform(1.0, 3.0), 2)
            f.restart_after = round(rng.uniform(0.5, 2.0), 2)
            f.down = round(rng.uniform(1.0, 3.0), 2)  # broker still down after the restart
        elif kind == "cable":
            f.down = round(rng.uniform(2.0, 6.0), 2)
        else:
            f.down = round(rng.uniform(3.0, 10.0), 2)
        out.append(f)
        planned += f.gap + max(f.down, 1.0) + f.before_kill + f.restart_after + 1.0
    return out


@dataclass
class FaultRecord:
    """What happened: wall-clock intervals (time.time()) of each outage."""

    kind: str
    start: float
    end: float
    broker_down: list[tuple[float, float]] = field(default_factory=list)
    agent_down: list[tuple[float, float]] = field(default_factory=list)
    cable_out: list[tuple[float, float]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """One agent process: from start to SIGKILL or SIGTERM; `hwm` = last seq it committed."""

    pid: int
    started: float
    ready: float | None = None
    ended: float | None = None
    how: str = ""
    hwm: int = 0
    exit_code: int | None = None


def describe(f: Planned) -> str:
    """The durations of a fault, for the progress lines."""
    parts = []
    if f.before_kill:
        parts.append(f"kill after {f.before_kill:g}s")
    if f.restart_after:
        parts.append(f"restart after {f.restart_after:g}s")
    if f.down and f.kind != "cap":
        parts.append(f"{f.down:g}s")
    return ", ".join(parts)
