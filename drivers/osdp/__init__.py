"""OSDP v2 card readers over RS-485, with libosdp (the `osdp` extra): see README.md."""

from drivers.osdp.driver import OsdpDriver

__all__ = ["OsdpDriver"]
