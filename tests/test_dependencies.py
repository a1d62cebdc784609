"""The dependencies: bounded in pyproject.toml, pinned in constraints.txt, installed at the pins.

A runtime dependency may take a new minor release but not a new major one (where its API may
change); the suite runs with the exact versions of constraints.txt (tests/setup.sh installs
with it); bleak stays an extra until a BLE driver imports it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.harness.process import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
RUNTIME = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]


def constraints() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt: not a pin: {raw!r}"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def installed_requirements(root: str = "campus-agent[test]") -> dict[str, Version]:
    """Every distribution `root` needs, directly or not, with its installed version."""
    found: dict[str, Version] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(root)]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        dist = importlib.metadata.distribution(name)
        found[name] = Version(dist.version)
        for line in dist.requires or []:
            sub = Requirement(line)
            extras = req.extras or {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return found


def test_every_runtime_dependency_is_bounded_below_its_next_major():
    for req in RUNTIME:
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        upper = [Version(s.version) for s in req.specifier if s.operator == "<"]
        assert lower and upper, f"{req}: needs a lower and an upper bound"
        assert upper[0] == Version(str(lower[0].major + 1)), (
            f"{req}: the upper bound should be the next major, <{lower[0].major + 1}"
        )


def test_ble_libraries_are_an_extra_imported_only_when_a_ble_bus_runs():
    """bleak and bthome-ble are the `ble` extra: an agent without it starts; only drivers/ble
    imports them, inside the functions that run a ble bus (never at module level)."""
    ble = {"bleak", "bthome-ble"}
    assert not ble & {canonicalize_name(r.name) for r in RUNTIME}
    extra = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["ble"]]
    assert {canonicalize_name(r.name) for r in extra} == ble
    lazy = {"bleak", "bthome_ble", "habluetooth", "dbus_fast"}
    importers = []
    for package in ("agent", "drivers", "firmware_bridge"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if not any(n.split(".")[0] in lazy for n in names):
                    continue
                top_level = node in tree.body
                if top_level or not str(path).startswith(str(ROOT / "drivers" / "ble")):
                    importers.append(str(path.relative_to(ROOT)))
    assert not importers, (
        f"the ble extra is imported at load time or outside drivers/ble: {importers}"
    )


def test_the_suite_runs_with_the_pinned_versions():
    pins = constraints()
    # The pins satisfy pyproject's bounds, so an install with them resolves.
    for req in RUNTIME:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert pins[name] in req.specifier, f"constraints.txt: {name}=={pins[name]} vs {req}"
    # What the project and its test extra need is installed here at the pinned versions
    # (tests/setup.sh installs with constraints.txt).
    needed = installed_requirements()
    needed.pop("campus-agent")
    unpinned = sorted(set(needed) - set(pins))
    assert not unpinned, f"needed but not in constraints.txt: {unpinned}"
    wrong = {n: f"{v} installed, {pins[n]} pinned" for n, v in needed.items() if v != pins[n]}
    assert not wrong, f"installed versions differ from constraints.txt: {wrong}"
    setup = (ROOT / "tests" / "setup.sh").read_text(encoding="utf-8")
    assert "-c constraints.txt" in setup


def test_no_asyncio_wait_for_in_the_product():
    """In Python 3.11 asyncio.wait_for swallows a cancellation that arrives as the awaited
    call completes (fixed in 3.12): a card reader unplugged as the agent stopped hung the
    stop. `async with asyncio.timeout(...)` propagates it; use that."""
    root = Path(__file__).resolve().parent.parent
    found = [
        str(p.relative_to(root))
        for folder in ("agent", "drivers", "firmware_bridge")
        for p in (root / folder).rglob("*.py")
        if "asyncio.wait_for(" in p.read_text()
    ]
    assert found == []
