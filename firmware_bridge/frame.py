"""Sans-IO encoder and decoder for the firmware bridge frame format.

`firmware_bridge/PROTOCOL.md` is the single source of the format; this module follows it and
the vectors in `firmware_bridge/vectors/` check both. Bytes go in, frames come out: nothing here
opens a port, sleeps or logs (the aiomqtt v3 sans-IO split). `host.py` adds the I/O.

Layers:

* wire: `cobs_encode` / `cobs_decode`, `crc16`, `encode_frame` (frame -> wire bytes with the
  0x00 delimiter) and `Decoder` (stream-fed, never raises on bad input, counts what it drops);
* messages live in `firmware_bridge.messages`, the protocol's numbers (message types, NACK
  reasons, …) in `firmware_bridge.codes` (split by job: this module is framing only).

Callers who want exceptions get `FrameError` (`firmware_bridge.errors`), which carries the
counter name (`kind`) and, for payload problems, the NACK reason a receiver should answer with.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Re-exported for bench/bridge.py, which imports FwState from here; the protocol's numbers
# live in `firmware_bridge.codes`.
from firmware_bridge.codes import FwState as FwState  # noqa: PLC0414
from firmware_bridge.errors import FrameError

PROTOCOL_VERSION = 1
HEADER_SIZE = 6
CRC_SIZE = 2
MIN_FRAME = HEADER_SIZE + CRC_SIZE  # 8
MAX_PAYLOAD = 244
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # 252
MAX_ENCODED = MAX_FRAME + 1  # 253: COBS adds exactly one byte to frames shorter than 254
MAX_WIRE = MAX_ENCODED + 1  # 254 with the delimiter
MAX_FW_CHUNK = 200
DELIMITER = 0x00


# --------------------------------------------------------------------------- wire layer


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, xorout 0."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def cobs_encode(data: bytes) -> bytes:
    """Encode with COBS (Cheshire & Baker); the result holds no 0x00 and no delimiter.

    A run of 254 non-zero bytes is a 0xFF block; a 0xFF block that ends the data is not
    followed by a code byte (the canonical form). Frames of at most 252 bytes never hit it.
    """
    out = bytearray()
    block = bytearray()
    ended_full = False
    for byte in data:
        ended_full = False
        if byte:
            block.append(byte)
            if len(block) == 254:
                out.append(0xFF)
                out += block
                block.clear()
                ended_full = True
        else:
            out.append(len(block) + 1)
            out += block
            block.clear()
    if not ended_full:
        out.append(len(block) + 1)
        out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Decode one COBS block (without its delimiter); raise `FrameError` if malformed."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise FrameError("COBS: 0x00 inside a frame", "cobs_errors")
        end = i + code
        if end > n:
            raise FrameError("COBS: code byte points past the end of the frame", "cobs_errors")
        out += data[i + 1 : end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: the header fields and the payload (CRC checked and stripped)."""

    type: int
    seq: int
    payload: bytes = b""
    flags: int = 0
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        for name, value, top in (
            ("version", self.version, 0xFF),
            ("type", self.type, 0xFF),
            ("flags", self.flags, 0xFF),
            ("seq", self.seq, 0xFFFF),
        ):
            if not 0 <= value <= top:
                raise FrameError(f"frame {name} {value} out of range 0..{top}", "payload")
        if len(self.payload) > MAX_PAYLOAD:
            raise FrameError(
                f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}", "too_long"
            )


def frame_bytes(frame: Frame) -> bytes:
    """Header + payload + CRC, before COBS."""
    head = struct.pack(
        "<BBBHB", frame.version, frame.type, frame.flags, frame.seq, len(frame.payload)
    )
    body = head + frame.payload
    return body + struct.pack("<H", crc16(body))


def encode_frame(frame: Frame) -> bytes:
    """Wire bytes for one frame: COBS(header + payload + CRC) followed by 0x00."""
    return cobs_encode(frame_bytes(frame)) + b"\x00"


def parse_frame(raw: bytes) -> Frame:
    """Check a COBS-decoded frame (length, CRC, length field) and split it into a `Frame`."""
    if len(raw) < MIN_FRAME:
        raise FrameError(f"frame of {len(raw)} bytes is shorter than {MIN_FRAME}", "too_short")
    if len(raw) > MAX_FRAME:
        raise FrameError(f"frame of {len(raw)} bytes exceeds {MAX_FRAME}", "too_long")
    (received,) = struct.unpack_from("<H", raw, len(raw) - CRC_SIZE)
    computed = crc16(raw[:-CRC_SIZE])
    if received != computed:
        raise FrameError(f"CRC {received:#06x} != computed {computed:#06x}", "crc_errors")
    version, type_, flags, seq, length = struct.unpack_from("<BBBHB", raw)
    if length != len(raw) - MIN_FRAME:
        raise FrameError(
            f"length field {length} != payload of {len(raw) - MIN_FRAME} bytes", "length_errors"
        )
    return Frame(type_, seq, bytes(raw[HEADER_SIZE:-CRC_SIZE]), flags, version)


def decode_frame(encoded: bytes) -> Frame:
    """Decode one frame from its wire bytes (the trailing 0x00 is optional)."""
    if encoded.endswith(b"\x00"):
        encoded = encoded[:-1]
    if len(encoded) > MAX_ENCODED:
        raise FrameError(f"{len(encoded)} encoded bytes exceed {MAX_ENCODED}", "too_long")
    return parse_frame(cobs_decode(encoded))


@dataclass(slots=True)
class DecoderStats:
    """What a `Decoder` has accepted and dropped; rejected frames count in exactly one field."""

    frames: int = 0
    cobs_errors: int = 0
    too_short: int = 0
    too_long: int = 0
    crc_errors: int = 0
    length_errors: int = 0
    discarded_bytes: int = 0


class Decoder:
    """Stream decoder: feed it any bytes; it returns the good frames and counts the rest.

    It starts in sync (the first byte begins a frame). Bytes are collected up to the next
    0x00; an empty collection (two delimiters in a row) is ignored and not counted. A frame
    that grows past `MAX_ENCODED` bytes is dropped and the rest of it skipped up to the next
    0x00, so the buffer never exceeds `MAX_ENCODED` bytes (the C reference does the same).
    """

    def __init__(self) -> None:
        self.stats = DecoderStats()
        self._buf = bytearray()
        self._skipped = 0  # bytes past MAX_ENCODED in an oversize frame; >0 means skipping

    def feed(self, data: bytes) -> list[Frame]:
        """Consume bytes and return the frames completed by them, in order."""
        frames: list[Frame] = []
        for byte in data:
            if byte != DELIMITER:
                if len(self._buf) < MAX_ENCODED:
                    self._buf.append(byte)
                else:
                    self._skipped += 1
                continue
            frame = self._end_of_frame()
            if frame is not None:
                frames.append(frame)
        return frames

    def _end_of_frame(self) -> Frame | None:
        size = len(self._buf) + self._skipped
        try:
            if self._skipped:
                raise FrameError("oversize frame", "too_long")  # noqa: TRY301 - one counting path
            if not size:
                return None
            frame = parse_frame(cobs_decode(bytes(self._buf)))
        except FrameError as exc:
            setattr(self.stats, exc.kind, getattr(self.stats, exc.kind) + 1)
            self.stats.discarded_bytes += size
            return None
        finally:
            self._buf.clear()
            self._skipped = 0
        self.stats.frames += 1
        return frame
