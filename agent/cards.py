"""Card reads -> pseudonymized `access` events: the one privacy pipeline of every card source.

A card number is a minor's personal data. Drivers (serial readers, OSDP, keyboard-wedge
readers; class boards and BLE student tags next) hand the core a `CardRead` whose number is
a `CardNumber`, an object that never prints itself (repr, str, f-strings, tracebacks and
logs show `<card number: 26 bits>`). Here, and only here, the number is turned into what
leaves the gateway:

* `[privacy] card_id = "hash"` (the default): a truncated HMAC-SHA256 of the canonical
  number with the school's key (`card_key_file`, 0600, at least 32 bytes), the key's id,
  the format and the bit length. The district holds the key and links hashes to its roster.
* `card_id = "raw"`: the number in decimal, only where a site configures it (`check` warns,
  the status shows it).

Canonical number (`[privacy] card_match`): "exact" hashes the number as read (in decimal, so
one card read by two reader models that report the same bits gives one hash); "wiegand26"
hashes its low 24 bits (facility code + card number), which is what a Wiegand-26 converter
keeps of an EM4100 card's 40 bits: an EM4100 reader and a Wiegand-26 converter then give
the same hash for one physical card (and distinct cards whose low 24 bits collide, too).

Duplicate reads of one card at one reader within `dedup_window` become one event, sent when
the window closes, with `reads`: the count. Events leave in the order of their first read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.contract import Kind, NewEvent
from agent.errors import ConfigError

log = logging.getLogger(__name__)

DOMAIN = b"campus-card-v1\n"
HASH_BYTES = 16  # 128 bits of HMAC-SHA256: no collision in any school's lifetime
MIN_KEY_BYTES = 32
Direction = Literal["in", "out"]
AccessResult = Literal["read", "granted", "denied"]


class CardNumber:
    """A card number that does not show itself: not in repr, str, logs or tracebacks."""

    __slots__ = ("_value", "bits")

    def __init__(self, value: int, bits: int) -> None:
        if value < 0 or bits < 1 or bits > 512 or value.bit_length() > bits:
            raise ValueError(f"not a card number of {bits} bits")  # the value is not shown
        self._value = value
        self.bits = bits

    @classmethod
    def from_digits(cls, digits: str, bits: int) -> CardNumber:
        """From decimal digits (a keyboard-wedge reader types them)."""
        if not digits.isascii() or not digits.isdigit():
            raise ValueError("a card number is decimal digits")
        return cls(int(digits), bits)

    @classmethod
    def from_hex(cls, text: str, bits: int) -> CardNumber:
        try:
            return cls(int(text, 16), bits)
        except ValueError:
            raise ValueError("a card number is hexadecimal digits") from None

    def reveal(self) -> int:
        """The number itself: for the privacy pipeline and a driver's own checks only."""
        return self._value

    def __repr__(self) -> str:
        return f"<card number: {self.bits} bits>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CardNumber)
            and other.bits == self.bits
            and hmac.compare_digest(other._value.to_bytes(64), self._value.to_bytes(64))
        )

    def __hash__(self) -> int:
        return hash((self.bits, self._value))

    def __reduce__(self) -> Any:
        raise TypeError("a card number is not pickled")


@dataclass(frozen=True, slots=True)
class CardRead:
    """One card presented at one reader head of a device."""

    device: str
    ts: float
    number: CardNumber
    format: str  # em4100, wiegand26, wiegand34, osdp, hid-decimal, ...
    reader: str = "main"
    door: str | None = None
    direction: Direction | None = None
    result: AccessResult = "read"
    # Added to the device's configured location in the event (a class board's class).
    place: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CardKey:
    """The school's HMAC key and its id."""

    key_id: str
    secret: bytes = field(repr=False)

    @classmethod
    def load(cls, path: Path, key_id: str | None) -> CardKey:
        """Read the key file: ConfigError if missing, readable by others, or too short."""
        try:
            st = os.stat(path)
            secret = key_bytes(path.read_bytes())
        except OSError as e:
            raise ConfigError.one("privacy.card_key_file", f"{path}: {e.strerror}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError.one(
                "privacy.card_key_file",
                f"{path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}): "
                "chmod 600 it",
            )
        if len(secret) < MIN_KEY_BYTES:
            raise ConfigError.one(
                "privacy.card_key_file",
                f"{path} holds {len(secret)} bytes: the key must be at least {MIN_KEY_BYTES} "
                "(e.g. `head -c 32 /dev/urandom | base64 > card.key`)",
            )
        return cls(key_id or fingerprint(secret), secret)


def key_bytes(content: bytes) -> bytes:
    """The key a key file holds: a text key (base64, hex: printable ASCII) without the
    whitespace around it; anything else (raw random bytes) exactly as written, since a raw
    key may begin or end with a byte that looks like whitespace. The district reads its
    copy the same way (docs/privacy.md)."""
    text = content.strip()
    if text and all(0x21 <= b <= 0x7E for b in text):
        return text
    return content


def fingerprint(secret: bytes) -> str:
    """A key's default id: 8 hex digits of its SHA-256 (says which key, not the key)."""
    return "k-" + hashlib.sha256(b"campus-card-key-id\n" + secret).hexdigest()[:8]


def canonical(number: CardNumber, match: str) -> bytes:
    """The bytes hashed for a card: see the module's docstring."""
    value = number.reveal()
    if match == "wiegand26":
        value &= 0xFFFFFF
    return str(value).encode()


def card_hash(key: CardKey, number: CardNumber, match: str) -> str:
    digest = hmac.new(key.secret, DOMAIN + canonical(number, match), hashlib.sha256).digest()
    return digest[:HASH_BYTES].hex()


@dataclass
class _Pending:
    read: CardRead
    reads: int


class CardPipeline:
    """Turns CardReads into access events: pseudonymize, de-duplicate, keep order."""

    def __init__(
        self,
        *,
        mode: Literal["hash", "raw"],
        key: CardKey | None,
        match: str,
        window: float,
        category_of: Callable[[str], tuple[str, str, dict[str, Any] | None] | None],
    ) -> None:
        self.mode = mode
        self.key = key
        self.match = match
        self.window = window
        self._category_of = category_of  # device -> (category, profile id, location)
        self._pending: dict[tuple[str, str, bytes], _Pending] = {}
        self.reads = 0
        self.duplicates = 0
        self.events = 0
        self.no_key = 0  # reads dropped: hashing asked for, no key configured

    def status(self) -> dict[str, Any]:
        return {
            "card_id": self.mode,
            "key_id": self.key.key_id if self.key and self.mode == "hash" else None,
            "match": self.match,
            "reads": self.reads,
            "duplicates": self.duplicates,
            "events": self.events,
            "pending": len(self._pending),
            "dropped_no_key": self.no_key,
        }

    def offer(self, read: CardRead) -> tuple[list[NewEvent], float | None]:
        """Take one read: the events due now, and when to call `due` next (None: no need)."""
        self.reads += 1
        if self.mode == "hash" and self.key is None:
            # `check` requires a key where card readers are configured; a card from any
            # other device without one is dropped, never sent in clear.
            if not self.no_key:
                log.error("card read dropped: no [privacy] card_key_file to hash it with")
            self.no_key += 1
            return [], None
        if self.window <= 0:
            return self._emit([_Pending(read, 1)]), None
        key = (read.device, read.reader, canonical(read.number, "exact"))
        held = self._pending.get(key)
        if held is not None and read.ts - held.read.ts < self.window:
            held.reads += 1
            self.duplicates += 1
            return [], None
        out = self._emit([self._pending.pop(key)]) if held is not None else []
        self._pending[key] = _Pending(read, 1)
        return out, read.ts + self.window

    def due(self, now: float, *, everything: bool = False) -> list[NewEvent]:
        """The held reads whose window closed by `now` (all of them: `everything`), in the
        order of their first read."""
        ready = [
            (k, p) for k, p in self._pending.items() if everything or now - p.read.ts >= self.window
        ]
        for k, _ in ready:
            del self._pending[k]
        return self._emit(sorted((p for _, p in ready), key=lambda p: p.read.ts))

    def next_due(self) -> float | None:
        """When the earliest held read's window closes (None: nothing held)."""
        if not self._pending:
            return None
        return min(p.read.ts for p in self._pending.values()) + self.window

    def _emit(self, held: list[_Pending]) -> list[NewEvent]:
        out = []
        for p in held:
            r = p.read
            cat = self._category_of(r.device)
            if cat is None:  # the device was removed by a reload meanwhile
                continue
            body: dict[str, Any] = {
                "card": self._card(r),
                "result": r.result,
                "reader": r.reader,
                "reads": p.reads,
            }
            if r.door is not None:
                body["door"] = r.door
            if r.direction is not None:
                body["direction"] = r.direction
            out.append(
                NewEvent(
                    kind=Kind.ACCESS,
                    device=r.device,
                    category=cat[0],
                    profile=cat[1],
                    ts=r.ts,
                    body=body,
                    location={**(cat[2] or {}), **r.place} or None,
                )
            )
        self.events += len(out)
        return out

    def _card(self, r: CardRead) -> dict[str, Any]:
        if self.mode == "raw":
            return {"raw": str(r.number.reveal()), "format": r.format, "bits": r.number.bits}
        assert self.key is not None  # noqa: S101 - checked in __init__
        return {
            "hash": card_hash(self.key, r.number, self.match),
            "key_id": self.key.key_id,
            "format": r.format,
            "bits": r.number.bits,
        }
