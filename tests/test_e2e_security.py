"""TLS with client certificates, ACLs, passwords, IPv6 and MQTT 3.1.1, against real brokers."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.harness.agent import env_device, fence_device
from tests.harness.broker import Broker
from tests.harness.process import ROOT
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.slow


def tls_extra(pki, ca="ca"):
    return f'ca_file = "{pki}/{ca}.pem"\ncert_file = "{pki}/gw.pem"\nkey_file = "{pki}/gw.key"'


def test_tls_client_certificate_and_acl_deliver_events(tls_broker, pki, subscribers, make_agent):
    sub = subscribers(
        tls_broker,
        tls={"ca": f"{pki}/ca.pem", "cert": f"{pki}/district.pem", "key": f"{pki}/district.key"},
    )
    agent = make_agent(
        tls_broker.url, env_device(rate=20) + fence_device(), mqtt_extra=tls_extra(pki)
    )
    assert tls_broker.url.startswith("mqtts://127.0.0.1:")
    wait_for(
        lambda: len(sub.events("telemetry")) >= 10 and sub.events("alarm"), 20, "events over TLS"
    )
    agent.wait_status(lambda s: s["broker"]["connected"], 5, "status: connected")
    assert agent.terminate() == 0


def test_untrusted_broker_certificate_is_refused_and_events_kept(tls_broker, pki, make_agent):
    agent = make_agent(
        tls_broker.url, env_device(rate=50), mqtt_extra=tls_extra(pki, ca="other-ca")
    )
    st = agent.wait_status(
        lambda s: s["broker"]["last_error"] and s["backlog"] > 50, 20, "a TLS error"
    )
    assert "not trusted" in st["broker"]["last_error"]
    assert st["broker"]["connected"] is False
    assert agent.alive()
    assert agent.terminate() == 0


def _check(config) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "check", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_reports_unusable_tls_files(pki, make_agent, tmp_path):
    bad_ca = tmp_path / "bad-ca.pem"
    bad_ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    extra = f'ca_file = "{bad_ca}"\ncert_file = "{pki}/gw.pem"\nkey_file = "{pki}/district.key"'
    agent = make_agent("mqtts://127.0.0.1:8883", env_device(), mqtt_extra=extra, start=False)
    r = _check(agent.config)
    assert r.returncode == 2
    assert f"{agent.config}: mqtt.ca_file: '{bad_ca}' is not a PEM CA certificate" in r.stderr
    assert f"{agent.config}: mqtt.cert_file: " in r.stderr
    assert "are not a matching PEM certificate and private key" in r.stderr


def test_refused_password_is_reported_and_nothing_lost(password_broker, make_agent, tmp_path):
    secret = tmp_path / "mqtt-password"
    secret.write_text("wrong-password-xyz\n")
    secret.chmod(0o600)
    agent = make_agent(
        password_broker.url,
        env_device(rate=50),
        mqtt_extra=f'username = "pt-023.gw-main"\npassword_file = "{secret}"\n'
        "allow_plaintext_password = true",
    )
    st = agent.wait_status(
        lambda s: s["broker"]["last_error"] and s["backlog"] > 50, 20, "a refusal"
    )
    assert "refused" in st["broker"]["last_error"]
    assert agent.alive()
    assert agent.terminate() == 0
    assert "wrong-password-xyz" not in agent.log_text()


def test_puback_failure_keeps_event_stored_and_status_says_why(
    password_broker, subscribers, make_agent, tmp_path
):
    """A gateway set up with the wrong gateway id publishes outside its ACL subtree: with
    MQTT 5 the broker's PUBACK says 'Not authorized' and the events stay stored."""
    sub = subscribers(password_broker, auth=("district", "district-pw"))
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret-gw\n")
    secret.chmod(0o600)
    agent = make_agent(
        password_broker.url,
        env_device(rate=20) + fence_device(),
        mqtt_extra=f'username = "pt-023.gw-main"\npassword_file = "{secret}"\n'
        "allow_plaintext_password = true",
        start=False,
    )
    cfg = agent.config.read_text().replace('gateway = "gw-main"', 'gateway = "gw-wrong"')
    agent.config.write_text(cfg)
    agent.start()
    # mosquitto 2.0 answers PUBACK 0x87 and then drops the connection, so each connection
    # gets one refusal; the agent backs off and the count grows slowly.
    st = agent.wait_status(lambda s: s["refused"]["parked"] >= 2, 30, "refusals")
    assert "Not authorized" in st["refused"]["last"]
    assert "Not authorized" in st["refused"]["status_topic"]
    assert st["backlog"] >= st["refused"]["parked"]
    assert not sub.events(), "the broker delivered a message it refused"
    assert agent.terminate() == 0
    # The refused events are still in the store after a clean stop.
    import sqlite3

    con = sqlite3.connect(agent.dir / "outbox.db")
    (n,) = con.execute(
        "SELECT count(*) FROM outbox WHERE parked LIKE '%Not authorized%'"
    ).fetchone()
    assert n >= 2


def test_human_status_shows_parked_refused_events_and_when_they_are_resent(
    password_broker, make_agent, tmp_path
):
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret-gw\n")
    secret.chmod(0o600)
    agent = make_agent(
        password_broker.url,
        env_device(rate=20) + fence_device(),
        mqtt_extra=f'username = "pt-023.gw-main"\npassword_file = "{secret}"\n'
        "allow_plaintext_password = true",
        start=False,
    )
    agent.config.write_text(
        agent.config.read_text().replace('gateway = "gw-main"', 'gateway = "gw-wrong"')
    )
    agent.start()
    agent.wait_status(lambda s: s["refused"]["parked"] >= 2, 30, "parked refusals")
    r = subprocess.run(
        [sys.executable, "-m", "agent.cli", "status", "--config", str(agent.config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("refused:"))
    parked = int(re.search(r"(\d+) parked", line).group(1))
    assert parked >= 2, line
    assert "SIGHUP" in line and "an hour" in line, line
    assert "Not authorized" in line
    assert agent.terminate() == 0


@pytest.fixture
def ipv6_broker(tmp_path):
    b = Broker(tmp_path / "broker6", host="::1", persistent=True)
    b.start()
    yield b
    b.stop()


def test_ipv6_literal_broker_url(ipv6_broker, subscribers, make_agent):
    assert ipv6_broker.url.startswith("mqtt://[::1]:")
    sub = subscribers(ipv6_broker)
    agent = make_agent(ipv6_broker.url, env_device(rate=20))
    wait_for(lambda: len(sub.events("telemetry")) >= 5, 20, "events over IPv6")
    assert agent.terminate() == 0


def test_mqtt_311_by_config(broker, subscribers, make_agent):
    sub = subscribers(broker)
    agent = make_agent(
        broker.url, env_device(rate=20) + fence_device(), mqtt_extra='protocol = "3.1.1"'
    )
    wait_for(
        lambda: len(sub.events("telemetry")) >= 5 and sub.events("alarm"), 20, "events over 3.1.1"
    )
    assert agent.terminate() == 0
