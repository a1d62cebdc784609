"""The paho client for the site's broker, built one way for the publisher and the CLI.

Protocol (MQTT 5 or 3.1.1, never a silent fallback), TLS with the server verified against the
site's CA (or the system's) and an optional client certificate, credentials, and paho's own
in-flight limit off. It never connects: the caller decides how (the publisher drives the
socket from asyncio; the CLI runs paho's loop). The password is passed in, never logged.
"""

from __future__ import annotations

import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import MqttSection


def tls_context(cfg: MqttSection) -> ssl.SSLContext:
    """Verify the broker against ca_file (or the system's CAs); present the client cert."""
    ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    return ctx


READ_SIZE = 65536  # one recv per wake-up reads every PUBACK that has arrived


class BufferedClient(mqtt.Client):
    """paho reads a packet's type, length and body with separate recv calls (three
    syscalls per PUBACK). Here one recv per wake-up fills a buffer the packets are parsed
    from. The caller arms one socket read per wake-up (`arm_read`) and calls loop_read
    until `buffered()` is empty (see agent.publisher._do_read): bytes held here are
    invisible to select(), so a wake-up must never end with some left. Only for a socket
    driven that way; paho's own loop (the CLI) uses a plain client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._reads_left = 0

    def arm_read(self) -> None:
        """The socket is readable (or TLS holds decrypted bytes): allow one recv."""
        self._reads_left = 1

    def buffered(self) -> int:
        """Bytes read from the socket and not yet parsed."""
        return len(self._rbuf) - self._rpos

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            if self._reads_left <= 0:
                raise BlockingIOError  # read once this wake-up: wait for the next
            self._reads_left -= 1
            data = super()._sock_recv(READ_SIZE)  # b"" (closed) is returned as it is
            if len(data) <= bufsize:
                return data
            self._rbuf, self._rpos = data, 0
        end = self._rpos + bufsize
        chunk = self._rbuf[self._rpos : end]
        self._rpos = min(end, len(self._rbuf))
        if self._rpos >= len(self._rbuf):
            self._rbuf, self._rpos = b"", 0
        return chunk


def make_client(
    cfg: MqttSection,
    client_id: str,
    password: str | None,
    *,
    will: tuple[str, bytes] | None = None,
    buffered: bool = False,
) -> mqtt.Client:
    """A client with the site's protocol, TLS and credentials (and a retained will);
    `buffered`: a BufferedClient (one recv per wake-up; the caller drives its reads)."""
    v5 = cfg.protocol == "5"
    client = (BufferedClient if buffered else mqtt.Client)(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else True,
    )
    client.connect_timeout = cfg.connect_timeout
    # paho's own in-flight limit rescans its queue on every PUBACK (O(window)) and defaults
    # to 20: off. The publisher bounds its window itself.
    client.max_inflight_messages_set(0)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, password)
    if cfg.address.tls:
        client.tls_set_context(tls_context(cfg))
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    return client


def connect_properties(cfg: MqttSection) -> Properties | None:
    """MQTT 5 CONNECT properties: the largest packet the broker may send us."""
    if cfg.protocol != "5":
        return None
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.MaximumPacketSize = cfg.max_packet_size
    return props


def correlation_properties(correlation: bytes | None) -> Properties | None:
    """MQTT 5 PUBLISH properties carrying a reply's correlation data (None: no properties)."""
    if not correlation:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = correlation
    return props


def response_of(msg: mqtt.MQTTMessage) -> tuple[str | None, bytes | None]:
    """An MQTT 5 request's response topic and correlation data (None, None otherwise)."""
    props = getattr(msg, "properties", None)
    if props is None:
        return None, None
    topic = getattr(props, "ResponseTopic", None)
    corr = getattr(props, "CorrelationData", None)
    return (str(topic) if topic else None), (bytes(corr) if corr else None)
