"""Serial line card readers (RDM6300, Wiegand-to-serial converters, 2.4 GHz gate readers)."""

from drivers.card_serial.driver import CardSerialDriver

__all__ = ["CardSerialDriver"]
