"""The OSDP driver's decoding of what libosdp hands it, its key files and its config checks.

libosdp parses the frames (in C); drivers/osdp/codec.py checks the dicts it builds from them.
Hypothesis throws anything at those checks: nothing crashes, nothing but a well-formed read
becomes a card, and every refusal has a counter name."""

from __future__ import annotations

import os
from pathlib import Path

import osdp_sys
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import load_config
from agent.errors import ConfigError
from drivers.osdp import codec

W26 = bytes([0x95, 0x18, 0x1C, 0xC0])


def card_event(**kw):
    ev = {"event": 1, "reader_no": 0, "format": 1, "direction": 0, "length": 26, "data": W26}
    return {**ev, **kw}


def test_the_numbers_are_libosdps():
    assert codec.EVENT_CARD == osdp_sys.EVENT_CARDREAD
    assert codec.EVENT_KEYPAD == osdp_sys.EVENT_KEYPRESS
    assert codec.EVENT_STATUS == osdp_sys.EVENT_STATUS
    assert codec.EVENT_NOTIFICATION == osdp_sys.EVENT_NOTIFICATION
    assert codec.NOTIFY_PD == osdp_sys.EVENT_NOTIFICATION_PD_STATUS
    assert codec.STATUS_LOCAL == osdp_sys.STATUS_REPORT_LOCAL
    assert codec.CARD_FMT_ASCII == osdp_sys.CARD_FMT_ASCII
    assert codec.CARD_FORMATS == {
        osdp_sys.CARD_FMT_RAW_UNSPECIFIED: "raw",
        osdp_sys.CARD_FMT_RAW_WIEGAND: "wiegand",
    }


def test_a_wiegand26_read_is_its_26_bits():
    card = codec.decode_card(card_event())
    assert (card.format, card.number.bits, card.reader_no) == ("wiegand", 26, 0)
    assert card.number.reveal() == 0x95181CC0 >> 6
    shown = repr(card)  # the dataclass shows the CardNumber's repr, never the value
    assert str(card.number.reveal()) not in shown and f"{card.number.reveal():x}" not in shown


def test_a_reverse_read_gives_the_same_number_as_a_forward_one():
    value, bits = 0b1011001, 7
    fwd = (value << 1).to_bytes(1, "big")
    rev = (int(f"{value:07b}"[::-1], 2) << 1).to_bytes(1, "big")
    a = codec.decode_card(card_event(length=bits, data=fwd, format=0))
    b = codec.decode_card(card_event(length=bits, data=rev, format=0, direction=1))
    assert a.number == b.number and b.reversed and not a.reversed


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"format": 2, "data": b"1234"}, "ascii_card"),
        ({"format": 7}, "bad_format"),
        ({"length": 0}, "bad_length"),
        ({"length": 513, "data": bytes(65)}, "bad_length"),
        ({"data": W26[:3]}, "bad_data"),
        ({"data": W26 + b"\0"}, "bad_data"),
        ({"data": bytes([0x95, 0x18, 0x1C, 0xC1])}, "bad_padding"),
        ({"direction": 2}, "bad_direction"),
        ({"reader_no": -1}, "bad_reader_no"),
        ({"length": True}, "bad_length"),
        ({"data": "95181cc0"}, "bad_data"),
    ],
)
def test_a_malformed_read_is_refused_with_its_reason(change, reason):
    with pytest.raises(codec.RejectedError) as e:
        codec.decode_card(card_event(**change))
    assert e.value.reason == reason


def test_local_status_is_tamper_and_power():
    ev = {"event": 4, "type": 2, "report": b"\x01\x00"}
    assert codec.decode_local_status(ev) == {"tamper": True, "power": False}
    assert codec.decode_local_status({**ev, "report": b"\x00\x01"}) == {
        "tamper": False,
        "power": True,
    }
    for bad in (b"", b"\x01", b"\x02\x00", b"\x00\x00\x00"):
        with pytest.raises(codec.RejectedError):
            codec.decode_local_status({**ev, "report": bad})
    with pytest.raises(codec.RejectedError, match="other_status"):
        codec.decode_local_status({**ev, "type": 1})


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.binary(max_size=80),
    st.text(max_size=10),
    st.floats(),
)
events = st.dictionaries(
    st.sampled_from(["event", "reader_no", "format", "direction", "length", "data", "type"]),
    values,
) | st.builds(
    card_event,
    length=st.integers(-2, 600),
    data=st.binary(max_size=80),
    format=st.integers(-1, 3),
    direction=st.integers(-1, 2),
)


@settings(max_examples=2000)
@given(events)
def test_garbage_never_crashes_and_a_card_is_only_what_was_sent(ev):
    try:
        card = codec.decode_card(ev)
    except codec.RejectedError as e:
        assert e.reason  # a counter name
        return
    # Accepted: exactly the bits sent, nothing made up.
    bits = ev["length"]
    assert card.number.bits == bits and len(ev["data"]) == (bits + 7) // 8
    sent = int.from_bytes(ev["data"], "big") >> (len(ev["data"]) * 8 - bits)
    if ev["direction"] == 0:
        assert card.number.reveal() == sent
    assert card.format == codec.CARD_FORMATS[ev["format"]]


@settings(max_examples=500)
@given(st.dictionaries(st.sampled_from(["event", "type", "report"]), values))
def test_status_garbage_never_crashes(ev):
    try:
        got = codec.decode_local_status(ev)
    except codec.RejectedError:
        return
    assert set(got) == {"tamper", "power"}


@pytest.mark.parametrize(
    ("content", "mode", "says"),
    [
        (b"0123456789abcdef0123456789abcdef\n", 0o644, "readable by other users"),
        (b"short", 0o600, "not an OSDP key"),
        (b"zz" * 16, 0o600, "not an OSDP key"),
    ],
)
def test_a_bad_key_file_is_refused_without_showing_it(tmp_path, content, mode, says):
    p = tmp_path / "r.key"
    p.write_bytes(content)
    p.chmod(mode)
    with pytest.raises(ValueError, match=says) as e:
        codec.load_scbk(p)
    assert "0123456789abcdef" not in str(e.value)


def test_a_key_file_is_raw_or_hex(tmp_path):
    key = os.urandom(16)
    raw, hexed = tmp_path / "raw.key", tmp_path / "hex.key"
    raw.write_bytes(key)
    hexed.write_text(key.hex() + "\n")
    for p in (raw, hexed):
        p.chmod(0o600)
        assert codec.load_scbk(p) == key


BASE = """\
[agent]
school = "s"
gateway = "g"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[privacy]
card_key_file = "card.key"
[[buses]]
id = "doors"
driver = "osdp"
port = "ttyDOORS"
"""


def device(address: object, key: str = "keys/r1.key") -> str:
    return (
        f'[[devices]]\nid = "r1"\nprofile = "generic-osdp-reader"\nbus = "doors"\n'
        f'address = {address}\nscbk_file = "{key}"\n'
    )


def site(tmp_path: Path, text: str) -> Path:
    (tmp_path / "card.key").write_bytes(os.urandom(32).hex().encode())
    (tmp_path / "card.key").chmod(0o600)
    (tmp_path / "keys").mkdir(exist_ok=True)
    (tmp_path / "keys" / "r1.key").write_bytes(os.urandom(16))
    (tmp_path / "keys" / "r1.key").chmod(0o600)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    return cfg


def test_a_valid_config_resolves_the_port_and_key_from_the_config_folder(tmp_path):
    config = load_config(site(tmp_path, BASE + device(101)))
    assert config.buses[0].options.port == str(tmp_path / "ttyDOORS")
    assert config.devices[0].options.scbk_file == str(tmp_path / "keys" / "r1.key")


@pytest.mark.parametrize(
    ("address", "key", "entry", "says"),
    [
        (127, "keys/r1.key", "devices[0].address", "0 to 126"),
        ('"a"', "keys/r1.key", "devices[0].address", "0 to 126"),
        (5, "keys/none.key", "devices[0].scbk_file", "No such file"),
    ],
)
def test_check_names_a_bad_address_or_key_file(tmp_path, address, key, entry, says):
    with pytest.raises(ConfigError) as e:
        load_config(site(tmp_path, BASE + device(address, key)))
    assert any(p.entry == entry and says in p.message for p in e.value.problems), e.value
