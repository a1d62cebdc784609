"""Host side of the firmware bridge (PROTOCOL.md) over a serial port, with asyncio.

`Host.run()` opens the port, welcomes the node, acknowledges and de-duplicates its EVENTs,
sends heartbeats and TIME_SYNC, notices a silent node, and reopens the port by itself after
the cable is pulled. `Host.action()` and `Host.fw_request()` are the requests a caller makes
(a firmware update is `update.run_update(host, …)`, built on `fw_request`; this module does
not import it). Framing and payloads come from the sans-IO `frame` and `messages` modules;
this module only moves their bytes and keeps the session state. It never builds topics or
JSON: what the node says goes to a `NodeListener`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import serial_asyncio_fast

from firmware_bridge.codes import ActionStatus, Flags, MsgType, NackReason
from firmware_bridge.errors import FrameError, LinkDownError, NodeNackError
from firmware_bridge.frame import PROTOCOL_VERSION, Decoder, DecoderStats, Frame, encode_frame
from firmware_bridge.messages import (
    ACKED_TYPES,
    Ack,
    Action,
    ActionResult,
    Data,
    Event,
    FwStatus,
    Heartbeat,
    Hello,
    Message,
    Nack,
    Point,
    TimeSync,
    Value,
    Welcome,
    decode_message,
    message_frame,
)

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = (PROTOCOL_VERSION,)
ACK_TIMEOUT = 0.5  # s before a NEEDS_ACK frame is sent again
MAX_TRANSMISSIONS = 5  # the first + 4 retries
BUSY_RETRY = 0.5
DEDUP_WINDOW = 32
RESULT_TIMEOUT = 30.0  # s for ACTION_RESULT after the ACK
FW_REPLY_TIMEOUT = 1.0  # s for FW_STATUS or NACK
FW_TRIES = 5
HELLO_REQUIRED_EVERY = 1.0
# Requests a node sends; anything else from a node is a type the host does not implement.
_FROM_NODE = frozenset(
    {
        MsgType.HELLO,
        MsgType.HEARTBEAT,
        MsgType.ACK,
        MsgType.NACK,
        MsgType.DATA,
        MsgType.EVENT,
        MsgType.CONFIG_VALUE,
        MsgType.ACTION_RESULT,
        MsgType.FW_STATUS,
    }
)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node said in its HELLO, and the version chosen."""

    uid: bytes
    model: str
    fw_version: str
    version: int


@dataclass(slots=True)
class HostStats:
    """Counters for the status (all since the host was made, across reconnects)."""

    sessions: int = 0  # times the port was opened
    hellos: int = 0
    received: int = 0  # frames that passed framing checks
    retransmissions: int = 0  # NEEDS_ACK frames the node sent again (RETRANSMIT set)
    duplicates: int = 0  # of those, already delivered: ACKed again, not delivered
    events: int = 0  # EVENTs delivered (once per seq)
    data: int = 0
    acks_sent: int = 0
    nacks_sent: int = 0
    unknown_types: int = 0
    bad_payloads: int = 0
    resent: int = 0  # our own NEEDS_ACK frames sent again for want of an ACK
    heartbeats_sent: int = 0
    offline: int = 0  # times the node was reported offline


class NodeListener(Protocol):
    """Where the host sends what the node says. Implemented by the bridge driver."""

    async def node_online(self, info: NodeInfo) -> None:
        """The node said HELLO and was welcomed."""

    async def node_offline(self, reason: str) -> None:
        """The node went silent, or the port closed."""

    async def data(self, points: tuple[Point, ...], ts: float) -> None:
        """A DATA frame's points (not acknowledged, may be lost)."""

    async def event(self, points: tuple[Point, ...], ts: float) -> None:
        """An EVENT's points, delivered once per sequence number."""


@dataclass
class _Session:
    writer: asyncio.StreamWriter
    decoder: Decoder
    welcomed: bool = False
    version: int = PROTOCOL_VERSION
    last_rx: float = 0.0
    last_tx: float = 0.0
    last_sync: float = 0.0
    last_hello_required: float = -1e9
    window: deque[int] | None = None


class Host:
    """One serial port, one node."""

    def __init__(
        self,
        port: str,
        listener: NodeListener,
        *,
        baudrate: int = 115200,
        heartbeat: float = 5.0,
        silence: float = 15.0,
        time_sync: float = 3600.0,
        reconnect_min: float = 0.2,
        reconnect_max: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.port = port
        self.listener = listener
        self.baudrate = baudrate
        self.heartbeat = heartbeat
        self.silence = silence
        self.time_sync = time_sync
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.clock = clock
        self.counters = HostStats()
        self.node: NodeInfo | None = None
        self._framing = DecoderStats()  # decoders of closed sessions, summed
        self._session: _Session | None = None
        self._seq = 0
        self._online = False
        self._send_lock = asyncio.Lock()  # one NEEDS_ACK frame in flight
        self.fw_lock = asyncio.Lock()  # held by a firmware update (update.py) for its whole run
        self._acks: dict[int, asyncio.Future[Ack | Nack]] = {}
        self._results: dict[int, asyncio.Future[ActionResult]] = {}
        self._fw_reply: asyncio.Future[FwStatus | Nack] | None = None
        self._fw_seq = -1
        self._hello_waiters: list[asyncio.Future[NodeInfo]] = []
        self._version_logged = False

    # ---- state ---------------------------------------------------------------------

    @property
    def online(self) -> bool:
        """True between a WELCOME and the node going silent or the port closing."""
        return self._online

    def stats(self) -> dict[str, Any]:
        """Framing counters (PROTOCOL.md section 1) and session counters, for the status."""
        framing = asdict(self._framing)
        if self._session is not None:
            for f in fields(DecoderStats):
                framing[f.name] += getattr(self._session.decoder.stats, f.name)
        garbage = sum(v for k, v in framing.items() if k not in ("frames", "discarded_bytes"))
        return {**framing, "garbage": garbage, **asdict(self.counters), "online": self._online}

    # ---- running -------------------------------------------------------------------

    async def run(self) -> None:
        """Open the port and serve the node until cancelled; reopen it after every loss."""
        delay = self.reconnect_min
        while True:
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=self.port, baudrate=self.baudrate
                )
            except OSError as e:  # serial.SerialException is an OSError
                log.debug("cannot open port=%s error=%s", self.port, e)
                await asyncio.sleep(delay)
                delay = min(self.reconnect_max, delay * 2)
                continue
            delay = self.reconnect_min
            self.counters.sessions += 1
            reason = f"serial port {self.port} closed"
            try:
                await self._serve(reader, writer)
            except (OSError, EOFError) as e:
                reason = f"serial port {self.port} closed ({e or type(e).__name__})"
            finally:
                self._end_session(writer)
            await self._went_offline(reason)
            await asyncio.sleep(self.reconnect_min)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        now = time.monotonic()
        session = _Session(writer, Decoder(), last_rx=now, last_tx=now, window=deque())
        self._session = session
        self._write(b"\x00")  # ends any noise the node has half-received
        tick = asyncio.create_task(self._tick(session), name=f"bridge.tick[{self.port}]")
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    raise EOFError("end of file")
                for frame in session.decoder.feed(data):
                    await self._on_frame(session, frame)
        finally:
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick

    def _end_session(self, writer: asyncio.StreamWriter) -> None:
        session = self._session
        if session is not None:
            for f in fields(DecoderStats):
                setattr(
                    self._framing,
                    f.name,
                    getattr(self._framing, f.name) + getattr(session.decoder.stats, f.name),
                )
        self._session = None
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()
        self._fail_pending(LinkDownError(f"serial port {self.port} closed"))

    def _fail_pending(self, exc: Exception) -> None:
        futures: list[asyncio.Future[Any]] = [*self._acks.values(), *self._results.values()]
        if self._fw_reply is not None:
            futures.append(self._fw_reply)
        for fut in futures:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved here: nobody may be waiting any more

    async def _went_offline(self, reason: str) -> None:
        if self._online:
            self._online = False
            self.counters.offline += 1
            log.warning("node offline: port=%s reason=%s", self.port, reason)
            await self.listener.node_offline(reason)

    async def _tick(self, session: _Session) -> None:
        """Heartbeats, TIME_SYNC every `time_sync`, and the silence watchdog."""
        while True:
            await asyncio.sleep(min(0.25, self.heartbeat / 4))
            now = time.monotonic()
            if not session.welcomed:
                continue
            if now - session.last_rx > self.silence:
                session.welcomed = False
                self._fail_pending(LinkDownError("node went silent"))
                await self._went_offline(f"no frame for {self.silence:g}s")
                continue
            if now - session.last_sync >= self.time_sync:
                self._send(TimeSync(int(self.clock() * 1000)))
                session.last_sync = now
            if now - session.last_tx >= self.heartbeat:
                self._send(Heartbeat())
                self.counters.heartbeats_sent += 1

    # ---- sending -------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        session = self._session
        if session is None:
            raise LinkDownError(f"serial port {self.port} is not open")
        session.writer.write(data)
        session.last_tx = time.monotonic()

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFFFF
        return seq

    def _send(
        self,
        message: Message,
        *,
        seq: int | None = None,
        retransmit: bool = False,
        bootstrap: bool = False,
    ) -> int:
        """Write one frame now; the seq it went out with."""
        if seq is None:
            seq = self._next_seq()
        session = self._session
        version = PROTOCOL_VERSION if bootstrap or session is None else session.version
        self._write(
            encode_frame(message_frame(message, seq, retransmit=retransmit, version=version))
        )
        return seq

    def _answer(self, message: Ack | Nack) -> None:
        if isinstance(message, Ack):
            self.counters.acks_sent += 1
        else:
            self.counters.nacks_sent += 1
        bootstrap = isinstance(message, Nack) and message.reason == NackReason.VERSION
        with contextlib.suppress(LinkDownError):
            self._send(message, bootstrap=bootstrap)

    async def _send_reliable(self, message: Message, seq: int) -> None:
        """Stop-and-wait: send until ACKed (5 transmissions, 500 ms apart); NACK raises."""
        async with self._send_lock:
            fut: asyncio.Future[Ack | Nack] = asyncio.get_running_loop().create_future()
            self._acks[seq] = fut
            try:
                for attempt in range(MAX_TRANSMISSIONS):
                    if attempt:
                        self.counters.resent += 1
                    self._send(message, seq=seq, retransmit=attempt > 0)
                    try:
                        async with asyncio.timeout(ACK_TIMEOUT):
                            answer = await asyncio.shield(fut)
                    except TimeoutError:
                        continue
                    if isinstance(answer, Ack):
                        return
                    if answer.reason == NackReason.BUSY:
                        self._acks[seq] = fut = asyncio.get_running_loop().create_future()
                        await asyncio.sleep(BUSY_RETRY)
                        continue
                    raise NodeNackError(message.TYPE.name, answer.reason)
            finally:
                self._acks.pop(seq, None)
        raise LinkDownError(f"no ACK for {message.TYPE.name} after {MAX_TRANSMISSIONS} tries")

    # ---- receiving -----------------------------------------------------------------

    async def _on_frame(self, session: _Session, frame: Frame) -> None:
        session.last_rx = time.monotonic()
        self.counters.received += 1
        answerable = frame.type not in (MsgType.ACK, MsgType.NACK)
        if frame.type == MsgType.HELLO:
            pass  # bootstrap: always written in version 1
        elif frame.version not in SUPPORTED_VERSIONS:
            if answerable:
                self._answer(Nack(frame.seq, NackReason.VERSION))
            return
        try:
            if frame.type not in _FROM_NODE:
                raise FrameError(  # noqa: TRY301 - same NACK path as the codec's errors
                    f"type {frame.type:#04x} is not sent by nodes",
                    "payload",
                    NackReason.UNSUPPORTED_TYPE,
                )
            message = decode_message(frame)
        except FrameError as e:
            unsupported = e.reason == NackReason.UNSUPPORTED_TYPE
            if unsupported:
                self.counters.unknown_types += 1
            else:
                self.counters.bad_payloads += 1
            log.debug("frame refused: port=%s type=%#04x error=%s", self.port, frame.type, e)
            if answerable:
                self._answer(Nack(frame.seq, int(e.reason or NackReason.BAD_PAYLOAD)))
            return
        if isinstance(message, Hello):
            await self._on_hello(session, frame, message)
            return
        if not session.welcomed:
            now = time.monotonic()
            if answerable and now - session.last_hello_required >= HELLO_REQUIRED_EVERY:
                session.last_hello_required = now
                self._answer(Nack(frame.seq, NackReason.HELLO_REQUIRED))
            return
        if frame.type in ACKED_TYPES:
            window = session.window
            assert window is not None  # noqa: S101 - set in _serve
            if frame.flags & Flags.RETRANSMIT:
                self.counters.retransmissions += 1
                if frame.seq in window:
                    self.counters.duplicates += 1
                    self._answer(Ack(frame.seq))
                    return
            if frame.seq in window:
                window.remove(frame.seq)
            window.append(frame.seq)
            if len(window) > DEDUP_WINDOW:
                window.popleft()
        await self._dispatch(frame, message)

    async def _dispatch(self, frame: Frame, message: Message) -> None:
        ts = self.clock()
        if isinstance(message, Event):
            self.counters.events += 1
            await self.listener.event(message.points, ts)
            self._answer(Ack(frame.seq))
        elif isinstance(message, Data):
            self.counters.data += 1
            await self.listener.data(message.points, ts)
        elif isinstance(message, ActionResult):
            self._answer(Ack(frame.seq))
            fut = self._results.get(message.action_seq)
            if fut is not None and not fut.done():
                fut.set_result(message)
        elif isinstance(message, Ack | Nack):
            ack_fut = self._acks.get(message.seq)
            if ack_fut is not None and not ack_fut.done():
                ack_fut.set_result(message)
            elif isinstance(message, Nack) and message.seq == self._fw_seq:
                self._resolve_fw(message)
            elif isinstance(message, Nack) and message.reason == NackReason.HELLO_REQUIRED:
                log.debug("node asks for HELLO: port=%s", self.port)
        elif isinstance(message, FwStatus):
            self._resolve_fw(message)
        # HEARTBEAT and CONFIG_VALUE: the frame itself is the news (last_rx is updated).

    async def _on_hello(self, session: _Session, frame: Frame, hello: Hello) -> None:
        self.counters.hellos += 1
        window = session.window
        assert window is not None  # noqa: S101 - set in _serve
        window.clear()
        usable = [v for v in SUPPORTED_VERSIONS if hello.proto_min <= v <= hello.proto_max]
        if not usable:
            if not self._version_logged:
                self._version_logged = True
                log.warning(
                    "node speaks protocol %d..%d, this host %s: port=%s model=%r",
                    hello.proto_min,
                    hello.proto_max,
                    "/".join(map(str, SUPPORTED_VERSIONS)),
                    self.port,
                    hello.model,
                )
            self._answer(Nack(frame.seq, NackReason.VERSION))
            return
        version = max(usable)
        now_ms = int(self.clock() * 1000)
        self._send(Welcome(version, now_ms), bootstrap=True)
        if self.node is not None and self._online:
            # The node restarted: whatever it had in flight is gone.
            self._fail_pending(LinkDownError("node restarted"))
        session.version = version
        session.welcomed = True
        session.last_sync = time.monotonic()
        self._send(TimeSync(now_ms))
        info = NodeInfo(hello.uid, hello.model, hello.fw_version, version)
        self.node = info
        for waiter in self._hello_waiters:
            if not waiter.done():
                waiter.set_result(info)
        self._hello_waiters.clear()
        if not self._online:
            self._online = True
            log.info(
                "node online: port=%s model=%r fw=%r uid=%s",
                self.port,
                hello.model,
                hello.fw_version,
                hello.uid.hex(),
            )
        await self.listener.node_online(info)

    # ---- requests ------------------------------------------------------------------

    def _require_online(self) -> None:
        if self._session is None or not self._session.welcomed:
            raise LinkDownError(f"node on {self.port} is not connected")

    async def action(self, action_id: int, args: tuple[Value, ...] = ()) -> ActionResult:
        """Send ACTION, wait for its ACK and then its ACTION_RESULT (up to 30 s).

        Raises:
            NodeNackError: the node refused it (unknown action, bad arguments).
            LinkDownError: no ACK, no result in time, or the link went down meanwhile.
        """
        self._require_online()
        message = Action(action_id, args)
        seq = self._next_seq()
        fut: asyncio.Future[ActionResult] = asyncio.get_running_loop().create_future()
        self._results[seq] = fut
        try:
            await self._send_reliable(message, seq)
            try:
                async with asyncio.timeout(RESULT_TIMEOUT):
                    return await fut
            except TimeoutError:
                raise LinkDownError(
                    f"no ACTION_RESULT within {RESULT_TIMEOUT:g}s (the node took the action)"
                ) from None
        finally:
            self._results.pop(seq, None)

    def _resolve_fw(self, answer: FwStatus | Nack) -> None:
        fut = self._fw_reply
        if fut is not None and not fut.done():
            fut.set_result(answer)

    async def fw_request(self, message: Message) -> FwStatus:
        """Send a FW_* request until FW_STATUS or a NACK answers it (1 s, 5 tries)."""
        for _ in range(FW_TRIES):
            self._require_online()
            fut: asyncio.Future[FwStatus | Nack] = asyncio.get_running_loop().create_future()
            self._fw_reply = fut
            self._fw_seq = self._send(message)
            try:
                async with asyncio.timeout(FW_REPLY_TIMEOUT):
                    answer = await fut
            except TimeoutError:
                continue
            finally:
                self._fw_reply = None
            if isinstance(answer, Nack):
                raise NodeNackError(message.TYPE.name, answer.reason)
            return answer
        raise LinkDownError(f"no answer to {message.TYPE.name} after {FW_TRIES} tries")

    def expect_hello(self) -> asyncio.Future[NodeInfo]:
        """A future resolved by the node's next HELLO (it reboots after FW_COMMIT)."""
        booted: asyncio.Future[NodeInfo] = asyncio.get_running_loop().create_future()
        self._hello_waiters.append(booted)
        return booted


def action_status_name(status: int) -> str:
    """'failed' for ActionStatus.FAILED, and so on; unknown codes by number."""
    try:
        return ActionStatus(status).name.lower()
    except ValueError:
        return f"status {status}"
