"""The whole driver interface: what a driver declares, the hooks the core calls, their defaults.

A driver speaks one wire protocol. It is found through the `campus_agent.drivers` entry point
named by its `key` (agent/registry.py), so a new driver is a folder and one line in its
package's entry points: no file of the core changes. It validates its own keys in a
[[buses]] / [[devices]] entry (`bus_model`, `device_model`) and its own `wire` table in a
profile's points and actions (`point_wire`, `action_wire`), and hands the core Samples
through a DeviceSink. It never builds topics, JSON or SQL. This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from agent.errors import ActionError
from agent.validation import model_problems

if TYPE_CHECKING:
    from agent.cards import CardRead
    from agent.profiles import Profile
    from agent.sample import BoundDevice, BusSpec, Sample, Value

# (entry, message) pairs: what `check` reports, prefixed with the file and the entry's path.
Problems = list[tuple[str, str]]


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

    async def card(self, read: CardRead) -> None:
        """Hand over a card presented at one of the device's readers. The number goes through
        the privacy pipeline (agent/cards.py): hashed, de-duplicated, sent as an access event.
        A driver never logs, stores or publishes the number itself."""

    async def action_failed(self, device: str, action: str, reason: str) -> None:
        """An action that was replied `ok` (it started) failed later, in the background (a
        firmware update): recorded as an audit event of the command that started it."""


class NoOptions(BaseModel):
    """A driver that adds no keys to a [[buses]] or [[devices]] entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Driver:
    """Base of every driver. One instance runs one bus and the devices on it.

    Declare the class variables; implement `run` (and `act` if devices can be commanded).
    The other hooks have defaults that fit a driver with nothing more to say.
    """

    key: ClassVar[str]  # the config's `driver` value and the entry point's name: "modbus-rtu"
    profile_driver: ClassVar[str]  # the profiles' `driver` value it reads: "modbus"
    bus_model: ClassVar[type[BaseModel]] = NoOptions  # its keys in a [[buses]] entry
    device_model: ClassVar[type[BaseModel]] = NoOptions  # its keys in a [[devices]] entry
    # The `wire` table of a profile's point / action: where and how the value is on the wire.
    # None: this driver reads no such table. `wire_required`: every point must have one.
    point_wire: ClassVar[type[BaseModel] | None] = None
    action_wire: ClassVar[type[BaseModel] | None] = None
    wire_required: ClassVar[bool] = False
    # The key this driver's profiles used before `wire` (still read, so old files load).
    legacy_wire_key: ClassVar[str | None] = None

    def __init__(self, bus: BusSpec, devices: Sequence[BoundDevice]) -> None:
        self.bus = bus
        self.devices = list(devices)

    # ---- `check` time: no I/O ------------------------------------------------------------

    @classmethod
    def check_profile(cls, profile: Profile) -> Problems:
        """Problems in the profile's `wire` tables, validated by this driver's models."""
        problems: Problems = []
        parts = (
            ("points", cls.point_wire, [(p.name, p.wire) for p in profile.points]),
            ("actions", cls.action_wire, [(a.name, a.wire) for a in profile.actions]),
        )
        for table, model, entries in parts:
            for i, (_, wire) in enumerate(entries):
                where = f"{table}[{i}].wire"
                if wire is None:
                    if model is not None and cls.wire_required:
                        problems.append((where, cls.missing_wire(table)))
                    continue
                if model is None:
                    problems.append((where, f"{cls.profile_driver} {table} take no wire table"))
                    continue
                problems += model_problems(model, wire, where)
        return problems

    @classmethod
    def missing_wire(cls, table: str) -> str:
        """What to tell a profile author whose point or action has no `wire` table."""
        return f"a {cls.profile_driver} {table[:-1]} needs `wire = {{…}}`"

    @classmethod
    def check_device(cls, device: BoundDevice) -> Problems:
        """Problems with one configured device (its address, say); entries are its keys."""
        del device
        return []

    # ---- running -------------------------------------------------------------------------

    async def run(self, sink: DeviceSink) -> None:
        """Poll or listen until cancelled; raise a DriverError when the bus is unusable."""
        raise NotImplementedError

    async def act(
        self, device: BoundDevice, action: str, args: Mapping[str, Any]
    ) -> Mapping[str, Value]:
        """Carry out an allowlisted action; raise ActionError with a reason on failure."""
        del args
        raise ActionError(f"{self.key} driver has no action {action!r} for {device.id!r}")

    def stats(self) -> dict[str, Any]:
        """Counters for the local status (`campus-agent status`): requests, errors, ..."""
        return {}
