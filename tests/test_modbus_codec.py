"""The Modbus codec without any peer: encodings, block planning, and fuzzing."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.modbus.codec import (
    MAX_REGISTERS,
    ReadBlock,
    Register,
    Write,
    decode,
    encode,
    plan_reads,
)


def reg(**kw) -> Register:
    return Register.model_validate(kw)


@pytest.mark.parametrize(
    ("spec", "words", "value"),
    [
        ({"table": "input", "address": 0, "type": "int16"}, [0xFF33], -205),
        ({"table": "input", "address": 0, "type": "uint16"}, [0xFF33], 0xFF33),
        ({"table": "input", "address": 0, "type": "float32"}, [0x4366, 0x0000], 230.0),
        (
            {"table": "input", "address": 0, "type": "float32", "word_order": "little"},
            [0x0000, 0x4366],
            230.0,
        ),
        (
            {"table": "input", "address": 0, "type": "float32", "byte_order": "little"},
            [0x6643, 0x0000],
            230.0,
        ),
        ({"table": "holding", "address": 0, "type": "int32"}, [0xFFFF, 0xFFFE], -2),
        ({"table": "holding", "address": 0, "type": "uint32"}, [0x0001, 0x0000], 65536),
        (
            {"table": "holding", "address": 0, "type": "uint32", "word_order": "little"},
            [0x0000, 0x0001],
            65536,
        ),
        ({"table": "holding", "address": 0, "bit": 3}, [0b1000], True),
        ({"table": "holding", "address": 0, "bit": 2}, [0b1000], False),
        ({"table": "discrete", "address": 5}, [1], True),
        ({"table": "coil", "address": 5}, [0], False),
    ],
)
def test_decode(spec, words, value):
    assert decode(reg(**spec), words) == value


def test_float32_is_not_published_with_float64_noise():
    (w0, w1) = struct.unpack(">HH", struct.pack(">f", 229.8))
    assert decode(reg(table="input", address=0, type="float32"), [w0, w1]) == 229.8


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"table": "coil", "address": 1, "type": "int16"}, "one bit"),
        ({"table": "discrete", "address": 1, "bit": 2}, "`bit` is for registers"),
        ({"table": "holding", "address": 1}, "needs `type`"),
        ({"table": "holding", "address": 1, "type": "float32", "bit": 2}, "omit `type`"),
        ({"table": "holding", "address": 70000, "type": "int16"}, "less than or equal"),
        ({"table": "holdings", "address": 1, "type": "int16"}, "holding"),
        ({"table": "holding", "address": 1, "type": "int16", "scale": 2}, "Extra inputs"),
    ],
)
def test_bad_register_specs_are_refused_with_a_reason(spec, message):
    with pytest.raises(ValidationError, match=message):
        Register.model_validate(spec)


def test_write_needs_exactly_one_value_source():
    with pytest.raises(ValidationError, match="exactly one"):
        Write.model_validate({"table": "coil", "address": 0})
    with pytest.raises(ValidationError, match="exactly one"):
        Write.model_validate({"table": "coil", "address": 0, "value": True, "arg": "x"})


def test_encode_refuses_what_does_not_fit():
    w = Write.model_validate({"table": "holding", "address": 0, "type": "int16", "arg": "v"})
    with pytest.raises(ValueError, match="does not fit"):
        encode(w, 40000)
    with pytest.raises(ValueError, match="whole number"):
        encode(w, 1.5)


def test_plan_merges_adjacent_and_near_points_within_max_gap():
    points = [
        ("a", reg(table="input", address=0, type="float32")),
        ("b", reg(table="input", address=6, type="float32")),
        ("c", reg(table="input", address=0x48, type="float32")),
        ("d", reg(table="holding", address=0, type="int16")),
    ]
    blocks = plan_reads(points, max_gap=8)
    assert [(b.table, b.start, b.count) for b in blocks] == [
        ("holding", 0, 1),
        ("input", 0, 8),
        ("input", 0x48, 2),
    ]
    assert len(plan_reads(points, max_gap=-1)) == 4
    assert len(plan_reads(points, max_gap=100)) == 2


def test_plan_respects_the_protocol_maximum():
    points = [(f"p{i}", reg(table="holding", address=i * 2, type="float32")) for i in range(100)]
    blocks = plan_reads(points, max_gap=8)
    assert all(b.count <= MAX_REGISTERS for b in blocks)
    assert sorted(n for b in blocks for n, _ in b.points) == sorted(n for n, _ in points)


registers = st.builds(
    Register,
    table=st.sampled_from(["holding", "input"]),
    address=st.integers(0, 300),
    type=st.sampled_from(["int16", "uint16", "int32", "uint32", "float32"]),
    word_order=st.sampled_from(["big", "little"]),
    byte_order=st.sampled_from(["big", "little"]),
)


@given(
    st.lists(
        st.tuples(st.text("abcdefgh", min_size=1, max_size=4), registers),
        max_size=30,
        unique_by=lambda p: p[0],
    ),
    st.integers(-1, 20),
)
def test_plan_covers_every_point_exactly_once(points, gap):
    blocks = plan_reads(points, gap)
    names = [n for b in blocks for n, _ in b.points]
    assert sorted(names) == sorted(n for n, _ in points)
    for b in blocks:
        assert b.count <= MAX_REGISTERS
        for _, r in b.points:
            assert b.start <= r.address and r.address + r.width <= b.start + b.count


@given(registers, st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2))
def test_decode_then_encode_round_trips(r, words):
    value = decode(r, words)
    spec = Write(
        table="holding",
        address=r.address,
        type=r.type,
        word_order=r.word_order,
        byte_order=r.byte_order,
        value=0,
    )
    if isinstance(value, float) and not math.isfinite(value):
        return
    back = encode(spec, value)
    assert decode(r, back) == value


@given(st.lists(st.integers(-(2**20), 2**20), max_size=10))
def test_extract_never_crashes_on_what_a_device_sends(data):
    block = ReadBlock("holding", 0, 4, [("x", reg(table="holding", address=2, type="float32"))])
    try:
        out = block.extract(data)
    except ValueError as e:
        assert "short response" in str(e)
    else:
        assert set(out) == {"x"}
