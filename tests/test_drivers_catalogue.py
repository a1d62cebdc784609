"""Meta-tests that keep the driver catalogue honest: every driver folder is registered,
documented, and its README embeds its sample config verbatim; the sample config is valid."""

from __future__ import annotations

import os
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from agent.config import load_config

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = sorted(
    p for p in (ROOT / "drivers").iterdir() if p.is_dir() and not p.name.startswith("_")
)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_driver_folder_is_registered_and_documented(folder):
    targets = {ep.value.split(":")[0] for ep in entry_points(group="campus_agent.drivers")}
    assert f"drivers.{folder.name}" in targets, (
        f"no entry point in pyproject.toml for {folder.name}"
    )
    readme = (folder / "README.md").read_text()
    sample = (folder / "sample.toml").read_text()
    assert sample in readme, "the README must embed sample.toml verbatim"
    for section in (
        "## What it talks to",
        "## Configuration",
        "## Troubleshooting",
        "## Known limits",
    ):
        assert section in readme


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_sample_config_is_valid(folder, tmp_path):
    sample = (folder / "sample.toml").read_text()
    tomllib.loads(sample)
    _make_secrets(tomllib.loads(sample), tmp_path)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[agent]\nschool = "s"\ngateway = "g"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n' + sample
    )
    if "card_key_file" in sample:  # a card reader's sample names the school's key file
        key = tmp_path / "card.key"
        key.write_bytes(b"k" * 32)
        key.chmod(0o600)
    config = load_config(cfg)
    assert config.devices


def _make_secrets(sample: dict, folder: Path) -> None:
    """The key files a card reader's sample names (relative to the config), made 0600."""
    files = [(sample.get("privacy", {}).get("card_key_file"), 32)]
    files += [(d.get("scbk_file"), 16) for d in sample.get("devices", [])]
    for name, size in files:
        if name and not Path(name).is_absolute():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(size).hex().encode())  # text: never stripped short
            path.chmod(0o600)
