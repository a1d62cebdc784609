"""Device profiles: TOML data files that say what a device model reports and what it can do.

A profile holds no code and no instance data (no addresses). Loading validates every field
and names the file and the field on error. This module never talks to a device.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent import registry
from agent.errors import Problem, ProfileError
from agent.units import Duration
from agent.validation import problems as validation_problems

PROFILES_DIR = Path(__file__).resolve().parent.parent / "device_profiles"

Category = Literal[
    "env", "energy", "fence", "intrusion", "card", "classboard", "ble", "node", "test"
]
Severity = Literal["critical", "major", "minor", "info"]
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
ID_PATTERN = r"^[a-z0-9][a-z0-9-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Strict):
    poll_interval: Duration = 10.0
    heartbeat: Duration = 300.0  # telemetry is sent at least this often, changed or not
    deadband: float = Field(default=0.0, ge=0)  # report-by-exception threshold (0: any change)
    debounce: Duration = 0.0  # an alarm edge must hold this long before it is reported
    max_gap: int = Field(default=8, ge=-1, le=120)  # registers skipped to merge two reads


class Point(_Strict):
    """One named value of a device."""

    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["telemetry", "alarm", "state"] = "telemetry"
    unit: str | None = None
    severity: Severity = "major"  # for alarm points
    zone: str | None = None  # for alarm points: the zone a district operator sees
    scale: float = 1.0
    offset: float = 0.0
    invert: bool = False  # for on/off points: a normally-closed (fail-safe) loop reads 1 = ok
    deadband: float | None = Field(default=None, ge=0)  # overrides defaults.deadband
    debounce: Duration | None = None  # overrides defaults.debounce (alarm points)
    # Where and how the value is on the wire: the driver's own table, validated by its
    # `point_wire` model (Modbus: `{ table = "input", address = 1, type = "int16" }`).
    wire: dict[str, Any] | None = None


class ActionArg(_Strict):
    type: Literal["bool", "int", "float", "str"]
    required: bool = True
    max_length: int = 256


class Action(_Strict):
    """Something the district may ask the device to do, if the site allowlists it."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    args: dict[str, ActionArg] = Field(default_factory=dict)
    # What the action writes: the driver's own table, validated by its `action_wire` model.
    wire: dict[str, Any] | None = None
    # "required": a valid Ed25519 signature whenever the site has keys, whatever its
    # [commands] signatures says (disarming a fence); "site": as the site says.
    signature: Literal["required", "site"] = "site"


class Profile(_Strict):
    """A device model."""

    id: str = Field(pattern=ID_PATTERN)
    vendor: str
    model: str
    aliases: list[str] = Field(default_factory=list)
    category: Category
    driver: str
    source: str = Field(min_length=1)
    defaults: Defaults = Defaults()
    points: list[Point] = Field(min_length=1)
    actions: list[Action] = Field(default_factory=list)

    def point(self, name: str) -> Point | None:
        """The point called `name`, or None."""
        for p in self.points:
            if p.name == name:
                return p
        return None

    def action(self, name: str) -> Action | None:
        """The action called `name`, or None."""
        for a in self.actions:
            if a.name == name:
                return a
        return None


def pydantic_problems(file: str, err: ValidationError, prefix: str = "") -> list[Problem]:
    """pydantic's errors as Problems of one file (see agent.validation for the wording)."""
    return [Problem(file, entry, msg) for entry, msg in validation_problems(err, prefix)]


def _legacy_wire(data: dict[str, Any]) -> dict[str, Any]:
    """Profiles written before `wire` named the table after their driver (`register = {…}`).

    The driver says which key that was (`legacy_wire_key`); such a table is read as `wire`.
    """
    known = set(Point.model_fields) | set(Action.model_fields)
    entries = [e for t in ("points", "actions") if isinstance(data.get(t), list) for e in data[t]]
    extra = {k for e in entries if isinstance(e, dict) for k in e if k not in known}
    driver = data.get("driver")
    if not extra or not isinstance(driver, str):
        return data  # nothing to rename: no driver needs loading
    cls = registry.profile_driver_class(driver)
    old = cls.legacy_wire_key if cls is not None else None
    if old not in extra:
        return data

    def renamed(entries: Any) -> Any:
        if not isinstance(entries, list):
            return entries
        return [
            {("wire" if k == old and "wire" not in e else k): v for k, v in e.items()}
            if isinstance(e, dict)
            else e
            for e in entries
        ]

    return {k: renamed(v) if k in ("points", "actions") else v for k, v in data.items()}


def parse_profile(data: dict[str, Any], file: str) -> Profile:
    """Validate a profile's data; raise ProfileError naming file and field."""
    try:
        profile = Profile.model_validate(_legacy_wire(data))
    except ValidationError as e:
        raise ProfileError(pydantic_problems(file, e)) from None
    problems = []
    seen: set[str] = set()
    for i, p in enumerate(profile.points):
        if p.name in seen:
            problems.append(Problem(file, f"points[{i}].name", f"duplicate point {p.name!r}"))
        seen.add(p.name)
    seen.clear()
    for i, a in enumerate(profile.actions):
        if a.name in seen:
            problems.append(Problem(file, f"actions[{i}].name", f"duplicate action {a.name!r}"))
        seen.add(a.name)
    if problems:
        raise ProfileError(problems)
    return profile


def load_profile_file(path: Path) -> Profile:
    """Load and validate one profile file; the file stem must be the profile id."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ProfileError([Problem(str(path), "", f"cannot read: {e.strerror}")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError([Problem(str(path), "", f"not valid TOML: {e}")]) from None
    profile = parse_profile(data, str(path))
    if path.stem != profile.id:
        raise ProfileError(
            [Problem(str(path), "id", f"id {profile.id!r} must match the file name {path.stem!r}")]
        )
    return profile


def shipped_profiles(directory: Path = PROFILES_DIR) -> dict[str, Path]:
    """Profile id -> file, for every profile shipped in device_profiles/."""
    return {p.stem: p for p in sorted(directory.rglob("*.toml"))}
