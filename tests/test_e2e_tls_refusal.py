"""A broker that refuses the connection at once (TLS alert, reset) is reported at once.

The TLS broker requires a client certificate signed by its CA. With TLS 1.3 the client's
side of the handshake completes before the broker has checked our certificate, so its
refusal arrives with the first read; a plaintext client at a TLS port is reset. Either way
the agent must say why at once, not wait `connect_timeout` (60 s here) and then blame a
missing CONNACK. The deadlines below are far shorter than connect_timeout: a correctness
check (the real cause is reported before the timeout could fire), not a speed assertion.
"""

from __future__ import annotations

import shutil

import pytest

from tests.harness.agent import env_device
from tests.harness.tls import make_cert

pytestmark = pytest.mark.slow

LONG_CONNACK_WAIT = 'connect_timeout = "60s"\n'


def _foreign_cert(pki, d):
    """A client certificate for the gateway's identity signed by a CA the broker does not
    trust (the broker's own certificate is still trusted by us)."""
    for f in ("other-ca.pem", "other-ca.key"):
        shutil.copy(pki / f, d / f)
    make_cert(d, "other-ca", "foreign", "pt-023.gw-main", server=False)
    return f'ca_file = "{pki}/ca.pem"\ncert_file = "{d}/foreign.pem"\nkey_file = "{d}/foreign.key"'


EXPECTED = {
    "foreign-ca": "TLS: broker refused our client certificate (TLSV1_ALERT_UNKNOWN_CA)",
    "no-cert": "TLS: broker requires a client certificate",
    "plaintext": "connection closed by the broker before CONNACK (is it a TLS port?",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_broker_refusal_is_reported_with_its_cause_at_once(
    case, tls_broker, pki, make_agent, tmp_path
):
    expected = EXPECTED[case]
    url = tls_broker.url
    if case == "foreign-ca":
        extra = _foreign_cert(pki, tmp_path)
    elif case == "no-cert":
        extra = f'ca_file = "{pki}/ca.pem"'
    else:
        url = url.replace("mqtts://", "mqtt://")
        extra = ""
    agent = make_agent(url, env_device(rate=20), mqtt_extra=LONG_CONNACK_WAIT + extra)
    st = agent.wait_status(
        lambda s: s["broker"]["last_error"], 20, "the broker's refusal in the status"
    )
    assert expected in st["broker"]["last_error"]
    assert "CONNACK from the broker in time" not in st["broker"]["last_error"]
    assert st["broker"]["connected"] is False
    assert any(expected in line for line in agent.log_lines("WARNING"))
    assert agent.alive()
    assert agent.terminate() == 0
