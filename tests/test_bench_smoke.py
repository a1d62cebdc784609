"""A tiny run of the benchmarks keeps them working (figures are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.harness.process import ROOT

pytestmark = pytest.mark.slow


def test_throughput_benchmark_quick_run(tmp_path):
    out = tmp_path / "throughput.json"
    r = subprocess.run(
        [sys.executable, "-m", "bench", "throughput", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ceiling: raw paho QoS 1" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["figures"], doc


def test_modbus_benchmark_quick_run(tmp_path):
    out = tmp_path / "modbus.json"
    r = subprocess.run(
        [sys.executable, "-m", "bench", "modbus", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "points polled/s" in r.stdout
    assert json.loads(out.read_text())


def test_bridge_figures_run(tmp_path):
    out = tmp_path / "bridge.json"
    r = subprocess.run(
        [sys.executable, "-m", "bench", "bridge", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    fw = json.loads(out.read_text())["firmware"]
    assert fw["chunks"] == 1311
    assert fw["wire_bytes"] > fw["size"]
