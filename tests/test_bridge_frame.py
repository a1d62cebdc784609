"""Firmware bridge framing and payloads against firmware_bridge/vectors/ (shared with C)."""

from __future__ import annotations

import binascii
import json
import struct
from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.codes import MsgType, NackReason
from firmware_bridge.errors import FrameError
from firmware_bridge.frame import (
    MAX_ENCODED,
    MAX_FRAME,
    MAX_PAYLOAD,
    Decoder,
    DecoderStats,
    Frame,
    cobs_decode,
    cobs_encode,
    crc16,
    decode_frame,
    encode_frame,
)
from firmware_bridge.messages import (
    MESSAGE_CLASSES,
    Counted,
    Data,
    Fixed,
    FwChunk,
    Message,
    Point,
    PointWire,
    Rest,
    Str,
    TypedValue,
    Uint,
    Value,
    Wire,
    decode_message,
    message_frame,
)

VECTORS = Path(__file__).parent.parent / "firmware_bridge" / "vectors"
_BYTES_FIELDS = {"uid", "sha256", "data"}


def _load() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(VECTORS.glob("*.json"))]


GOOD = [v for v in _load() if "frame" in v]
BAD = [v for v in _load() if "expect" in v]


def value_to_json(value: Value) -> dict[str, Any]:
    return {"type": value.kind, "value": value.value}


def value_from_json(obj: dict[str, Any]) -> Value:
    raw = obj["value"]
    return Value(obj["type"], float(raw) if obj["type"] == "float32" else raw)


def message_to_json(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"message_type": msg.TYPE.name}
    for f in fields(msg):
        v = getattr(msg, f.name)
        if isinstance(v, bytes):
            out[f.name] = v.hex()
        elif isinstance(v, Value):
            out[f.name] = value_to_json(v)
        elif f.name == "points":
            out[f.name] = [{"id": p.id, **value_to_json(p.value)} for p in v]
        elif f.name == "args":
            out[f.name] = [value_to_json(a) for a in v]
        else:
            out[f.name] = v
    return out


def message_from_json(obj: dict[str, Any]) -> Message:
    cls = MESSAGE_CLASSES[MsgType[obj["message_type"]]]
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        v = obj[f.name]
        if f.name in _BYTES_FIELDS:
            v = bytes.fromhex(v)
        elif f.name == "value":
            v = value_from_json(v)
        elif f.name == "points":
            v = tuple(Point(p["id"], value_from_json(p)) for p in v)
        elif f.name == "args":
            v = tuple(value_from_json(a) for a in v)
        kwargs[f.name] = v
    return cls(**kwargs)


def frame_from_json(obj: dict[str, Any]) -> Frame:
    return Frame(
        obj["type"], obj["seq"], bytes.fromhex(obj["payload_hex"]), obj["flags"], obj["version"]
    )


# --------------------------------------------------------------------------- vectors


def test_vectors_cover_every_message_type() -> None:
    seen = {v["frame"]["type"] for v in GOOD}
    assert {int(t) for t in MsgType} <= seen
    assert len(GOOD) + len(BAD) >= 12


@pytest.mark.parametrize("vector", GOOD, ids=[v["name"] for v in GOOD])
def test_vector_decodes_and_encodes_byte_for_byte(vector: dict[str, Any]) -> None:
    wire = bytes.fromhex(vector["wire_hex"])
    frame = frame_from_json(vector["frame"])
    assert encode_frame(frame) == wire
    decoder = Decoder()
    assert decoder.feed(wire) == [frame]
    assert decoder.stats == DecoderStats(frames=1)
    if vector["decoded"] is None:
        with pytest.raises(FrameError) as info:
            decode_message(frame)
        assert info.value.reason == NackReason[vector["nack"]]
        return
    msg = decode_message(frame)
    assert message_to_json(msg) == vector["decoded"]
    assert message_from_json(vector["decoded"]) == msg
    assert message_frame(msg, frame.seq, retransmit=bool(frame.flags & 2)) == frame


@pytest.mark.parametrize("vector", BAD, ids=[v["name"] for v in BAD])
def test_bad_vector_is_counted(vector: dict[str, Any]) -> None:
    wire = bytes.fromhex(vector["wire_hex"])
    expected_frames = [frame_from_json(f) for f in vector["frames"]]
    whole = Decoder()
    assert whole.feed(wire) == expected_frames
    assert whole.stats == DecoderStats(**vector["counters"])
    one_by_one = Decoder()
    got = [f for b in wire for f in one_by_one.feed(bytes([b]))]
    assert got == expected_frames
    assert one_by_one.stats == whole.stats


# --------------------------------------------------------------------------- primitives


def test_crc16_matches_ccitt_false_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [  # Wikipedia's COBS examples, the canonical form
        ("", "01"),
        ("00", "0101"),
        ("0000", "010101"),
        ("001100", "01021101"),
        ("11220033", "0311220233"),
        ("11223344", "0511223344"),
        ("11000000", "0211010101"),
        (bytes(range(1, 255)).hex(), "ff" + bytes(range(1, 255)).hex()),
        (bytes(range(255)).hex(), "01ff" + bytes(range(1, 255)).hex()),
        (bytes(range(1, 256)).hex(), "ff" + bytes(range(1, 255)).hex() + "02ff"),
    ],
)
def test_cobs_matches_reference_examples(raw: str, encoded: str) -> None:
    assert cobs_encode(bytes.fromhex(raw)) == bytes.fromhex(encoded)
    assert cobs_decode(bytes.fromhex(encoded)) == bytes.fromhex(raw)


def test_oversize_payload_is_refused_when_building_a_frame() -> None:
    with pytest.raises(FrameError) as info:
        Frame(MsgType.DATA, 0, bytes(MAX_PAYLOAD + 1))
    assert info.value.kind == "too_long"


def test_fw_chunk_over_200_bytes_is_bad_payload() -> None:
    payload = struct.pack("<I", 0) + bytes(201)
    with pytest.raises(FrameError) as info:
        decode_message(Frame(MsgType.FW_CHUNK, 1, payload))
    assert info.value.reason == NackReason.BAD_PAYLOAD
    with pytest.raises(FrameError):
        FwChunk(0, bytes(201)).encode()


@pytest.mark.parametrize(
    "payload",
    ["", "01", "0100", "010009", "01000705ff", "0100070180", "0100020100"],
    ids=["empty", "no_points", "no_tag", "unknown_tag", "short_string", "bad_utf8", "trailing"],
)
def test_malformed_data_payload_is_bad_payload(payload: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_message(Frame(MsgType.DATA, 1, bytes.fromhex(payload)))
    assert info.value.reason == NackReason.BAD_PAYLOAD


# --------------------------------------------------------------------------- properties

frames = st.builds(
    Frame,
    type=st.integers(0, 255),
    seq=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=MAX_PAYLOAD),
    flags=st.integers(0, 255),
    version=st.integers(0, 255),
)

values = st.one_of(
    st.builds(Value, st.just("bool"), st.booleans()),
    st.builds(Value, st.just("int8"), st.integers(-128, 127)),
    st.builds(Value, st.just("int16"), st.integers(-(2**15), 2**15 - 1)),
    st.builds(Value, st.just("int32"), st.integers(-(2**31), 2**31 - 1)),
    st.builds(Value, st.just("uint32"), st.integers(0, 2**32 - 1)),
    st.builds(Value, st.just("float32"), st.floats(width=32, allow_nan=False)),
    st.builds(Value, st.just("string"), st.text(max_size=20)),
)


@given(frames)
def test_frame_round_trips(frame: Frame) -> None:
    wire = encode_frame(frame)
    assert wire.count(0) == 1
    assert wire[-1] == 0
    assert len(wire) == len(frame.payload) + 10
    assert len(wire) - 1 <= MAX_ENCODED
    assert decode_frame(wire) == frame
    assert Decoder().feed(wire) == [frame]


@given(st.lists(st.tuples(st.integers(0, 255), values), max_size=12))
def test_data_payload_round_trips(points: list[tuple[int, Value]]) -> None:
    msg = Data(tuple(Point(i, v) for i, v in points))
    payload = msg.encode()
    if len(payload) > MAX_PAYLOAD:
        return
    assert decode_message(message_frame(msg, 7)) == msg


def _field_values(wire: Wire[Any]) -> st.SearchStrategy[Any]:
    """Valid values for a field, from its declared wire format."""
    if isinstance(wire, Uint):
        return st.integers(0, 2 ** (8 * struct.calcsize(wire.fmt)) - 1)
    if isinstance(wire, Fixed):
        return st.binary(min_size=wire.size, max_size=wire.size)
    if isinstance(wire, Rest):
        return st.binary(max_size=wire.limit)
    if isinstance(wire, Str):
        return st.text(max_size=20)
    if isinstance(wire, TypedValue):
        return values
    if isinstance(wire, PointWire):
        return st.builds(Point, st.integers(0, 255), values)
    if isinstance(wire, Counted):
        return st.lists(_field_values(wire.item), max_size=8).map(tuple)
    raise AssertionError(f"no strategy for {wire!r}")


def _messages_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = get_type_hints(cls, include_extras=True)
    kwargs = {f.name: _field_values(hints[f.name].__metadata__[0]) for f in fields(cls)}
    return st.fixed_dictionaries(kwargs).map(lambda kw: cls(**kw))


any_message = st.sampled_from(list(MESSAGE_CLASSES.values())).flatmap(_messages_of)


@given(any_message)
def test_every_message_type_round_trips(msg: Message) -> None:
    payload = msg.encode()
    if len(payload) > MAX_PAYLOAD:
        return
    assert decode_message(message_frame(msg, 7)) == msg


@given(st.sampled_from(sorted(MESSAGE_CLASSES)), st.binary(max_size=MAX_PAYLOAD))
def test_any_payload_is_decoded_exactly_or_refused_as_bad_payload(
    type_: MsgType, payload: bytes
) -> None:
    try:
        msg = decode_message(Frame(type_, 1, payload))
    except FrameError as e:
        assert e.kind == "payload"
        assert e.reason == NackReason.BAD_PAYLOAD
        return
    # What is accepted is re-encoded to as many bytes, and stably (a signalling NaN in a
    # float32 comes back quiet, so the bytes themselves may differ once).
    encoded = msg.encode()
    assert len(encoded) == len(payload)
    assert decode_message(Frame(type_, 1, encoded)).encode() == encoded


@given(st.binary(max_size=2000))
def test_decoder_never_raises_on_random_bytes(data: bytes) -> None:
    decoder = Decoder()
    for frame in decoder.feed(data):
        assert len(frame.payload) <= MAX_PAYLOAD
    stats = decoder.stats
    rejected = (
        stats.cobs_errors + stats.too_short + stats.too_long + stats.crc_errors
    ) + stats.length_errors
    assert stats.frames + rejected <= data.count(0)


@given(st.binary(max_size=600), frames)
def test_frame_after_garbage_and_delimiter_is_received(garbage: bytes, frame: Frame) -> None:
    decoder = Decoder()
    decoder.feed(garbage + b"\x00")
    assert decoder.feed(encode_frame(frame)) == [frame]


@given(st.binary(max_size=600), frames, frames)
def test_garbage_costs_at_most_one_frame(garbage: bytes, first: Frame, second: Frame) -> None:
    got = Decoder().feed(garbage + encode_frame(first) + encode_frame(second))
    assert got[-1:] == [second]


@given(st.lists(st.one_of(st.binary(max_size=40), frames.map(encode_frame)), max_size=8))
def test_byte_at_a_time_equals_one_feed(parts: list[bytes]) -> None:
    data = b"".join(parts)
    whole = Decoder()
    expected = whole.feed(data)
    single = Decoder()
    assert [f for b in data for f in single.feed(bytes([b]))] == expected
    assert single.stats == whole.stats


def test_crc_matches_binascii_crc_hqx() -> None:
    data = bytes(range(256)) * 2
    assert crc16(data) == binascii.crc_hqx(data, 0xFFFF)
    assert MAX_FRAME == 252
