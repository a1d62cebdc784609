"""The example config the Debian package installs (systemd/deb/agent.toml) is valid as
shipped, and its commented status page block is valid once uncommented (with its token)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "systemd" / "deb" / "agent.toml"


def check(path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "agent.cli", "check", "--config", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_the_shipped_example_config_passes_check() -> None:
    done = check(EXAMPLE)
    assert done.returncode == 0, done.stderr
    assert ": ok" in done.stdout


def test_its_status_page_block_uncommented_passes_check_and_needs_its_token(tmp_path: Path) -> None:
    token = tmp_path / "page.token"
    text = EXAMPLE.read_text()
    block = text[text.index("# [status_page]") : text.index("\n\n", text.index("# [status_page]"))]
    live = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    live = live.replace("/etc/campus-agent/secrets/page.token", str(token))
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text.replace(block, live))
    missing = check(cfg)
    assert missing.returncode == 2 and "token_file" in missing.stderr, missing.stderr
    token.write_text("x" * 32)
    token.chmod(0o640)
    done = check(cfg)
    assert done.returncode == 0, done.stderr
