"""Fixtures: real mosquitto brokers (plain, TLS with a throwaway CA and an ACL, passwords), a
recording subscriber, and agent processes started, stopped and killed for real.

The peers themselves are tests/harness (shared with bench/); this file only says which ones
a test gets, and stops them after it; and the head of the agent config the end-to-end
tests share (BASE_CONFIG; the devices are tests.harness.agent's env_device and
fence_device). `need` fails the test with the install command.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import process
from tests.harness.agent import AgentProcess
from tests.harness.broker import Broker
from tests.harness.ports import free_port
from tests.harness.subscriber import Subscriber
from tests.harness.tls import Pki, make_pki


def need(binary: str, package: str) -> str:
    """The binary's path; fail the test (not skip it) with the install command if absent."""
    try:
        return process.need(binary, package)
    except process.MissingBinaryError as e:
        pytest.fail(str(e))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Anonymous mosquitto with persistence: stop() and start() keep its port and state."""
    with Broker(tmp_path / "broker", persistent=True) as b:
        yield b


@pytest.fixture
def subscribers() -> Iterator[Callable[..., Subscriber]]:
    """make(broker, topic="campus/#", **Subscriber options): a connected subscriber."""
    made: list[Subscriber] = []

    def make(broker: Broker, topic: str = "campus/#", **kw: Any) -> Subscriber:
        s = Subscriber(broker.host, broker.port, topic, **kw)
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


@pytest.fixture
def make_agent(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., AgentProcess]]:
    """make(broker_url, devices, ...): an agent on BASE_CONFIG + devices, started unless
    start=False; SIGKILLed after the test, its log shown if the test failed. Its status
    page listens on a free port (`agent.status_port`); `status_page` adds keys to that
    section."""
    made: list[AgentProcess] = []

    def make(
        broker_url: str,
        devices: str,
        *,
        mqtt_extra: str = "",
        reconnect: str = 'reconnect_min = "200ms"\nreconnect_max = "1s"',
        max_size: str = "64MiB",
        allow: str = '["fence.arm", "fence.disarm", "fence.fail"]',
        extra: str = "",
        status_page: str = "",
        name: str = "agent",
        start: bool = True,
    ) -> AgentProcess:
        a = AgentProcess(tmp_path / name)
        a.status_port = free_port()  # agents side by side each get their own page
        a.write_config(
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
            + f"\n[status_page]\nport = {a.status_port}\n{status_page}\n"
        )
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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA, broker certificate, the gateway's and the district's client certificates, and
    a second CA the broker does not use (for 'not trusted' tests)."""
    d = tmp_path_factory.mktemp("pki")
    make_pki(d, {"gw": "pt-023.gw-main", "district": "district"}, other_cas=["other-ca"])
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
    with Broker(
        tmp_path / "tls-broker",
        persistent=True,
        tls=Pki(pki),
        identity_as_username=True,
        acl=ACL,
    ) as b:
        yield b


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto with username/password and the same ACL (gateway: pt-023.gw-main / s3cret-gw)."""
    passwords = {"pt-023.gw-main": "s3cret-gw", "district": "district-pw"}
    with Broker(tmp_path / "pw-broker", persistent=True, passwords=passwords, acl=ACL) as b:
        yield b
