"""What libosdp hands the control panel, checked and decoded: card reads, local status, keys.

libosdp parses and authenticates OSDP frames (CRC, sequence, Secure Channel MAC) in C and
calls the driver with a plain dict per event. This module turns those dicts into what the
core takes, and refuses anything it cannot vouch for: a refused dict is counted by reason,
never half-used, and never shown (a card dict holds a minor's card number). It imports
nothing from libosdp, so it is tested and fuzzed without it; the numbers below are libosdp's
(osdp_sys constants, checked against the library by tests/test_osdp_codec.py).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.cards import CardNumber

# osdp_sys.EVENT_*: the `event` key of a dict from the CP's event callback.
EVENT_CARD = 1
EVENT_KEYPAD = 2
EVENT_MFG = 3
EVENT_STATUS = 4
EVENT_NOTIFICATION = 5
# osdp_sys.EVENT_NOTIFICATION_*: the `type` of a notification; arg0 is 1 (up) or 0 (down).
NOTIFY_COMMAND = 0
NOTIFY_SC = 1
NOTIFY_PD = 2
# osdp_sys.CARD_FMT_*: the card data's format.
CARD_FORMATS = {0: "raw", 1: "wiegand"}
CARD_FMT_ASCII = 2
# osdp_sys.STATUS_REPORT_LOCAL: osdp_LSTATR, report = [tamper, power] (0: normal).
STATUS_LOCAL = 2
MAX_CARD_BITS = 512  # CardNumber's own bound; no access card has more
SCBK_BYTES = 16


class RejectedError(ValueError):
    """A dict from libosdp that is not used; `reason` is the counter it goes to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Card:
    """One decoded card read (the number never shows itself: agent.cards.CardNumber)."""

    reader_no: int
    format: str
    number: CardNumber
    reversed: bool  # the PD read it backwards (a swiped magstripe); the bits were turned


def _int(event: dict[str, Any], key: str, low: int, high: int) -> int:
    v = event.get(key)
    if type(v) is not int or not low <= v <= high:
        raise RejectedError(f"bad_{key}")
    return v


def decode_card(event: dict[str, Any]) -> Card:
    """A card-read event -> Card; RejectedError when any field is missing or out of range.

    `length` is the number of bits, `data` holds them MSB-first in ceil(length/8) bytes,
    padded with zeros at the end. `direction` 1 is OSDP's "reverse read": the bits are
    turned around so that one card gives one number whichever way it was swiped.
    """
    if event.get("event") != EVENT_CARD:
        raise RejectedError("not_card")
    reader = _int(event, "reader_no", 0, 255)
    fmt = event.get("format")
    if fmt == CARD_FMT_ASCII:
        raise RejectedError("ascii_card")  # see README "Known limits"
    if type(fmt) is not int or fmt not in CARD_FORMATS:
        raise RejectedError("bad_format")
    direction = _int(event, "direction", 0, 1)
    bits = _int(event, "length", 1, MAX_CARD_BITS)
    data = event.get("data")
    if not isinstance(data, bytes | bytearray) or len(data) != (bits + 7) // 8:
        raise RejectedError("bad_data")
    pad = len(data) * 8 - bits
    raw = int.from_bytes(data, "big")
    if raw & ((1 << pad) - 1):
        raise RejectedError("bad_padding")  # bits set past `length`: not what was counted
    value = raw >> pad
    if direction == 1:
        value = int(format(value, f"0{bits}b")[::-1], 2)
    return Card(reader, CARD_FORMATS[fmt], CardNumber(value, bits), direction == 1)


def decode_local_status(event: dict[str, Any]) -> dict[str, bool]:
    """A local-status event -> {"tamper": bool, "power": bool} (True: tampered / failed)."""
    if event.get("event") != EVENT_STATUS:
        raise RejectedError("not_status")
    if event.get("type") != STATUS_LOCAL:
        raise RejectedError("other_status")
    report = event.get("report")
    if not isinstance(report, bytes | bytearray) or len(report) != 2:
        raise RejectedError("bad_status")
    if any(b > 1 for b in report):
        raise RejectedError("bad_status")
    return {"tamper": report[0] == 1, "power": report[1] == 1}


def load_scbk(path: Path) -> bytes:
    """A reader's Secure Channel Base Key: 16 bytes raw, or 32 hex digits (a trailing
    newline allowed). ValueError says what is wrong with the file, never its content."""
    try:
        st = os.stat(path)
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) & ~stat.S_IRGRP:
        raise ValueError(
            f"{path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}): chmod 600 it"
        )
    if len(data) == SCBK_BYTES:
        return data
    text = data.strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != SCBK_BYTES:
        raise ValueError(
            f"{path} is not an OSDP key: write 16 raw bytes or 32 hex digits "
            "(the reader's SCBK, as set when it was installed)"
        )
    return key
