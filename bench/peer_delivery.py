"""What the systems deliver: every value the bench subscriber received, by device and stamp.

A value is one telemetry point of one poll of one device, identified by (device, stamp,
key): the same one received twice is a duplicate (a broker redelivery to the bench, MQTT
DUP flag set, is counted apart). A value that matches none of the simulators' vector cases
is a decoding error (`bad_values`).
"""

from __future__ import annotations

import itertools
import statistics
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.modbus_devices import BENCH_POINTS, CASES, case_value


@dataclass
class Delivery:
    """Every value the subscriber received, first deliveries and duplicates apart; values
    of devices not in `expected` are counted, not kept."""

    expected: set[str] = field(default_factory=set)  # device names
    first: dict[tuple[str, int, str], float] = field(default_factory=dict)  # -> arrival
    dups: list[tuple[float, bool]] = field(default_factory=list)  # (arrival, DUP flag)
    polls: dict[str, dict[int, int]] = field(default_factory=dict)  # device -> stamp_ms -> n
    arrivals: list[tuple[float, int, int]] = field(default_factory=list)  # arrival, stamp, n
    bad_values: int = 0  # values matching no simulator case (a decoding error)
    unknown_devices: int = 0
    parsed: int = 0  # messages consumed so far

    def absorb(
        self,
        parse: Callable[[bytes], list[tuple[str, float, list[tuple[str, Any]]]]],
        messages: list[tuple[float, bytes, bool]],
    ) -> None:
        """Take in `messages` (arrival, payload, DUP flag), read by the system's `parse`."""
        for arrival, payload, dup in messages:
            self.parsed += 1
            try:
                polls = parse(payload)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            for device, stamp, values in polls:
                if device not in self.expected:
                    self.unknown_devices += 1
                    continue
                ms = round(stamp * 1000)
                fresh = 0
                for key, value in values:
                    k = (device, ms, key)
                    if k in self.first:
                        self.dups.append((arrival, dup))
                        continue
                    self.first[k] = arrival
                    fresh += 1
                    if not _plausible(key, value):
                        self.bad_values += 1
                if fresh:
                    per = self.polls.setdefault(device, {})
                    per[ms] = per.get(ms, 0) + fresh
                    self.arrivals.append((arrival, ms, fresh))

    def values_arrived(self, t0: float, t1: float) -> int:
        return sum(n for a, _, n in self.arrivals if t0 <= a < t1)

    def stamped(self, t0: float, t1: float) -> tuple[int, float | None]:
        """Values stamped in [t0, t1): how many arrived, and the last one's arrival."""
        lo, hi = round(t0 * 1000), round(t1 * 1000)
        n, last = 0, None
        for a, ms, k in self.arrivals:
            if lo <= ms < hi:
                n += k
                last = a if last is None or a > last else last
        return n, last

    def first_after(self, t: float) -> float | None:
        """Arrival of the first value stamped at or after t."""
        lo = round(t * 1000)
        return min((a for a, ms, _ in self.arrivals if ms >= lo), default=None)

    def first_arrival_after(self, t: float) -> float | None:
        """The first arrival (of a value of any stamp) at or after t."""
        return min((a for a, _, _ in self.arrivals if a >= t), default=None)

    def first_stamp_after(self, t: float) -> float | None:
        """The earliest poll stamp at or after t (epoch seconds)."""
        lo = round(t * 1000)
        found = [ms for per in self.polls.values() for ms in per if ms >= lo]
        return min(found) / 1000 if found else None

    def dups_between(self, t0: float, t1: float) -> tuple[int, int]:
        """Duplicates that arrived in [t0, t1): (new publishes, broker redeliveries)."""
        new = sum(1 for a, dup in self.dups if t0 <= a < t1 and not dup)
        redelivered = sum(1 for a, dup in self.dups if t0 <= a < t1 and dup)
        return new, redelivered

    def devices_seen(self) -> int:
        return len(self.polls)

    def period(self, t0: float, t1: float) -> float | None:
        """Median interval between consecutive polls of a device stamped in [t0, t1)."""
        lo, hi = round(t0 * 1000), round(t1 * 1000)
        gaps: list[float] = []
        for per in self.polls.values():
            stamps = sorted(ms for ms in per if lo <= ms < hi)
            gaps += [(b - a) / 1000 for a, b in itertools.pairwise(stamps)]
        return statistics.median(gaps) if gaps else None

    def devices_since(self, t: float) -> int:
        """Devices with a poll stamped at or after t."""
        lo = round(t * 1000)
        return sum(1 for per in self.polls.values() if any(ms >= lo for ms in per))

    def of_device(self, device: str, t0: float, t1: float) -> tuple[int, int]:
        """(polls, values) of a device stamped in [t0, t1) that were delivered."""
        lo, hi = round(t0 * 1000), round(t1 * 1000)
        per = self.polls.get(device, {})
        ns = [n for ms, n in per.items() if lo <= ms < hi]
        return len(ns), sum(ns)


def _case_values() -> dict[str, list[float]]:
    """Every value each point takes in the simulators' vectors, as the systems decode it."""
    out: dict[str, list[float]] = {}
    for i, (name, reg) in enumerate(BENCH_POINTS):
        vals = [case_value(i, k) for k in range(CASES)]
        if reg["type"] == "int16":
            vals = [v - 65536 if v >= 32768 else v for v in vals]
        elif reg["type"] == "float32":
            vals = [struct.unpack(">f", struct.pack(">f", v))[0] for v in vals]
        out[name] = [float(v) for v in vals]
    return out


_CASE_VALUES: dict[str, list[float]] = {}


def _plausible(key: str, value: Any) -> bool:
    if not _CASE_VALUES:
        _CASE_VALUES.update(_case_values())
    if not isinstance(value, int | float) or key not in _CASE_VALUES:
        return False
    return any(abs(value - v) < 1e-3 for v in _CASE_VALUES[key])
