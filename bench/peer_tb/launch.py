"""Start the ThingsBoard IoT Gateway (the installed PyPI package) offline, for `bench/peer.py`.

Run it with the peer's own interpreter (bench/results/peer-venv/bin/python), never the
agent's: it imports `thingsboard_gateway` from that venv and nothing from this repository.

    peer-venv/bin/python bench/peer_tb/launch.py --config-dir DIR

DIR holds the generated `tb_gateway.json`, `modbus.json` and `logs.json` (see
`bench/peer.py`); the gateway runs with DIR as its working directory (its `logs/`, its
SQLite files and `connected_devices.json` land there). Before the gateway is imported:

* its update check is switched off. `TBUpdater.__init__` (built unconditionally by
  `TBGatewayService`, no config key turns it off) starts a thread running
  `check_for_new_version`, which POSTs version, platform and an instance id to
  https://updates.thingsboard.io/api/tb-gateway/updates, again every hour from
  `get_version`. That method is replaced by a no-op here.
* `TBUtility.install_package` (the gateway's run-time `pip install`: the Modbus connector
  calls it when pymodbus is not exactly 3.9.2 or pyserial(-asyncio) is missing) is replaced
  by one that installs nothing, so that a missing package fails the start instead of
  reaching PyPI. The bench venv has all of them pre-installed, so it is never called.
* a loopback guard wraps `socket.connect`, `connect_ex`, `sendto` and `getaddrinfo`: any
  address or host name outside 127.0.0.0/8, ::1, "localhost" and AF_UNIX is refused and
  written to `DIR/blocked.jsonl` (the bench reports that file; it stays empty).
* the environment variables through which the gateway overrides its config (`host`,
  `port`, `accessToken`, `TB_GW_*`, ...) are removed.

SIGINT stops the gateway in order (its own handler); SIGTERM is turned into SIGINT.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

_OVERRIDES = (
    "host",
    "port",
    "type",
    "accessToken",
    "caCert",
    "privateKey",
    "cert",
    "clientId",
    "username",
    "password",
    "proxy_host",
    "proxy_port",
)

_blocked_path: Path | None = None
_blocked_lock = threading.Lock()


def _record(what: str, target: object) -> None:
    line = json.dumps({"t": time.time(), "what": what, "target": repr(target)})
    with _blocked_lock:
        if _blocked_path is not None:
            with _blocked_path.open("a") as f:
                f.write(line + "\n")
        print(f"peer launcher: blocked {what} to {target!r}", file=sys.stderr, flush=True)


def _loopback_host(host: object) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the local wildcard
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    if host in ("localhost", "", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a name other than localhost would need DNS


def _allowed(sock: socket.socket, address: Any) -> bool:
    if sock.family == getattr(socket, "AF_UNIX", None):
        return True
    if isinstance(address, tuple) and address:
        return _loopback_host(address[0])
    return False


def install_loopback_guard(blocked: Path) -> None:
    """Refuse, and record, every connection or lookup that would leave loopback."""
    global _blocked_path  # noqa: PLW0603 - set once at start-up
    _blocked_path = blocked
    blocked.touch()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if not _allowed(self, address):
            _record("connect", address)
            raise ConnectionRefusedError(f"peer launcher: {address!r} is not loopback")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not _allowed(self, address):
            _record("connect_ex", address)
            return 111  # ECONNREFUSED
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        address = args[-1]
        if not _allowed(self, address):
            _record("sendto", address)
            raise ConnectionRefusedError(f"peer launcher: {address!r} is not loopback")
        return real_sendto(self, data, *args)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _loopback_host(host):
            _record("getaddrinfo", host)
            raise socket.gaierror(socket.EAI_NONAME, f"peer launcher: {host!r} is not loopback")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[assignment]
    socket.getaddrinfo = getaddrinfo


def disable_phone_home() -> None:
    """No update check, no run-time pip install."""
    from thingsboard_gateway.tb_utility import tb_updater
    from thingsboard_gateway.tb_utility.tb_utility import TBUtility

    def no_update_check(self: Any) -> None:
        return None

    tb_updater.TBUpdater.check_for_new_version = no_update_check  # type: ignore[method-assign]

    def no_install(package: str, version: str = "upgrade", force_install: bool = False) -> bool:
        _record("pip install", f"{package} {version} force={force_install}")
        return False

    TBUtility.install_package = staticmethod(no_install)  # type: ignore[method-assign]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config-dir", type=Path, required=True)
    a = ap.parse_args()
    folder: Path = a.config_dir.resolve()
    for name in list(os.environ):
        if (
            name in _OVERRIDES
            or name.startswith("TB_GW_")
            or name == "TB_DEFAULT_RATE_LIMIT_PERCENTAGE"
        ):
            del os.environ[name]
    install_loopback_guard(folder / "blocked.jsonl")
    disable_phone_home()
    os.chdir(folder)
    (folder / "logs").mkdir(exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    from thingsboard_gateway.gateway.tb_gateway_service import TBGatewayService

    TBGatewayService(str(folder / "tb_gateway.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
