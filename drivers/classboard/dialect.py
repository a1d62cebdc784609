"""A board's dialect, read from its profile: vendor field names, time format and zone, codes.

A board profile (device_profiles/classboard/*.toml) says what a board model posts. Its
heartbeat points carry `wire = { field = "appVersion", type = "text" }`; its one `protocol`
state point carries `wire = { api = { … } }`: the heartbeat interval, the time format and
zone of swipes, the swipe fields, how card numbers are written. This module turns a posted
JSON document into values and card reads, or into a `BadRequest` whose message names the
field, never its value (a card number is never shown). It does no I/O.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.cards import CardNumber
from agent.profiles import Profile
from agent.sample import Value
from agent.units import HOUR, Duration, duration_range

FIELD = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# Text from a board (app version, mode): short, printable, no markup.
TEXT = re.compile(r"^[^\x00-\x1f\x7f<>]{0,64}$")


class BadRequest(ValueError):  # noqa: N818 - named after HTTP 400, what it becomes
    """A request the API refuses (HTTP 400), with a reason that names fields, not values."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldWire(_Strict):
    """How one heartbeat value is posted: its vendor field name and type."""

    field: str = Field(pattern=FIELD)
    type: Literal["text", "number", "bool", "code"]
    # type "code": the vendor's code (as text) -> the value reported, e.g. {"1" = "on"}.
    codes: dict[str, str] = Field(default_factory=dict)
    min: float | None = None
    max: float | None = None
    required: bool = False


class SwipeFields(_Strict):
    """Where a swipe's parts are in the posted JSON."""

    card: str = Field(default="card", pattern=FIELD)
    time: str = Field(default="time", pattern=FIELD)
    # The list of swipes inside an object ({"swipes": [...]}); "" : the body is one swipe
    # object or a JSON array of them.
    list: str = Field(default="swipes", pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,63})?$")
    # The board's own id of a batch (a replay of it is acknowledged, not taken twice).
    batch_id: str | None = Field(default=None, pattern=FIELD)


class CardWire(_Strict):
    """How a card number is written: decimal or hex digits of a `bits`-bit number."""

    encoding: Literal["decimal", "hex"] = "decimal"
    bits: int = Field(default=32, ge=1, le=512)
    format: str = Field(default="mifare-uid", pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    max_digits: int = Field(default=20, ge=1, le=160)


class ApiWire(_Strict):
    """The `api` table of a board profile's `protocol` point."""

    heartbeat_interval: Annotated[
        Duration, duration_range(5.0, HOUR, "boards report every few seconds to minutes")
    ] = 30.0
    # Missing this many intervals makes the board offline (Zigbee2MQTT-like availability).
    offline_after: float = Field(default=2.5, ge=1.5, le=20)
    # "rfc3339" (with an offset or Z), "epoch_ms", or a strptime pattern read in `timezone`.
    time_format: str = Field(default="rfc3339", min_length=2, max_length=40)
    timezone: str = "UTC"
    # A field of every swipe (or of the envelope) that carries the vendor's device number;
    # it must match the authenticated board's `device_number`.
    device_field: str | None = Field(default=None, pattern=FIELD)
    swipe: SwipeFields = SwipeFields()
    card: CardWire = CardWire()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not a time zone (e.g. 'Asia/Shanghai')") from None
        return v

    @field_validator("time_format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v not in ("rfc3339", "epoch_ms") and "%" not in v:
            raise ValueError("use 'rfc3339', 'epoch_ms' or a strptime pattern ('%Y-%m-%d …')")
        return v


class BoardWire(_Strict):
    """A board profile point's `wire`: a heartbeat field, or the API table (`protocol`)."""

    field: str | None = Field(default=None, pattern=FIELD)
    type: Literal["text", "number", "bool", "code"] | None = None
    codes: dict[str, str] = Field(default_factory=dict)
    min: float | None = None
    max: float | None = None
    required: bool = False
    api: ApiWire | None = None

    @model_validator(mode="after")
    def _one(self) -> BoardWire:
        if (self.api is None) == (self.field is None):
            raise ValueError("give either `field` (a heartbeat value) or `api` (the protocol)")
        if self.field is not None and self.type is None:
            raise ValueError("a heartbeat field needs `type`: text, number, bool or code")
        if self.type == "code" and not self.codes:
            raise ValueError("a `code` field needs `codes = { … }`")
        return self


@dataclass(frozen=True)
class Swipe:
    """One decoded swipe (its index in the request) or the reason it was refused."""

    index: int
    ts: float = 0.0
    number: CardNumber | None = None
    reason: str = ""


@dataclass(frozen=True)
class SwipeBatch:
    swipes: list[Swipe]
    batch_id: str | None


class Dialect:
    """What one board profile posts, ready to parse requests with."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.fields: dict[str, tuple[str, FieldWire]] = {}  # vendor field -> (point, wire)
        api: ApiWire | None = None
        for p in profile.points:
            if p.wire is None:
                continue
            w = BoardWire.model_validate(p.wire)
            if w.api is not None:
                api, self.protocol_point = w.api, p.name
            elif w.field is not None and w.type is not None:
                self.fields[w.field] = (
                    p.name,
                    FieldWire(
                        field=w.field,
                        type=w.type,
                        codes=w.codes,
                        min=w.min,
                        max=w.max,
                        required=w.required,
                    ),
                )
        if api is None:
            raise ValueError(f"profile {profile.id!r} has no `protocol` point with `api`")
        self.api = api
        self.zone = ZoneInfo(api.timezone)

    # ---- heartbeat -----------------------------------------------------------------------

    def heartbeat(self, doc: object) -> dict[str, Value]:
        """The point values of a heartbeat; BadRequest for unknown or ill-typed fields."""
        if not isinstance(doc, dict):
            raise BadRequest("a heartbeat is a JSON object")
        allowed = set(self.fields) | ({self.api.device_field} if self.api.device_field else set())
        unknown = sorted(k for k in doc if k not in allowed)
        if unknown:
            raise BadRequest(f"unknown field {unknown[0][:64]!r}; this API takes no other")
        out: dict[str, Value] = {}
        for name, (point, w) in self.fields.items():
            if name not in doc:
                if w.required:
                    raise BadRequest(f"missing field {name!r}")
                continue
            out[point] = _value(name, w, doc[name])
        return out

    def device_number(self, doc: object) -> str | None:
        """The vendor's device number a request carries (None: it carries none)."""
        f = self.api.device_field
        if f is None or not isinstance(doc, dict) or f not in doc:
            return None
        v = doc[f]
        if not isinstance(v, str | int) or isinstance(v, bool) or len(str(v)) > 64:
            raise BadRequest(f"field {f!r} must be text or a number")
        return str(v)

    # ---- swipes --------------------------------------------------------------------------

    def swipes(self, doc: object, now: float, max_age: float, max_batch: int) -> SwipeBatch:
        """Decode a swipe request; BadRequest when its shape is wrong (nothing is taken),
        else each swipe decoded or refused with a reason."""
        s = self.api.swipe
        batch_id: str | None = None
        envelope: dict[str, Any] = {}
        if s.list:
            if not isinstance(doc, dict) or s.list not in doc:
                raise BadRequest(f"a swipe request is an object with a list {s.list!r}")
            envelope = doc
            allowed = {s.list, s.batch_id, self.api.device_field} - {None}
            unknown = sorted(k for k in doc if k not in allowed)
            if unknown:
                raise BadRequest(f"unknown field {unknown[0][:64]!r}; this API takes no other")
            items = doc[s.list]
            if s.batch_id is not None and s.batch_id in doc:
                b = doc[s.batch_id]
                if not isinstance(b, str) or not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", b):
                    raise BadRequest(f"field {s.batch_id!r}: 1-128 letters, digits, . _ : -")
                batch_id = b
        else:
            items = doc if isinstance(doc, list) else [doc]
        if not isinstance(items, list) or not items:
            raise BadRequest("no swipes: give one swipe or a non-empty list")
        if len(items) > max_batch:
            raise BadRequest(f"{len(items)} swipes in one request; at most {max_batch}")
        item_keys = {s.card, s.time} | ({self.api.device_field} if self.api.device_field else set())
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadRequest(f"swipe [{i}] is not a JSON object")
            unknown = sorted(k for k in item if k not in item_keys)
            if unknown:
                raise BadRequest(f"swipe [{i}]: unknown field {unknown[0][:64]!r}")
            for k in (s.card, s.time):
                if k not in item:
                    raise BadRequest(f"swipe [{i}]: missing field {k!r}")
        del envelope
        out = [self._swipe(i, item, now, max_age) for i, item in enumerate(items)]
        return SwipeBatch(out, batch_id)

    def _swipe(self, i: int, item: dict[str, Any], now: float, max_age: float) -> Swipe:
        s = self.api.swipe
        try:
            number = self.card(item[s.card])
        except ValueError as e:
            return Swipe(i, reason=f"{s.card}: {e}")
        try:
            ts = self.time(item[s.time])
        except ValueError as e:
            return Swipe(i, reason=f"{s.time}: {e}")
        if ts > now + 300:
            return Swipe(i, reason=f"{s.time}: more than 5 minutes ahead of the gateway")
        if ts < now - max_age:
            return Swipe(i, reason=f"{s.time}: older than the gateway keeps swipes for")
        return Swipe(i, ts=ts, number=number)

    def card(self, raw: object) -> CardNumber:
        """A card number from its posted text (or a JSON integer, for decimal)."""
        c = self.api.card
        if isinstance(raw, int) and not isinstance(raw, bool) and c.encoding == "decimal":
            raw = str(raw)
        if not isinstance(raw, str) or not raw or len(raw) > c.max_digits:
            raise ValueError(f"not a card number of 1-{c.max_digits} digits")
        if c.encoding == "decimal":
            return CardNumber.from_digits(raw, c.bits)
        if not re.fullmatch(r"[0-9A-Fa-f]+", raw):
            raise ValueError("a card number is hexadecimal digits")
        return CardNumber.from_hex(raw, c.bits)

    def time(self, raw: object) -> float:
        """Seconds since the epoch (UTC) of a posted time, in the profile's format and zone."""
        fmt = self.api.time_format
        if fmt == "epoch_ms":
            if not isinstance(raw, int | float) or isinstance(raw, bool) or not math.isfinite(raw):
                raise ValueError("not milliseconds since the epoch")
            return float(raw) / 1000.0
        if not isinstance(raw, str) or len(raw) > 40:
            raise ValueError("not a time string")
        if fmt == "rfc3339":
            try:
                t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("not an RFC 3339 time") from None
            if t.tzinfo is None:
                raise ValueError("an RFC 3339 time needs its offset (Z or +08:00)")
            return t.timestamp()
        try:
            t = datetime.strptime(raw, fmt)
        except ValueError:
            raise ValueError(f"not a time in the format {fmt!r}") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=self.zone)
        return t.astimezone(UTC).timestamp()

    def local_time(self, ts: float) -> str:
        """The gateway's time as this board model writes times (boards without NTP)."""
        fmt = self.api.time_format
        if fmt in ("rfc3339", "epoch_ms"):
            return datetime.fromtimestamp(ts, self.zone).isoformat(timespec="seconds")
        return datetime.fromtimestamp(ts, self.zone).strftime(fmt)


def _value(name: str, w: FieldWire, raw: object) -> Value:
    if w.type == "bool":
        if not isinstance(raw, bool):
            raise BadRequest(f"field {name!r} must be true or false")
        return raw
    if w.type == "number":
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise BadRequest(f"field {name!r} must be a number")
        if (w.min is not None and raw < w.min) or (w.max is not None and raw > w.max):
            raise BadRequest(f"field {name!r} out of range {w.min}..{w.max}")
        return raw
    if w.type == "code":
        key = str(raw).lower() if isinstance(raw, bool) else str(raw)
        if isinstance(raw, dict | list) or key not in w.codes:
            raise BadRequest(f"field {name!r}: not one of the codes {sorted(w.codes)}")
        return w.codes[key]
    if not isinstance(raw, str) or not TEXT.match(raw):
        raise BadRequest(f"field {name!r}: text of at most 64 characters, no markup")
    return raw


def problems(profile: Profile) -> list[tuple[str, str]]:
    """A board profile's problems (check time), beyond each wire table's own model."""
    out: list[tuple[str, str]] = []
    apis = [i for i, p in enumerate(profile.points) if p.wire and "api" in p.wire]
    if len(apis) != 1:
        out.append(("points", "a board profile has exactly one point with `wire.api`"))
    fields: dict[str, int] = {}
    for i, p in enumerate(profile.points):
        if p.wire is None:
            continue
        f = p.wire.get("field")
        if isinstance(f, str):
            if f in fields:
                out.append((f"points[{i}].wire.field", f"{f!r} is also points[{fields[f]}]'s"))
            fields[f] = i
    return out


def board_profile(profile: Profile) -> bool:
    """Does the profile describe a board (it has the API table), not the hub?"""
    return any(p.wire is not None and "api" in p.wire for p in profile.points)
