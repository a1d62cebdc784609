"""A tiny run of the benchmarks keeps them working (figures are never asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.process import ROOT

# One xdist worker runs every test that measures (tests/run.sh: --dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("measures")]


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


SCHOOL_QUICK = [sys.executable, "-m", "bench", "school", "--quick", "--levels", "0.5"]
SCHOOL_QUICK += ["--level-seconds", "4", "--peak-seconds", "10", "--devices", "10"]
SCHOOL_QUICK += ["--readers", "2", "--boards", "2", "--ble", "2"]  # the smoke: small


def test_school_benchmark_quick_run(tmp_path):
    """The gateway-class benchmark at smoke sizes: the agent in its 25 % CPU group (root and
    cgroup v1 only, else it says why and exits 2), every seq accounted for."""
    from bench.school_setup import CpuCap

    out = tmp_path / "school.json"
    r = subprocess.run(
        [*SCHOOL_QUICK, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if (why := CpuCap.unavailable()) is not None:
        assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
        assert why in r.stderr
        return
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "cpu.cfs_quota_us=25000" in r.stdout
    group = re.search(r"cgroup v1 (/sys/fs/cgroup/cpu/campus-bench-\d+)", r.stdout)
    assert group, r.stdout[:2000]
    assert not Path(group[1]).exists()  # removed after the run
    assert "highest sustained rate, backlog flat" in r.stdout
    doc = json.loads(out.read_text())
    run = doc["runs"][0]
    assert run["last_seq"] > 0
    assert run["lost"] == 0, run
    assert run["cards_delivered"] == run["cards_sent"], run
