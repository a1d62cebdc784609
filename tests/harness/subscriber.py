"""A real MQTT client that records what it receives: the district platform in a test or bench.

`Subscriber` is paho with its own network thread (`loop_start`); the thread only appends to
lists under a lock (or calls a subclass's `handle`), the test or benchmark reads them. It
keeps a persistent session by default (MQTT 3.1.1 clean_session false, or MQTT 5 with a
one-hour session expiry), so messages published while it reconnects after a broker restart
are queued by the broker and still arrive. It never publishes unless asked (`publish`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.harness.waiting import wait_for

EVENT_KINDS = ("telemetry", "alarm", "access", "state", "audit")


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.monotonic() at receipt
    properties: Any = None

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """Subscribes at QoS 1 to `topic` on host:port and records every message (`messages`).

    v5: MQTT 5 (else 3.1.1). persistent: keep the session across reconnections.
    tls: {"ca", "cert", "key"} file paths (tls.Pki.client); auth: (username, password).
    reconnect: paho's (min, max) reconnect delay in seconds.
    resubscribe: subscribe at every connection; False: only when the broker has no session
        for it (a restored session keeps its subscription, and subscribing again would
        bring the retained messages once more).
    start: connect now and wait for the CONNACK (else call start()).
    A subclass that keeps something else than `Message`s overrides `handle` (paho's thread).
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        *,
        client_id: str | None = None,
        v5: bool = False,
        persistent: bool = True,
        tls: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        keepalive: int = 10,
        reconnect: tuple[float, float] = (1.0, 1.0),
        resubscribe: bool = True,
        connect_timeout: float = 10.0,
        start: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.topic = topic
        self.v5 = v5
        self.persistent = persistent
        self.keepalive = keepalive
        self.resubscribe = resubscribe
        self.messages: list[Message] = []
        self.connects: list[tuple[float, bool]] = []  # (time.time(), session present)
        self.subscribes = 0
        self.lock = threading.Lock()
        self.connected = threading.Event()
        cid = client_id or f"test-sub-{os.getpid()}-{id(self)}"
        if v5:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5
            )
        else:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=cid, clean_session=not persistent
            )
        if auth:
            self.client.username_pw_set(*auth)
        if tls:
            self.client.tls_set(
                ca_certs=tls["ca"], certfile=tls.get("cert"), keyfile=tls.get("key")
            )
        self.client.reconnect_delay_set(*reconnect)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        if start:
            self.start(connect_timeout)

    def start(self, timeout: float = 10.0) -> None:
        """Connect, start paho's thread, return once connected and subscribed."""
        if self.v5:
            props = None
            if self.persistent:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 3600
            # Clean start off from the first CONNECT: mosquitto 2.0 saves a session over a
            # restart only for a client that connected so.
            self.client.connect(
                self.host,
                self.port,
                keepalive=self.keepalive,
                clean_start=not self.persistent,
                properties=props,
            )
        else:
            self.client.connect(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        wait_for(self.connected.is_set, timeout, "the subscriber to connect")

    def _on_connect(self, client: mqtt.Client, u: Any, flags: Any, rc: Any, p: Any) -> None:
        if rc.is_failure:
            return
        present = bool(flags.session_present)
        self.connects.append((time.time(), present))
        if self.resubscribe or not present:
            self.subscribes += 1
            client.subscribe(self.topic, qos=1)
        self.connected.set()

    def _on_message(self, client: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        self.handle(msg)

    def handle(self, msg: mqtt.MQTTMessage) -> None:
        """Keep the message (paho's thread)."""
        m = Message(
            msg.topic,
            bytes(msg.payload),
            bool(msg.retain),
            time.monotonic(),
            getattr(msg, "properties", None),
        )
        with self.lock:
            self.messages.append(m)

    def snapshot(self) -> list[Message]:
        with self.lock:
            return list(self.messages)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The agent's events received so far (campus/v1/school/gateway/kind/category/device)."""
        out = []
        for m in self.snapshot():
            parts = m.topic.split("/")
            if len(parts) == 7 and parts[4] in EVENT_KINDS:
                doc = m.json()
                if kind is None or doc["kind"] == kind:
                    out.append(doc)
        return out

    def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
        self.client.publish(topic, payload, qos=1, **kw).wait_for_publish(5)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()
