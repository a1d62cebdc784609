"""The firmware bridge protocol's numbers (PROTOCOL.md sections 2, 4 and 4.2).

Header flags, message types, NACK reasons, firmware update states and ACTION_RESULT statuses,
as enums. Data only: it imports nothing of the bridge, so the frame layer, the messages and
the errors can all name these codes without importing each other.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag


class Flags(IntFlag):
    """Header flag bits; bits 2..7 are reserved (sent as 0, ignored on receipt)."""

    NONE = 0
    NEEDS_ACK = 0x01
    RETRANSMIT = 0x02


class MsgType(IntEnum):
    """Message type numbers (header byte 1)."""

    HELLO = 0x01
    WELCOME = 0x02
    HEARTBEAT = 0x03
    ACK = 0x04
    NACK = 0x05
    DATA = 0x10
    EVENT = 0x11
    TIME_SYNC = 0x20
    CONFIG_GET = 0x21
    CONFIG_SET = 0x22
    CONFIG_VALUE = 0x23
    ACTION = 0x30
    ACTION_RESULT = 0x31
    FW_BEGIN = 0x40
    FW_CHUNK = 0x41
    FW_STATUS = 0x42
    FW_VERIFY = 0x43
    FW_COMMIT = 0x44
    FW_ABORT = 0x45


class NackReason(IntEnum):
    """NACK reason codes."""

    CRC = 0x01  # reserved: a frame failing its CRC is never answered (its seq is untrusted)
    UNSUPPORTED_TYPE = 0x02
    BAD_PAYLOAD = 0x03
    BUSY = 0x04
    VERSION = 0x05
    HELLO_REQUIRED = 0x06
    BAD_STATE = 0x07
    VERIFY_FAILED = 0x08
    UNKNOWN_KEY = 0x09
    UNKNOWN_ACTION = 0x0A
    TOO_LARGE = 0x0B


class FwState(IntEnum):
    """Firmware update states reported in FW_STATUS."""

    IDLE = 0
    RECEIVING = 1
    VERIFIED = 2
    COMMITTED = 3
    ROLLED_BACK = 4


class ActionStatus(IntEnum):
    """ACTION_RESULT status codes."""

    OK = 0
    FAILED = 1
    REJECTED = 2
    TIMEOUT = 3
