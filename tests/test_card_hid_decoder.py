"""The keyboard-wedge decoder (drivers/card_hid/decoder.py): recorded key event sequences in,
card numbers out; garbage, repeats, lost Enters and kernel drops are refused and counted;
a fuzzer: no event sequence crashes it or yields a card that was not typed."""

from __future__ import annotations

import evdev.ecodes as ec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cards import CardNumber
from agent.profiles import load_profile_file, shipped_profiles
from drivers.card_hid import keys
from drivers.card_hid.decoder import Keymap, WedgeDecoder
from drivers.card_hid.driver import HidWire
from drivers.card_hid.keys import EV_KEY, EV_MSC, EV_SYN, MSC_SCAN, SYN_DROPPED, SYN_REPORT

EM4100 = Keymap(output="decimal", bits=32, min_length=10, max_length=10, key_timeout=0.1)
HEX = Keymap(output="hex", bits=40, min_length=10, max_length=10, key_timeout=0.1)
# HID usage ids (usage page 7) the kernel reports in MSC_SCAN before each key.
USAGE = {**{2 + i: 0x1E + i for i in range(10)}, 28: 0x28, 96: 0x58, 15: 0x2B, 42: 0xE1}

Event = tuple[float, int, int, int]  # ts, type, code, value


def press(t: float, code: int, value: int) -> list[Event]:
    """What the kernel reports for one key transition of a USB keyboard."""
    return [
        (t, EV_MSC, MSC_SCAN, 0x70000 + USAGE.get(code, code)),
        (t, EV_KEY, code, value),
        (t, EV_SYN, SYN_REPORT, 0),
    ]


def typed(
    text: str, t0: float = 1000.0, dt: float = 0.008, *, layout: str = "us", end: int | None = 28
) -> list[Event]:
    """A reader typing `text` then `end` (Enter), a key every `dt` s, shift held as needed."""
    out: list[Event] = []
    t = t0
    for code, shift in keys.codes_for(text, layout):  # type: ignore[arg-type]
        if shift:
            out += press(t, keys.KEY_LEFTSHIFT, 1)
        out += press(t, code, 1) + press(t + dt / 2, code, 0)
        if shift:
            out += press(t + dt / 2, keys.KEY_LEFTSHIFT, 0)
        t += dt
    if end is not None:
        out += press(t, end, 1) + press(t + dt / 2, end, 0)
    return out


def decode(dec: WedgeDecoder, events: list[Event]) -> list[CardNumber]:
    return [n for ts, ty, code, val in events for n in dec.feed(ty, code, val, ts)]


# An evtest capture of a 125 kHz reader typing card 0004215837 (the first three digits and
# Enter; the rest as the same pattern): MSC_SCAN, key down, SYN; MSC_SCAN, key up, SYN.
RECORDED = """\
1717410000.101331 4 4 458791
1717410000.101331 1 11 1
1717410000.101331 0 0 0
1717410000.109312 4 4 458791
1717410000.109312 1 11 0
1717410000.109312 0 0 0
1717410000.117298 4 4 458791
1717410000.117298 1 11 1
1717410000.117298 0 0 0
1717410000.125301 4 4 458791
1717410000.125301 1 11 0
1717410000.125301 0 0 0
1717410000.133296 4 4 458791
1717410000.133296 1 11 1
1717410000.133296 0 0 0
1717410000.141299 4 4 458791
1717410000.141299 1 11 0
1717410000.141299 0 0 0
"""


def recorded() -> list[Event]:
    head = [
        (float(t), int(ty), int(c), int(v))
        for t, ty, c, v in (line.split() for line in RECORDED.splitlines())
    ]
    return head + typed("4215837", t0=1717410000.149)


def test_key_codes_are_the_kernels():
    for code, name in keys.KEY_NAMES.items():
        assert getattr(ec, name) == code, name
    assert (keys.EV_SYN, keys.EV_KEY, keys.EV_MSC) == (ec.EV_SYN, ec.EV_KEY, ec.EV_MSC)
    assert (SYN_REPORT, SYN_DROPPED, MSC_SCAN) == (ec.SYN_REPORT, ec.SYN_DROPPED, ec.MSC_SCAN)
    ignored = ("LEFTCTRL", "RIGHTCTRL", "LEFTALT", "RIGHTALT", "LEFTMETA", "RIGHTMETA")
    locks = ("CAPSLOCK", "NUMLOCK", "SCROLLLOCK")
    assert {getattr(ec, f"KEY_{k}") for k in ignored + locks} == keys.IGNORED


def test_a_recorded_em4100_read_is_one_32_bit_card():
    dec = WedgeDecoder(EM4100)
    assert decode(dec, recorded()) == [CardNumber(4215837, 32)]
    assert dec.counts["cards"] == 1
    assert dec.rejected() == 0


def test_a_hex_reader_typing_upper_case_with_shift_gives_the_40_bit_code():
    dec = WedgeDecoder(HEX)
    got = decode(dec, typed("0A0012D687") + typed("0a0012d687", t0=1001))
    assert got == [CardNumber(0x0A0012D687, 40)] * 2


def test_keypad_digits_and_keypad_enter_and_tab_when_the_model_says_so():
    keypad = {str(d): getattr(ec, f"KEY_KP{d}") for d in range(10)}
    events: list[Event] = []
    for i, ch in enumerate("0000000042"):
        events += press(5 + i * 0.01, keypad[ch], 1) + press(5 + i * 0.01, keypad[ch], 0)
    events += press(5.1, ec.KEY_KPENTER, 1)
    assert decode(WedgeDecoder(EM4100), events) == [CardNumber(42, 32)]
    tab = typed("0000000042", end=ec.KEY_TAB)
    assert decode(WedgeDecoder(EM4100), tab) == []  # Tab is not this model's terminator
    tab_model = Keymap(
        output="decimal", bits=32, min_length=10, max_length=10, terminators=("tab",)
    )
    assert decode(WedgeDecoder(tab_model), tab) == [CardNumber(42, 32)]


def test_autorepeat_is_ignored():
    events = typed("00000", end=None)
    events += press(1000.04, ec.KEY_5, 1) + press(1000.045, ec.KEY_5, 2) * 3
    events += press(1000.05, ec.KEY_5, 0) + typed("1234", t0=1000.06)
    assert decode(WedgeDecoder(EM4100), events) == [CardNumber(51234, 32)]


def test_a_partial_read_that_times_out_is_discarded_and_counted():
    dec = WedgeDecoder(EM4100)
    events = typed("12345", end=None) + typed("0004215837", t0=1000.5)  # a lost Enter
    assert decode(dec, events) == [CardNumber(4215837, 32)]
    assert dec.counts["timeout"] == 1
    # A partial read at the end of the device's life is counted too.
    decode(dec, typed("987", t0=1002, end=None))
    dec.reset()
    assert dec.counts["timeout"] == 2
    assert decode(dec, typed("0000000001", t0=1003)) == [CardNumber(1, 32)]


@pytest.mark.parametrize(
    ("events", "why"),
    [
        (typed("00042x5837"), "garbled"),  # a letter in a decimal card
        (typed("00042!5837"), "garbled"),  # shift held over a digit: a symbol
        (typed("000421583"), "too_short"),
        (typed("00042158370"), "too_long"),
        (typed("9999999999"), "out_of_range"),  # more than 32 bits
    ],
    ids=["letter", "shifted-digit", "short", "long", "over-32-bits"],
)
def test_a_bad_read_is_refused_and_counted_and_the_next_one_reads(events, why):
    dec = WedgeDecoder(EM4100)
    assert decode(dec, events) == []
    assert dec.counts[why] == 1
    assert dec.rejected() == 1
    assert decode(dec, typed("0004215837", t0=2000)) == [CardNumber(4215837, 32)]


def test_other_keys_and_modifiers():
    dec = WedgeDecoder(EM4100)
    # Caps lock, num lock, ctrl: ignored (they change no digit); Enter alone: empty.
    events = press(1, ec.KEY_NUMLOCK, 1) + press(1, ec.KEY_CAPSLOCK, 1) + press(1.01, 28, 1)
    events += typed("0004215837", t0=2)
    assert decode(dec, events) == [CardNumber(4215837, 32)]
    assert dec.counts["empty"] == 1
    # Unknown codes, LEDs, relative motion: nothing.
    junk = [(3.0, 17, 0, 1), (3.0, 2, 0, 5), (3.0, EV_KEY, 0x2FF, 1), (3.01, EV_KEY, 28, 1)]
    assert decode(dec, junk) == []
    assert dec.counts["garbled"] == 1


def test_a_kernel_drop_loses_the_read_in_progress():
    dec = WedgeDecoder(EM4100)
    events = [*typed("00042", end=None), (1000.05, EV_SYN, SYN_DROPPED, 0)]
    events += typed("15837", t0=1000.06)
    assert decode(dec, events) == []
    assert dec.counts["dropped"] == 1
    assert dec.counts["too_short"] == 1


def test_an_azerty_reader_types_digits_with_shift():
    fr = Keymap(output="decimal", bits=32, min_length=10, max_length=10, layout="fr")
    assert decode(WedgeDecoder(fr), typed("0004215837", layout="fr")) == [CardNumber(4215837, 32)]
    # The same reader read with a US keymap types & é " ... : refused, not misread.
    dec = WedgeDecoder(EM4100)
    assert decode(dec, typed("0004215837", layout="fr")) == []
    assert dec.counts["garbled"] == 1
    hexfr = Keymap(output="hex", bits=40, min_length=10, max_length=10, layout="fr")
    got = decode(WedgeDecoder(hexfr), typed("0A0012D687", layout="fr"))
    assert got == [CardNumber(0x0A0012D687, 40)]


def test_the_decoder_never_shows_what_was_typed():
    dec = WedgeDecoder(EM4100)
    decode(dec, typed("00042158", end=None))
    assert "4215" not in repr(dec) and "4215" not in str(dec.counts)
    [card] = decode(dec, typed("37", t0=1000.08))
    assert "4215837" not in f"{card} {card!r}"


def test_the_shipped_profiles_decode_their_model():
    profiles = shipped_profiles()
    em = HidWire.model_validate(load_profile_file(profiles["generic-em4100-wedge"]).points[0].wire)
    hx = HidWire.model_validate(load_profile_file(profiles["generic-hex-wedge"]).points[0].wire)
    assert decode(WedgeDecoder(em.keymap()), recorded()) == [CardNumber(4215837, 32)]
    assert decode(WedgeDecoder(hx.keymap()), typed("0A0012D687")) == [CardNumber(0x0A0012D687, 40)]


# ---- fuzz ------------------------------------------------------------------------------

DIGIT_KEYS = {**{2 + i: str((i + 1) % 10) for i in range(10)}}
KEYPAD = {ec.KEY_KP0: "0", ec.KEY_KP1: "1", ec.KEY_KP2: "2", ec.KEY_KP3: "3", ec.KEY_KP4: "4",
          ec.KEY_KP5: "5", ec.KEY_KP6: "6", ec.KEY_KP7: "7", ec.KEY_KP8: "8", ec.KEY_KP9: "9"}  # fmt: skip
INTERESTING = [*DIGIT_KEYS, *KEYPAD, 28, 96, 15, 42, 54, 29, 58, 30, 48, 16, 0, 0x2FF, 255]
events_st = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=0.3, allow_nan=False),  # gap to the previous event
        st.sampled_from([EV_KEY] * 6 + [EV_SYN, EV_MSC, 2, 17, 0x1F]),
        st.one_of(st.sampled_from(INTERESTING), st.integers(0, 0x300)),
        st.sampled_from([0, 1, 1, 1, 2, -1, 7]),
    ),
    max_size=120,
)


@settings(max_examples=400, deadline=None)
@given(events_st, st.sampled_from([EM4100, HEX]))
def test_fuzz_never_crashes_and_yields_only_typed_cards(raw, keymap):
    dec = WedgeDecoder(keymap)
    t = 1000.0
    downs: list[int] = []  # codes of the key-downs that may type, in order
    for gap, ty, code, val in raw:
        t += gap
        before = sum(dec.counts.values())
        cards = dec.feed(ty, code, val, t)
        is_term = ty == EV_KEY and val == 1 and code in (28, 96)
        if cards:
            # Only a terminator completes a card, and the card is the digits just typed.
            assert is_term
            [card] = cards
            assert card.bits == keymap.bits
            typed_codes = downs[-10:]
            digits = "".join(DIGIT_KEYS.get(c) or KEYPAD.get(c) or "?" for c in typed_codes)
            if keymap.output == "decimal":
                assert digits == f"{card.reveal():010d}"
            else:
                assert all(c in (*DIGIT_KEYS, *KEYPAD, 30, 48, 46, 32, 18, 33) for c in typed_codes)
        if is_term:
            assert sum(dec.counts.values()) > before  # a card, an empty read or a refusal
        if ty == EV_KEY and val == 1 and code not in keys.SHIFTS and code not in keys.IGNORED:
            downs = [] if is_term else [*downs, code]
    assert dec.counts["cards"] <= sum(
        1 for _, ty, c, v in raw if ty == EV_KEY and v == 1 and c in (28, 96)
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=5),
    st.lists(st.sampled_from(["msc", "syn", "up", "repeat", "led"]), max_size=30),
    st.randoms(use_true_random=False),
)
def test_fuzz_noise_between_keys_never_changes_the_cards(cards, noise, rnd):
    """Any number of cards, with events that change nothing sprinkled between the keys:
    exactly those cards, in order."""
    events: list[Event] = []
    for i, n in enumerate(cards):
        events += typed(f"{n:010d}", t0=1000 + i)
    filler = {
        "msc": (EV_MSC, MSC_SCAN, 0x7001E),
        "syn": (EV_SYN, SYN_REPORT, 0),
        "up": (EV_KEY, ec.KEY_7, 0),
        "repeat": (EV_KEY, ec.KEY_7, 2),
        "led": (17, 1, 1),
    }
    for kind in noise:
        at = rnd.randrange(len(events) + 1)
        ts = events[min(at, len(events) - 1)][0]
        events.insert(at, (ts, *filler[kind]))
    assert decode(WedgeDecoder(EM4100), events) == [CardNumber(n, 32) for n in cards]
