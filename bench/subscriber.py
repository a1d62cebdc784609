"""A fast MQTT subscriber in a process of its own: what reached it, when, and how often.

`python -m bench.subscriber --port P --base campus/v1/pt-023/gw-bench --out DIR` connects to
127.0.0.1:P (retrying until the broker listens, so it can be started before the broker),
subscribes at QoS 0 to the agent's events (`BASE/+/+/+`) and to any `--also` filter, and
writes `DIR/ready` with the time of the SUBACK. Until SIGTERM (or the broker closing the
connection) it records, for every event of BASE: its `seq`, its kind, the receipt time and
receipt time minus the event's `ts`; ids seen twice are duplicates. Messages of other
topics (the ceiling's) are only counted. `DIR/progress.json` is rewritten every 0.25 s;
at the end `DIR/result.json` and the arrays `DIR/{seq,recv,lat,kind}.bin` (array module).

Why not paho: paho reads a packet with several recv() calls and one select() per packet,
and tops out near the rate we measure; a subscriber that lags would add its own queue to
the delays it reports. This one reads up to 1 MiB per recv() and parses MQTT 3.1.1 itself
(CONNECT, SUBSCRIBE, and PUBLISH at QoS 0: nothing to acknowledge), so it keeps up with
the broker at a small share of a core. It imports nothing of the agent.

Receipt time is `time.time()` after the recv() that completed the message (the wall clock
the agent stamps `ts` with, on the same machine). The agent writes `ts` in milliseconds,
truncated: a latency here is up to 1 ms above the true one.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from tests.harness.process import ROOT, PeerFailedError, read_json, stop_process
from tests.harness.waiting import wait_for, wait_quiet

KINDS = ("alarm", "access", "audit", "state", "telemetry")
KIND_CODE = {k: i for i, k in enumerate(KINDS)}
OTHER_KIND = len(KINDS)
ARRAYS = {"seq": "q", "recv": "d", "lat": "d", "kind": "b"}


# ---- MQTT 3.1.1 packets (the few a QoS 0 subscriber needs) ------------------------------


def varint(n: int) -> bytes:
    """MQTT's remaining-length encoding."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id: str, keepalive: int = 0) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session; keepalive 0 = the broker never times us out."""
    body = _str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive) + _str(client_id)
    return b"\x10" + varint(len(body)) + body


def subscribe_packet(packet_id: int, filters: list[str], qos: int = 0) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_str(f) + bytes([qos]) for f in filters)
    return b"\x82" + varint(len(body)) + body


def packets(buf: bytes | bytearray, pos: int = 0) -> Iterator[tuple[int, int, int, int]]:
    """(first byte, body start, body end, next pos) of each complete packet from `pos`."""
    n = len(buf)
    while pos + 2 <= n:
        length, shift, i = 0, 0, pos + 1
        while True:
            if i >= n:
                return
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ValueError("malformed MQTT remaining length")
        if i + length > n:
            return
        yield buf[pos], i, i + length, i + length
        pos = i + length


# ---- the event stamp -------------------------------------------------------------------


class Stamps:
    """'2026-11-23T13:26:34.123Z' -> epoch seconds, with the whole seconds cached."""

    def __init__(self) -> None:
        self._second = ""
        self._epoch = 0.0

    def epoch(self, ts: str) -> float:
        head = ts[:19]
        if head != self._second:
            self._second = head
            self._epoch = float(calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")))
        frac = ts[20:-1] if len(ts) > 20 else ""
        return self._epoch + (int(frac) / 10 ** len(frac) if frac else 0.0)


# ---- the subscriber ----------------------------------------------------------------------


class Recorder:
    """What the subscriber keeps about each message."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/") + "/"
        self.arrays = {name: array(code) for name, code in ARRAYS.items()}
        self.ids: set[str] = set()
        self.duplicates = 0
        self.duplicate_seqs: list[int] = []
        self.retained = 0
        self.other = 0
        self.other_first: float | None = None
        self.other_last: float | None = None
        self.first: float | None = None
        self.last: float | None = None
        self.bad = 0
        self.stamps = Stamps()

    @property
    def count(self) -> int:
        return len(self.arrays["seq"])

    def publish(self, flags: int, body: memoryview, now: float) -> None:
        (tlen,) = struct.unpack_from("!H", body, 0)
        topic = bytes(body[2 : 2 + tlen]).decode()
        start = 2 + tlen + (2 if flags & 0x06 else 0)  # a packet id only above QoS 0
        if not topic.startswith(self.base):
            self.other += 1
            if self.other_first is None:
                self.other_first = now
            self.other_last = now
            return
        if flags & 0x01:
            self.retained += 1  # an old retained state sent on subscribe, not a delivery
            return
        try:
            doc = orjson.loads(body[start:])
            eid = doc["id"]
            seq = int(doc["seq"])
            lat = now - self.stamps.epoch(doc["ts"])
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            return
        if eid in self.ids:
            self.duplicates += 1
            if len(self.duplicate_seqs) < 1000:
                self.duplicate_seqs.append(seq)
        else:
            self.ids.add(eid)
        a = self.arrays
        a["seq"].append(seq)
        a["recv"].append(now)
        a["lat"].append(lat)
        a["kind"].append(KIND_CODE.get(doc.get("kind", ""), OTHER_KIND))
        if self.first is None:
            self.first = now
        self.last = now

    def progress(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "other": self.other,
            "duplicates": self.duplicates,
            "first": self.first,
            "last": self.last,
            "other_last": self.other_last,
        }


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=2)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
            continue
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        return sock


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stopping = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    rec = Recorder(args.base)
    sock = _connect(args.host, args.port, time.monotonic() + args.connect_timeout)
    sock.settimeout(None)
    filters = [f"{rec.base}+/+/+", *args.also]
    sock.sendall(connect_packet(args.client_id))
    buf = bytearray()
    pos = 0
    ready: float | None = None
    closed_by = "sigterm"
    next_progress = 0.0
    while not stopping:
        try:
            readable, _, _ = select.select([sock], [], [], 0.1)
        except InterruptedError:
            continue
        if readable:
            try:
                data = sock.recv(1 << 20)
            except ConnectionError:
                data = b""
            if not data:
                closed_by = "broker"
                break
            now = time.time()
            buf += data
            view = memoryview(buf)
            try:
                for first, b0, b1, nxt in packets(buf, pos):
                    ptype = first >> 4
                    if ptype == 3:
                        rec.publish(first & 0x0F, view[b0:b1], now)
                    elif ptype == 2:  # CONNACK
                        if view[b0 + 1] != 0:
                            print(f"subscriber: CONNACK refused ({view[b0 + 1]})", file=sys.stderr)
                            return 1
                        sock.sendall(subscribe_packet(1, filters))
                    elif ptype == 9:  # SUBACK
                        ready = time.time()
                        _write_json(out / "ready", {"time": ready, "pid": os.getpid()})
                    pos = nxt
            finally:
                view.release()
            if pos > (1 << 20):
                del buf[:pos]
                pos = 0
        now = time.monotonic()
        if now >= next_progress:
            next_progress = now + 0.25
            _write_json(out / "progress.json", rec.progress())
    with contextlib.suppress(OSError):
        sock.sendall(b"\xe0\x00")  # DISCONNECT
        sock.close()
    for name, arr in rec.arrays.items():
        (out / f"{name}.bin").write_bytes(arr.tobytes())
    _write_json(out / "progress.json", rec.progress())
    _write_json(
        out / "result.json",
        {
            **rec.progress(),
            "ready": ready,
            "unique": len(rec.ids),
            "retained_skipped": rec.retained,
            "unparsed": rec.bad,
            "duplicate_seqs": rec.duplicate_seqs,
            "other_first": rec.other_first,
            "closed_by": closed_by,
            "filters": filters,
        },
    )
    return 0


def load_arrays(folder: Path) -> dict[str, array[Any]]:
    """The per-message arrays a finished subscriber wrote (seq, recv, lat, kind)."""
    arrays: dict[str, array[Any]] = {}
    for name, code in ARRAYS.items():
        arr = array(code)
        arr.frombytes((folder / f"{name}.bin").read_bytes())
        arrays[name] = arr
    return arrays


class SubscriberProcess:
    """`python -m bench.subscriber` as a child process; stopped by its PID (SIGTERM)."""

    def __init__(self, port: int, base: str, folder: Path, *, also: tuple[str, ...] = ()) -> None:
        self.port = port
        self.base = base
        self.folder = folder
        self.also = also
        self.proc: subprocess.Popen[bytes] | None = None
        self.result: dict[str, Any] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start it; it connects as soon as the broker listens (see `wait_ready`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "bench.subscriber", "--port", str(self.port)]
        cmd += ["--base", self.base, "--out", str(self.folder)]
        cmd += ["--client-id", f"bench-sub-{self.folder.name}"]
        for f in self.also:
            cmd += ["--also", f]
        with (self.folder / "subscriber.log").open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def _json(self, name: str) -> dict[str, Any] | None:
        return read_json(self.folder / name)

    def wait_ready(self, timeout: float = 30.0) -> float:
        """The time of its SUBACK (wall clock), once it has one."""

        def ready() -> dict[str, Any] | None:
            doc = self._json("ready")
            if doc is None and (self.proc is None or self.proc.poll() is not None):
                raise PeerFailedError(f"subscriber exited: {self.log_tail()}")
            return doc

        return float(wait_for(ready, timeout, "the subscriber's SUBACK", every=0.005)["time"])

    def progress(self) -> dict[str, Any]:
        return self._json("progress.json") or {"count": 0, "other": 0, "last": None}

    def wait_quiet(self, *, count: int = 0, quiet: float = 0.5, timeout: float = 60.0) -> None:
        """Wait until it has `count` events of the agent and nothing new came for `quiet` s."""

        def seen() -> tuple[Any, Any]:
            doc = self.progress()
            return doc.get("count"), doc.get("other")

        wait_quiet(seen, quiet, timeout, until=lambda s: int(s[0] or 0) >= count)

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return (self.folder / "subscriber.log").read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM; its result (counts, duplicates, times) once it has written it."""
        proc, self.proc = self.proc, None
        stop_process(proc, timeout)
        self.result = self._json("result.json")
        if self.result is None:
            raise RuntimeError(f"subscriber wrote no result: {self.log_tail()}")
        return self.result

    def arrays(self) -> dict[str, array[Any]]:
        return load_arrays(self.folder)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.subscriber", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--base", required=True, help="the agent's topic base: prefix/school/gateway")
    ap.add_argument("--also", action="append", default=[], help="another filter, only counted")
    ap.add_argument("--out", type=Path, required=True, help="folder for ready/progress/results")
    ap.add_argument("--client-id", default=f"bench-sub-{os.getpid()}")
    ap.add_argument("--connect-timeout", type=float, default=60.0, help="keep trying this long; 60")
    return ap.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run(parse_args(None)))
