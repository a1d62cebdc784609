"""Loopback ports: one nobody listens on, and whether something listens on one now.

Never binds a port for longer than the question takes.
"""

from __future__ import annotations

import os
import random
import socket

HOST = "127.0.0.1"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# Below Linux's ephemeral range (32768-60999 by default): a port handed out by bind(0)
# can be taken as the source port of any outgoing connection (an agent's, a client's) before
# the server that asked for it listens; these ports never are. Each xdist worker draws from
# its own stripe (PYTEST_XDIST_WORKER gw0, gw1, ...), so two workers never pick the same one.
_LOW, _HIGH = 20000, 32000
_STRIPES = 8


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now, below the ephemeral range; IPv6 for '::1'."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    stripe = int(worker) % _STRIPES if worker.isdigit() else 0
    width = (_HIGH - _LOW) // _STRIPES
    low = _LOW + stripe * width
    for _ in range(200):
        port = random.randrange(low, low + width)
        with socket.socket(_family(host), socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue  # in use (or in TIME_WAIT): draw another
            return port
    raise RuntimeError(f"no free port in {low}-{low + width} on {host} after 200 draws")


def listening(host: str, port: int) -> bool:
    """True if a TCP connection to host:port is accepted now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        return s.connect_ex((host, port)) == 0
