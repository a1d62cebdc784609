"""The one MQTT connection to the district broker (paho-mqtt 2.x, driven from asyncio).

paho's socket is driven by the event loop (add_reader/add_writer with loop_read/loop_write),
not by paho's thread: one thread, no hand-offs, about twice the throughput. The window of
in-flight QoS 1 messages is bounded here, not by paho (its own limit costs O(window) per ack).
Events are deleted from the store only on a successful PUBACK; an MQTT 5 PUBACK carrying a
failure reason code parks the event (kept, reported in status) instead.
This module never encodes events and never touches SQL: it moves the store's bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttSection
from agent.contract import OFFLINE, ONLINE, SEND_RANK, Origin, last_will, status_document
from agent.errors import ConnectFailedError, UnreachableError
from agent.mqtt_client import (
    BufferedClient,
    connect_properties,
    correlation_properties,
    make_client,
    response_of,
)
from agent.store import Store, StoredEvent

log = logging.getLogger(__name__)

RETRY_PARKED = 3600.0  # seconds between automatic retries of events the broker refused

# A command message: topic, payload, MQTT 5 response topic and correlation data (or None).
# Called on the loop's thread for every message; it must not block or keep unbounded state.
CommandHandler = Callable[[str, bytes, str | None, bytes | None], None]


@dataclass
class PublisherStats:
    """What the status reports about the connection."""

    connected: bool = False
    since: float | None = None
    connects: int = 0
    last_error: str | None = None
    published: int = 0
    acked: int = 0
    refused: int = 0
    last_refusal: str | None = None
    inflight: int = 0
    rate: float = 0.0  # PUBACKs per second, smoothed
    refusals_by_reason: dict[str, int] = field(default_factory=dict)
    status_refused: str | None = None  # the broker refused our retained status topic
    probes_answered: int = 0  # reconnect probes that found the broker listening again


# TLS alerts a broker sends when it refuses our client certificate, and what to do.
_CERT_REFUSED = (
    "UNKNOWN_CA",
    "BAD_CERTIFICATE",
    "CERTIFICATE_",
    "UNSUPPORTED_CERT",
    "ACCESS_DENIED",
)
_NO_CERT = ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE")


def _closed_before_connack(socket_errors: list[str], tls: bool) -> str:
    """Why the broker closed the connection before its CONNACK, from what paho logged."""
    for text in socket_errors:
        m = re.search(r"\[SSL: ([A-Z0-9_]+)\]", text)
        if m is None:
            continue
        alert = m.group(1)
        if any(a in alert for a in _NO_CERT):
            return (
                f"TLS: broker requires a client certificate ({alert}): set cert_file and key_file"
            )
        if any(a in alert for a in _CERT_REFUSED):
            return (
                f"TLS: broker refused our client certificate ({alert}): "
                "is cert_file signed by the CA the broker trusts, and still valid?"
            )
        return f"TLS: the broker ended the connection ({alert})"
    cause = socket_errors[0].split(": ", 1)[-1] if socket_errors else "no reason given"
    hint = "" if tls else " (is it a TLS port? use mqtts://)"
    return f"connection closed by the broker before CONNACK{hint}: {cause}"


class Publisher:
    """Sends stored events by priority, keeps a bounded window, reconnects with jitter."""

    def __init__(
        self,
        mqtt_cfg: MqttSection,
        origin: Origin,
        store: Store,
        *,
        password: str | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        on_command: CommandHandler | None = None,
    ) -> None:
        self.cfg = mqtt_cfg
        self.origin = origin
        self.store = store
        self.password = password
        self.status = status or dict
        self.on_command = on_command
        self.stats = PublisherStats()
        self.status_topic = origin.status_topic
        self.cmd_filter = origin.command_filter
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._inflight: dict[int, int] = {}
        self._window = mqtt_cfg.window
        self._slot_freed = asyncio.Event()  # set when an in-flight message is acknowledged
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._lost = asyncio.Event()
        self._idle = asyncio.Event()
        self._rate_count = 0
        self._rate_t = time.monotonic()
        self._stopping = False
        self._status_mids: set[int] = set()
        self._last_retry = time.monotonic()  # refused (parked) events were last retried

    # ---- public --------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, publish, reconnect with capped exponential backoff and jitter; forever."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        attempt = 0
        while not self._stopping:
            try:
                await self._connect()
            except ConnectFailedError as e:
                self._note_error(str(e))
                attempt += 1
                # A broker that answered and refused (TLS, credentials) gets only the backoff.
                await self._pause(self._backoff(attempt), probe=isinstance(e, UnreachableError))
                continue
            began = time.monotonic()
            try:
                await self._session()
            finally:
                self._teardown()
            # A broker that drops us right after connecting (some brokers disconnect a
            # client after refusing its publish) must not be hammered: keep backing off.
            attempt = attempt + 1 if time.monotonic() - began < 10 else 1
            if not self._stopping:
                self._note_error("connection to the broker lost")
                await asyncio.sleep(self._spread() if attempt == 1 else self._backoff(attempt))

    async def _pause(self, delay: float, *, probe: bool) -> None:
        """Wait `delay` before the next attempt, or less once the broker listens again.

        A probe is a bare TCP connect to the broker's port, once per `reconnect_probe`: one
        SYN while the broker is down, and the backoff (which may have grown to minutes) no
        longer decides how long a school waits after the broker is back.
        """
        deadline = time.monotonic() + delay
        every = self.cfg.reconnect_probe
        if probe and every > 0:
            while deadline - time.monotonic() > every:
                await asyncio.sleep(every)
                if await self._probe():
                    await asyncio.sleep(self._spread())
                    return
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    async def _probe(self) -> bool:
        addr = self.cfg.address
        try:
            async with asyncio.timeout(
                min(self.cfg.connect_timeout, max(self.cfg.reconnect_probe, 1.0))
            ):
                _, writer = await asyncio.open_connection(addr.host, addr.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        self.stats.probes_answered += 1
        return True

    async def drain(self, limit: float) -> bool:
        """Wait until nothing is in flight (or `limit` seconds); True if drained."""
        deadline = time.monotonic() + limit
        while self._inflight and time.monotonic() < deadline:  # noqa: ASYNC110 - paho has no awaitable
            await asyncio.sleep(0.01)
        return not self._inflight

    async def stop(self, limit: float = 2.0) -> None:
        """Publish the retained offline status and disconnect cleanly."""
        self._stopping = True
        client = self._client
        if client is not None and self.stats.connected:
            info = client.publish(
                self.status_topic, self._status_payload(OFFLINE), qos=1, retain=True
            )
            deadline = time.monotonic() + limit
            while not info.is_published() and time.monotonic() < deadline and self._client:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            client.disconnect()
            client.loop_write()
        self._teardown()

    def publish_status(self) -> None:
        """Publish the retained gateway status now (if connected and not refused)."""
        if self._client is not None and self.stats.connected and not self.stats.status_refused:
            info = self._client.publish(
                self.status_topic, self._status_payload(ONLINE), qos=1, retain=True
            )
            self._status_mids.add(info.mid)

    async def retry_refused(self) -> int:
        """Send events the broker refused once more (after a config change, or hourly)."""
        self.stats.status_refused = None
        self._last_retry = time.monotonic()
        return await self.store.unpark_all()

    def publish_direct(self, topic: str, payload: bytes, correlation: bytes | None = None) -> bool:
        """Publish a message that is not an event (a command reply); False if offline."""
        if self._client is None or not self.stats.connected:
            return False
        props = correlation_properties(correlation)
        info = self._client.publish(topic, payload, qos=1, properties=props)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    # ---- connection ----------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        cap: float = min(self.cfg.reconnect_max, self.cfg.reconnect_min * (2 ** min(attempt, 20)))
        # "Equal jitter": at least half the step, so a district's gateways spread out
        # after a broker restart instead of all retrying in the same second.
        return cap / 2 + random.uniform(0, cap / 2)

    def _spread(self) -> float:
        # Once the broker is (or may be) there again, each gateway waits a random part of
        # `reconnect_spread`: a district's reconnections are spread over that window
        # (bench/fleet.py measures how many arrive in any one second; docs/scaling.md).
        return random.uniform(0.0, min(self.cfg.reconnect_spread, self.cfg.reconnect_max))

    def _note_error(self, message: str) -> None:
        if message != self.stats.last_error:
            log.warning("broker: %s", message)
        self.stats.last_error = message

    def _status_payload(self, state: str) -> bytes:
        return status_document(self.origin, state, self.status() if state == ONLINE else None)

    def _make_client(self) -> mqtt.Client:
        o = self.origin
        client = make_client(
            self.cfg,
            self.cfg.client_id or f"{o.school}.{o.gateway}",
            self.password,
            will=(self.status_topic, last_will(o)),
            buffered=True,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            client = self._make_client()
        except (OSError, ssl.SSLError) as e:
            raise ConnectFailedError(f"TLS files not usable: {e}") from None
        self._client = client
        self._lost.clear()
        self._connack = loop.create_future()
        addr = self.cfg.address
        # paho swallows a socket error on read (a TLS alert, a reset) into "connection
        # lost" and only logs it: keep what it logged, to say why the broker dropped us.
        socket_errors: list[str] = []

        def on_log(c: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
            if level == mqtt.MQTT_LOG_ERR and "socket" in buf:
                socket_errors.append(buf)

        client.on_log = on_log
        try:
            # connect() blocks on DNS, TCP and the TLS handshake: keep it off the loop.
            await asyncio.to_thread(
                client.connect,
                addr.host,
                addr.port,
                keepalive=int(self.cfg.keepalive),
                clean_start=True if self.cfg.protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=connect_properties(self.cfg),
            )
        except ssl.SSLCertVerificationError as e:
            self._teardown()
            raise ConnectFailedError(
                f"TLS: broker certificate not trusted: {e.verify_message}"
            ) from None
        except ssl.SSLError as e:
            self._teardown()
            raise ConnectFailedError(f"TLS handshake with {addr.host}:{addr.port}: {e}") from None
        except OSError as e:
            self._teardown()
            raise UnreachableError(f"cannot reach {addr.host}:{addr.port}: {e}") from None
        sock = client.socket()
        if sock is None:
            self._teardown()
            raise ConnectFailedError("connection closed during connect")
        loop.add_reader(sock, self._do_read)
        if client.want_write():
            loop.add_writer(sock, self._do_write)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait(
                (self._connack, lost),
                timeout=self.cfg.connect_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            lost.cancel()
            client.on_log = None
        if not self._connack.done():
            closed = self._lost.is_set()
            self._teardown()
            if closed:
                raise ConnectFailedError(_closed_before_connack(socket_errors, addr.tls))
            raise ConnectFailedError("no CONNACK from the broker in time")
        rc = self._connack.result()
        if rc.is_failure:
            self._teardown()
            raise ConnectFailedError(f"broker refused the connection: {rc}")

    async def _session(self) -> None:
        client = self._client
        assert client is not None  # noqa: S101 - set by _connect
        self.stats.connected = True
        self.stats.since = time.time()
        self.stats.connects += 1
        self.stats.last_error = None
        log.info("broker connected: url=%s", self.cfg.url)
        client.subscribe(self.cmd_filter, qos=1)
        self.publish_status()
        # Acks of the previous connection must be deleted before we re-read the backlog.
        with contextlib.suppress(Exception):
            await self.store.commit_now()
        sender = asyncio.create_task(self._send_loop(client), name="publisher.send")
        misc = asyncio.create_task(self._misc_loop(client), name="publisher.misc")
        try:
            await self._lost.wait()
        finally:
            sender.cancel()
            misc.cancel()
            for t in (sender, misc):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            self.stats.connected = False
            log.info("broker disconnected")

    async def _send_loop(self, client: mqtt.Client) -> None:
        after: dict[int, int] = {}
        buffer: deque[StoredEvent] = deque()
        store = self.store
        store.rescan()  # a new session starts its cursors from nothing
        epoch = store.evictions
        window = self.cfg.window
        while True:
            if (
                not buffer
                or (store.new_data.is_set() and store.min_new_rank < SEND_RANK[buffer[0].priority])
                or store.evictions != epoch  # fetched rows may have been evicted since
            ):
                if buffer:
                    buffer.clear()  # cursors move only when sent, so nothing is skipped
                    store.rescan()
                epoch = store.evictions
                rows = await store.fetch(after, max(window, 1000))
                if not rows:
                    await store.new_data.wait()
                    continue
                buffer.extend(rows)
            ev = buffer.popleft()
            while len(self._inflight) >= self._window:
                # A plain counter and an event: asyncio.Semaphore scans its waiters on
                # every acquire, a cost per message at ten thousand messages a second.
                self._slot_freed.clear()
                await self._slot_freed.wait()
            info = client.publish(ev.topic, ev.payload, qos=1, retain=ev.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.warning("publish not queued: seq=%d rc=%s", ev.seq, info.rc)
                await self._lost.wait()
                return
            self._inflight[info.mid] = ev.seq
            self.stats.inflight = len(self._inflight)
            self.stats.published += 1
            after[ev.priority] = ev.seq

    async def _misc_loop(self, client: mqtt.Client) -> None:
        while True:
            await asyncio.sleep(1.0)
            client.loop_misc()
            # Hourly across connections: a broker that drops the client after a refusal
            # (mosquitto does) would otherwise restart the hour at every reconnection.
            if self.store.stats.parked and time.monotonic() - self._last_retry >= RETRY_PARKED:
                await self.retry_refused()
            now = time.monotonic()
            dt = now - self._rate_t
            if dt >= 5.0:
                self.stats.rate = round(self._rate_count / dt, 1)
                self._rate_count = 0
                self._rate_t = now

    def _teardown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            sock = client.socket()
            if sock is not None and self._loop is not None:
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
            with contextlib.suppress(Exception):
                client._sock_close()
        # Whatever was in flight on this connection is resent from the store next time.
        self._inflight.clear()
        self._status_mids.clear()
        self.stats.inflight = 0
        self.stats.connected = False
        self._lost.set()

    # ---- paho callbacks (all on the event loop's thread, except during connect) ------

    def _call_in_loop(self, fn: Callable[..., object], *args: object) -> None:
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        pass  # registered after connect() returns, on the loop's thread

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None:
            self._call_in_loop(self._loop.remove_reader, sock)
            self._call_in_loop(self._loop.remove_writer, sock)
        self._call_in_loop(self._lost.set)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and threading.get_ident() == self._loop_thread:
            self._loop.add_writer(sock, self._do_write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and threading.get_ident() == self._loop_thread:
            self._loop.remove_writer(sock)

    def _do_read(self) -> None:
        client = self._client
        if not isinstance(client, BufferedClient):
            return
        # One recv per wake-up (BufferedClient): then parse until nothing read is left,
        # since bytes in the buffer (or decrypted in TLS) would wake select() no more.
        client.arm_read()
        client.loop_read()
        while self._client is client:
            sock = client.socket()
            if sock is None:
                break  # the connection was lost while parsing
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                client.arm_read()  # TLS holds decrypted bytes that select() does not see
            elif not client.buffered():
                break
            client.loop_read()

    def _do_write(self) -> None:
        if self._client is not None:
            self._client.loop_write()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        rc: ReasonCode,
        properties: Properties | None,
    ) -> None:
        fut = self._connack
        if fut is not None and not fut.done():
            self._call_in_loop(fut.set_result, rc)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        rc: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._call_in_loop(self._lost.set)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        rc: ReasonCode,
        properties: Properties | None,
    ) -> None:
        seq = self._inflight.pop(mid, None)
        self.stats.inflight = len(self._inflight)
        if seq is None:
            if mid in self._status_mids:
                self._status_mids.discard(mid)
                if rc.is_failure and not self.stats.status_refused:
                    self.stats.status_refused = str(rc)
                    log.warning("broker refused the status topic %s: %s", self.status_topic, rc)
            return  # a command reply
        self._slot_freed.set()
        if rc.is_failure:
            reason = str(rc)
            self.stats.refused += 1
            self.stats.last_refusal = f"seq {seq}: {reason}"
            self.stats.refusals_by_reason[reason] = self.stats.refusals_by_reason.get(reason, 0) + 1
            log.warning("broker refused event: seq=%d reason=%r (kept in store)", seq, reason)
            self.store.park(seq, reason)
            return
        self.stats.acked += 1
        self._rate_count += 1
        self.store.ack((seq,))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.on_command is not None:  # the command gate: synchronous, bounded
            response_topic, correlation = response_of(msg)
            self.on_command(msg.topic, bytes(msg.payload), response_topic, correlation)
