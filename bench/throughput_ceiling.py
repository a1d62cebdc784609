"""The ceiling of throughput and drain: raw paho-mqtt 2.x publishing at QoS 1 on the same broker.

N telemetry payloads, built by the agent's own code (profile, DevicePoints, events.encode)
from the benchmark's config so that topic and bytes are alike, published from asyncio the
way agent/publisher.py drives paho (socket callbacks + add_reader/add_writer,
loop_read/loop_write/loop_misc), the window bounded by the application (a semaphore
released in on_publish), timed from the first publish to the last PUBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import SiteConfig
from agent.contract import Origin, encode, uuid7
from agent.points import DevicePoints
from agent.sample import Sample
from bench.throughput_config import ENV_DEVICE, WINDOW


@dataclass
class CeilingRun:
    """Raw paho: N payloads published, timed until the last PUBACK."""

    messages: int
    elapsed_s: float
    acked_per_s: float


def build_payloads(config: SiteConfig, n: int) -> tuple[str, list[bytes]]:
    """N telemetry payloads of the env device, built by the agent's own code path."""
    origin = Origin(config.agent.topic_prefix, config.agent.school, config.agent.gateway)
    device = config.device(ENV_DEVICE)
    if device is None:
        raise RuntimeError(f"benchmark config has no device {ENV_DEVICE!r}")
    points = DevicePoints(device)
    topic = ""
    out: list[bytes] = []
    t0 = time.time()
    for i in range(n):
        ts = t0 + i / 1000
        values = {
            "temperature": round(19.0 + 7.0 * ((i * 7919) % 1000) / 1000, 3),
            "humidity": round(35.0 + 25.0 * ((i * 104729) % 1000) / 1000, 3),
            "co2": round(420 + 980 * ((i * 15485863) % 1000) / 1000, 3),
        }
        (ev,) = points.events(Sample(device.id, ts, values))
        topic = origin.topic(ev.kind, ev.category, ev.device)
        out.append(encode(origin, ev, i + 1, uuid7(int(ts * 1000))))
    return topic, out


async def _ceiling(
    host: str,
    port: int,
    topic: str,
    payloads: list[bytes],
    *,
    window: int,
    paho_inflight: int,
    protocol: str,
) -> CeilingRun:
    loop = asyncio.get_running_loop()
    v5 = protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-ceiling-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else True,
    )
    # paho's own in-flight limit (default 20) rescans its messages on every PUBACK: the
    # ceiling leaves it off and bounds the window itself (PERFORMANCE.md, finding 1).
    client.max_inflight_messages_set(paho_inflight)
    slots = asyncio.Semaphore(window)
    connack: asyncio.Future[ReasonCode] = loop.create_future()
    finished: asyncio.Future[float] = loop.create_future()
    total = len(payloads)
    acked = 0

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        if not connack.done():
            connack.set_result(rc)

    def on_disconnect(c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        if not finished.done():
            finished.set_exception(RuntimeError(f"ceiling client disconnected: {rc}"))

    def on_publish(c: mqtt.Client, u: Any, mid: int, rc: ReasonCode, p: Any) -> None:
        nonlocal acked
        slots.release()
        acked += 1
        if acked == total and not finished.done():
            finished.set_result(time.perf_counter())

    def on_socket_open(c: mqtt.Client, u: Any, sock: Any) -> None:
        loop.add_reader(sock, c.loop_read)

    def on_socket_close(c: mqtt.Client, u: Any, sock: Any) -> None:
        loop.remove_reader(sock)
        loop.remove_writer(sock)

    def on_register_write(c: mqtt.Client, u: Any, sock: Any) -> None:
        loop.add_writer(sock, c.loop_write)

    def on_unregister_write(c: mqtt.Client, u: Any, sock: Any) -> None:
        loop.remove_writer(sock)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    client.on_socket_open = on_socket_open
    client.on_socket_close = on_socket_close
    client.on_socket_register_write = on_register_write
    client.on_socket_unregister_write = on_unregister_write

    async def misc() -> None:
        while True:
            await asyncio.sleep(1.0)
            client.loop_misc()

    # Loopback: connect() returns at once; the socket callbacks run on this thread.
    client.connect(host, port, keepalive=60)
    ticker = asyncio.create_task(misc())
    try:
        rc = await asyncio.wait_for(connack, 10)
        if rc.is_failure:
            raise RuntimeError(f"broker refused the ceiling client: {rc}")
        started = time.perf_counter()
        for payload in payloads:
            await slots.acquire()
            info = client.publish(topic, payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"ceiling publish not queued: rc={info.rc}")
        ended = await asyncio.wait_for(finished, 120)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop_write()
        sock = client.socket()
        if sock is not None:
            loop.remove_reader(sock)
            loop.remove_writer(sock)
        with contextlib.suppress(Exception):
            client._sock_close()
    elapsed = ended - started
    return CeilingRun(total, round(elapsed, 4), round(total / elapsed, 1))


def measure_ceiling(
    host: str,
    port: int,
    topic: str,
    payloads: list[bytes],
    *,
    window: int = WINDOW,
    paho_inflight: int = 0,
    protocol: str = "5",
) -> CeilingRun:
    """Raw paho QoS 1, asyncio-native: publish `payloads` to `topic`, timed to the last PUBACK.

    One measurement in a fresh event loop of this process (throughput's, and drain's on its
    own broker in the same run).
    """
    return asyncio.run(
        _ceiling(
            host,
            port,
            topic,
            payloads,
            window=window,
            paho_inflight=paho_inflight,
            protocol=protocol,
        )
    )
