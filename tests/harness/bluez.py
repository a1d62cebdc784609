"""A mocked BlueZ on a private D-Bus: python-dbusmock's `bluez5` template, driven from tests.

`BluezMock(folder)` starts a `dbus-daemon` listening on a socket in `folder` (the agent and the
mock see it as their system bus through DBUS_SYSTEM_BUS_ADDRESS) and `python3 -m dbusmock
--system --template bluez5` on it, run by the system python3 with Debian's python3-dbus (the
venv has python-dbusmock installed without dbus-python: tests/setup.sh). The tests speak to
the mock over D-Bus with dbus-fast (bleak's own D-Bus library) on a loop in a thread.

What the template does not do right for scanning (python-dbusmock 0.38.1):
* `AddDevice` publishes ManufacturerData / ServiceData as empty *arrays*, which bleak's
  handler rejects: `advertise` creates the device itself with `Mock.AddObject` and typed
  `a{qv}` / `a{sv}` dictionaries and emits `InterfacesAdded`;
* a later advert of the same device is a `PropertiesChanged` signal sent with
  `Mock.EmitSignal`, as BlueZ does when a device advertises again.
* Debian's python3-dbusmock 0.28.7 lacks the adapter's `Roles` (bleak >= 1 then finds no
  central adapter): `add_adapter` adds it when missing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from tests.harness.process import ROOT, ChildProcess, MissingBinaryError, need
from tests.harness.waiting import wait_for

T = TypeVar("T")
MOCK_IFACE = "org.freedesktop.DBus.Mock"
DEVICE_IFACE = "org.bluez.Device1"
ADAPTER_IFACE = "org.bluez.Adapter1"
OM_IFACE = "org.freedesktop.DBus.ObjectManager"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
SYSTEM_PYTHON = "/usr/bin/python3"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def device_path(adapter: str, address: str) -> str:
    return f"/org/bluez/{adapter}/dev_{address.upper().replace(':', '_')}"


class BluezMock:
    """A private bus with the bluez5 mock on it; `address` goes in DBUS_SYSTEM_BUS_ADDRESS."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.socket = folder / "bus.sock"
        self.address = f"unix:path={self.socket}"
        self.daemon = ChildProcess()
        self.mock = ChildProcess()
        self.known: set[str] = set()  # device paths created
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._bus: MessageBus | None = None

    # ---- processes -------------------------------------------------------------------

    def start(self) -> BluezMock:
        daemon = need("dbus-daemon", "dbus")
        need(SYSTEM_PYTHON, "python3")
        conf = self.folder / "bus.conf"
        conf.write_text(BUS_CONFIG.format(socket=self.socket))
        self.daemon.spawn(
            [daemon, f"--config-file={conf}", "--nofork", "--nopidfile"],
            self.folder / "dbus-daemon.log",
        )
        wait_for(self.socket.exists, 10, "the private dbus-daemon's socket")
        self._thread.start()
        self._run(self._connect())
        self.start_mock()
        return self

    def start_mock(self) -> None:
        """The bluez5 template (again, after `stop_mock`: BlueZ restarted)."""
        spec = importlib.util.find_spec("dbusmock")  # not imported: it needs dbus-python
        if spec is None or spec.origin is None:
            raise MissingBinaryError("python-dbusmock is not installed: run tests/setup.sh")
        shim = self.folder / "pypath"
        shim.mkdir(exist_ok=True)
        link = shim / "dbusmock"
        if not link.exists():
            link.symlink_to(Path(spec.origin).parent)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DBUS_SYSTEM_BUS_ADDRESS": self.address,
            "PYTHONPATH": str(shim),
        }
        self.mock.spawn(
            [SYSTEM_PYTHON, "-m", "dbusmock", "--system", "--template", "bluez5"],
            self.folder / "dbusmock.log",
            append=True,
            env=env,
            cwd=ROOT,
        )
        wait_for(self._has_bluez, 15, "python-dbusmock's bluez5 on the private bus")
        self.known.clear()

    def stop_mock(self) -> None:
        self.mock.stop()

    def stop(self) -> None:
        if self._bus is not None:
            bus, self._bus = self._bus, None
            self._run(_disconnect(bus))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self.mock.stop()
        self.daemon.stop()

    def log_text(self) -> str:
        return self.mock.log_text()

    # ---- D-Bus -----------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _connect(self) -> None:
        self._bus = await MessageBus(bus_address=self.address, bus_type=BusType.SYSTEM).connect()

    async def _call(
        self, path: str, iface: str, member: str, signature: str = "", body: list[Any] | None = None
    ) -> list[Any]:
        assert self._bus is not None
        reply = await self._bus.call(
            Message(
                destination="org.bluez",
                path=path,
                interface=iface,
                member=member,
                signature=signature,
                body=body or [],
            )
        )
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name}: {reply.body}")
        return list(reply.body)

    def call(
        self, path: str, iface: str, member: str, signature: str = "", body: list[Any] | None = None
    ) -> list[Any]:
        return self._run(self._call(path, iface, member, signature, body))

    def _has_bluez(self) -> bool:
        try:
            self.call("/", "org.freedesktop.DBus.Introspectable", "Introspect")
        except RuntimeError:
            return False
        return True

    # ---- adapters --------------------------------------------------------------------

    def add_adapter(self, name: str = "hci0") -> str:
        path = str(self.call("/", "org.bluez.Mock", "AddAdapter", "ss", [name, "campus-gw"])[0])
        roles = self.call(path, PROPS_IFACE, "GetAll", "s", [ADAPTER_IFACE])[0]
        if "Roles" not in roles:  # Debian's python3-dbusmock 0.28.7
            self.call(
                path,
                MOCK_IFACE,
                "AddProperty",
                "ssv",
                [ADAPTER_IFACE, "Roles", Variant("as", ["central", "peripheral"])],
            )
        return path

    def remove_adapter(self, name: str = "hci0") -> None:
        self.call("/", "org.bluez.Mock", "RemoveAdapterWithDevices", "s", [name])
        prefix = f"/org/bluez/{name}/"
        self.known = {p for p in self.known if not p.startswith(prefix)}

    def set_powered(self, name: str, powered: bool) -> None:
        path = f"/org/bluez/{name}"
        self.call(
            path, PROPS_IFACE, "Set", "ssv", [ADAPTER_IFACE, "Powered", Variant("b", powered)]
        )

    # ---- adverts ---------------------------------------------------------------------

    def advertise(
        self,
        address: str,
        *,
        adapter: str = "hci0",
        rssi: int = -60,
        service_data: Mapping[str, bytes] | None = None,
        manufacturer_data: Mapping[int, bytes] | None = None,
        name: str = "",
    ) -> None:
        """One advert of `address` as BlueZ reports it: a new device object the first time
        (InterfacesAdded), PropertiesChanged after."""
        self._run(self._advertise(address, adapter, rssi, service_data, manufacturer_data, name))

    def advertise_many(self, adverts: list[dict[str, Any]]) -> None:
        """Several adverts (keyword dicts of `advertise`) in one go."""

        async def all_of() -> None:
            for a in adverts:
                await self._advertise(
                    a["address"],
                    a.get("adapter", "hci0"),
                    a.get("rssi", -60),
                    a.get("service_data"),
                    a.get("manufacturer_data"),
                    a.get("name", ""),
                )

        self._run(all_of())

    async def _advertise(  # noqa: PLR0917 - the advert's fields, as `advertise` takes them
        self,
        address: str,
        adapter: str,
        rssi: int,
        service_data: Mapping[str, bytes] | None,
        manufacturer_data: Mapping[int, bytes] | None,
        name: str,
    ) -> None:
        path = device_path(adapter, address)
        adv: dict[str, Variant] = {"RSSI": Variant("n", rssi)}
        if service_data is not None:
            adv["ServiceData"] = Variant(
                "a{sv}", {k: Variant("ay", bytes(v)) for k, v in service_data.items()}
            )
        if manufacturer_data is not None:
            adv["ManufacturerData"] = Variant(
                "a{qv}", {k: Variant("ay", bytes(v)) for k, v in manufacturer_data.items()}
            )
        if path not in self.known:
            props: dict[str, Variant] = {
                "Address": Variant("s", address.upper()),
                "AddressType": Variant("s", "public"),
                "Alias": Variant("s", name or address.upper().replace(":", "-")),
                "Adapter": Variant("o", f"/org/bluez/{adapter}"),
                "Paired": Variant("b", False),
                "Connected": Variant("b", False),
                "Trusted": Variant("b", False),
                "Blocked": Variant("b", False),
                "LegacyPairing": Variant("b", False),
                "ServicesResolved": Variant("b", False),
                "UUIDs": Variant("as", list(service_data or {})),
                "ServiceData": Variant("a{sv}", {}),
                "ManufacturerData": Variant("a{qv}", {}),
                **adv,
            }
            if name:
                props["Name"] = Variant("s", name)
            await self._call(
                "/", MOCK_IFACE, "AddObject", "ssa{sv}a(ssss)", [path, DEVICE_IFACE, props, []]
            )
            await self._call(
                "/",
                MOCK_IFACE,
                "EmitSignal",
                "sssav",
                [
                    OM_IFACE,
                    "InterfacesAdded",
                    "oa{sa{sv}}",
                    [Variant("o", path), Variant("a{sa{sv}}", {DEVICE_IFACE: props})],
                ],
            )
            self.known.add(path)
            return
        await self._call(
            path,
            MOCK_IFACE,
            "EmitSignal",
            "sssav",
            [
                PROPS_IFACE,
                "PropertiesChanged",
                "sa{sv}as",
                [Variant("s", DEVICE_IFACE), Variant("a{sv}", adv), Variant("as", [])],
            ],
        )


async def _disconnect(bus: MessageBus) -> None:
    bus.disconnect()
    await asyncio.sleep(0)


def serve(folder: Path, address: str, every: float = 2.0) -> None:
    """The mocked BlueZ with one BTHome v2 sensor advertising every `every` s (temperature
    and humidity moving), until SIGTERM; the bus address in `folder`/address. For
    examples/demo.sh: `python -m tests.harness.bluez FOLDER MAC`."""
    import signal

    from tests.harness.ble_adverts import bthome_plain

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    mock = BluezMock(folder).start()
    try:
        mock.add_adapter("hci0")
        (folder / "address").write_text(mock.address)
        n = 0
        while not stop.wait(0 if n == 0 else every):
            temp = 2150 + (n % 12) * 25  # 21.50 .. 24.25 °C
            hum = 4500 + (n % 7) * 100  # 45 .. 51 %
            objects = bytes([0x00, n % 256, 0x01, 88, 0x02]) + temp.to_bytes(2, "little")
            mock.advertise(
                address, service_data=bthome_plain(objects + b"\x03" + hum.to_bytes(2, "little"))
            )
            n += 1
    finally:
        mock.stop()


if __name__ == "__main__":
    import sys

    serve(Path(sys.argv[1]), sys.argv[2])
