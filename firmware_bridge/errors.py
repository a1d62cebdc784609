"""The firmware bridge's exceptions, as members of the agent's error family (agent/errors.py).

    AgentError
    └── BridgeError                  anything the bridge raises on purpose
        ├── FrameError               bytes that do not follow PROTOCOL.md (kind, reason)
        ├── LinkDownError            the node cannot be reached now (also a DriverError)
        ├── NodeNackError            the node refused a request (request, reason)
        └── FirmwareError            an update that cannot succeed as it is
            └── ImageRejectedError   FW_VERIFY failed: the image's sha256 differs

`FrameError` is garbage from a wire: callers count it and answer with its NACK reason; it
must never be logged at error level. Nothing here does I/O or imports the bridge's modules
other than its codes, so every module of the bridge can import it.
"""

from __future__ import annotations

from agent.errors import AgentError, DriverError
from firmware_bridge.codes import NackReason


class BridgeError(AgentError):
    """Base of every error the firmware bridge raises on purpose."""


class FrameError(BridgeError):
    """A frame or payload that does not follow PROTOCOL.md.

    Attributes:
        kind: the decoder counter this falls under (`cobs_errors`, `too_short`, `too_long`,
            `crc_errors`, `length_errors`) or `"payload"` for message-level problems.
        reason: the NACK reason a receiver answers with, for message-level problems.
    """

    def __init__(self, message: str, kind: str, reason: NackReason | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason


class LinkDownError(BridgeError, DriverError):
    """The node cannot be reached now: port closed, not welcomed, or no answer in time."""


class NodeNackError(BridgeError):
    """The node refused a request with a NACK."""

    def __init__(self, request: str, reason: int) -> None:
        self.request = request
        self.reason = reason
        try:
            name = NackReason(reason).name
        except ValueError:
            name = f"reason {reason:#04x}"
        super().__init__(f"node refused {request}: NACK {name}")


class FirmwareError(BridgeError):
    """A firmware update that cannot succeed as it is (bad image, wrong state, rollback)."""


class ImageRejectedError(FirmwareError):
    """FW_VERIFY failed: the node's sha256 of the received image differs (it was aborted)."""
