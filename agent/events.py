"""Compatibility: the event contract moved to agent.contract, the clock to agent.clock.

Kept for one release so that out-of-tree code importing agent.events keeps working.
"""

from __future__ import annotations

from agent.clock import ClockState
from agent.contract import (
    PRIORITY,
    RETAINED,
    SCHEMA_VERSION,
    Kind,
    NewEvent,
    Origin,
    Priority,
    encode,
    rfc3339,
    uuid7,
)
from agent.store import StoredEvent

__all__ = [
    "PRIORITY",
    "RETAINED",
    "SCHEMA_VERSION",
    "ClockState",
    "Kind",
    "NewEvent",
    "Origin",
    "Priority",
    "StoredEvent",
    "encode",
    "rfc3339",
    "uuid7",
]
