"""Profile semantics applied to Samples, the same for every driver.

Scale and offset, units, which values are telemetry, alarms or state; alarm edges
(active/cleared) with a debounce; report-by-exception with a deadband and a heartbeat;
`quality` when a read failed. It turns a Sample into NewEvents; it never does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from agent.contract import Kind, NewEvent
from agent.profiles import Point
from agent.sample import BoundDevice, Quality, Sample, Value


def scaled(point: Point, raw: Value) -> Value:
    """A point's value from its raw reading: raw * scale + offset (numbers), or inverted."""
    if isinstance(raw, bool):
        return raw != point.invert
    return _scaled(raw, point.scale, point.offset)


def _scaled(value: Value, scale: float, offset: float) -> Value:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if scale == 1.0 and offset == 0.0:
        return value
    return round(value * scale + offset, 9)


@dataclass(frozen=True)
class StormLimit:
    """How many alarm edges a second one device may send before they are coalesced."""

    rate: float = 20.0  # edges a second, on average
    burst: int = 40  # edges at once (every zone of a fence host alarming together)
    report: float = 10.0  # during a storm: the latest edges and the counts this often


class _Storm:
    """A token bucket of alarm edges; while it is empty the device is in a storm."""

    def __init__(self, limit: StormLimit) -> None:
        self.limit = limit
        self.tokens = float(limit.burst)
        self.t = -math.inf
        self.active = False
        self.started = False  # the storm began since the last step: say so
        self.since = 0.0
        self.coalesced = 0  # edges held back since the storm began
        self.last_report = 0.0
        self.held: dict[str, tuple[bool, NewEvent]] = {}  # per point: its latest edge

    def refill(self, ts: float) -> None:
        if self.t != -math.inf and ts > self.t:
            self.tokens = min(
                float(self.limit.burst), self.tokens + (ts - self.t) * self.limit.rate
            )
        self.t = max(self.t, ts)

    def admit(self, ts: float) -> bool:
        self.refill(ts)
        if not self.active and self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.tokens = max(0.0, self.tokens - 1.0)
        if not self.active:
            self.active, self.started, self.since, self.coalesced = True, True, ts, 0
            self.last_report = ts
        self.coalesced += 1
        return False


@dataclass
class _Alarm:
    reported: bool | None = None  # the state the district knows
    candidate: bool | None = None  # a different raw state seen, not yet held long enough
    since: float = 0.0


class DevicePoints:
    """Turns one device's Samples into events, remembering what was last reported."""

    def __init__(self, device: BoundDevice, storm: StormLimit | None = None) -> None:
        self.device = device
        self._storm = _Storm(storm or StormLimit())
        self._sent: dict[str, bool] = {}  # per alarm point: the last edge sent
        self.profile = device.profile
        d = self.profile.defaults
        self._heartbeat = d.heartbeat
        self._deadband = {
            p.name: d.deadband if p.deadband is None else p.deadband for p in self.profile.points
        }
        self._debounce = {
            p.name: d.debounce if p.debounce is None else p.debounce for p in self.profile.points
        }
        self._points: dict[str, Point] = {p.name: p for p in self.profile.points}
        self._alarms: dict[str, _Alarm] = {}
        self._state: dict[str, Value] = {}
        self._last_values: dict[str, Value | None] = {}
        self._last_quality: Quality | None = None
        self._last_report = -math.inf
        self._location = dict(device.location) or None
        self.unknown_points = 0
        self.suppressed = 0  # telemetry readings not sent: within the deadband

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
        values: dict[str, Value | None] = {}
        units: dict[str, str] = {}
        changed_state = False
        quality = sample.quality
        for name, raw in sample.values.items():
            point = self._points.get(name)
            if point is None:
                self.unknown_points += 1
                continue
            value = scaled(point, raw)
            if isinstance(value, float) and not math.isfinite(value):
                values[name] = None  # JSON has no NaN; the quality says why
                quality = Quality.BAD
                continue
            if point.kind == "telemetry":
                values[name] = value
                if point.unit:
                    units[name] = point.unit
            elif point.kind == "alarm":
                edge = self._alarm_edge(name, bool(value), sample.ts)
                if edge is not None:
                    event = self._alarm_event(point, edge, value, sample.ts)
                    if self._storm.admit(sample.ts):
                        out.append(event)
                        self._sent[name] = edge
                    else:
                        self._storm.held[name] = (edge, event)
            elif self._state.get(name) != value:
                self._state[name] = value
                changed_state = True
        failed = quality not in (Quality.GOOD, self._last_quality)  # a read went wrong
        if (values or failed) and self._should_report(values, quality, sample.ts):
            self._last_values = dict(values)
            self._last_quality = quality
            self._last_report = sample.ts
            out.append(
                self._event(
                    Kind.TELEMETRY,
                    sample.ts,
                    {"values": values, "units": units, "quality": str(quality)},
                )
            )
        elif values:
            self.suppressed += 1
        if changed_state:
            # A state event is retained: it carries the whole known state, not only the change.
            out.append(self._event(Kind.STATE, sample.ts, {"online": True, **self._state}))
        if self._storm.active:
            out.extend(self.tick(sample.ts))
        return out

    # ---- alarm storms ------------------------------------------------------------------

    def tick(self, ts: float, *, final: bool = False) -> list[NewEvent]:
        """During an alarm storm: its start, then every `report` seconds the latest edge of
        each point (if it differs from the last one sent) and the counts, and its end once
        the edge rate is back under the limit (`final`: end it now, e.g. the device is
        reconfigured). Called with each sample and, by the runtime, every second."""
        st = self._storm
        if not st.active:
            return []
        st.refill(ts)
        out: list[NewEvent] = []
        if st.started:
            st.started = False
            out.append(self._storm_event(ts, active=True))
        ended = final or st.tokens >= st.limit.burst
        if ended or ts - st.last_report >= st.limit.report:
            st.last_report = ts
            for name, (edge, event) in st.held.items():
                if self._sent.get(name) != edge:
                    out.append(event)
                    self._sent[name] = edge
            st.held.clear()
            if ended:
                st.active = False
            out.append(self._storm_event(ts, active=not ended))
        return out

    def _storm_event(self, ts: float, *, active: bool) -> NewEvent:
        st = self._storm
        body: dict[str, Any] = {
            "online": True,
            **self._state,
            "alarm_storm": active,
            "alarm_storm_edges": st.coalesced,
            "alarm_storm_since": round(st.since, 3),
        }
        return self._event(Kind.STATE, ts, body)

    def _should_report(self, values: dict[str, Value | None], quality: Quality, ts: float) -> bool:
        if quality != self._last_quality or ts - self._last_report >= self._heartbeat:
            return True
        if values.keys() != self._last_values.keys():
            return True
        for name, v in values.items():
            last = self._last_values[name]
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or not isinstance(last, int | float)
            ):
                if v != last:
                    return True
            elif abs(v - last) > self._deadband[name] or (self._deadband[name] == 0 and v != last):
                return True
        return False

    def _alarm_edge(self, name: str, active: bool, ts: float) -> bool | None:
        """The new state to report, or None. An edge must hold for the point's debounce."""
        a = self._alarms.setdefault(name, _Alarm())
        if a.reported is None and not active:
            a.reported = False  # the first reading only sets the baseline, unless it alarms
            return None
        if active == a.reported:
            a.candidate = None
            return None
        if a.candidate != active:
            a.candidate, a.since = active, ts
        if ts - a.since >= self._debounce[name]:
            a.reported, a.candidate = active, None
            return active
        return None

    def _alarm_event(self, point: Point, active: bool, value: Value, ts: float) -> NewEvent:
        body: dict[str, Any] = {
            "alarm": point.name,
            "state": "active" if active else "cleared",
            "severity": point.severity,
            "value": value,
        }
        if point.zone:
            body["zone"] = point.zone
        return self._event(Kind.ALARM, ts, body)

    def availability(
        self, ts: float, *, online: bool, reason: str, info: dict[str, Value]
    ) -> NewEvent:
        """The state event for a device going online or offline."""
        body: dict[str, Any] = {"online": online, **self._state, **info}
        if reason:
            body["reason"] = reason
        if not online:
            self._last_quality = None  # the first reading after a return is always sent
        return self._event(Kind.STATE, ts, body)
