"""The Debian package (systemd/deb/build.py): built for both architectures, installed into a
throwaway Debian 12 root, run, upgraded, removed and purged there.

One session builds the packages (arm64 0.2.0, amd64 0.2.0 and 0.2.1, at once) and makes the
root with debootstrap from Debian's archive (minbase + python3, python3-venv, adduser),
alongside. Everything in the root runs through `chroot` with a clean environment; `dpkg -i`
runs in a network namespace of its own (`unshare -n`: not even the host's loopback), so the
package must install from what it carries. The agent installed there runs as the package's
`campus-agent` user and publishes to a mosquitto on the host's loopback (a chroot shares the
host's network). Needs root (CI runs as root), debootstrap and dpkg-deb (tests/setup.sh).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need
from tests.harness.broker import Broker
from tests.harness.process import ROOT, read_json, stop_process
from tests.harness.subscriber import Subscriber
from tests.harness.waiting import wait_for

# Both tests build in the same folder: one xdist worker (tests/run.sh: --dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deb")]

BUILD = ROOT / "systemd" / "deb" / "build.py"
MIRROR = "http://deb.debian.org/debian"
PYTHONS = ("3.11", "3.12", "3.13")
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
# Every manylinux tag up to Debian 12's glibc 2.36 (pip does not expand --platform).
AARCH64 = [f"manylinux_2_{m}_aarch64" for m in range(17, 37)] + ["manylinux2014_aarch64"]


def version() -> str:
    found = re.search(r'__version__ = "([^"]+)"', (ROOT / "agent" / "__init__.py").read_text())
    assert found
    return found.group(1)


def upgraded(v: str) -> str:
    """The next patch version: the upgrade's package."""
    parts = v.split(".")
    return ".".join([*parts[:-1], str(int(parts[-1]) + 1)])


def must_be_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("tests/test_deb.py needs root (chroot, debootstrap): CI runs the suite as root")


@pytest.fixture(scope="session")
def debootstrap_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """debootstrap of Debian 12, started now, awaited by `debian_root` (the builds run alongside)."""
    must_be_root()
    binary = need("debootstrap", "debootstrap")
    base = tmp_path_factory.mktemp("chroot")
    root = base / "bookworm"
    log = (base / "debootstrap.log").open("wb")
    # Its own process group: a teardown while it runs stops its children too.
    proc = subprocess.Popen(
        [binary, "--variant=minbase", "--include=python3,python3-venv,adduser",
         "bookworm", str(root), MIRROR],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        yield proc, root
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        log.close()
        remove_root(base)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    top = str(path.resolve())
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == top or point.startswith(top + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_root(base: Path) -> None:
    """Unmount whatever debootstrap or a test left mounted in the root (its /proc, /sys, a
    bound /dev), then delete it; never delete through a mount that would not go."""
    for point in mounts_under(base):
        subprocess.run(["umount", "--lazy", point], check=False)
    left = mounts_under(base)
    assert not left, f"still mounted, not deleted: {left}"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def packages(
    tmp_path_factory: pytest.TempPathFactory, debootstrap_started: tuple[Any, Path]
) -> Iterator[dict[str, Path]]:
    """{"arm64": ..., "amd64": ..., "amd64-upgrade": ...}: build.py's packages, built at once."""
    need("dpkg-deb", "dpkg")
    out = tmp_path_factory.mktemp("dist")
    v = version()
    jobs = {"arm64": ("arm64", v), "amd64": ("amd64", v), "amd64-upgrade": ("amd64", upgraded(v))}

    def build(arch_version: tuple[str, str]) -> subprocess.CompletedProcess[str]:
        arch, ver = arch_version
        return subprocess.run(
            [sys.executable, str(BUILD), "--arch", arch, "--version", ver, "--out", str(out)],
            capture_output=True, text=True, check=False, cwd=ROOT,
        )  # fmt: skip

    with ThreadPoolExecutor(len(jobs)) as pool:
        done = dict(zip(jobs, pool.map(build, jobs.values()), strict=True))
    for name, run in done.items():
        assert run.returncode == 0, f"build.py {jobs[name]} failed:\n{run.stdout}\n{run.stderr}"
    try:
        yield {name: out / f"campus-agent_{ver}_{arch}.deb" for name, (arch, ver) in jobs.items()}
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="session")
def debian_root(debootstrap_started: tuple[Any, Path], packages: dict[str, Path]) -> Path:
    proc, root = debootstrap_started
    code = proc.wait(timeout=600)
    log = (root.parent / "debootstrap.log").read_text(errors="replace")
    assert code == 0, f"debootstrap failed ({code}):\n{log[-3000:]}"
    return root


def field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def in_root(
    root: Path, *cmd: str, network: bool = True, user: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`cmd` run inside the root as root (or `user`), with a clean environment; without
    `network`, in an empty network namespace."""
    argv = ["chroot"]
    if user:
        argv.append(f"--userspec={user}")
    argv += [str(root), *cmd]
    if not network:
        argv = ["unshare", "--net", *argv]
    run = subprocess.run(argv, capture_output=True, text=True, env=CLEAN_ENV, check=False)
    if check:
        assert run.returncode == 0, (
            f"{' '.join(cmd)}: exit {run.returncode}\n{run.stdout}\n{run.stderr}"
        )
    return run


def ids(root: Path, name: str) -> tuple[int, int] | None:
    """uid, gid of `name` in the root's /etc/passwd."""
    for line in (root / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == name:
            return int(f[2]), int(f[3])
    return None


def group_id(root: Path, group: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        f = line.split(":")
        if f[0] == group:
            return int(f[2])
    raise AssertionError(f"no group {group} in {root}")


def group_members(root: Path, group: str) -> list[str] | None:
    for line in (root / "etc/group").read_text().splitlines():
        f = line.split(":")
        if f[0] == group:
            return [m for m in f[3].split(",") if m]
    return None


def du_kib(path: Path) -> int:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def test_the_arm64_package_holds_aarch64_or_pure_wheels_that_resolve_completely(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    deb = packages["arm64"]
    assert deb.name == f"campus-agent_{version()}_arm64.deb"
    assert field(deb, "Architecture") == "arm64"
    depends = field(deb, "Depends")
    for dep in ("python3 (>= 3.11)", "python3-venv", "adduser"):
        assert dep in depends, depends
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    assert (control / "conffiles").read_text().split() == ["/etc/campus-agent/agent.toml"]
    for script in ("postinst", "prerm", "postrm"):
        assert os.access(control / script, os.X_OK), script

    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert all(line.split()[1] == "root/root" for line in listing), "files not owned by root"
    wheels = tree / "opt/campus-agent/wheels"
    names = sorted(p.name for p in wheels.iterdir())
    assert names and all(n.endswith(".whl") for n in names), names
    for n in names:
        plats = n[: -len(".whl")].rsplit("-", 1)[1].split(".")
        assert plats == ["any"] or all(p.endswith("_aarch64") for p in plats), n
    # No x86 code hides in a wheel that claims to be pure (the ELF header's machine field).
    for n in names:
        with zipfile.ZipFile(wheels / n) as z:
            for info in z.infolist():
                if info.filename.endswith(".so") or ".so." in info.filename:
                    head = z.read(info)[:20]
                    assert head[:4] == b"\x7fELF" and head[18] == 183, f"{n}: {info.filename}"
    # HID card readers need evdev, which has no wheel: not in the package.
    assert not [n for n in names if n.lower().startswith("evdev")]

    # The set is complete: pip resolves the agent with both extras from these wheels alone,
    # for an aarch64 machine, for each supported Python.
    for py in PYTHONS:
        report = tmp_path / f"report-{py}.json"
        plats = [a for p in AARCH64 for a in ("--platform", p)]
        run = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
             "--find-links", str(wheels), "--only-binary=:all:", *plats,
             "--python-version", py, "--implementation", "cp", "--abi", "cp" + py.replace(".", ""),
             "--target", str(tmp_path / f"target-{py}"), "--report", str(report),
             "--disable-pip-version-check", "--no-input", "campus-agent[ble,osdp]"],
            capture_output=True, text=True, check=False,
            env={**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "",
                 "PIP_EXTRA_INDEX_URL": "", "PIP_CONSTRAINT": ""},
        )  # fmt: skip
        assert run.returncode == 0, f"python {py}:\n{run.stdout}\n{run.stderr}"
        chosen = {
            re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i
            for i in json.loads(report.read_text())["install"]
        }
        for dist in ("campus-agent", "bleak", "libosdp", "pydantic-core", "paho-mqtt"):
            assert dist in chosen, f"python {py}: {dist} not resolved: {sorted(chosen)}"
        assert "aarch64" in chosen["pydantic-core"]["download_info"]["url"]

    # The unit, its documentation where it says, the example config, the command.
    unit = (tree / "lib/systemd/system/campus-agent.service").read_text()
    docs = re.search(r"^Documentation=(.*)$", unit, re.MULTILINE)
    assert docs
    for url in docs.group(1).split():
        assert url.startswith("file:///usr/share/doc/campus-agent/"), url
        assert (tree / url.removeprefix("file:///")).is_file(), url
    assert "until a BLE driver exists" not in unit
    assert (tree / "etc/campus-agent/agent.toml").is_file()
    link = tree / "usr/bin/campus-agent"
    assert os.readlink(link) == "/opt/campus-agent/venv/bin/campus-agent"


def test_the_amd64_package_installs_offline_runs_upgrades_removes_and_purges(
    packages: dict[str, Path],
    debian_root: Path,
    broker: Broker,
    subscribers: Callable[..., Subscriber],
    tmp_path: Path,
) -> None:
    root = debian_root
    deb, newer = packages["amd64"], packages["amd64-upgrade"]
    for p in (deb, newer):
        shutil.copy(p, root / "tmp" / p.name)
    agent: subprocess.Popen[bytes] | None = None
    try:
        # The namespace dpkg runs in has no network at all: not even the host's loopback.
        probe = in_root(
            root, "python3", "-c",
            f"import socket; socket.create_connection(('127.0.0.1', {broker.port}), 2)",
            network=False, check=False,
        )  # fmt: skip
        assert probe.returncode != 0, "unshare --net left the network reachable"

        # 1. Install, offline. A root with BlueZ has a bluetooth group: the user joins it.
        in_root(root, "addgroup", "--system", "bluetooth", network=False)
        install = in_root(root, "dpkg", "-i", f"/tmp/{deb.name}", network=False)
        assert "Setting up campus-agent" in install.stdout
        venv = root / "opt/campus-agent/venv"
        assert (venv / "bin/campus-agent").is_file()
        assert (
            os.readlink(root / "usr/bin/campus-agent") == "/opt/campus-agent/venv/bin/campus-agent"
        )
        assert (root / "lib/systemd/system/campus-agent.service").is_file()
        user = ids(root, "campus-agent")
        assert user, "no campus-agent user"
        assert "campus-agent" in (group_members(root, "dialout") or [])
        assert "campus-agent" in (group_members(root, "bluetooth") or [])
        state = root / "var/lib/campus-agent"
        st = state.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (*user, 0o750)
        # Installed-Size counts the venv postinst made (an estimate): within a quarter.
        declared = int(field(deb, "Installed-Size"))
        actual = du_kib(root / "opt/campus-agent") + du_kib(root / "usr/share/doc/campus-agent")
        assert 0.75 * actual < declared < 1.25 * actual, (declared, actual)

        # 2. The shipped example config passes `check`, as root and as the service user.
        check = in_root(root, "campus-agent", "check")
        assert "/etc/campus-agent/agent.toml: ok" in check.stdout
        spec = f"{user[0]}:{user[1]}"
        dialout = group_id(root, "dialout")
        in_root(root, "campus-agent", "check", user=spec)

        # 3. The site's edit: this test's broker, a short drain at stop.
        conf = root / "etc/campus-agent/agent.toml"
        text = conf.read_text()
        assert 'url = "mqtt://127.0.0.1:1883"' in text
        text = text.replace("127.0.0.1:1883", f"127.0.0.1:{broker.port}")
        text = text.replace("[agent]\n", '[agent]\ndrain_timeout = "1s"\n')
        conf.write_text(text)

        # 4. doctor runs there: every check ok or warn (e.g. the clock), exit 0 or 1; it
        #    finds the unit where the package put it, with its watchdog.
        doctor = in_root(root, "campus-agent", "doctor", "--json", check=False)
        assert doctor.returncode in (0, 1), f"{doctor.returncode}\n{doctor.stdout}\n{doctor.stderr}"
        assert "Traceback" not in doctor.stderr
        checks = json.loads(doctor.stdout)
        assert all(c["result"] in ("ok", "warn") for c in checks), checks
        assert any(c["name"] == "watchdog" and c["result"] == "ok" for c in checks), checks

        # 5. The installed agent, as its user, publishes the demo device's readings.
        log = tmp_path / "agent.log"

        def start_agent() -> subprocess.Popen[bytes]:
            with log.open("ab") as out:
                return subprocess.Popen(
                    ["chroot", f"--userspec={spec}", f"--groups={dialout}", str(root),
                     "campus-agent", "run"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=CLEAN_ENV,
                )  # fmt: skip

        def seqs(sub: Subscriber) -> dict[int, float]:
            return {
                e["seq"]: datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
                for e in sub.events()
            }

        sub1 = subscribers(broker, persistent=False)
        agent = start_agent()
        wait_for(
            lambda: len(sub1.events("telemetry")) >= 2 or agent.poll() is not None,
            30, "the installed agent's telemetry",
        )  # fmt: skip
        assert agent.poll() is None, log.read_text()

        # 6. A backlog: the broker goes away, events wait in the store.
        broker.stop()
        status_file = state / "outbox.db.status.json"
        wait_for(
            lambda: ((read_json(status_file) or {}).get("backlog") or 0) >= 3,
            30, "a backlog of 3 events",
        )  # fmt: skip
        assert stop_process(agent) == 0, log.read_text()[-3000:]
        agent = None
        stopped_at = time.time()
        backlog = (read_json(status_file) or {}).get("backlog") or 0
        assert backlog >= 3, read_json(status_file)
        store = state / "outbox.db"
        assert store.is_file()

        # 7. Upgrade, offline, keeping the edited config (--force-confold) and the store.
        up = in_root(root, "dpkg", "-i", "--force-confold", f"/tmp/{newer.name}", network=False)
        assert "Setting up campus-agent" in up.stdout
        assert field(newer, "Version") in in_root(root, "dpkg-query", "-W", "campus-agent").stdout
        assert conf.read_text() == text, "the edited config was replaced"
        assert store.is_file() and (venv / "bin/campus-agent").is_file()

        # ... and the events of the backlog arrive after it, none missing.
        broker.start()
        sub2 = subscribers(broker, persistent=False)
        agent = start_agent()
        first = seqs(sub1)

        def delivered() -> bool:
            got = {**first, **seqs(sub2)}
            old = [s for s, ts in seqs(sub2).items() if ts < stopped_at]
            contiguous = set(range(min(got), max(got) + 1)) <= set(got)
            return len(old) >= backlog and contiguous and max(got) > max(old, default=0)

        wait_for(
            lambda: delivered() or agent.poll() is not None, 30, "the backlog after the upgrade"
        )
        assert agent.poll() is None, log.read_text()[-3000:]
        assert stop_process(agent) == 0
        agent = None

        # 8. Remove: the venv and the command go; the config, the store and the user stay.
        in_root(root, "dpkg", "-r", "campus-agent", network=False)
        assert not (root / "opt/campus-agent").exists()
        assert not os.path.lexists(root / "usr/bin/campus-agent")
        assert conf.read_text() == text
        assert store.is_file()
        assert ids(root, "campus-agent")

        # 9. Purge: all gone, the user and its group too.
        in_root(root, "dpkg", "--purge", "campus-agent", network=False)
        assert not (root / "etc/campus-agent").exists()
        assert not state.exists()
        assert ids(root, "campus-agent") is None
        assert group_members(root, "campus-agent") is None
        assert "campus-agent" not in (group_members(root, "dialout") or [])
        assert "campus-agent" not in (group_members(root, "bluetooth") or [])
        assert in_root(root, "dpkg-query", "-W", "campus-agent", check=False).returncode != 0
    finally:
        stop_process(agent)
