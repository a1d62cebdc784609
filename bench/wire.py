"""When the agent's PUBLISH and the broker's PUBACK crossed the loopback: a packet capture.

The agent does not report when it receives a PUBACK, so sample -> PUBACK is observed on the
wire: an AF_PACKET socket on `lo` (Linux, needs root or CAP_NET_RAW) sees every TCP segment
to and from the broker's port, each with the kernel's receive timestamp (SO_TIMESTAMPNS,
the same wall clock the agent stamps `ts` with). Each direction of each connection is
reassembled by TCP sequence number and cut into MQTT packets; the connection whose CONNECT
carries the agent's client id is followed: its QoS 1 PUBLISHes on event topics are paired
with the broker's PUBACKs by packet id. A pair gives, for one event:

* `publish`: when the agent's PUBLISH was on the wire (sample -> publish = the agent's own
  latency: sampling, group commit, fetch, send);
* `puback`: when the broker's PUBACK was on the wire, i.e. when the agent could read it
  (sample -> PUBACK). The agent's reading it is later by its own scheduling only.

Used by the latency benchmark at modest rates (thousands of packets per second); a
capture thread in the bench process, not in the agent.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from bench.subscriber import packets

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
PACKET_OUTGOING = 4  # on lo every frame is seen twice: as sent (4) and as received (0)


@dataclass
class Exchange:
    """One event's PUBLISH and its PUBACK, as seen on the wire (wall-clock seconds)."""

    publish: float
    puback: float | None
    topic: str
    payload: bytes


@dataclass
class _Flow:
    """One direction of one TCP connection, reassembled."""

    next_seq: int | None = None
    buf: bytearray = field(default_factory=bytearray)
    pos: int = 0
    broken: bool = False


def _bpf_tcp_port(port: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF for `ip and tcp and (src port P or dst port P)` on Ethernet frames."""
    return [
        (0x28, 0, 0, 12),  # ldh [12]: ethertype
        (0x15, 0, 10, 0x0800),  # IPv4, else drop
        (0x30, 0, 0, 23),  # ldb [23]: IP protocol
        (0x15, 0, 8, 6),  # TCP, else drop
        (0x28, 0, 0, 20),  # ldh [20]: flags + fragment offset
        (0x45, 6, 0, 0x1FFF),  # a later fragment: drop
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf): IP header length
        (0x48, 0, 0, 14),  # ldh [x+14]: source port
        (0x15, 2, 0, port),  # ours: accept
        (0x48, 0, 0, 16),  # ldh [x+16]: destination port
        (0x15, 0, 1, port),  # ours: accept, else drop
        (0x06, 0, 0, 0x40000),  # accept (up to 256 KiB of the frame)
        (0x06, 0, 0, 0),  # drop
    ]


def attach_port_filter(sock: socket.socket, port: int) -> ctypes.Array[ctypes.c_char] | None:
    """Attach the BPF filter (SO_ATTACH_FILTER); the buffer must live as long as `sock`."""
    prog = _bpf_tcp_port(port)
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        return None  # unfiltered: slower, still correct (ports are checked again)
    return buf


def _varint(buf: bytes | memoryview, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


class Capture:
    """Capture the MQTT traffic of `client_id` with the broker on 127.0.0.1:`port`."""

    def __init__(self, port: int, client_id: str, event_prefix: str) -> None:
        self.port = port
        self.client_id = client_id
        self.event_prefix = event_prefix.rstrip("/") + "/"
        self.exchanges: list[Exchange] = []
        self.connects: list[tuple[float, int]] = []  # (time of CONNECT, client port)
        self.connacks: list[float] = []
        self.broken_flows = 0
        self.frames = 0
        self._flows: dict[tuple[int, int], _Flow] = {}
        self._agent_ports: set[int] = set()
        self._v5: dict[int, bool] = {}
        self._pending: dict[tuple[int, int], Exchange] = {}
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._filter: ctypes.Array[ctypes.c_char] | None = None
        self.error: str | None = None

    @staticmethod
    def available() -> str | None:
        """None if a capture can be opened here, else why not."""
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except (OSError, AttributeError) as e:
            return f"no packet capture ({e}); run as root or with CAP_NET_RAW"
        s.close()
        return None

    def start(self) -> None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        # The kernel drops everything but our port's TCP before it reaches Python: other
        # traffic on lo (other benchmarks) costs this thread nothing.
        self._filter = attach_port_filter(s, self.port)
        s.bind(("lo", 0))
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:  # above net.core.rmem_max: root may force it
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        s.settimeout(0.1)
        self._sock = s
        self._thread = threading.Thread(target=self._run, name="wire-capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def first_puback(self, after: float = 0.0) -> float | None:
        """When the first PUBACK of an event published at or after `after` was on the wire."""
        acks = [e.puback for e in list(self.exchanges) if e.puback and e.publish >= after]
        return min(acks) if acks else None

    # ---- the capture thread ------------------------------------------------------------

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None  # noqa: S101 - set by start()
        try:
            while not self._stop.is_set():
                try:
                    data, anc, _flags, addr = sock.recvmsg(1 << 17, 64)
                except TimeoutError:
                    continue
                except OSError as e:
                    if not self._stop.is_set():
                        self.error = str(e)
                    return
                if addr[2] != PACKET_OUTGOING:
                    continue
                stamp = None
                for level, kind, cdata in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", cdata[:16])
                        stamp = sec + nsec / 1e9
                if stamp is not None:
                    self._frame(data, stamp)
        except Exception as e:  # reported by the benchmark, not raised in a thread
            self.error = f"{type(e).__name__}: {e}"

    def _frame(self, data: bytes, t: float) -> None:
        # Ethernet (14 bytes of zeros on lo), IPv4, TCP.
        if len(data) < 14 + 20 + 20 or data[12:14] != b"\x08\x00":
            return
        ip = 14
        ihl = (data[ip] & 0x0F) * 4
        if data[ip + 9] != 6:
            return
        total = struct.unpack_from("!H", data, ip + 2)[0]
        tcp = ip + ihl
        sport, dport, seq = struct.unpack_from("!HHI", data, tcp)
        if self.port not in (sport, dport):
            return
        self.frames += 1
        doff = (data[tcp + 12] >> 4) * 4
        flags = data[tcp + 13]
        payload = data[tcp + doff : ip + total]
        if flags & 0x02:  # SYN: a new connection (a port may be reused); its stream follows
            self._flows[(sport, dport)] = _Flow(next_seq=(seq + 1) & 0xFFFFFFFF)
            if dport == self.port:
                self._agent_ports.discard(sport)
            return
        flow = self._flows.get((sport, dport))
        if flow is None:
            return  # a connection older than the capture
        if not payload or flow.broken or flow.next_seq is None:
            return
        delta = (seq - flow.next_seq) & 0xFFFFFFFF
        if delta == 0:
            pass
        elif delta > 0x80000000:  # a retransmission: keep the new part only
            skip = (flow.next_seq - seq) & 0xFFFFFFFF
            if skip >= len(payload):
                return
            payload = payload[skip:]
        else:  # a gap: the capture missed a segment; this stream cannot be parsed any more
            flow.broken = True
            self.broken_flows += 1
            return
        flow.next_seq = (flow.next_seq + len(payload)) & 0xFFFFFFFF
        if dport == self.port:
            self._to_broker(flow, sport, payload, t)
        elif dport in self._agent_ports:
            self._from_broker(flow, dport, payload, t)

    def _to_broker(self, flow: _Flow, client: int, payload: bytes, t: float) -> None:
        flow.buf += payload
        for first, b0, b1, nxt in packets(flow.buf, flow.pos):
            body = memoryview(flow.buf)[b0:b1]
            try:
                ptype = first >> 4
                if ptype == 1:
                    self._connect(body, client, t)
                elif ptype == 3 and client in self._agent_ports and first & 0x06:
                    self._publish(body, client, t)
            finally:
                body.release()
            flow.pos = nxt
        self._compact(flow)

    def _from_broker(self, flow: _Flow, client: int, payload: bytes, t: float) -> None:
        flow.buf += payload
        for first, b0, _b1, nxt in packets(flow.buf, flow.pos):
            ptype = first >> 4
            if ptype == 4:  # PUBACK
                (pid,) = struct.unpack_from("!H", flow.buf, b0)
                ex = self._pending.pop((client, pid), None)
                if ex is not None:
                    ex.puback = t
            elif ptype == 2:
                self.connacks.append(t)
            flow.pos = nxt
        self._compact(flow)

    @staticmethod
    def _compact(flow: _Flow) -> None:
        if flow.pos > (1 << 16):
            del flow.buf[: flow.pos]
            flow.pos = 0

    def _connect(self, body: memoryview, client: int, t: float) -> None:
        (nlen,) = struct.unpack_from("!H", body, 0)
        i = 2 + nlen
        level = body[i]
        i += 1 + 1 + 2  # level, flags, keepalive
        if level == 5:
            plen, i = _varint(body, i)
            i += plen
        (clen,) = struct.unpack_from("!H", body, i)
        cid = bytes(body[i + 2 : i + 2 + clen]).decode(errors="replace")
        if cid == self.client_id:
            self._agent_ports.add(client)
            self._v5[client] = level == 5
            self.connects.append((t, client))

    def _publish(self, body: memoryview, client: int, t: float) -> None:
        (tlen,) = struct.unpack_from("!H", body, 0)
        topic = bytes(body[2 : 2 + tlen]).decode(errors="replace")
        i = 2 + tlen
        (pid,) = struct.unpack_from("!H", body, i)
        i += 2
        if self._v5.get(client):
            plen, i = _varint(body, i)
            i += plen
        if not topic.startswith(self.event_prefix) or topic.count("/", len(self.event_prefix)) != 2:
            return  # not an event (kind/category/device): the gateway's status, a reply
        ex = Exchange(publish=t, puback=None, topic=topic, payload=bytes(body[i:]))
        self.exchanges.append(ex)
        self._pending[(client, pid)] = ex


def describe(capture: Capture) -> dict[str, Any]:
    """Counters of a finished capture, for the results file."""
    acked = sum(1 for e in capture.exchanges if e.puback is not None)
    return {
        "frames": capture.frames,
        "publishes": len(capture.exchanges),
        "pubacks_paired": acked,
        "broken_flows": capture.broken_flows,
        "error": capture.error,
    }
