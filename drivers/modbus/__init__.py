"""Modbus RTU/TCP driver: classroom sensors, energy meters, e-fence and intrusion zones."""

from drivers.modbus.driver import ModbusRtuDriver, ModbusTcpDriver

__all__ = ["ModbusRtuDriver", "ModbusTcpDriver"]
