"""Starting the real agent (`campus-agent run`, a subprocess): what it refuses, with which exit
code, where it writes, and with which file modes (#9).

Exit 2 is the systemd unit's RestartPreventExitStatus: a config the agent cannot use, or a
store folder it cannot write, is reported in one line each and not restarted in a loop.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BASE_CONFIG
from tests.harness.agent import AgentProcess, fence_device
from tests.harness.waiting import wait_for

RUN_TIMEOUT = 60  # a run refused at start-up returns long before this


def _run(config: Path, *, cwd: Path | None = None, wrapper: list[str] | None = None):
    cmd = [sys.executable, "-m", "agent.cli", "run", "--config", str(config)]
    return subprocess.run(
        [*(wrapper or []), *cmd],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=cwd,
        check=False,
    )


def _config(url: str, **fmt: str) -> str:
    values = {
        "url": url,
        "reconnect": 'reconnect_min = "200ms"\nreconnect_max = "1s"',
        "mqtt_extra": "",
        "max_size": "64MiB",
        "allow": "[]",
    }
    return BASE_CONFIG.format(**{**values, **fmt}) + fence_device()


@pytest.mark.parametrize(
    ("mqtt_extra", "entry"),
    [
        ("connect_timeout = 0", "mqtt.connect_timeout"),
        ('keepalive = "1000d"', "mqtt.keepalive"),
        ("reconnect_probe = 1e-9", "mqtt.reconnect_probe"),
    ],
)
def test_run_refuses_an_out_of_range_value_with_exit_2_and_no_traceback(
    tmp_path, broker, mqtt_extra, entry
):
    """These values passed `check` before: `run` then spun or crashed with a traceback."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(_config(broker.url, mqtt_extra=mqtt_extra).replace('keepalive = "10s"\n', ""))
    out = _run(cfg)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert f"{entry}: " in out.stderr and "out of range" in out.stderr


def test_a_read_only_store_folder_is_one_clear_error_and_exit_2(tmp_path, broker):
    """The store's folder is mounted read-only in the agent's own mount namespace. Before:
    a traceback from SQLite ('unable to open database file') and exit 1, restarted by
    systemd for ever."""
    unshare = shutil.which("unshare") or pytest.fail(
        "unshare is missing: apt-get install util-linux"
    )
    store = tmp_path / "ro"
    store.mkdir()
    cfg = tmp_path / "agent.toml"
    text = _config(broker.url).replace('path = "outbox.db"', 'path = "ro/outbox.db"')
    cfg.write_text(text.replace("[agent]\n", '[agent]\nstatus_file = "status.json"\n'))
    ns = [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-r", "-m"]
    mount = f'mount --bind -o ro {store} {store} && exec "$@"'
    out = _run(cfg, wrapper=[*ns, "sh", "-c", mount, "sh"])
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "store.path" in ln]
    assert len(lines) == 1, out.stderr
    assert "read-only" in lines[0] and str(store) in lines[0]


def test_store_wal_and_status_file_are_not_readable_by_other_users(tmp_path, broker):
    """Outside systemd (no UMask=) the agent sets its own umask: its files are not
    world-readable even when started from a shell with umask 022."""
    agent = AgentProcess(tmp_path / "agent")
    agent.write_config(_config(broker.url))
    old = os.umask(0o022)
    try:
        agent.start(log_level="info")
    finally:
        os.umask(old)
    try:
        agent.wait_status(
            lambda s: s["broker"]["connected"] and s["store"]["committed"] > 0,
            30,
            "the agent to connect and commit events",
        )
        wal = Path(f"{agent.store}-wal")
        wait_for(wal.exists, 10, "the store's WAL")
        for f in (agent.store, wal, agent.status_path):
            mode = stat.S_IMODE(f.stat().st_mode)
            assert mode & 0o007 == 0, f"{f.name} is readable by other users: {oct(mode)}"
        assert agent.terminate() == 0
    finally:
        if agent.alive():
            agent.kill()


def test_a_relative_config_path_puts_the_status_file_in_the_config_folder_once(tmp_path, broker):
    """`--config sub/agent.toml` from the folder above: before, the status file was
    resolved twice (sub/sub/outbox.db.status.json, a folder that does not exist)."""
    sub = tmp_path / "sub"
    agent = AgentProcess(sub)
    agent.write_config(_config(broker.url))
    cmd = [sys.executable, "-m", "agent.cli", "run", "--config", "sub/agent.toml"]
    agent.spawn(cmd, tmp_path / "agent.log", cwd=tmp_path, env=dict(os.environ))
    try:
        agent.wait_status(lambda s: s["broker"]["connected"], 30, "a status in sub/")
        assert agent.store.exists()
        assert not (sub / "sub").exists()
        agent.signal(signal.SIGTERM)
        assert agent.proc is not None and agent.proc.wait(20) == 0
    finally:
        if agent.alive():
            agent.kill()
