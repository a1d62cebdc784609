"""Driver lookup by the config's `driver` value, through the `campus_agent.drivers` entry points.

The core never imports a driver module by name; a new driver is one line in pyproject.toml.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from agent.driver import Driver

GROUP = "campus_agent.drivers"


@cache
def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def driver_keys() -> list[str]:
    """Every driver key this installation knows, sorted."""
    return sorted(_entry_points())


@cache
def driver_class(key: str) -> type[Driver] | None:
    """The driver class registered under `key`, or None."""
    ep = _entry_points().get(key)
    if ep is None:
        return None
    return cast("type[Driver]", ep.load())  # type: ignore[attr-defined]


def profile_driver_class(profile_driver: str) -> type[Driver] | None:
    """A registered driver class that reads profiles whose `driver` is this, or None."""
    for key in driver_keys():
        cls = driver_class(key)
        if cls is not None and cls.profile_driver == profile_driver:
            return cls
    return None
