"""Site config validation: every broken config in tests/cases/config gives its messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import load_config, parse_broker_url
from agent.errors import ConfigError
from agent.units import parse_duration, parse_size

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
    text = (Path(__file__).parent.parent / "examples" / "demo.toml").read_text()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text.replace("PORT", "1883"))
    config = load_config(cfg)
    assert config.store.path == tmp_path / "outbox.db"  # relative to the config file
    assert {d.profile.id for d in config.devices} == {
        "xy-md02",
        "eastron-sdm120",
        "generic-pulse-fence",
    }


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
