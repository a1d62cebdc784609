"""The keyboard-wedge card reader driver: USB HID readers that type each card, via evdev."""

from drivers.card_hid.driver import CardHidDriver

__all__ = ["CardHidDriver"]
