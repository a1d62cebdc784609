"""Every shipped profile is valid, documented, and decodes its vectors exactly (registers in,
the whole set of values out), through the real codec and the real point semantics."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import pytest

from agent.config import driver_profile_problems, profile_driver_class
from agent.points import scaled
from agent.profiles import load_profile_file, shipped_profiles
from drivers.modbus.codec import Register, plan_reads, words_for

ROOT = Path(__file__).resolve().parent.parent
VECTORS = Path(__file__).parent / "vectors"
PROFILES = shipped_profiles()
MODBUS = [pid for pid, path in PROFILES.items() if load_profile_file(path).driver == "modbus"]


@pytest.mark.parametrize("pid", sorted(PROFILES))
def test_profile_is_valid_for_its_driver(pid):
    profile = load_profile_file(PROFILES[pid])
    cls = profile_driver_class(profile)
    assert cls is not None, f"no driver reads {profile.driver!r}"
    assert driver_profile_problems(cls, profile) == []


@pytest.mark.parametrize("pid", sorted(MODBUS))
def test_profile_vectors_decode_to_the_expected_values(pid):
    profile = load_profile_file(PROFILES[pid])
    path = VECTORS / f"{pid}.toml"
    assert path.exists(), f"{pid} has no vector file {path}"
    data = tomllib.loads(path.read_text())
    assert data.get("source"), "a vector file names where its numbers come from"
    assert len(data["case"]) >= 2
    points = [(p.name, Register.model_validate(p.wire)) for p in profile.points if p.wire]
    for case in data["case"]:
        regs = {
            table: {int(a): int(v) for a, v in values.items()}
            for table, values in case["registers"].items()
        }
        raw: dict[str, object] = {}
        for block in plan_reads(points, profile.defaults.max_gap):
            raw.update(block.extract(words_for(regs, block)))
        got = {p.name: scaled(p, raw[p.name]) for p in profile.points if p.name in raw}
        expect = case["expect"]
        assert got.keys() == expect.keys(), f"{pid}/{case['name']}: points differ"
        for name, want in expect.items():
            value = got[name]
            if isinstance(want, bool) or isinstance(value, bool):
                assert value == want, f"{pid}/{case['name']}: {name} = {value!r}, want {want!r}"
            else:
                assert math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-9), (
                    f"{pid}/{case['name']}: {name} = {value!r}, want {want!r}"
                )


def test_every_modbus_profile_has_vectors_and_no_orphan_vectors():
    assert {p.stem for p in VECTORS.glob("*.toml")} == set(MODBUS)


def test_profiles_table_lists_exactly_the_shipped_profiles():
    text = (ROOT / "device_profiles" / "README.md").read_text()
    listed = set(re.findall(r"^\|\s*`?([a-z0-9][a-z0-9-]*)`?\s*\|", text, flags=re.MULTILINE))
    assert listed - {"id"} == set(PROFILES)
