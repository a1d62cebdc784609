"""The card-hid driver against the real agent and a real mosquitto, without an input device.

The device part (open, grab, read, unplug, replug) needs a kernel input device, which a test
would create through /dev/uinput; this machine has none (CONFIG_INPUT_UINPUT not set, no
modules), so it is not exercised here (drivers/card_hid/README.md, Known limits). What runs
without one is tested: `check` of the driver's keys and profiles, evdev missing, a reader
that is absent or is not an input device reported offline with the reason, the config's
card key required, and nothing of it printing a traceback.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.harness.waiting import wait_for

HEAD = """\
[agent]
school = "pt-023"
gateway = "gw-main"
[mqtt]
url = "mqtt://127.0.0.1:1883"
"""


def reader(bus: str, path: str | Path, device: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        [[buses]]
        id = "{bus}"
        driver = "card-hid"
        path = "{path}"
        retry = "500ms"

        [[devices]]
        id = "{device}"
        profile = "generic-em4100-wedge"
        bus = "{bus}"
        {extra}
        """
    )


def key_file(folder: Path) -> Path:
    key = folder / "card.key"
    key.write_bytes(b"0123456789abcdef0123456789abcdef-test-key")
    key.chmod(0o600)
    return key


def check(cfg: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_check_accepts_a_reader_and_refuses_bad_keys_by_name(tmp_path):
    key_file(tmp_path)
    cfg = tmp_path / "agent.toml"
    good = HEAD + reader("r1", "/dev/input/by-id/usb-x-event-kbd", "desk", 'direction = "in"')
    cfg.write_text(good + '[privacy]\ncard_key_file = "card.key"\n')
    out = check(cfg)
    assert out.returncode == 0, out.stderr
    bad = HEAD + reader("r1", "", "desk", 'direction = "sideways"\nreader = "Main Door"')
    cfg.write_text(bad + '[privacy]\ncard_key_file = "card.key"\n')
    out = check(cfg)
    assert out.returncode == 2, out.stderr
    assert "buses[0].path" in out.stderr
    assert "devices[0].direction" in out.stderr
    assert "devices[0].reader" in out.stderr
    assert "Traceback" not in out.stderr
    # A card reader without the school's key: refused (hash is the default).
    cfg.write_text(good)
    out = check(cfg)
    assert out.returncode == 2
    assert "privacy.card_key_file" in out.stderr and "Traceback" not in out.stderr


def test_check_refuses_a_profile_that_does_not_say_how_the_reader_types(tmp_path):
    key_file(tmp_path)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "odd-wedge.toml").write_text(
        textwrap.dedent(
            """
            id = "odd-wedge"
            vendor = "x"
            model = "y"
            category = "card"
            driver = "card_hid"
            source = "test"

            [[points]]
            name = "held"
            kind = "telemetry"
            wire = { output = "octal", bits = 0, format = "em4100", key_timeout = "1ms", min_length = 12, max_length = 10 }
            """
        )
    )
    cfg = tmp_path / "agent.toml"
    text = HEAD + reader("r1", "/dev/input/event3", "desk").replace(
        "generic-em4100-wedge", "odd-wedge"
    )
    cfg.write_text(
        'profile_dirs = ["profiles"]\n' + text + '[privacy]\ncard_key_file = "card.key"\n'
    )
    out = check(cfg)
    assert out.returncode == 2, out.stderr
    for entry in ("kind", "wire.output", "wire.bits", "wire.key_timeout", "wire.min_length"):
        assert f"points[0].{entry}" in out.stderr, (entry, out.stderr)
    assert "Traceback" not in out.stderr


def test_without_evdev_check_and_run_say_how_to_install_it(tmp_path, monkeypatch):
    """evdev absent: a stand-in package on PYTHONPATH whose import fails as a missing one
    does (the agent's own code is not touched)."""
    shadow = tmp_path / "no-evdev" / "evdev"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'evdev'\", name='evdev')\n"
    )
    key_file(tmp_path)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        HEAD + reader("r1", "/dev/input/event3", "desk") + '[privacy]\ncard_key_file = "card.key"\n'
    )
    import os

    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    out = check(cfg, env)
    assert out.returncode == 2, out.stderr
    assert "evdev" in out.stderr and "campus-agent[hid]" in out.stderr
    assert "Traceback" not in out.stderr
    run = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert run.returncode == 2
    assert "campus-agent[hid]" in run.stderr + run.stdout
    assert "Traceback" not in run.stderr + run.stdout


@pytest.mark.slow
def test_an_absent_reader_and_a_non_input_file_are_offline_with_the_reason(
    tmp_path, broker, subscribers, make_agent
):
    key = key_file(tmp_path)
    not_input = tmp_path / "not-an-input-device"
    not_input.write_bytes(b"\0" * 64)
    absent = tmp_path / "by-id" / "usb-reader-event-kbd"
    sub = subscribers(broker)
    agent = make_agent(
        broker.url,
        reader("gone", absent, "front-desk", 'door = "main"\ndirection = "in"')
        + reader("file", not_input, "side-desk"),
        extra=f'[privacy]\ncard_key_file = "{key}"\n',
    )

    def offline(device: str) -> dict | None:
        return next(
            (e for e in sub.events("state") if e["device"] == device and e["online"] is False),
            None,
        )

    wait_for(lambda: offline("front-desk") and offline("side-desk"), 20, "both readers offline")
    assert f"no input device at {absent}" in offline("front-desk")["reason"]
    assert "not an input event device" in offline("side-desk")["reason"]
    st = agent.wait_status(
        lambda s: "not an input" in str(s.get("devices", {}).get("side-desk", {})),
        20,
        "the status to show the readers offline",
    )
    assert "unplugged" in st["devices"]["front-desk"]["reason"]
    # It keeps trying (retry = 500ms) without flapping: one offline event per reader, and
    # the tries are counted in the status (`opened` stays 0: nothing was grabbed).
    agent.wait_status(
        lambda s: s.get("buses", {}).get("gone", {}).get("opened") == 0,
        20,
        "the driver's counters in the status",
    )
    assert agent.log_text().count("device offline: device=front-desk") == 1
    assert len([e for e in sub.events("state") if e["device"] == "front-desk"]) == 1
    assert agent.alive()
    assert agent.terminate() == 0
    log = agent.log_text()
    assert "Traceback" not in log
    assert not sub.events("access")
