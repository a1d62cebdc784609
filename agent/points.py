"""Profile semantics applied to Samples, the same for every driver.

Scale and offset, units, which values are telemetry, alarms or state, and alarm edges
(active/cleared). It turns a Sample into NewEvents; it never does I/O.
"""

from __future__ import annotations

import math
from typing import Any

from agent.events import Kind, NewEvent
from agent.sample import BoundDevice, Quality, Sample, Value


def _scaled(value: Value, scale: float, offset: float) -> Value:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if scale == 1.0 and offset == 0.0:
        return value
    return round(value * scale + offset, 6)


class DevicePoints:
    """Turns one device's Samples into events, remembering alarm and state values."""

    def __init__(self, device: BoundDevice) -> None:
        self.device = device
        self.profile = device.profile
        self._alarms: dict[str, bool] = {}
        self._state: dict[str, Value] = {}
        self._location = dict(device.location) or None
        self.unknown_points = 0

    def _event(self, kind: Kind, ts: float, body: dict[str, Any]) -> NewEvent:
        return NewEvent(
            kind=kind,
            device=self.device.id,
            category=self.profile.category,
            profile=self.profile.id,
            ts=ts,
            body=body,
            location=self._location,
        )

    def events(self, sample: Sample) -> list[NewEvent]:
        """The events one Sample produces: telemetry, alarm edges, state changes."""
        out: list[NewEvent] = []
        values: dict[str, Value] = {}
        units: dict[str, str] = {}
        state: dict[str, Value] = {}
        for name, raw in sample.values.items():
            point = self.profile.point(name)
            if point is None:
                self.unknown_points += 1
                continue
            value = _scaled(raw, point.scale, point.offset)
            if isinstance(value, float) and not math.isfinite(value):
                value = None  # type: ignore[assignment]  # JSON null; quality says why
                sample = Sample(sample.device, sample.ts, sample.values, Quality.BAD)
            if point.kind == "telemetry":
                values[name] = value
                if point.unit:
                    units[name] = point.unit
            elif point.kind == "alarm":
                active = bool(value)
                before = self._alarms.get(name)
                self._alarms[name] = active
                # The first reading only sets the baseline unless it is an active alarm.
                if before is None and not active:
                    continue
                if before != active:
                    body: dict[str, Any] = {
                        "alarm": name,
                        "state": "active" if active else "cleared",
                        "severity": point.severity,
                        "value": value,
                    }
                    if point.zone:
                        body["zone"] = point.zone
                    out.append(self._event(Kind.ALARM, sample.ts, body))
            elif self._state.get(name) != value:
                self._state[name] = value
                state[name] = value
        # A state event is retained: it carries the whole known state, not only the change.
        if values:
            out.append(
                self._event(
                    Kind.TELEMETRY,
                    sample.ts,
                    {"values": values, "units": units, "quality": str(sample.quality)},
                )
            )
        if state:
            out.append(self._event(Kind.STATE, sample.ts, {"online": True, **self._state}))
        return out

    def availability(
        self, ts: float, *, online: bool, reason: str, info: dict[str, Value]
    ) -> NewEvent:
        """The state event for a device going online or offline."""
        body: dict[str, Any] = {"online": online, **self._state, **info}
        if reason:
            body["reason"] = reason
        return self._event(Kind.STATE, ts, body)
