"""Key events in, card numbers out: the pure state machine of a keyboard-wedge reader.

A wedge reader types a card as keystrokes, then a terminator (Enter, keypad Enter or Tab).
The decoder is fed the kernel's input events as (type, code, value, ts) and returns the
card numbers completed by each one. It keeps only key-down events of mapped keys; key-ups
(except shift's), autorepeat, EV_MSC/MSC_SCAN and SYN_REPORT change nothing. A read is
refused, and counted, when it holds a key that does not type a digit of the reader's
output (`garbled`), is shorter or longer than the model types (`too_short`, `too_long`),
does not fit the card's bits (`out_of_range`), or was lost by the kernel (`dropped`: a
SYN_DROPPED event). A partial read followed by silence longer than `key_timeout` (a
reader that lost its Enter, someone typing on the reader's keyboard interface) is thrown
away (`timeout`). The typed characters never leave this object except as a CardNumber.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.cards import CardNumber
from drivers.card_hid.keys import (
    EV_KEY,
    EV_SYN,
    IGNORED,
    KEY_DOWN,
    KEY_UP,
    LAYOUTS,
    SHIFTS,
    SYN_DROPPED,
    TERMINATORS,
    Layout,
)

Output = Literal["decimal", "hex"]
CHARSETS: dict[str, frozenset[str]] = {
    "decimal": frozenset("0123456789"),
    "hex": frozenset("0123456789abcdefABCDEF"),
}
REJECTIONS = ("garbled", "too_short", "too_long", "out_of_range", "timeout", "dropped")


@dataclass(frozen=True)
class Keymap:
    """How one reader model types: the profile's `wire` table, validated."""

    output: Output
    bits: int
    min_length: int = 1
    max_length: int = 20
    layout: Layout = "us"
    terminators: tuple[str, ...] = ("enter", "kpenter")
    key_timeout: float = 0.1


class WedgeDecoder:
    """One reader's keystrokes to CardNumbers. Never shows what was typed (repr included)."""

    __slots__ = ("_bad", "_buf", "_chars", "_last", "_shift", "_table", "_terms", "counts", "map")

    def __init__(self, keymap: Keymap) -> None:
        self.map = keymap
        self._table = LAYOUTS[keymap.layout]
        self._chars = CHARSETS[keymap.output]
        self._terms = frozenset(TERMINATORS[t] for t in keymap.terminators)
        self._buf: list[str] = []
        self._bad: str | None = None  # why the read in progress will be refused
        self._shift: set[int] = set()
        self._last: float | None = None
        self.counts: dict[str, int] = dict.fromkeys(("cards", "empty", *REJECTIONS), 0)

    def __repr__(self) -> str:
        return f"<WedgeDecoder {self.map.output} {self.map.bits} bits>"

    def rejected(self) -> int:
        return sum(self.counts[r] for r in REJECTIONS)

    def feed(self, etype: int, code: int, value: int, ts: float) -> list[CardNumber]:
        """One input event; the cards it completes (none or one)."""
        if etype == EV_SYN and code == SYN_DROPPED:
            # The kernel's buffer overflowed: keys of this read (and shift's state) are lost.
            if self._pending():
                self._refuse("dropped")
            self._shift.clear()
            return []
        if etype != EV_KEY:
            return []
        if code in SHIFTS:
            if value == KEY_UP:
                self._shift.discard(code)
            else:
                self._shift.add(code)
            return []
        if value != KEY_DOWN or code in IGNORED:
            return []
        self.expire(ts)
        self._last = ts
        if code in self._terms:
            return self._complete()
        if self._bad is not None:
            return []
        pair = self._table.get(code)
        ch = None if pair is None else pair[1 if self._shift else 0]
        if ch is None or ch not in self._chars:
            self._bad = "garbled"
        elif len(self._buf) >= self.map.max_length:
            self._bad = "too_long"
            self._buf.clear()
        else:
            self._buf.append(ch)
        return []

    def expire(self, now: float) -> None:
        """Throw away a partial read older than key_timeout (counted once, as `timeout`)."""
        if self._pending() and self._last is not None and now - self._last > self.map.key_timeout:
            self._refuse("timeout")

    def reset(self) -> None:
        """The device went away: a partial read is lost (`timeout`), shift is released."""
        if self._pending():
            self._refuse("timeout")
        self._shift.clear()
        self._last = None

    def _pending(self) -> bool:
        return bool(self._buf) or self._bad is not None

    def _refuse(self, why: str) -> None:
        self.counts[why] += 1
        self._buf.clear()
        self._bad = None

    def _complete(self) -> list[CardNumber]:
        buf, bad = self._buf, self._bad
        self._buf, self._bad = [], None
        try:
            if bad is not None:
                self.counts[bad] += 1
                return []
            if not buf:
                self.counts["empty"] += 1
                return []
            if len(buf) < self.map.min_length:
                self.counts["too_short"] += 1
                return []
            text = "".join(buf)
            try:
                if self.map.output == "decimal":
                    number = CardNumber.from_digits(text, self.map.bits)
                else:
                    number = CardNumber.from_hex(text, self.map.bits)
            except ValueError:
                self.counts["out_of_range"] += 1
                return []
            del text
            self.counts["cards"] += 1
            return [number]
        finally:
            buf.clear()
