"""What drivers and the core pass each other: Sample, Quality, a bound device, a bus.

A driver speaks one wire protocol and hands the core Samples; it never builds topics, JSON
or SQL. The driver interface itself (the hooks, their defaults, the device sink) is in
agent/driver.py. This module must stay small and import nothing from the rest of the agent
except the profile type it passes through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.profiles import Profile

Value = float | int | bool | str


class Quality(StrEnum):
    """How far a reading can be trusted (the `quality` field of a telemetry event)."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Sample:
    """What a device said at one moment: named values, already decoded from the wire."""

    device: str
    ts: float  # seconds since the epoch, when the reading happened
    values: Mapping[str, Value]
    quality: Quality = Quality.GOOD


@dataclass(frozen=True)
class BoundDevice:
    """A configured device with its profile resolved and its driver options validated."""

    id: str
    profile: Profile
    bus: str
    address: int | str | None
    poll_interval: float
    location: Mapping[str, Any] = field(default_factory=dict)
    options: Any = None  # an instance of the driver's device_model


@dataclass(frozen=True)
class BusSpec:
    """A configured bus with its driver options validated."""

    id: str
    driver: str
    options: Any = None  # an instance of the driver's bus_model
