"""The firmware bridge driver: campus MCU nodes over framed serial (firmware_bridge/)."""

from drivers.bridge.driver import BridgeDriver

__all__ = ["BridgeDriver"]
