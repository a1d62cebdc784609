"""Linux input event codes and the keyboard layouts a wedge reader may type in.

The codes are the kernel's stable ABI (include/uapi/linux/input-event-codes.h); they are
spelled here so the decoder needs no evdev (tests/test_card_hid_decoder.py checks them
against evdev.ecodes). A layout maps a key code to the character it types, without and
with shift: a reader set to a French (AZERTY) layout types its digits with shift held.
"""

from __future__ import annotations

from typing import Literal

EV_SYN, EV_KEY, EV_MSC = 0x00, 0x01, 0x04
SYN_REPORT, SYN_DROPPED = 0, 3
MSC_SCAN = 4
KEY_UP, KEY_DOWN, KEY_REPEAT = 0, 1, 2

KEY_TAB, KEY_ENTER, KEY_KPENTER = 15, 28, 96
KEY_LEFTSHIFT, KEY_RIGHTSHIFT = 42, 54
SHIFTS = frozenset({KEY_LEFTSHIFT, KEY_RIGHTSHIFT})
# Keys that change nothing a reader types: ctrl, alt, meta, caps/num/scroll lock.
IGNORED = frozenset({29, 97, 56, 100, 125, 126, 58, 69, 70})
Terminator = Literal["enter", "kpenter", "tab"]
TERMINATORS: dict[str, int] = {"enter": KEY_ENTER, "kpenter": KEY_KPENTER, "tab": KEY_TAB}

# Top row KEY_1..KEY_9 are 2..10, KEY_0 is 11; keypad digits are not in code order.
_TOP_ROW = {2 + i: str((i + 1) % 10) for i in range(10)}
_KEYPAD = {82: "0", 79: "1", 80: "2", 81: "3", 75: "4", 76: "5", 77: "6", 71: "7", 72: "8", 73: "9"}
# Letter keys by their US (QWERTY) name.
_LETTERS = {
    "q": 16, "w": 17, "e": 18, "r": 19, "t": 20, "y": 21, "u": 22, "i": 23, "o": 24, "p": 25,
    "a": 30, "s": 31, "d": 32, "f": 33, "g": 34, "h": 35, "j": 36, "k": 37, "l": 38,
    "z": 44, "x": 45, "c": 46, "v": 47, "b": 48, "n": 49, "m": 50,
}  # fmt: skip
KEY_NAMES: dict[int, str] = {
    **{c: f"KEY_{ch}" for c, ch in _TOP_ROW.items()},
    **{c: f"KEY_KP{ch}" for c, ch in _KEYPAD.items()},
    **{c: f"KEY_{ch.upper()}" for ch, c in _LETTERS.items()},
    KEY_TAB: "KEY_TAB",
    KEY_ENTER: "KEY_ENTER",
    KEY_KPENTER: "KEY_KPENTER",
    KEY_LEFTSHIFT: "KEY_LEFTSHIFT",
    KEY_RIGHTSHIFT: "KEY_RIGHTSHIFT",
}

Layout = Literal["us", "fr"]
# (without shift, with shift) per key. Characters no card number uses are left out: such a
# key in a read makes it garbled, whatever it types.
_US_SYMBOLS = dict(zip(range(2, 12), "!@#$%^&*()", strict=True))
_FR_PLAIN = dict(zip(range(2, 12), "&é\"'(-è_çà", strict=True))
_FR_SWAP = {"a": "q", "q": "a", "z": "w", "w": "z"}  # AZERTY moves A, Q, Z, W (and M)


def _letters(swap: dict[str, str]) -> dict[int, tuple[str, str]]:
    out = {}
    for name, code in _LETTERS.items():
        ch = swap.get(name, name)
        if name == "m" and swap:
            continue  # AZERTY's M is on the QWERTY ';' key; its M key types ','
        out[code] = (ch, ch.upper())
    if swap:
        out[39] = ("m", "M")
    return out


LAYOUTS: dict[str, dict[int, tuple[str, str]]] = {
    "us": {
        **{c: (ch, _US_SYMBOLS[c]) for c, ch in _TOP_ROW.items()},
        **{c: (ch, ch) for c, ch in _KEYPAD.items()},
        **_letters({}),
    },
    "fr": {
        **{c: (_FR_PLAIN[c], ch) for c, ch in _TOP_ROW.items()},
        **{c: (ch, ch) for c, ch in _KEYPAD.items()},
        **_letters(_FR_SWAP),
    },
}


def codes_for(text: str, layout: Layout = "us") -> list[tuple[int, bool]]:
    """The (key code, shift held) presses that type `text` in `layout` (top row, not keypad):
    what a reader sends, for recorded sequences and tests."""
    table = LAYOUTS[layout]
    out = []
    for ch in text:
        for code, (plain, shifted) in sorted(table.items()):
            if code in _KEYPAD:
                continue
            if ch == plain:
                out.append((code, False))
                break
            if ch == shifted:
                out.append((code, True))
                break
        else:
            raise ValueError(f"a character of the text is not typed in layout {layout}")
    return out
