"""The systemd unit (systemd/campus-agent.service): its exposure score, what it keeps for the
agent, and the agent running under its seccomp settings.

systemd is not PID 1 here, so the unit cannot be started. `systemd-analyze security
--offline=true` scores the file as systemd would run it; tests.harness.unit_sandbox applies
the unit's system call filter, MemoryDenyWriteExecute= and RestrictAddressFamilies= the way
systemd does (libseccomp, the groups as the installed systemd defines them) and then runs
the real agent against a real broker and a serial port. tests/setup.sh installs systemd.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.store_schema import EXIT_STORE_TOO_NEW
from tests.conftest import need
from tests.harness.agent import env_device, fence_device
from tests.harness.modbus import ModbusSim
from tests.harness.process import ROOT
from tests.harness.pty import PtyPair
from tests.harness.unit_sandbox import syscall_filter, unit_settings
from tests.harness.waiting import wait_for

UNIT = ROOT / "systemd" / "campus-agent.service"
SANDBOX = [sys.executable, "-m", "tests.harness.unit_sandbox", str(UNIT), "--"]
VECTORS = Path(__file__).parent / "vectors"
MIB = 1024 * 1024


def security(unit: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    analyze = need("systemd-analyze", "systemd")
    run = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", run.stdout)
    assert found, f"no overall exposure level in:\n{run.stdout}\n{run.stderr}"
    return float(found.group(1)), run


def size(value: str) -> int:
    """A systemd size (256M, 1G, 1048576) in bytes."""
    m = re.fullmatch(r"(\d+)([KMGT]?)", value)
    assert m, f"not a plain size: {value}"
    return int(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")


def test_the_unit_scores_at_most_2_0_and_every_line_is_understood():
    score, run = security(UNIT)
    # Which version scored it, for the failure message (the docs quote systemd 252).
    version = subprocess.run(
        [need("systemd-analyze", "systemd"), "--version"], capture_output=True, text=True
    ).stdout.split("\n")[0]
    assert score <= 2.0, f"{version}: exposure {score}\n{run.stdout}"
    # A misspelt or unknown directive is only a warning to systemd, which then ignores it.
    assert not re.search(r"Unknown|ignoring|Failed|Invalid", run.stderr), run.stderr


def test_the_unit_keeps_what_the_agent_needs():
    s = unit_settings(UNIT)
    one = {k: v[-1] for k, v in s.items() if v}
    # Readiness, the watchdog, a reload by SIGHUP, a clean stop on SIGTERM before SIGKILL.
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert "WatchdogSec" in one and one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["KillSignal"] == "SIGTERM" and int(one["TimeoutStopSec"]) > 5  # drain_timeout
    # A config error exits 2 and is not restarted in a loop; a crash is.
    assert "2" in " ".join(s["RestartPreventExitStatus"]).split()
    # Nor a store written by a newer release (a downgrade): agent.store_schema.
    assert str(EXIT_STORE_TOO_NEW) in " ".join(s["RestartPreventExitStatus"]).split()
    assert one["Restart"] == "on-failure"
    # Its own writable state dir under a read-only system, its own user, the serial ports.
    assert one["ProtectSystem"] == "strict" and one["StateDirectory"] == "campus-agent"
    assert one["User"] == "campus-agent" and "dialout" in one["SupplementaryGroups"].split()
    assert {"char-ttyUSB rw", "char-ttyACM rw", "char-ttyS rw", "char-ttyAMA rw"} <= set(
        s["DeviceAllow"]
    )
    assert one.get("PrivateDevices", "no") == "no"  # it would hide the serial ports
    # The network: the broker and Modbus TCP, and the notify socket.
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(one["RestrictAddressFamilies"].split())
    assert one.get("PrivateNetwork", "no") == "no"
    # The clock state (agent/clock.py): glibc's adjtimex(3) is clock_adjtime(2).
    assert one.get("ProtectClock", "no") == "no"
    allow_list, calls = syscall_filter(s)
    needed = {"adjtimex", "clock_adjtime", "clock_adjtime64"}
    assert (needed <= calls) if allow_list else not (needed & calls)
    # Limits well above what the agent uses (docs/performance.md: RSS at most 71.5 MiB).
    assert size(one["MemoryMax"]) >= 2 * 72 * MIB
    assert int(one["TasksMax"]) >= 32


PROBE = textwrap.dedent(
    """
    import ctypes, ctypes.util, errno, json, mmap, os, socket

    def outcome(fn):
        try:
            fn()
            return "ok"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    timex = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
    # 31: AF_BLUETOOTH, which a Python built without the bluetooth headers does not name.
    wx = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    print(json.dumps({
        "adjtimex": libc.adjtimex(timex),
        "setgroups": outcome(lambda: os.setgroups(os.getgroups())),
        "sched_setaffinity": outcome(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))),
        "mmap_wx": outcome(lambda: mmap.mmap(-1, 4096, prot=wx).close()),
        "af_netlink": outcome(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()),
        "af_bluetooth": outcome(lambda: socket.socket(31, socket.SOCK_STREAM, 3).close()),
        "af_inet6": outcome(lambda: socket.socket(socket.AF_INET6).close()),
        "getaddrinfo": outcome(lambda: socket.getaddrinfo("localhost", 1883, flags=socket.AI_ADDRCONFIG)),
        "ctypes_callback": ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)(),
    }))
    """
)


def probe(wrapper: list[str]) -> dict[str, object]:
    run = subprocess.run(
        [*wrapper, sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr
    result: dict[str, object] = json.loads(run.stdout)
    return result


def test_the_sandbox_denies_what_the_unit_denies_and_keeps_the_clock_readable():
    outside = probe([])
    inside = probe(SANDBOX)
    # The filter is there: @privileged, @resources, W+X memory and other socket families.
    assert inside["setgroups"] == "EPERM"
    assert inside["sched_setaffinity"] == "EPERM"
    assert inside["mmap_wx"] == "EPERM"
    assert inside["af_netlink"] == "EAFNOSUPPORT"
    assert inside["af_bluetooth"] == "EAFNOSUPPORT"
    # ... and the agent's needs pass it: the clock state reads as it does outside (TIME_OK
    # or TIME_ERROR, never -1 for a denied call), names resolve without netlink, and a
    # ctypes callback gets its code memory without W+X.
    assert inside["adjtimex"] == outside["adjtimex"] != -1
    assert inside["getaddrinfo"] == "ok"
    assert inside["af_inet6"] == outside["af_inet6"]
    assert inside["ctypes_callback"] == 7


def proc_status(pid: int) -> dict[str, int]:
    """Threads and peak RSS (kB) of a running process, from /proc."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@pytest.mark.slow
def test_the_agent_runs_under_the_units_seccomp_settings(tmp_path, broker, subscribers, make_agent):
    pty = PtyPair(tmp_path / "pty")
    pty.start()
    sim = ModbusSim(tmp_path / "sim", {1: VECTORS / "xy-md02.toml"}, rtu=pty.a, baud=38400)
    sim.start()
    try:
        sub = subscribers(broker)
        serial_bus = f'\n[[buses]]\nid = "rs485-1"\ndriver = "modbus-rtu"\nport = "{pty.b}"\nbaudrate = 38400\ntimeout = "250ms"\n'
        serial_device = '\n[[devices]]\nid = "a102-env"\nprofile = "xy-md02"\nbus = "rs485-1"\naddress = 1\npoll_interval = "200ms"\n'
        agent = make_agent(
            broker.url,
            env_device(rate=20) + fence_device() + serial_bus + serial_device,
            start=False,
        )
        pid = agent.start(wrapper=SANDBOX)  # the wrapper execs the agent: same PID
        peak: dict[str, int] = {"Threads": 0, "VmHWM": 0}

        def arrived() -> bool:
            for k, v in proc_status(pid).items():
                peak[k] = max(peak[k], v)
            tele = {e["device"] for e in sub.events("telemetry")}
            return {"a101-env", "a102-env"} <= tele and len(sub.events("alarm")) >= 2

        wait_for(arrived, 30, "telemetry from the synthetic and the serial device, and alarms")
        agent.wait_status(lambda st: st["broker"]["connected"], 10, "the broker connected")
        assert agent.terminate() == 0
        limits = {k: v[-1] for k, v in unit_settings(UNIT).items() if v}
        print(
            f"under the unit's seccomp settings: peak {peak['Threads']} threads, "
            f"peak RSS {peak['VmHWM'] / 1024:.1f} MiB"
        )
        assert peak["Threads"] <= int(limits["TasksMax"]) // 2
        assert peak["VmHWM"] * 1024 <= size(limits["MemoryMax"]) // 2
        log = agent.log_text()
        assert "Operation not permitted" not in log and "Traceback" not in log, log[-3000:]
    finally:
        sim.stop()
        pty.stop()
