"""[status_page] config: its defaults, its bounds, and no page open to the network without a
token (tests/cases/config/status_page_public_without_token is the same as a case folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError

HEAD = '[agent]\nschool = "pt-023"\ngateway = "gw-main"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'


def config(tmp_path: Path, section: str) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(HEAD + "[status_page]\n" + section)
    return cfg


def problems(cfg: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    return str(info.value).replace(str(cfg), "agent.toml")


def token(tmp_path: Path, text: str = "a-long-random-token-0123456789", mode: int = 0o600) -> None:
    f = tmp_path / "page.token"
    f.write_text(text + "\n")
    f.chmod(mode)


def test_defaults_serve_loopback_without_a_token(tmp_path):
    c = load_config(config(tmp_path, ""))
    p = c.status_page
    assert (p.enabled, p.bind, p.port, p.refresh, p.token_file) == (
        True, "127.0.0.1", 8470, 5.0, None
    )  # fmt: skip
    assert c.status_token is None


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "192.168.1.20"])
def test_a_bind_off_loopback_without_a_token_is_refused(tmp_path, bind):
    text = problems(config(tmp_path, f'bind = "{bind}"\n'))
    assert f"agent.toml: status_page: bind = '{bind}' can be reached from the network" in text
    assert "set token_file" in text


def test_a_bind_off_loopback_with_a_token_is_accepted_and_the_token_read(tmp_path):
    token(tmp_path)
    c = load_config(config(tmp_path, 'bind = "0.0.0.0"\ntoken_file = "page.token"\n'))
    assert c.status_page.token_file == tmp_path / "page.token"  # from the config's folder
    assert c.status_token == "a-long-random-token-0123456789"
    assert "a-long-random-token" not in repr(c)  # never in a log line through the config


def test_a_disabled_page_needs_no_token(tmp_path):
    load_config(config(tmp_path, 'enabled = false\nbind = "0.0.0.0"\n'))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('bind = "localhost"\n', "status_page.bind: "),
        ('bind = "localhost"\n', "is not an IP address"),
        ("port = 0\n", "status_page.port: "),
        ("port = 70000\n", "status_page.port: "),
        ('refresh = "100ms"\n', "status_page.refresh: "),
        ('refresh = "1h"\n', "status_page.refresh: "),
        ('token_file = "missing.token"\n', "status_page.token_file: cannot read"),
        ("colour = 1\n", "status_page.colour: "),
    ],
)
def test_bad_values_are_refused_with_the_key(tmp_path, section, message):
    assert message in problems(config(tmp_path, section))


def test_a_token_file_readable_by_everyone_or_too_short_is_refused(tmp_path):
    token(tmp_path, mode=0o644)
    text = problems(config(tmp_path, 'token_file = "page.token"\n'))
    assert "status_page.token_file: " in text and "chmod 600" in text
    token(tmp_path, text="short")
    text = problems(config(tmp_path, 'token_file = "page.token"\n'))
    assert "at least 16 printable characters" in text
