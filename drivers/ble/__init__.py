"""Bluetooth LE: BTHome v2 sensors and iBeacon / Eddystone tags, scanned through BlueZ."""

from drivers.ble.driver import BleDriver

__all__ = ["BleDriver"]
