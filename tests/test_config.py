"""Site config validation: every broken config in tests/cases/config gives its messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import load_config, parse_broker_url
from agent.errors import ConfigError
from agent.units import parse_duration, parse_size
from tests.harness.agent import demo_config

CASES = Path(__file__).parent / "cases" / "config"


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir()))
def test_broken_config_reports_file_entry_and_fix(case):
    folder = CASES / case
    secret = folder / "password"
    if secret.exists():
        os.chmod(secret, 0o644)  # git keeps only the x bit: make the case's intent explicit
    with pytest.raises(ConfigError) as info:
        load_config(folder / "agent.toml")
    text = str(info.value).replace(str(folder / "agent.toml"), "agent.toml")
    for line in (folder / "expected.err").read_text().splitlines():
        assert line in text, f"{case}: expected {line!r} in:\n{text}"


def test_every_problem_is_reported_at_once(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[agent]\nschool = "pt-023"\ngateway = "gw-main"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
        '[[buses]]\nid = "sim"\ndriver = "synthetic"\n'
        '[[devices]]\nid = "a"\nprofile = "nope"\nbus = "sim"\n'
        '[[devices]]\nid = "b"\nprofile = "synthetic-env"\nbus = "nobus"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    entries = [p.entry for p in info.value.problems]
    assert entries == ["devices[0].profile", "devices[1].bus"]


def test_good_example_configs_pass(tmp_path):
    config = load_config(demo_config(tmp_path))
    assert config.store.path == tmp_path / "outbox.db"  # relative to the config file
    assert {d.profile.id for d in config.devices} == {
        "xy-md02",
        "eastron-sdm120",
        "generic-pulse-fence",
        "rdm6300",
        "classboard-v1",
        "classboard-hub",
    }
    assert config.card_key is not None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10.0), ("5min", 300.0), ("2h", 7200.0), ("1d", 86400.0), (3, 3.0)],
)
def test_durations_parse_as_written(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("512MiB", 512 * 1024**2), ("64kB", 64000), ("1GiB", 1024**3), ("256KiB", 262144), (100, 100)],
)
def test_sizes_parse_as_written(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["10", "10 seconds", "-1s", "", "1.5.2s", True, None, [1]])
def test_bad_durations_are_refused(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://127.0.0.1:1883", "127.0.0.1", 1883, False),
        ("mqtts://broker.edu.example", "broker.edu.example", 8883, True),
        ("mqtt://[::1]:1884", "::1", 1884, False),
        ("mqtts://[fd00::5]:8884", "fd00::5", 8884, True),
    ],
)
def test_broker_urls(url, host, port, tls):
    a = parse_broker_url(url)
    assert (a.host, a.port, a.tls) == (host, port, tls)


@pytest.mark.parametrize(
    "url", ["http://x", "mqtt://", "mqtt://h:99999", "mqtt://user:pw@h", "mqtt://h/path", "h:1883"]
)
def test_bad_broker_urls_are_refused(url):
    with pytest.raises(ValueError, match="mqtt"):
        parse_broker_url(url)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400))
def test_config_loader_never_crashes_on_garbage(tmp_path_factory, text):
    cfg = tmp_path_factory.mktemp("fuzz") / "agent.toml"
    cfg.write_text(text)
    try:
        load_config(cfg)
    except ConfigError as e:
        assert e.problems
        assert all(str(cfg) in str(p) for p in e.problems)


# ---- every duration and size has a range (#9) ------------------------------------------

HEAD = '[agent]\nschool = "pt-023"\ngateway = "gw-main"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
SIM = '[[buses]]\nid = "sim"\ndriver = "synthetic"\n'
DEVICE = '[[devices]]\nid = "fence"\nprofile = "synthetic-fence"\nbus = "sim"\n'


def _config(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text, encoding="utf-8")
    return cfg


def _problems(cfg: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    return {p.entry: p.message for p in info.value.problems}


@pytest.mark.parametrize(
    ("section", "line", "entry", "says"),
    [
        ("mqtt", "keepalive = inf", "mqtt.keepalive", "not a finite duration"),
        ("mqtt", 'keepalive = "1000d"', "mqtt.keepalive", "use 5s to 18h (MQTT allows"),
        ("mqtt", "keepalive = 0", "mqtt.keepalive", "use 5s to 18h"),
        ("mqtt", "keepalive = nan", "mqtt.keepalive", "not a finite duration"),
        ("mqtt", "connect_timeout = 0", "mqtt.connect_timeout", "use 1s to 5min"),
        ("mqtt", "reconnect_min = 0", "mqtt.reconnect_min", "use 100ms to 1h"),
        ("mqtt", "reconnect_max = 0", "mqtt.reconnect_max", "use 100ms to 1h"),
        ("mqtt", 'reconnect_max = "2h"', "mqtt.reconnect_max", "at least once an hour"),
        ("mqtt", 'reconnect_probe = "10ms"', "mqtt.reconnect_probe", "or 0 (off)"),
        ("mqtt", 'reconnect_spread = "1d"', "mqtt.reconnect_spread", "use 0s to 1h"),
        ("store", 'max_size = "1000000000000GiB"', "store.max_size", "use 256KiB to 1TiB"),
        ("store", f'max_size = "{"9" * 400}GiB"', "store.max_size", "not a finite size"),
        ("store", "max_size = 1", "store.max_size", "use 256KiB to 1TiB"),
        ("store", 'commit_interval = "1d"', "store.commit_interval", "use 1ms to 1s"),
        ("store", "commit_interval = 0", "store.commit_interval", "use 1ms to 1s"),
        ("store", 'telemetry_delay = "1h"', "store.telemetry_delay", "a crash loses"),
        ("agent", "status_interval = 0", "agent.status_interval", "use 1s to 1d"),
        ("agent", 'drain_timeout = "1d"', "agent.drain_timeout", "TimeoutStopSec must be longer"),
        ("commands", "max_age = 0", "commands.max_age", "use 1s to 1d"),
        ("commands", 'clock_skew = "2h"', "commands.clock_skew", "use 0s to 1h"),
        ("device", "poll_interval = 0", "devices[0].poll_interval", "use 10ms to 1d"),
        ("device", 'poll_interval = "1ms"', "devices[0].poll_interval", "busy loop"),
        ("device", 'alarm_every = "0.1ms"', "devices[0].alarm_every", "use 1ms to 1d"),
        ("device", "location = { floor = 1e400 }", "devices[0].location", "whole number"),
        ("device", f"location = {{ floor = {2**60} }}", "devices[0].location", "2**53"),
        ("commands", "rate = 0", "commands.rate", "use 0.1 to 1000 (commands handled"),
        ("commands", "rate = inf", "commands.rate", "out of range"),
        ("commands", "burst = 0", "commands.burst", "use 1 to 10000"),
        ("commands", "queue = 1000000", "commands.queue", "holds its payload in memory"),
        ("commands", "busy_replies = nan", "commands.busy_replies", "out of range"),
        ("commands", 'busy_audit_interval = "0s"', "commands.busy_audit_interval", "1s to 1h"),
        ("commands", 'max_payload = "1GiB"', "commands.max_payload", "use 1KiB to 1MiB"),
        ("mqtt", 'max_packet_size = "1KiB"', "mqtt.max_packet_size", "use 2KiB to 16MiB"),
        ("store", "audit_keep = 1", "store.audit_keep", "use 100 to 1e+06"),
        ("alarms", "storm_rate = 0", "alarms.storm_rate", "alarm edges a second"),
        ("alarms", "storm_burst = 0", "alarms.storm_burst", "use 1 to 100000"),
        ("alarms", 'storm_report = "1h"', "alarms.storm_report", "use 1s to 10min"),
    ],
)
def test_out_of_range_values_are_refused_with_the_range_and_why(
    tmp_path, section, line, entry, says
):
    sections = {"agent": "", "mqtt": "", "store": "", "commands": "", "alarms": "", "device": ""}
    sections[section] = line + "\n"
    text = (
        f'[agent]\nschool = "pt-023"\ngateway = "gw-main"\n{sections["agent"]}'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n{sections["mqtt"]}'
        f"[store]\n{sections['store']}[commands]\n{sections['commands']}"
        f"[alarms]\n{sections['alarms']}"
        f"{SIM}{DEVICE}{sections['device']}"
    )
    problems = _problems(_config(tmp_path, text))
    assert list(problems) == [entry], problems
    assert says in problems[entry]


@pytest.mark.parametrize(
    ("bus", "entry", "says"),
    [
        ('driver = "bridge"\nport = "/dev/ttyUSB0"\nheartbeat = 0', "heartbeat", "100ms to 1min"),
        (
            'driver = "bridge"\nport = "/dev/ttyUSB0"\nsilence_timeout = inf',
            "silence_timeout",
            "finite",
        ),
        ('driver = "modbus-tcp"\nhost = "10.0.0.5"\ntimeout = 0', "timeout", "use 10ms to 1min"),
        ('driver = "modbus-rtu"\nport = "/dev/ttyUSB0"\ntimeout = "1h"', "timeout", "use 10ms"),
    ],
)
def test_driver_durations_are_bounded(tmp_path, bus, entry, says):
    problems = _problems(_config(tmp_path, HEAD + f'[[buses]]\nid = "b"\n{bus}\n'))
    assert says in problems[f"buses[0].{entry}"], problems


def test_a_profile_poll_interval_out_of_range_is_refused_where_the_device_uses_it(tmp_path):
    profile = (
        '{ id = "fast", category = "env", driver = "synthetic", vendor = "x", model = "y", '
        'source = "test", defaults = { poll_interval = "1ms" }, '
        'points = [{ name = "t", kind = "telemetry", wire = { period = "10s" } }] }'
    )
    text = HEAD + SIM + f'[[devices]]\nid = "d"\nbus = "sim"\nprofile = {profile}\n'
    problems = _problems(_config(tmp_path, text))
    assert "use 10ms to 1d" in problems["devices[0].poll_interval"], problems


def test_reconnect_min_above_reconnect_max_is_refused(tmp_path):
    text = HEAD + 'reconnect_min = "10s"\nreconnect_max = "1s"\n'
    assert "reconnect_max" in _problems(_config(tmp_path, text))["mqtt.reconnect_min"]


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), "9" * 400 + "s", "1e9s"])
def test_non_finite_durations_are_refused_cleanly(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", ["9" * 400 + "GiB", "1e9GiB", 1.5])
def test_absurd_sizes_are_refused_with_a_value_error(bad):
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


# ---- a password over mqtt:// (#9) ------------------------------------------------------


def _with_password(tmp_path: Path, url: str, extra: str = "") -> Path:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    text = HEAD.replace("mqtt://127.0.0.1:1883", url)
    return _config(tmp_path, text + f'password_file = "secret"\n{extra}')


def test_a_password_over_plain_mqtt_is_refused_unless_allowed(tmp_path):
    problems = _problems(_with_password(tmp_path, "mqtt://127.0.0.1:1883"))
    assert "plain text" in problems["mqtt.password_file"]
    assert "allow_plaintext_password = true" in problems["mqtt.password_file"]


def test_an_allowed_plaintext_password_is_a_warning_that_check_prints(tmp_path):
    cfg = _with_password(tmp_path, "mqtt://127.0.0.1:1883", "allow_plaintext_password = true\n")
    config = load_config(cfg)
    assert [w.entry for w in config.warnings] == ["mqtt.password_file"]
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "warning:" in out.stderr and "plain text" in out.stderr


def test_a_password_over_mqtts_needs_no_opt_in(tmp_path):
    config = load_config(_with_password(tmp_path, "mqtts://127.0.0.1:8883"))
    assert config.warnings == ()


# ---- relative paths: from the config file's folder, exactly once (#9) --------------------


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A config at tmp/sub/agent.toml, the working directory tmp/other: `--config` is
    given as ../sub/agent.toml."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    return tmp_path / "sub"


def _load_elsewhere(sub: Path, text: str):
    (sub / "agent.toml").write_text(text, encoding="utf-8")
    return load_config(Path("..") / "sub" / "agent.toml")


def test_store_path_and_default_status_file_are_taken_from_the_config_folder(elsewhere):
    config = _load_elsewhere(elsewhere, HEAD + '[store]\npath = "data/outbox.db"\n')
    assert config.store.path == elsewhere / "data" / "outbox.db"
    assert config.agent.status_file == elsewhere / "data" / "outbox.db.status.json"


def test_status_file_is_taken_from_the_config_folder_once(elsewhere):
    text = HEAD.replace("[mqtt]", 'status_file = "run/status.json"\n[mqtt]')
    config = _load_elsewhere(elsewhere, text)
    assert config.agent.status_file == elsewhere / "run" / "status.json"


def test_tls_and_secret_files_are_taken_from_the_config_folder(elsewhere, pki):
    (elsewhere / "tls").mkdir()
    for name in ("ca.pem", "gw.pem", "gw.key"):
        (elsewhere / "tls" / name).write_bytes((pki / name).read_bytes())
        (elsewhere / "tls" / name).chmod(0o600)
    (elsewhere / "card.key").write_text("k" * 32)
    (elsewhere / "card.key").chmod(0o600)
    text = (
        HEAD.replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883")
        + 'ca_file = "tls/ca.pem"\ncert_file = "tls/gw.pem"\nkey_file = "tls/gw.key"\n'
        + '[privacy]\ncard_key_file = "card.key"\n'
    )
    config = _load_elsewhere(elsewhere, text)
    assert config.mqtt.ca_file == elsewhere / "tls" / "ca.pem"
    assert config.mqtt.cert_file == elsewhere / "tls" / "gw.pem"
    assert config.mqtt.key_file == elsewhere / "tls" / "gw.key"
    assert config.privacy.card_key_file == elsewhere / "card.key"


def test_password_file_is_taken_from_the_config_folder(elsewhere):
    (elsewhere / "pw").write_text("s3cret\n")
    (elsewhere / "pw").chmod(0o600)
    text = HEAD.replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883")
    config = _load_elsewhere(elsewhere, text + 'password_file = "pw"\n')
    assert config.mqtt.password_file == elsewhere / "pw"
    assert config.password() == "s3cret"


def test_profile_dirs_and_profile_files_are_taken_from_the_config_folder(elsewhere):
    shipped = Path(__file__).parent.parent / "device_profiles" / "synthetic"
    src = next(p for p in shipped.rglob("*.toml") if "synthetic-fence" in p.read_text())
    own = src.read_text().replace('id = "synthetic-fence"', 'id = "own-fence"')
    (elsewhere / "profiles").mkdir()
    (elsewhere / "profiles" / "own-fence.toml").write_text(own)
    (elsewhere / "file-fence.toml").write_text(own.replace('"own-fence"', '"file-fence"'))
    text = (
        'profile_dirs = ["profiles"]\n'
        + HEAD
        + SIM
        + '[[devices]]\nid = "a"\nprofile = "own-fence"\nbus = "sim"\n'
        + '[[devices]]\nid = "b"\nprofile = "file-fence.toml"\nbus = "sim"\n'
    )
    config = _load_elsewhere(elsewhere, text)
    assert [d.profile.id for d in config.devices] == ["own-fence", "file-fence"]


def test_bridge_port_and_firmware_dir_are_taken_from_the_config_folder(elsewhere):
    text = HEAD + '[[buses]]\nid = "node"\ndriver = "bridge"\nport = "dev/node0"\n'
    config = _load_elsewhere(elsewhere, text + 'firmware_dir = "firmware"\n')
    opts = config.buses[0].options
    assert opts.port == str(elsewhere / "dev" / "node0")
    assert opts.firmware_dir == str(elsewhere / "firmware")


def test_serial_urls_and_absolute_ports_are_left_as_written(elsewhere):
    text = (
        HEAD
        + '[[buses]]\nid = "rtu"\ndriver = "modbus-rtu"\nport = "rtu/line"\n'
        + '[[buses]]\nid = "url"\ndriver = "modbus-rtu"\nport = "socket://10.0.0.9:4001"\n'
        + '[[buses]]\nid = "abs"\ndriver = "bridge"\nport = "/dev/ttyUSB0"\n'
    )
    ports = [b.options.port for b in _load_elsewhere(elsewhere, text).buses]
    assert ports == [str(elsewhere / "rtu" / "line"), "socket://10.0.0.9:4001", "/dev/ttyUSB0"]
