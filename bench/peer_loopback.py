"""Nothing leaves loopback: a system's threads and sockets, from /proc and from `ss`.

`SocketWatch` samples, in a thread, the socket inodes of `/proc/<pid>/fd/*`, looks them up in
`/proc/<pid>/net/{tcp,tcp6,udp,udp6}`, keeps every endpoint it saw and counts each socket
connected to, or bound to, an address that is not loopback. `ss_lines` is a second look by
another tool (`ss -tuanp`, filtered by the PID), recorded once per phase.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


def threads(pid: int) -> int:
    """`Threads:` of /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def _addr(hexaddr: str) -> tuple[str, int]:
    host, port = hexaddr.split(":")
    raw = bytes.fromhex(host)
    # /proc/net/tcp{,6} print each 32-bit word of the address in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def sockets_of(pid: int) -> list[dict[str, Any]]:
    """The process's TCP/UDP sockets: its fds' socket inodes matched in /proc/<pid>/net/*."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    out = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[9] not in inodes:
                continue
            local, remote = _addr(f[1]), _addr(f[2])
            out.append({"proto": proto, "local": local, "remote": remote, "state": f[3]})
    return out


def _loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def beyond_loopback(socks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sockets connected to, or listening on, anything but loopback."""
    bad = []
    for s in socks:
        rhost, rport = s["remote"]
        lhost, _ = s["local"]
        connected = rport != 0
        if (connected and not _loopback(rhost)) or (not connected and not _loopback(lhost)):
            bad.append(s)
    return bad


def ss_lines(pid: int) -> list[str]:
    """`ss -tuanp` lines of the process (a second look, by another tool, at its sockets)."""
    try:
        out = subprocess.run(
            ["ss", "-tuanpH"], check=False, capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ["(ss not available)"]
    return [" ".join(line.split()) for line in out.splitlines() if f"pid={pid}," in line]


class SocketWatch:
    """Samples a system's sockets from /proc every `every` s in a thread; keeps endpoints."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.samples = 0
        self.endpoints: set[tuple[str, str, int, str]] = set()
        self.violations: list[dict[str, Any]] = []
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="socket-watch")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            pid = self.pid
            if pid is None:
                continue
            socks = sockets_of(pid)
            self.samples += 1
            for s in socks:
                host, port = s["remote"] if s["remote"][1] else s["local"]
                self.endpoints.add(
                    (s["proto"], host, port, "remote" if s["remote"][1] else "local")
                )
            for s in beyond_loopback(socks):
                self.violations.append({"t": time.time(), **s})

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5)

    def report(self) -> dict[str, Any]:
        hosts = sorted({e[1] for e in self.endpoints})
        return {
            "samples": self.samples,
            "addresses_seen": hosts,
            "endpoints": sorted(f"{p} {h}:{port} ({kind})" for p, h, port, kind in self.endpoints),
            "beyond_loopback": self.violations[:20],
            "beyond_loopback_count": len(self.violations),
        }
