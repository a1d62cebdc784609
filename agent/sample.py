"""The contract between drivers and the core: Sample, Quality, the device sink, the driver shape.

A driver speaks one wire protocol and hands the core Samples; it never builds topics, JSON
or SQL. This module must stay small and import nothing from the rest of the agent except
the profile and config types it passes through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from pydantic import BaseModel

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


class DeviceSink(Protocol):
    """Where a driver sends what it learns. Implemented by the runtime."""

    async def sample(self, sample: Sample) -> None:
        """Hand over one reading; returns once it is queued for the store."""

    async def availability(
        self,
        device: str,
        *,
        online: bool,
        reason: str = "",
        info: Mapping[str, Value] | None = None,
    ) -> None:
        """Report that a device answers again (online) or stopped answering (offline)."""


class Driver(Protocol):
    """One wire protocol. One instance runs one bus and the devices on it."""

    key: ClassVar[str]  # the config's `driver` value, e.g. "modbus-rtu"
    profile_driver: ClassVar[str]  # the profiles' `driver` value it accepts, e.g. "modbus"
    bus_model: ClassVar[type[BaseModel]]  # schema of the driver's keys in a [[buses]] entry
    device_model: ClassVar[type[BaseModel]]  # schema of the driver's keys in a [[devices]] entry

    def __init__(self, bus: BusSpec, devices: Sequence[BoundDevice]) -> None: ...

    async def run(self, sink: DeviceSink) -> None:
        """Poll or listen until cancelled; raise a DriverError when the bus is unusable."""

    async def act(
        self, device: BoundDevice, action: str, args: Mapping[str, Any]
    ) -> Mapping[str, Value]:
        """Carry out an allowlisted action; raise ActionError with a reason on failure."""
