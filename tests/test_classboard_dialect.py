"""The board dialects (drivers/classboard/dialect.py) over the shipped profiles, and fuzzed.

Garbage never raises anything but BadRequest, and never yields a card that was not sent;
the vendor's local time is read in its zone; every refusal names a field, not a value.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.profiles import PROFILES_DIR, load_profile_file
from drivers.classboard.dialect import BadRequest, Dialect

CANON = Dialect(load_profile_file(PROFILES_DIR / "classboard" / "classboard-v1.toml"))
VENDOR = Dialect(load_profile_file(PROFILES_DIR / "classboard" / "vendor-banpai.toml"))
NOW = datetime(2026, 9, 1, 0, 30, tzinfo=UTC).timestamp()
WEEK = 7 * 86400.0

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def test_vendor_local_time_is_china_standard_time_and_canonical_is_rfc3339():
    batch = VENDOR.swipes(
        {"deviceNumber": "BP1", "cardId": "0012345678", "signTime": "2026-09-01 08:29:59"},
        NOW, WEEK, 500,
    )  # fmt: skip
    (s,) = batch.swipes
    assert s.ts == NOW - 1 and s.number is not None and s.number.reveal() == 12345678
    assert s.number.bits == 32 and batch.batch_id is None
    batch = CANON.swipes(
        {"batch": "b1", "swipes": [{"card": "7", "time": "2026-09-01T08:00:00+08:00"}]},
        NOW, WEEK, 500,
    )  # fmt: skip
    assert batch.batch_id == "b1" and batch.swipes[0].ts == NOW - 1800
    assert VENDOR.heartbeat({"appVersion": "V1", "screenStatus": 0, "mode": "1"}) == {
        "app_version": "V1", "screen": "off", "mode": "exam"
    }  # fmt: skip


@pytest.mark.parametrize(
    "doc",
    [
        {"cardId": "1", "signTime": "2026-09-01 08:00:00", "photo": "AAAA"},
        {"cardId": "1", "signTime": "2026-09-01 08:00:00", "studentName": "x"},
        [],
        [1, 2],
        "text",
    ],
)
def test_vendor_shapes_that_are_not_swipes_are_refused_whole(doc):
    with pytest.raises(BadRequest):
        VENDOR.swipes(doc, NOW, WEEK, 500)


def test_a_refusal_never_shows_the_card_number():
    batch = CANON.swipes(
        {"swipes": [{"card": "98765432109876", "time": "2026-09-01T00:00:00Z"}]}, NOW, WEEK, 500
    )
    assert batch.swipes[0].number is None
    assert "98765432109876" not in batch.swipes[0].reason


@settings(max_examples=400, deadline=None)
@given(doc=json_values)
def test_garbage_never_crashes_a_decoder(doc):
    for dialect in (CANON, VENDOR):
        with contextlib.suppress(BadRequest):
            dialect.swipes(doc, NOW, WEEK, 50)
        with contextlib.suppress(BadRequest):
            dialect.heartbeat(doc)
        with contextlib.suppress(BadRequest):
            dialect.device_number(doc)


@settings(max_examples=300, deadline=None)
@given(
    cards=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=5),
    noise=st.lists(st.text(max_size=12) | st.integers() | st.floats() | st.none(), max_size=5),
    raw=st.binary(max_size=60),
)
def test_only_the_cards_sent_come_out(cards, noise, raw):
    items = [{"card": str(c), "time": "2026-09-01T00:00:00Z"} for c in cards]
    items += [{"card": n, "time": "2026-09-01T00:00:00Z"} for n in noise]
    batch = CANON.swipes({"swipes": items}, NOW, WEEK, 50)
    got = [s.number.reveal() for s in batch.swipes if s.number is not None]
    sent = set(cards) | {
        int(n)
        for n in noise
        if isinstance(n, str) and n.isascii() and n.isdigit() and len(n) <= 10 and int(n) < 2**32
    }
    sent |= {n for n in noise if isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**32}
    assert set(got) <= sent
    assert got[: len(cards)] == cards
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    try:
        out = VENDOR.swipes(doc, NOW, WEEK, 50)
    except BadRequest:
        return
    for s in out.swipes:
        assert s.number is None or str(s.number.reveal()) in raw.decode()
