"""The README's first command works: the demo shows telemetry, an alarm and a command reply."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.harness.process import ROOT

pytestmark = pytest.mark.slow


def test_demo_script_shows_events_and_stops_cleanly():
    env = {**os.environ, "DEMO_SECONDS": "15"}
    r = subprocess.run(
        ["bash", str(ROOT / "examples" / "demo.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "telemetry env/" in out
    assert "zone_3 ACTIVE" in out
    assert "reply" in out and "ok" in out
    assert not _processes_mentioning(str(ROOT / "demo-run")), "the demo left processes behind"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(int(d.name))
    return found
