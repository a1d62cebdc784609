"""The paho client for the site's broker, built one way for the publisher and the CLI.

Protocol (MQTT 5 or 3.1.1, never a silent fallback), TLS with the server verified against the
site's CA (or the system's) and an optional client certificate, credentials, and paho's own
in-flight limit off. It never connects: the caller decides how (the publisher drives the
socket from asyncio; the CLI runs paho's loop). The password is passed in, never logged.
"""

from __future__ import annotations

import ssl

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


def make_client(
    cfg: MqttSection,
    client_id: str,
    password: str | None,
    *,
    will: tuple[str, bytes] | None = None,
) -> mqtt.Client:
    """A client with the site's protocol, TLS and credentials (and a retained will)."""
    v5 = cfg.protocol == "5"
    client = mqtt.Client(
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
