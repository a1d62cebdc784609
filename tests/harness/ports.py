"""Loopback ports: one nobody listens on, and whether something listens on one now.

Never binds a port for longer than the question takes.
"""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the kernel's choice); IPv6 for '::1'."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listening(host: str, port: int) -> bool:
    """True if a TCP connection to host:port is accepted now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        return s.connect_ex((host, port)) == 0
