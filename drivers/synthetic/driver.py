"""Simulated devices that produce readings at a configured rate (demos, load tests, benchmarks).

It stays in the product on purpose: a site can run the whole pipeline without hardware, and
the benchmarks drive the core at full speed through it. Values follow each point's
`wire = { min, max, period }` in the profile; alarm points toggle every `alarm_every`.
It never builds topics or JSON: it hands Samples to the core like any other driver.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from agent.driver import DeviceSink, Driver, NoOptions
from agent.errors import ActionError, DriverError
from agent.sample import BoundDevice, BusSpec, Sample, Value
from agent.units import DAY, Duration, duration_range


class SyntheticWire(BaseModel):
    """A point's `wire = { min, max, period, initial }`: the wave it follows."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min: StrictInt | StrictFloat = 0.0
    max: StrictInt | StrictFloat = 100.0
    period: Annotated[
        Duration, duration_range(0.01, 7 * DAY, "0 for a flat line; quicker is noise", off=True)
    ] = 600.0
    initial: StrictBool | StrictInt | StrictFloat | str = False  # state points


class SyntheticDevice(BaseModel):
    """Keys a synthetic [[devices]] entry may add."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rate: float | None = Field(default=None, gt=0, le=1_000_000)  # readings/s; else poll_interval
    # Toggle every alarm point this often (a phase of the clock, not a timer: 1 ms is a storm).
    alarm_every: (
        Annotated[Duration, duration_range(0.001, DAY, "a test's alarm storm", off=True)] | None
    ) = None
    # Fault injection: the driver fails after this long.
    crash_after: Annotated[Duration, duration_range(0, DAY, "a test's fault")] | None = None


class SyntheticDriver(Driver):
    """Generates readings for every device on its bus."""

    key: ClassVar[str] = "synthetic"
    profile_driver: ClassVar[str] = "synthetic"
    bus_model: ClassVar[type[BaseModel]] = NoOptions
    device_model: ClassVar[type[BaseModel]] = SyntheticDevice
    point_wire: ClassVar[type[BaseModel] | None] = SyntheticWire
    legacy_wire_key: ClassVar[str | None] = "synthetic"

    def __init__(self, bus: BusSpec, devices: Sequence[BoundDevice]) -> None:
        super().__init__(bus, devices)
        self.state: dict[str, dict[str, Value]] = {d.id: {} for d in devices}

    async def run(self, sink: DeviceSink) -> None:
        """Run one generator per device until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for d in self.devices:
                tg.create_task(self._device(d, sink), name=f"synthetic[{d.id}]")

    def _waves(self, device: BoundDevice) -> list[Any]:
        """Per point: (name, kind, min, max, period, initial), parsed once per device."""
        out = []
        for p in device.profile.points:
            w = SyntheticWire.model_validate(p.wire or {})
            out.append((p.name, p.kind, float(w.min), float(w.max), w.period, w.initial))
        return out

    def _values(self, device: BoundDevice, waves: list[Any], t: float) -> dict[str, Value]:
        every = device.options.alarm_every
        state = self.state[device.id]
        out: dict[str, Value] = {}
        for name, kind, lo, hi, period, initial in waves:
            if kind == "alarm":
                out[name] = bool(every and int(t / every) % 2 == 1)
            elif kind == "state":
                out[name] = state.get(name, initial)
            else:
                phase = math.sin(2 * math.pi * t / period) if period else 0.0
                out[name] = round(lo + (hi - lo) * (0.5 + 0.5 * phase), 3)
        return out

    async def _device(self, device: BoundDevice, sink: DeviceSink) -> None:
        opts: SyntheticDevice = device.options
        interval = 1.0 / opts.rate if opts.rate else device.poll_interval
        start = time.monotonic()
        produced = 0
        waves = self._waves(device)
        await sink.availability(device.id, online=True)
        while True:
            now = time.monotonic()
            if opts.crash_after is not None and now - start >= opts.crash_after:
                raise DriverError(f"synthetic fault injected after {opts.crash_after:g}s")
            due = int((now - start) / interval) + 1
            wall = time.time()
            # At high rates several readings fall due per wake-up; emit them in slices and
            # let the rest of the agent run between slices.
            for i in range(min(due - produced, 10_000)):
                produced += 1
                await sink.sample(Sample(device.id, wall, self._values(device, waves, wall)))
                if i % 100 == 99:
                    await asyncio.sleep(0)
            next_at = start + produced * interval
            await asyncio.sleep(max(0.0, min(next_at - time.monotonic(), 1.0)) or 0.0005)

    async def act(
        self, device: BoundDevice, action: str, args: Mapping[str, Any]
    ) -> Mapping[str, Value]:
        """Synthetic actions: arm/disarm set the `armed` state point; fail always fails."""
        if action == "arm":
            self.state[device.id]["armed"] = True
        elif action == "disarm":
            self.state[device.id]["armed"] = False
        elif action == "fail":
            raise ActionError("simulated device refused the action")
        else:
            raise ActionError(f"synthetic devices cannot {action!r}")
        return dict(self.state[device.id])
