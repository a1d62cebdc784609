"""Fixtures: real mosquitto brokers (plain, TLS with a throwaway CA and an ACL), a recording
subscriber, and agent processes started, stopped and killed for real."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent


def need(binary: str, package: str) -> str:
    path = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
    )
    if path is None:
        pytest.fail(
            f"{binary} is not installed: run `sudo apt-get install -y {package}` (tests/run.sh does)"
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(
    pred: Callable[[], Any], timeout: float, what: str = "condition", every: float = 0.05
) -> Any:
    """Poll `pred` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class Broker:
    """A mosquitto process on a free loopback port; stop() and start() keep port and state."""

    def __init__(
        self, workdir: Path, *, host: str = "127.0.0.1", extra: str = "", listener_extra: str = ""
    ) -> None:
        self.bin = need("mosquitto", "mosquitto")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = free_port(host)
        self.tls = "certfile" in listener_extra
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            textwrap.dedent(
                f"""\
                per_listener_settings false
                {"user root" if os.geteuid() == 0 else ""}
                persistence true
                persistence_location {self.dir}/
                autosave_interval 3600
                max_queued_messages 0
                max_inflight_messages 0
                log_dest file {self.dir}/mosquitto.log
                log_type error
                log_type warning
                log_type notice
                listener {self.port} {host}
                """
            )
            + listener_extra
            + "\n"
            + extra
            + "\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.bin, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (
                    (self.dir / "mosquitto.log").read_text()
                    if (self.dir / "mosquitto.log").exists()
                    else ""
                )
                raise AssertionError(f"mosquitto exited: {log[-2000:]}")
            with socket.socket(family) as s:
                return s.connect_ex((self.host, self.port)) == 0

        wait_for(up, 10, "mosquitto to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker", extra="allow_anonymous true")
    b.start()
    yield b
    b.stop()


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    at: float
    properties: Any = None

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A real MQTT client (paho thread) that records everything on a topic filter.

    It keeps a persistent session, so messages published while it reconnects after a
    broker restart are queued by the broker and still arrive.
    """

    def __init__(
        self,
        broker: Broker,
        topic: str,
        *,
        client_id: str | None = None,
        v5: bool = False,
        tls: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.v5 = v5
        cid = client_id or f"test-sub-{os.getpid()}-{id(self)}"
        if v5:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5
            )
        else:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False
            )
        if auth:
            self.client.username_pw_set(*auth)
        if tls:
            self.client.tls_set(
                ca_certs=tls["ca"], certfile=tls.get("cert"), keyfile=tls.get("key")
            )
        self.client.reconnect_delay_set(1, 1)
        self.topic = topic
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        if v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.client.connect(
                broker.host, broker.port, keepalive=10, clean_start=False, properties=props
            )
        else:
            self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        wait_for(self.connected.is_set, 10, "subscriber to connect")

    def _on_connect(self, client: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)
            self.connected.set()

    def _on_message(self, client: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(
                Message(
                    msg.topic,
                    bytes(msg.payload),
                    bool(msg.retain),
                    time.monotonic(),
                    getattr(msg, "properties", None),
                )
            )

    def snapshot(self) -> list[Message]:
        with self.lock:
            return list(self.messages)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        out = []
        for m in self.snapshot():
            parts = m.topic.split("/")
            if len(parts) == 7 and parts[4] in ("telemetry", "alarm", "access", "state", "audit"):
                doc = m.json()
                if kind is None or doc["kind"] == kind:
                    out.append(doc)
        return out

    def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
        self.client.publish(topic, payload, qos=1, **kw).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()


@pytest.fixture
def subscribers() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(broker: Broker, topic: str = "campus/#", **kw: Any) -> Subscriber:
        s = Subscriber(broker, topic, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


BASE_CONFIG = """\
[agent]
school = "pt-023"
gateway = "gw-main"
drain_timeout = "3s"
status_interval = "2s"

[mqtt]
url = "{url}"
{reconnect}
keepalive = "10s"
{mqtt_extra}

[store]
path = "outbox.db"
max_size = "{max_size}"

[commands]
allow = {allow}

[[buses]]
id = "sim"
driver = "synthetic"
"""


@dataclass
class AgentProc:
    """An agent process with its own config and store folder."""

    dir: Path
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self, wrapper: list[str] | None = None, log_level: str = "debug") -> None:
        log = self.dir / f"agent-{len(self.logs)}.log"
        self.logs.append(log)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*(wrapper or []), *cmd, "--log-level", log_level],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
            )

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def status(self) -> dict[str, Any]:
        path = self.dir / "outbox.db.status.json"
        if not path.exists():
            path = self.dir / "status.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def wait_status(
        self, pred: Callable[[dict[str, Any]], Any], timeout: float, what: str
    ) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            nonlocal last
            s = self.status()
            if s:
                last = s
            return s if s and pred(s) else None

        try:
            return wait_for(check, timeout, what)
        except AssertionError as e:
            # Say what the agent last reported: a timeout alone does not tell why.
            keys = ("written", "backlog", "store", "broker", "publish_rate", "buses")
            seen = {k: last.get(k) for k in keys if k in last}
            raise AssertionError(f"{e}; alive={self.alive()} last status: {seen}") from None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def make_agent(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., AgentProc]]:
    made: list[AgentProc] = []

    def make(
        broker_url: str,
        devices: str,
        *,
        mqtt_extra: str = "",
        reconnect: str = 'reconnect_min = "200ms"\nreconnect_max = "1s"',
        max_size: str = "64MiB",
        allow: str = '["fence.arm", "fence.disarm", "fence.fail"]',
        extra: str = "",
        name: str = "agent",
        start: bool = True,
    ) -> AgentProc:
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        cfg = d / "agent.toml"
        cfg.write_text(
            BASE_CONFIG.format(
                url=broker_url,
                reconnect=reconnect,
                mqtt_extra=mqtt_extra,
                max_size=max_size,
                allow=allow,
            )
            + "\n"
            + textwrap.dedent(devices)
            + "\n"
            + extra
        )
        a = AgentProc(d, cfg)
        made.append(a)
        if start:
            a.start()
        return a

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for a in made:
        if a.alive():
            a.kill()
        if failed:
            sys.stderr.write(f"\n---- agent log {a.dir} ----\n{a.log_text()[-6000:]}\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


ENV_DEVICE = """
[[devices]]
id = "a101-env"
profile = "synthetic-load"
bus = "sim"
location = {{ building = "A", floor = 1, room = "101" }}
rate = {rate}
"""

FENCE_DEVICE = """
[[devices]]
id = "north-fence"
profile = "synthetic-fence"
bus = "sim"
poll_interval = "{poll}"
alarm_every = "{alarm_every}"
"""


def env_device(rate: float = 20) -> str:
    return ENV_DEVICE.format(rate=rate)


def fence_device(alarm_every: str = "1s", poll: str = "100ms") -> str:
    return FENCE_DEVICE.format(alarm_every=alarm_every, poll=poll)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([need("openssl", "openssl"), *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    """A throwaway CA: {name}.pem / {name}.key in d."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        cwd=d,
    )


def make_cert(d: Path, ca: str, name: str, cn: str, *, server: bool) -> None:
    """A certificate signed by `ca`: {name}.pem / {name}.key in d."""
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={cn}",
        cwd=d,
    )
    ext = d / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "authorityKeyIdentifier=keyid,issuer"]
    if server:
        lines += ["subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost", "extendedKeyUsage=serverAuth"]
    else:
        lines += ["extendedKeyUsage=clientAuth"]
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        ext.name,
        cwd=d,
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA, broker certificate, the gateway's and the district's client certificates, and
    a second CA the broker does not use (for 'not trusted' tests)."""
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "ca", "server", "localhost", server=True)
    make_cert(d, "ca", "gw", "pt-023.gw-main", server=False)
    make_cert(d, "ca", "district", "district", server=False)
    return d


ACL = """\
user pt-023.gw-main
topic readwrite campus/v1/pt-023/gw-main/#

user district
topic read campus/#
topic write campus/+/+/+/cmd/#
"""


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Path) -> Iterator[Broker]:
    """mosquitto requiring client certificates (identity = username) and confining each
    identity with an ACL."""
    d = tmp_path / "tls-broker"
    d.mkdir()
    (d / "acl").write_text(ACL)
    b = Broker(
        d,
        listener_extra=textwrap.dedent(f"""\
        cafile {pki}/ca.pem
        certfile {pki}/server.pem
        keyfile {pki}/server.key
        require_certificate true
        use_identity_as_username true
        """),
        extra=f"allow_anonymous false\nacl_file {d}/acl",
    )
    b.start()
    yield b
    b.stop()


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto with username/password and the same ACL (gateway: pt-023.gw-main / s3cret-gw)."""
    d = tmp_path / "pw-broker"
    d.mkdir()
    (d / "acl").write_text(ACL)
    passwd = d / "passwd"
    passwd.touch()
    tool = need("mosquitto_passwd", "mosquitto")
    for user, pw in (("pt-023.gw-main", "s3cret-gw"), ("district", "district-pw")):
        subprocess.run([tool, "-b", str(passwd), user, pw], check=True, capture_output=True)
    passwd.chmod(0o644)
    b = Broker(d, extra=f"allow_anonymous false\npassword_file {passwd}\nacl_file {d}/acl")
    b.start()
    yield b
    b.stop()
