"""When each Modbus device is due, batched: one timer per bus, not one per device (#14).

Pure bookkeeping, no I/O and no asyncio: the driver arms one `loop.call_at` at `next_wake()`,
and at that instant takes `pop_due(now)`: every device due within `window` of now, so devices
whose polls fall close together are polled in one wake-up. A device is polled at most `window`
early and its schedule advances from when it was due, not from when it was polled, so its
period does not drift. Nothing is due, nothing is armed.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
WINDOW_MAX = 0.05  # s: the most a device is polled ahead of its due time
WINDOW_SHARE = 0.1  # ... and never more than this share of the bus's shortest poll interval


def batch_window(intervals: Sequence[float]) -> float:
    """How early a poll may be taken to share a wake-up: 50 ms, or 10 % of the shortest
    interval on the bus (a 100 ms fence poll is at most 10 ms early)."""
    return min(WINDOW_MAX, WINDOW_SHARE * min(intervals, default=1.0))


def first_offsets(intervals: Sequence[float], window: float) -> list[float]:
    """First polls spread over each device's interval (200 devices due in one instant would
    queue 400 requests at once), on a grid of `window` so that devices sharing an interval
    stay due at the same instants and are polled in the same wake-ups."""
    n = max(len(intervals), 1)
    return [
        round(iv * i / n / window) * window if window > 0 else 0.0 for i, iv in enumerate(intervals)
    ]


class Schedule(Generic[T]):
    """Due times of items (devices); at most one live entry per item."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._heap: list[tuple[float, int, int, T]] = []
        self._live: dict[int, int] = {}  # id(item) -> the sequence number of its live entry
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def put(self, item: T, due: float) -> bool:
        """(Re)schedule `item` at `due`, replacing an earlier entry; True when this moves the
        next wake-up earlier (the caller re-arms its timer)."""
        before = self.next_wake()
        seq = next(self._seq)
        self._live[id(item)] = seq
        heapq.heappush(self._heap, (due, seq, id(item), item))
        return before is None or due < before

    def discard(self, item: T) -> None:
        self._live.pop(id(item), None)

    def next_wake(self) -> float | None:
        """When the earliest live entry is due; None when nothing is scheduled."""
        heap = self._heap
        while heap and self._live.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)  # replaced or discarded
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[tuple[T, float]]:
        """Every item due by `now + window`, earliest first, with its due time."""
        out: list[tuple[T, float]] = []
        limit = now + self.window
        while (due := self.next_wake()) is not None and due <= limit:
            _, _, key, item = heapq.heappop(self._heap)
            del self._live[key]
            out.append((item, due))
        return out
