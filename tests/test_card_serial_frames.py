"""Serial card reader frames (drivers/card_serial/frames.py): every shipped profile decodes its
vectors; bad specs are refused by `check` with a clear message; garbage never crashes the
decoder, never yields a card that was not sent, and is counted by its reason."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cards import CardNumber
from agent.profiles import load_profile_file, shipped_profiles
from drivers.card_serial.frames import (
    REASONS,
    Decoder,
    FrameSpec,
    encode,
    wiegand_check,
    wiegand_wrap,
)

ROOT = Path(__file__).resolve().parent.parent
VECTORS = Path(__file__).parent / "vectors" / "card_serial"
PROFILES = {
    pid: path for pid, path in shipped_profiles().items() if path.parent.name == "card_serial"
}


def spec_of(pid: str) -> FrameSpec:
    point = load_profile_file(PROFILES[pid]).point("card")
    assert point is not None and point.wire is not None
    return FrameSpec.model_validate(point.wire)


def rejected(d: Decoder) -> int:
    return sum(d.counters.rejected.values())


def test_every_card_serial_profile_has_vectors_and_no_orphans():
    assert len(PROFILES) >= 4
    assert {p.stem for p in VECTORS.glob("*.toml")} == set(PROFILES)


@pytest.mark.parametrize("pid", sorted(PROFILES))
def test_profile_vectors_decode_to_the_card_or_the_reason(pid):
    data = tomllib.loads((VECTORS / f"{pid}.toml").read_text())
    assert data["source"] and len(data["case"]) >= 2
    spec = spec_of(pid)
    for case in data["case"]:
        d = Decoder(spec)
        reads = d.feed(case["frame"].encode("latin-1"))
        if "reject" in case:
            assert reads == [], case["name"]
            assert d.counters.rejected[case["reject"]] == 1, case["name"]
            assert rejected(d) == 1, case["name"]
            continue
        (r,) = reads
        assert r.number == CardNumber(int(case["card"], 16), case["bits"]), case["name"]
        assert r.format == case["format"], case["name"]
        assert r.direction == case.get("direction"), case["name"]
        assert rejected(d) == (1 if "also_reject" in case else 0), case["name"]
        if "also_reject" in case:
            assert d.counters.rejected[case["also_reject"]] == 1


@pytest.mark.parametrize("pid", sorted(PROFILES))
def test_the_encoder_writes_what_the_vectors_say(pid):
    """The simulator's frames are the readers' frames: encode() reproduces every vector."""
    spec = spec_of(pid)
    data = tomllib.loads((VECTORS / f"{pid}.toml").read_text())
    for case in data["case"]:
        if "reject" in case or "also_reject" in case:
            continue
        value, bits = int(case["card"], 16), case["bits"]
        frame = encode(
            spec,
            value,
            bits=bits + 2 if spec.wiegand else None,
            direction=case.get("direction", ""),
        )
        # the gate profile's read count and tag type are fixed in the template
        if pid != "gate-2g4-terse":
            assert frame == case["frame"].encode("latin-1"), case["name"]
        assert [r.number for r in Decoder(spec).feed(frame)] == [CardNumber(value, bits)]


@given(st.integers(0, (1 << 32) - 1), st.sampled_from([26, 34]))
def test_wiegand_parity_round_trips_and_any_one_bit_flip_is_caught_or_another_word(data, n):
    data &= (1 << (n - 2)) - 1
    raw = wiegand_wrap(data, n)
    assert wiegand_check(raw, n) == data
    for bit in (0, n - 1):  # a flipped parity bit is always caught
        assert wiegand_check(raw ^ (1 << bit), n) is None
    for bit in range(1, n - 1):  # so is a flipped data bit (its half's parity changes)
        assert wiegand_check(raw ^ (1 << bit), n) is None


@pytest.mark.parametrize("pid", sorted(PROFILES))
@settings(max_examples=150, deadline=None)
@given(junk=st.binary(max_size=300), cut=st.integers(1, 7))
def test_garbage_never_crashes_never_makes_a_card_and_is_counted(pid, junk, cut):
    spec = spec_of(pid)
    d = Decoder(spec)
    reads = []
    for i in range(0, len(junk), cut):  # fed in odd pieces, as a serial port delivers
        reads += d.feed(junk[i : i + cut])
    d.close()
    assert reads == []
    c = d.counters
    assert c.cards == 0
    assert set(c.rejected) == set(REASONS)
    assert c.frames <= sum(c.rejected.values())  # every delimited frame was rejected
    if junk.strip(b" \t\r\n"):
        assert sum(c.rejected.values()) >= 1  # nothing vanishes uncounted


@pytest.mark.parametrize("pid", sorted(PROFILES))
@settings(max_examples=100, deadline=None)
@given(
    cards=st.lists(st.integers(0, (1 << 40) - 1), min_size=1, max_size=8),
    junk=st.lists(st.binary(max_size=20), min_size=1, max_size=8),
)
def test_frames_between_garbage_give_exactly_the_cards_sent(pid, cards, junk):
    """Garbage ended by the frame delimiter (a line, or STX-framed noise) then a real frame:
    every card sent comes out once, in order, and nothing else does."""
    spec = spec_of(pid)
    bits = spec.bits or 24
    sent = [v & ((1 << bits) - 1) for v in cards]
    direction = "out" if spec.directions else ""
    stream = b""
    for i, v in enumerate(sent):
        noise = junk[i % len(junk)]
        # noise a reader can put on the line: it never contains a whole valid frame
        stream += noise + bytes([spec.end]) if spec.start is None else noise
        stream += encode(spec, v, direction=direction)
    d = Decoder(spec)
    got = d.feed(stream)
    assert [r.number for r in got] == [CardNumber(v, bits) for v in sent]
    assert d.counters.cards == len(sent)


def test_a_frame_cut_short_then_the_line_closing_is_a_half_frame():
    spec = spec_of("rdm6300")
    d = Decoder(spec)
    assert d.feed(encode(spec, 0x62E3086CED)[:7]) == []
    d.close()
    assert d.counters.rejected["half_frame"] == 1


def test_an_endless_frame_is_garbage_not_memory():
    spec = spec_of("rdm6300")
    d = Decoder(spec)
    d.feed(b"\x02" + b"A" * 100_000 + b"\x03")
    assert d.counters.rejected["garbage"] == 1 and len(d._buf) <= spec.max_length
    assert [r.format for r in d.feed(encode(spec, 0x62E3086CED))] == ["em4100"]


BAD_SPECS = [
    (
        {
            "end": 3,
            "pattern": "(?P<card>[0-9A-F]{10}",
            "bits": 40,
            "format": "em4100",
            "template": "{card}",
        },
        "pattern is not a regular expression",
    ),
    (
        {"end": 3, "pattern": "[0-9A-F]{10}", "bits": 40, "format": "em4100", "template": "{card}"},
        "pattern needs a named group (?P<card>...)",
    ),
    (
        {
            "end": 3,
            "pattern": "(?P<card>[0-9A-F]{10})",
            "checksum": "xor",
            "bits": 40,
            "format": "em4100",
            "template": "{card}",
        },
        "checksum = 'xor' needs a group",
    ),
    (
        {
            "end": 10,
            "pattern": "(?P<card>[01]+)",
            "digits": "binary",
            "wiegand": [26],
            "bits": 24,
            "format": "wiegand26",
            "template": "{card}",
        },
        "remove `bits`",
    ),
    (
        {"end": 10, "pattern": "(?P<card>[0-9]+)", "format": "x", "template": "{card}"},
        "`bits` (the card's bit length) is required",
    ),
    (
        {
            "end": 10,
            "pattern": "(?P<card>[0-9]+)",
            "bits": 32,
            "format": "x",
            "template": "{card}",
            "directions": {"1": "in"},
        },
        "directions needs a group",
    ),
]


@pytest.mark.parametrize(("wire", "message"), BAD_SPECS)
def test_check_refuses_a_bad_frame_spec_naming_the_field(tmp_path, wire, message):
    """A profile with a broken frame: `campus-agent profile FILE` says what is wrong, where,
    without a traceback, and exits 2."""
    fields = ", ".join(f"{k} = {toml_value(v)}" for k, v in wire.items())
    path = tmp_path / "bad-reader.toml"
    path.write_text(
        'id = "bad-reader"\nvendor = "x"\nmodel = "x"\ncategory = "card"\n'
        'driver = "card_serial"\nsource = "test"\n'
        f'[[points]]\nname = "card"\nwire = {{ {fields} }}\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "agent.cli", "profiles", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "points[0].wire" in r.stderr
    assert "Traceback" not in r.stderr


def toml_value(v: object) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(x)}' for k, x in v.items()) + " }"
    return str(v)
