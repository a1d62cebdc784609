"""What one BLE advert says: BTHome v2 sensor readings (through bthome-ble), iBeacon and
Eddystone tag ids. No I/O; garbage is counted as rejected, never raised.

* iBeacon (Apple "Proximity Beacon Specification" R1): manufacturer data of company 0x004C,
  `02 15`, proximity UUID (16), major (2, big-endian), minor (2), measured power (1). The tag
  id is UUID + major + minor: 160 bits.
* Eddystone (google/eddystone protocol-specification.md): service data of UUID 0xFEAA.
  UID frame 0x00: tx power (1), namespace (10), instance (6) [, 2 reserved]: the tag id is
  namespace + instance, 128 bits. TLM frame 0x20 (unencrypted, version 0): battery mV (2,
  big-endian; 0 = not reported), temperature (8.8), advert count (4), seconds (4).
* BTHome v2 (bthome.io/format): service data of UUID 0xFCD2; the first byte is the device
  information (bit 0 encrypted, bits 5-7 version 2). Encrypted: ciphertext, a 4-byte
  little-endian counter, a 4-byte MIC: `bthome_counter` reads the counter so that the driver
  refuses a replay across restarts (bthome-ble keeps it in memory only, from 0).

A tag id never leaves this module but as a `CardNumber` (it is personal data when a student
carries the tag): it is not logged and not in an exception message.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from agent.cards import CardNumber

APPLE = 0x004C
EDDYSTONE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"
BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
TagFormat = Literal["ibeacon", "eddystone-uid"]


@dataclass
class Counters:
    """Adverts by outcome; rejected by reason (counts only, never a value)."""

    adverts: int = 0
    unknown: int = 0  # from a device that is not configured (only counted)
    rejected: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class TagSeen:
    format: TagFormat
    number: CardNumber


@dataclass(frozen=True)
class Telemetry:
    """An Eddystone TLM frame: battery in mV (None: not reported)."""

    battery_mv: int | None


def ibeacon(manufacturer_data: dict[int, bytes], counters: Counters) -> TagSeen | None:
    data = manufacturer_data.get(APPLE)
    if data is None:
        return None
    if len(data) != 23 or data[0] != 0x02 or data[1] != 0x15:
        counters.rejected["ibeacon-frame"] += 1
        return None
    return TagSeen("ibeacon", CardNumber(int.from_bytes(data[2:22], "big"), 160))


def eddystone(service_data: dict[str, bytes], counters: Counters) -> TagSeen | Telemetry | None:
    data = service_data.get(EDDYSTONE_UUID)
    if data is None:
        return None
    if not data:
        counters.rejected["eddystone-empty"] += 1
        return None
    frame = data[0]
    if frame == 0x00:
        if len(data) not in (18, 20):
            counters.rejected["eddystone-uid-length"] += 1
            return None
        return TagSeen("eddystone-uid", CardNumber(int.from_bytes(data[2:18], "big"), 128))
    if frame == 0x20:
        if len(data) != 14 or data[1] != 0x00:
            counters.rejected["eddystone-tlm"] += 1
            return None
        mv = int.from_bytes(data[2:4], "big")
        return Telemetry(mv or None)
    counters.rejected["eddystone-frame"] += 1  # URL, EID, encrypted TLM: not read
    return None


def tag_number(text: str) -> TagSeen:
    """A tag id as configured: `ibeacon:<uuid>:<major>:<minor>` (major/minor decimal) or
    `eddystone:<namespace 20 hex>:<instance 12 hex>`. ValueError without the id in it."""
    try:
        seen = _tag_number(text)
    except ValueError:
        seen = None
    if seen is None:
        raise ValueError(
            "a tag id is ibeacon:<uuid>:<major>:<minor> or eddystone:<20 hex>:<12 hex>"
        ) from None
    return seen


def _tag_number(text: str) -> TagSeen | None:
    kind, _, rest = text.strip().partition(":")
    parts = rest.split(":")
    if kind == "ibeacon" and len(parts) == 3:
        uuid = bytes.fromhex(parts[0].replace("-", ""))
        major, minor = int(parts[1]), int(parts[2])
        if len(uuid) != 16 or not (0 <= major < 65536 and 0 <= minor < 65536):
            return None
        value = int.from_bytes(uuid + major.to_bytes(2, "big") + minor.to_bytes(2, "big"))
        return TagSeen("ibeacon", CardNumber(value, 160))
    if kind == "eddystone" and len(parts) == 2:
        ns, inst = bytes.fromhex(parts[0]), bytes.fromhex(parts[1])
        if len(ns) != 10 or len(inst) != 6:
            return None
        return TagSeen("eddystone-uid", CardNumber(int.from_bytes(ns + inst), 128))
    return None


def bthome_counter(service_data: dict[str, bytes]) -> int | None:
    """The encryption counter of an encrypted BTHome v2 advert (None: not one)."""
    data = service_data.get(BTHOME_UUID)
    if not data or not data[0] & 0x01 or len(data) < 1 + 1 + 8:
        return None
    return int.from_bytes(data[-8:-4], "little")
