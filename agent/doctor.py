"""`campus-agent doctor`: is this gateway fit to run? One line per check, with the fix.

Each check says ok, warn or fail and, when it is not ok, what to do. The exit code is the
worst result (0 all ok, 1 a warning, 2 a failure); `--json` prints the same as a list. The
checks only read and ask: the config, the store file (read-only), the disk, the serial ports
(as the service user would open them), the broker (a TCP, TLS and MQTT connect under a
client id of its own, so the running agent's session is not taken over), the clock, the
Bluetooth adapter through BlueZ, the unit's settings. Nothing is written, nothing published.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import shutil
import socket
import sqlite3
import ssl
import stat
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.clock import ClockState
from agent.config import SiteConfig, load_config
from agent.errors import ConfigError
from agent.mqtt_client import make_client, tls_context
from agent.store_schema import SCHEMA_VERSION, WRITTEN_BY

SERVICE_USER = "campus-agent"
UNIT_NAME = "campus-agent.service"
UNIT_DIRS = (
    Path("/etc/systemd/system"),
    Path("/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
)
BY_ID = Path("/dev/serial/by-id")
CERT_WARN_DAYS = 30
SEVERITY = {"ok": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class Check:
    name: str
    result: str  # ok | warn | fail
    detail: str
    fix: str = ""


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


@dataclass(frozen=True)
class Account:
    """Whose access the checks judge: the service user when it exists, else this process."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def of(cls, name: str | None) -> Account:
        try:
            pw = pwd.getpwnam(name) if name else pwd.getpwuid(os.geteuid())
        except KeyError:
            pw = pwd.getpwuid(os.geteuid())
        gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
        return cls(pw.pw_name, pw.pw_uid, frozenset(gids))

    def may(self, path: Path, want: int) -> bool:
        """Whether this account has the `want` bits (4 read, 2 write) on `path` (root: yes)."""
        if self.uid == 0:
            return True
        st = path.stat()
        if st.st_uid == self.uid:
            bits = st.st_mode >> 6
        elif st.st_gid in self.gids:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & want == want


def run_checks(
    config_path: Path,
    *,
    user: str | None = SERVICE_USER,
    unit: Path | None = None,
    timeout: float = 5.0,
) -> list[Check]:
    """Every check, in the order a technician would look."""
    try:
        config = load_config(config_path)
    except ConfigError as e:
        n = len(e.problems)
        first = str(e.problems[0]) if e.problems else str(e)
        return [
            fail(
                "config",
                f"{n} problem{'s' if n != 1 else ''}: {first}",
                "run `campus-agent check` and fix what it lists",
            )
        ]
    who = Account.of(user)
    out = [
        ok("config", f"{config_path}: {len(config.devices)} devices on {len(config.buses)} buses")
    ]
    out += [_store(config, who), _disk(config), *_ports(config, who)]
    out += _broker(config, timeout)
    out += [*_client_certificate(config), _clock(), *_bluetooth(config, timeout), _watchdog(unit)]
    return out


# ---- the store and its disk ---------------------------------------------------------------


def _store(config: SiteConfig, who: Account) -> Check:
    path = config.store.path
    folder = path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not who.may(existing, 2 | 1):
        return fail(
            "store",
            f"{existing} is not writable by {who.name}",
            f"chown {who.name} {existing}, or set [store] path to a folder it owns",
        )
    if not path.exists():
        return ok("store", f"{path} will be created at start")
    if not who.may(path, 4 | 2):
        return fail(
            "store",
            f"{path} is not readable and writable by {who.name}",
            f"chown {who.name} {path}",
        )
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            result = ", ".join(str(r[0]) for r in con.execute("PRAGMA quick_check").fetchall())
            version = int(con.execute("PRAGMA user_version").fetchone()[0])
            backlog = int(con.execute("SELECT count(*) FROM outbox").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error as e:
        return fail(
            "store",
            f"{path}: {e}",
            "the agent moves a damaged store aside at start and says so in the log",
        )
    if result != "ok":
        return fail(
            "store",
            f"{path}: SQLite's check says {result[:200]}",
            "restart the agent: it moves the damaged file aside (kept for a post-mortem)",
        )
    detail = f"{path}: sound, schema {version}, {backlog} events waiting"
    if version > SCHEMA_VERSION:
        wrote = WRITTEN_BY.get(version, "a newer release")
        return fail(
            "store",
            f"{detail}; written by {wrote}: this release reads schema {SCHEMA_VERSION}",
            "install that release again, or move the store aside knowingly (its events are lost)",
        )
    copies = sorted(path.parent.glob(f"{path.name}.v*.bak"))
    if copies:
        size = sum(c.stat().st_size for c in copies) / 2**20
        return warn(
            "store",
            f"{detail}; the pre-upgrade copy {copies[0]} is kept ({size:.1f} MiB)",
            "once this release runs well, delete it (it is not counted in max_size)",
        )
    return ok("store", detail)


def _disk(config: SiteConfig) -> Check:
    folder = config.store.path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    cap = config.store.max_size
    used = sum(p.stat().st_size for p in _store_files(config.store.path))
    need = max(0, cap - used)
    mib = 2**20
    detail = f"{free / mib:.0f} MiB free on {folder}; store {used / mib:.1f} of {cap / mib:.0f} MiB"
    if free < need // 2:
        return fail(
            "disk",
            detail,
            "free disk space or lower [store] max_size: the disk fills long before the store's cap",
        )
    if free < need:
        return warn(
            "disk", detail, "lower [store] max_size below the free space, or free disk space"
        )
    return ok("disk", detail)


def _store_files(path: Path) -> list[Path]:
    names = (path, Path(f"{path}-wal"), Path(f"{path}-shm"), path.with_name(path.name + ".reserve"))
    return [p for p in names if p.exists()]


# ---- serial ports -------------------------------------------------------------------------


def _ports(config: SiteConfig, who: Account) -> list[Check]:
    out = []
    for bus in config.buses:
        value = getattr(bus.options, "port", None) or getattr(bus.options, "path", None)
        if not isinstance(value, str | Path):  # a serial port, or card-hid's input device
            continue
        port = Path(value)
        name = f"port {bus.id}"
        links = _by_id()
        if not port.exists():
            hint = (
                f"present now: {', '.join(str(p) for p in links[:4])}"
                if links
                else f"nothing in {BY_ID}: is the adapter plugged in?"
            )
            out.append(
                fail(
                    name,
                    f"{port} does not exist",
                    f"plug the adapter in or fix the bus's port; {hint}",
                )
            )
            continue
        if not stat.S_ISCHR(port.stat().st_mode):  # stat follows a by-id (or socat) link
            out.append(
                fail(
                    name,
                    f"{port} is not a character device",
                    "point the bus at the serial adapter's device",
                )
            )
            continue
        if not who.may(port, 4 | 2):
            group = grp.getgrgid(port.stat().st_gid).gr_name
            out.append(
                fail(
                    name,
                    f"{port} is not readable and writable by {who.name}",
                    f"add {who.name} to the {group} group (usermod -aG {group} {who.name})",
                )
            )
            continue
        stable = [p for p in links if p.resolve() == port.resolve()]
        if stable and not str(port).startswith(str(BY_ID)):
            out.append(
                warn(
                    name,
                    f"{port} opens, but its name can change at the next boot",
                    f'use port = "{stable[0]}"',
                )
            )
            continue
        out.append(ok(name, f"{port} readable and writable by {who.name}"))
    return out


def _by_id() -> list[Path]:
    return sorted(BY_ID.iterdir()) if BY_ID.is_dir() else []


# ---- the broker -----------------------------------------------------------------------------


def _broker(config: SiteConfig, timeout: float) -> list[Check]:
    addr = config.mqtt.address
    where = f"{addr.host}:{addr.port}"
    out: list[Check] = []
    began = time.monotonic()
    try:
        with socket.create_connection((addr.host, addr.port), timeout=timeout) as sock:
            if addr.tls:
                with tls_context(config.mqtt).wrap_socket(sock, server_hostname=addr.host) as tls:
                    out.append(
                        _days_left(
                            "broker certificate",
                            tls.getpeercert() or {},
                            "the broker's operator renews it",
                        )
                    )
    except ssl.SSLCertVerificationError as e:
        return [
            fail(
                "broker",
                f"{where}: its certificate is not trusted ({e.verify_message})",
                "set [mqtt] ca_file to the CA that signed the broker's certificate",
            )
        ]
    except (OSError, ssl.SSLError) as e:
        return [fail("broker", f"{where}: {e}", "check [mqtt] url, the network and the firewall")]
    outcome = _mqtt_connect(config, timeout)
    ms = 1000 * (time.monotonic() - began)
    if outcome is not None:
        return [
            fail(
                "broker",
                f"{config.mqtt.url}: {outcome}",
                "check [mqtt] username, password and certificate with the district",
            )
        ]
    return [
        ok(
            "broker",
            f"{config.mqtt.url}: connected{' over TLS' if addr.tls else ''} in {ms:.0f} ms",
        ),
        *out,
    ]


def _mqtt_connect(config: SiteConfig, timeout: float) -> str | None:
    """None when the broker accepts our credentials, else what it (or the network) said."""
    client = make_client(
        config.mqtt,
        f"{config.agent.school}.{config.agent.gateway}.doctor-{os.getpid()}",
        config.password(),
    )
    answer: list[str | None] = []
    done = threading.Event()

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        answer.append(f"the broker refused: {rc}" if rc.is_failure else None)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(config.mqtt.address.host, config.mqtt.address.port, keepalive=30)
    except (OSError, ssl.SSLError) as e:
        return str(e)
    client.loop_start()
    try:
        if not done.wait(timeout):
            return f"no CONNACK within {timeout:g} s"
        return answer[0]
    finally:
        client.disconnect()
        client.loop_stop()


def _days_left(name: str, cert: dict[str, Any], fix: str) -> Check:
    try:
        left = (ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400
    except (KeyError, ValueError) as e:
        return warn(name, f"no expiry date could be read ({e})", fix)
    return _expiry(name, left, fix)


def _expiry(name: str, left: float, fix: str) -> Check:
    if left < 0:
        return fail(name, f"expired {-left:.0f} days ago", fix)
    if left < CERT_WARN_DAYS:
        return warn(name, f"expires in {left:.0f} days", fix)
    return ok(name, f"{left:.0f} days left")


def _client_certificate(config: SiteConfig) -> list[Check]:
    cert = config.mqtt.cert_file
    if cert is None:
        return []
    from cryptography import x509  # noqa: PLC0415 - only when a client certificate is set

    name = "client certificate"
    try:
        ends = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
    except (OSError, ValueError) as e:
        return [fail(name, f"{cert}: {e}", "install this gateway's client certificate")]
    left = (ends.timestamp() - time.time()) / 86400
    return [_expiry(name, left, "renew this gateway's client certificate with the district")]


# ---- the clock, Bluetooth, the unit --------------------------------------------------------


def _clock() -> Check:
    if ClockState("auto", recheck=0).synced():
        return ok("clock", "the kernel says the clock is synchronised")
    return warn(
        "clock",
        'the clock is not synchronised: events are marked "clock": "unsynced"',
        "enable NTP (timedatectl set-ntp true) and let it reach a time server",
    )


def _bluetooth(config: SiteConfig, timeout: float) -> list[Check]:
    buses = [b for b in config.buses if b.driver == "ble"]
    if not buses:
        return []
    try:
        from drivers.ble.driver import adapter_problem  # noqa: PLC0415 - the ble extra is optional
    except ImportError as e:
        return [
            fail(
                "bluetooth",
                f"a ble bus is configured but the ble extra is missing ({e.name})",
                "install campus-agent[ble]",
            )
        ]

    async def ask() -> list[str | None]:
        out: list[str | None] = []
        for bus in buses:
            try:
                async with asyncio.timeout(timeout):
                    out.append(await adapter_problem(_adapter(bus)))
            except TimeoutError:
                out.append(f"BlueZ did not answer within {timeout:g} s")
        return out

    checks = []
    for bus, problem in zip(buses, asyncio.run(ask()), strict=True):
        if problem is None:
            checks.append(ok(f"bluetooth {bus.id}", f"adapter {_adapter(bus)} present and powered"))
        else:
            fix = "check `bluetoothctl show`, that bluetoothd runs and rfkill does not block it"
            checks.append(fail(f"bluetooth {bus.id}", problem, fix))
    return checks


def _adapter(bus: Any) -> str:
    return str(getattr(bus.options, "adapter", "hci0"))


def _watchdog(unit: Path | None) -> Check:
    files = (
        [unit]
        if unit is not None
        else [d / UNIT_NAME for d in UNIT_DIRS if (d / UNIT_NAME).exists()]
    )
    if not files:
        return warn(
            "watchdog",
            f"{UNIT_NAME} is not installed",
            "install the package (or the unit from systemd/): it restarts a hung agent",
        )
    texts = [files[0]]
    texts += sorted(d for base in UNIT_DIRS for d in (base / f"{UNIT_NAME}.d").glob("*.conf"))
    value = None
    for f in texts:  # the unit, then its drop-ins: the last WatchdogSec= wins
        for line in f.read_text(errors="replace").splitlines():
            if line.strip().startswith("WatchdogSec="):
                value = line.split("=", 1)[1].strip()
    if value in (None, "", "0", "infinity"):
        return warn(
            "watchdog",
            f"{files[0]}: no WatchdogSec",
            "keep WatchdogSec=30 from the shipped unit: systemd then restarts a hung agent",
        )
    return ok("watchdog", f"{files[0]}: WatchdogSec={value}")


# ---- output ---------------------------------------------------------------------------------


def report(checks: list[Check]) -> tuple[str, int]:
    """The checks as text, one line each (and its fix under it), and the exit code."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.result.upper():4}  {c.name:{width}}  {c.detail}")
        if c.fix and c.result != "ok":
            lines.append(f"{'':4}  {'':{width}}  fix: {c.fix}")
    return "\n".join(lines), worst(checks)


def worst(checks: list[Check]) -> int:
    return max(SEVERITY[c.result] for c in checks)


def as_json(checks: list[Check]) -> list[dict[str, str]]:
    return [asdict(c) for c in checks]
