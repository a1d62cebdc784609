"""The digital class board driver: the gateway as the boards' local HTTP hub (aiohttp)."""

from drivers.classboard.driver import ClassboardDriver

__all__ = ["ClassboardDriver"]
