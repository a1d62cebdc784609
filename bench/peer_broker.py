"""The peer benchmark's broker and its MQTT clients.

`PersistentMosquitto`: bench.peers.Mosquitto with persistence on, and an outage (`down`,
then `up` on the same port with the saved sessions). `Subscriber`: the bench's persistent
QoS 1 session on a system's telemetry, which misses nothing across an outage.
`SessionLimitsResponder`: answers the ThingsBoard-only `getSessionLimits` RPC, without
which the peer publishes nothing.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.peers import Mosquitto, stop_process

RPC_REQUEST = "v1/devices/me/rpc/request/"
RPC_RESPONSE = "v1/devices/me/rpc/response/"
# What a ThingsBoard CE server answers to getSessionLimits with no tenant rate limits and its
# MQTT transport defaults (max payload 65 536 B, 100 messages queued per device). Empty limit
# strings mean "no limit" to tb-mqtt-client (RateLimit('0:0,')).
NO_LIMITS = {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""}
SESSION_LIMITS: dict[str, Any] = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": NO_LIMITS,
    "gatewayRateLimits": NO_LIMITS,
}


class PersistentMosquitto(Mosquitto):
    """`bench.peers.Mosquitto` with persistence on, and an outage: `down()` then `up()`.

    mosquitto saves its sessions (the bench subscriber's subscription and queue) to
    `mosquitto.db` in its folder on SIGTERM and loads them at start; `up()` starts it again
    with the same config, so on the same port.
    """

    def _write_conf(self, d: Path) -> Path:
        conf = super()._write_conf(d)
        text = conf.read_text().replace("persistence false", "persistence true")
        text += f"persistence_location {d}/\nautosave_interval 0\n"
        conf.write_text(text)
        return conf

    def __enter__(self) -> PersistentMosquitto:
        self.start()
        return self

    def down(self) -> None:
        """SIGTERM the broker (it saves its sessions) and wait for it; keep its folder."""
        proc, self.proc = self.proc, None
        stop_process(proc, 20)

    def up(self) -> None:
        """Start the broker again on its port with its saved state; return when it listens."""
        if self.dir is None:
            raise RuntimeError("broker was never started")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.dir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at restart: {self.log_tail()}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen again on {self.port}")
            time.sleep(0.02)


class BenchClient:
    """A paho client of the bench (MQTT 3.1.1) with its network loop in a thread; `start`
    returns once its subscription (made on every connect) is acknowledged."""

    what = "bench client"  # in its errors

    def __init__(self, broker: Mosquitto, client_id: str, topic: str, *, clean: bool) -> None:
        self.broker = broker
        self.topic = topic
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=clean,
        )
        # Retry every 0.1 s while the broker is down, so that the bench is back within 0.1 s.
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.1)  # type: ignore[arg-type]
        self.connects = 0
        self._subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        self.connects += 1
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.client.connect(self.broker.host, self.broker.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError(f"{self.what}: no SUBACK within 10 s")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Subscriber(BenchClient):
    """A persistent QoS 1 session on the telemetry topic; keeps every message it receives."""

    what = "bench subscriber"

    def __init__(self, broker: Mosquitto, topic: str, client_id: str) -> None:
        super().__init__(broker, client_id, topic, clean=False)
        self.messages: list[tuple[float, bytes, bool]] = []  # (arrival, payload, DUP flag)
        self._lock = threading.Lock()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.time(), bytes(msg.payload), bool(msg.dup)))

    def since(self, index: int) -> list[tuple[float, bytes, bool]]:
        with self._lock:
            return self.messages[index:]


class SessionLimitsResponder(BenchClient):
    """Answers the peer's getSessionLimits RPC as a ThingsBoard server would.

    tb-mqtt-client publishes {"method": "getSessionLimits", "params": {"timeout": 5000}} on
    v1/devices/me/rpc/request/<id> after each CONNACK and holds the gateway's data (its
    `is_connected()` is false) until a reply with a "rateLimits" key arrives on
    v1/devices/me/rpc/response/<id> (tb_device_mqtt.on_service_configuration,
    tb_gateway_mqtt.__on_service_configuration).
    """

    what = "getSessionLimits responder"

    def __init__(self, broker: Mosquitto, client_id: str) -> None:
        super().__init__(broker, client_id, RPC_REQUEST + "+", clean=True)
        self.answered = 0
        self.ignored = 0

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            method = json.loads(msg.payload).get("method")
        except (ValueError, AttributeError):
            method = None
        if method != "getSessionLimits":
            self.ignored += 1
            return
        request_id = msg.topic[len(RPC_REQUEST) :]
        client.publish(RPC_RESPONSE + request_id, json.dumps(SESSION_LIMITS), qos=1)
        self.answered += 1
