"""Signed commands (issue #9): a district key signs, the gateway verifies, the broker is not
trusted. The district's side is the real `campus-agent keygen` / `campus-agent sign`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config import load_config
from agent.contract import rfc3339
from agent.errors import ConfigError
from tests.harness.agent import demo_config, demo_text, fence_device
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.slow

CMD = "campus/v1/pt-023/gw-main/cmd/"
CLI = [sys.executable, "-m", "agent.cli"]


def keygen(folder: Path, kid: str) -> tuple[Path, str]:
    """A district key: its private key file and the gateway's [[commands.keys]] lines."""
    pem = folder / f"{kid}.pem"
    out = subprocess.run(
        [*CLI, "keygen", "--out", str(pem), "--kid", kid], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert pem.stat().st_mode & 0o077 == 0  # the private key is not readable by others
    lines = out.stdout[out.stdout.index("[[commands.keys]]") :].strip()
    return pem, lines


def signed(pem: Path, kid: str, device: str, action: str, topic_device: str | None = None):
    """`campus-agent sign` for the topic of `topic_device` (default: `device`)."""
    out = subprocess.run(
        [
            *CLI,
            *("sign", "--key", str(pem), "--kid", kid, "--action", action),
            *("--topic", CMD + (topic_device or device), "--expires-in", "60s"),
        ],
        capture_output=True,
        check=True,
    )
    return json.loads(out.stdout)


def unsigned(action: str, cid: str) -> dict:
    return {"id": cid, "action": action, "ts": rfc3339(time.time())}


def send(sub, device: str, doc: dict) -> dict:
    """Publish a command; its reply (a new one, when the same id was sent before)."""

    def mine() -> list[dict]:
        got = [m.json() for m in sub.snapshot() if "/cmd-reply/" in m.topic]
        return [r for r in got if r["id"] == doc["id"]]

    before = len(mine())
    sub.publish(CMD + device, json.dumps(doc).encode())
    return wait_for(lambda: mine()[before:], 10, f"a reply to {doc['id']}")[0]


def audit_of(sub, cid: str) -> dict:
    return wait_for(
        lambda: next(
            (e["command"] for e in sub.events("audit") if e["command"]["id"] == cid), None
        ),
        10,
        f"the audit event of {cid}",
    )


def commands_config(keys: str, signatures: str | None = None) -> str:
    mode = f'signatures = "{signatures}"\n' if signatures else ""
    return '["fence.arm", "fence.disarm"]\n' + mode + keys


def test_required_signatures_refuse_unsigned_forged_and_misdirected_commands(
    tmp_path, broker, subscribers, make_agent
):
    pem, keys = keygen(tmp_path, "district-2026a")
    other_pem, _ = keygen(tmp_path, "not-configured")
    sub = subscribers(broker)
    agent = make_agent(broker.url, fence_device(alarm_every="1h"), allow=commands_config(keys))
    agent.wait_status(lambda s: s["broker"]["connected"], 10, "connection")

    r = send(sub, "north-fence", unsigned("arm", "cmd-unsigned-0001"))
    assert (r["result"], r["code"]) == ("rejected", "unsigned")
    assert audit_of(sub, "cmd-unsigned-0001")["code"] == "unsigned"

    ok = signed(pem, "district-2026a", "north-fence", "arm")
    r = send(sub, "north-fence", ok)
    assert (r["result"], r["code"]) == ("ok", "ok"), r
    assert audit_of(sub, ok["id"])["signed_by"] == "district-2026a"

    # The same signed command again: a replay, told what the first one did.
    again = send(sub, "north-fence", ok)
    assert again["code"] == "replayed" and "its outcome: ok" in again["reason"]

    # Signed for another device's topic, then published here: the topic is signed too.
    elsewhere = signed(pem, "district-2026a", "north-fence", "arm", topic_device="south-fence")
    assert send(sub, "north-fence", elsewhere)["code"] == "bad_signature"

    tampered = signed(pem, "district-2026a", "north-fence", "arm")
    tampered["action"] = "disarm"
    r = send(sub, "north-fence", tampered)
    assert r["code"] == "bad_signature" and "does not verify" in r["reason"]

    foreign = signed(other_pem, "not-configured", "north-fence", "arm")
    r = send(sub, "north-fence", foreign)
    assert r["code"] == "bad_signature" and "unknown signing key" in r["reason"]

    forged = signed(other_pem, "district-2026a", "north-fence", "disarm")  # right id, wrong key
    assert send(sub, "north-fence", forged)["code"] == "bad_signature"
    expected = {"unsigned": 1, "bad_signature": 4, "replayed": 1}
    st = agent.wait_status(lambda s: s["commands"]["rejected"] == expected, 5, "the counts")
    assert st["commands"]["accepted"] == 1
    assert agent.terminate() == 0


def test_optional_signatures_still_require_one_where_the_profile_says_so_and_keys_rotate(
    tmp_path, broker, subscribers, make_agent
):
    old_pem, old_keys = keygen(tmp_path, "district-old")
    new_pem, new_keys = keygen(tmp_path, "district-new")
    sub = subscribers(broker)
    agent = make_agent(
        broker.url,
        fence_device(alarm_every="1h"),
        allow=commands_config(old_keys + "\n" + new_keys, "optional"),
    )
    agent.wait_status(lambda s: s["broker"]["connected"], 10, "connection")
    assert send(sub, "north-fence", unsigned("arm", "cmd-optional-arm-1"))["code"] == "ok"
    # synthetic-fence's disarm says signature = "required": the site's "optional" is not enough.
    r = send(sub, "north-fence", unsigned("disarm", "cmd-optional-disarm-1"))
    assert r["code"] == "unsigned" and "action 'disarm'" in r["reason"]
    assert (
        send(sub, "north-fence", signed(old_pem, "district-old", "north-fence", "disarm"))["code"]
        == "ok"
    )
    assert (
        send(sub, "north-fence", signed(new_pem, "district-new", "north-fence", "arm"))["code"]
        == "ok"
    )
    # Rotation: the old key is removed from the config and the agent reloads (SIGHUP).
    text = agent.config.read_text().replace(old_keys, "")
    agent.write_config(text)
    agent.signal(signal.SIGHUP)
    agent.wait_status(lambda s: s["reloads"] == 1, 10, "the reload")
    r = send(sub, "north-fence", signed(old_pem, "district-old", "north-fence", "arm"))
    assert r["code"] == "bad_signature"
    assert (
        send(sub, "north-fence", signed(new_pem, "district-new", "north-fence", "arm"))["code"]
        == "ok"
    )
    assert agent.terminate() == 0


def test_signature_config_errors_are_clear(tmp_path):
    base = demo_text()
    cases = {
        'signatures = "required"\n': "needs at least one [[commands.keys]]",
        '[[commands.keys]]\nid = "k1"\npublic_key = "bm90IGEga2V5"\n': "32 bytes",
        '[[commands.keys]]\nid = "k1"\npublic_key = "%%%"\n': "not base64",
    }
    for addition, message in cases.items():
        if addition.startswith("[["):  # an array of tables: after everything else
            cfg = demo_config(tmp_path, text=base + "\n" + addition)
        else:
            cfg = demo_config(
                tmp_path, text=base.replace("[commands]\n", "[commands]\n" + addition, 1)
            )
        with pytest.raises(ConfigError) as e:
            load_config(cfg)
        assert message in str(e.value), (addition, str(e.value))
