#!/usr/bin/env python3
"""Builds the Debian package campus-agent_<version>_<arch>.deb for amd64 or arm64.

    .venv/bin/python systemd/deb/build.py --arch arm64 [--version 0.2.0] [--out dist/]

The package carries no Python code of its own outside /opt: the project's wheel and every
runtime dependency as a wheel in /opt/campus-agent/wheels; its postinst makes the virtualenv
/opt/campus-agent/venv with the target's `python3 -m venv` and installs from those wheels
only (`pip install --no-index`): installing needs no network. Binary wheels are fetched here,
for the target's architecture and for each python3 that Debian 12 (3.11), Ubuntu 24.04
(3.12) and Debian 13 (3.13) ship, with pip's `--platform` options, at the versions in
constraints.txt. Pure-Python dependencies published only as an sdist (SDIST_ONLY) are built
into wheels here. The `hid` extra (evdev) has no binary wheel and is left out.

Needs pip (run it with the project's .venv python or any python3 with pip), network access
to the package index, and dpkg-deb. Prints the package's path, its size and Installed-Size.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
# The python3 of each supported release: Debian 12, Ubuntu 24.04, Debian 13.
PYTHONS = ("3.11", "3.12", "3.13")
# Debian 12's glibc (2.36) is the oldest the package installs on: manylinux wheels up to it.
GLIBC_MINOR_MAX = 36
EXTRAS = "ble,osdp"
# Pure-Python runtime dependencies that PyPI has as an sdist only: built into wheels here
# (bluetooth-auto-recovery needs PyRIC). The build fails if one of them is not pure.
SDIST_ONLY = ("PyRIC",)
PREFIX = "/opt/campus-agent"
NOT_IN_WHEEL = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
                ".hypothesis", "demo-run", "tests", "bench")  # fmt: skip
# The virtualenv postinst makes is no file of the package but takes room in /opt: Installed-
# Size counts the unpacked wheels of the Python version that takes most, half as much again
# for the bytecode pip compiles, and the pip and setuptools `python3 -m venv` puts in.
BYTECODE_FACTOR = 1.5
VENV_BASE_KIB = 20 * 1024
MAINTAINER = "Campus edge agent maintainers <campus-agent@invalid>"


class BuildError(Exception):
    """A step failed; the message says which and why."""


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-25:]
        raise BuildError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}):\n" + "\n".join(tail))


def project_version() -> str:
    text = (ROOT / "agent" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if not found:
        raise BuildError("no __version__ in agent/__init__.py")
    return found.group(1)


def pinned(name: str) -> str:
    """`name==version` from constraints.txt."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        req = line.split("#", 1)[0].strip()
        if req.lower().startswith(name.lower() + "=="):
            return req
    raise BuildError(f"{name} is not pinned in constraints.txt")


def pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]


def platforms(machine: str) -> list[str]:
    """Every manylinux tag a Debian 12 machine accepts (pip 23 does not expand them)."""
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(17, GLIBC_MINOR_MAX + 1)]
    tags.append(f"manylinux2014_{machine}")
    if machine == "x86_64":
        tags += [f"manylinux_2_{m}_{machine}" for m in (5, 12)]
        tags += [f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    return tags


def wheel_platforms(name: str) -> list[str]:
    """The platform tags of a wheel file name (a.b.c compressed tags split)."""
    return name[: -len(".whl")].rsplit("-", maxsplit=1)[-1].split(".")


def glibc_needed(wheels: list[Path]) -> tuple[int, int]:
    """The newest glibc any binary wheel needs: for each, the oldest of its manylinux tags."""
    need = (2, 17)
    for w in wheels:
        found = []
        for tag in wheel_platforms(w.name):
            m = re.match(r"manylinux_(\d+)_(\d+)_", tag)
            if m:
                found.append((int(m.group(1)), int(m.group(2))))
            elif tag.startswith(("manylinux1_", "manylinux2010_", "manylinux2014_")):
                found.append((2, 17))
        if found:
            need = max(need, min(found))
    return need


def check_wheels(wheels: Path, machine: str) -> None:
    """Every file is a wheel, pure or for `machine`."""
    wrong = []
    for f in sorted(wheels.iterdir()):
        if f.suffix != ".whl":
            wrong.append(f"{f.name}: not a wheel")
            continue
        plats = wheel_platforms(f.name)
        if plats != ["any"] and not all(p.endswith("_" + machine) for p in plats):
            wrong.append(f"{f.name}: not for {machine}")
    if wrong:
        raise BuildError("wrong files among the wheels:\n  " + "\n  ".join(wrong))


def fetch_wheels(dest: Path, machine: str, work: Path) -> None:
    """The project's wheel and its runtime dependencies' wheels for `machine`, into `dest`."""
    built = work / "built"
    # From a copy: setuptools builds in the source tree (build/, *.egg-info), and two builds
    # at once in one tree break each other.
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_IN_WHEEL))
    run(pip("wheel", "--no-deps", "-q", "-w", str(built), str(src)))
    (project,) = built.glob("campus_agent-*.whl")
    for name in SDIST_ONLY:
        run(pip("wheel", "--no-deps", "-q", "-w", str(built), pinned(name)))
    for w in built.glob("*.whl"):
        if not w.name.endswith("-none-any.whl"):
            raise BuildError(f"{w.name} is not a pure wheel: it cannot go to another machine")
    plats = [a for p in platforms(machine) for a in ("--platform", p)]

    def download(version: str) -> Path:
        into = work / f"py{version}"
        abi = "cp" + version.replace(".", "")
        run(
            pip(
                "download", "-q", "-d", str(into),
                "-c", str(ROOT / "constraints.txt"),
                "--find-links", str(built),
                "--only-binary=:all:", "--implementation", "cp",
                "--python-version", version, "--abi", abi, *plats,
                f"{project}[{EXTRAS}]",
            )
        )  # fmt: skip
        return into

    # One pip per Python version at once, each into its own folder (the pure wheels they
    # share are the same files), then merged.
    dest.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(len(PYTHONS)) as pool:
        for folder in pool.map(download, PYTHONS):
            for w in folder.iterdir():
                if not (dest / w.name).exists():
                    shutil.move(w, dest / w.name)
    check_wheels(dest, machine)


def venv_estimate_kib(wheels: list[Path]) -> int:
    """The room the virtualenv will take (see BYTECODE_FACTOR), in KiB."""
    per_version = dict.fromkeys(PYTHONS, 0)
    for w in wheels:
        python_tag, abi = w.name[: -len(".whl")].split("-")[-3:-1]
        unpacked = sum(i.file_size for i in zipfile.ZipFile(w).infolist()) // 1024
        for version in PYTHONS:
            cp = "cp" + version.replace(".", "")
            # A cpXY wheel is for that version only; abi3 and pure wheels serve all.
            if abi in ("none", "abi3") or python_tag == cp:
                per_version[version] += unpacked
    return int(max(per_version.values()) * BYTECODE_FACTOR) + VENV_BASE_KIB


def installed_size_kib(tree: Path) -> int:
    """Installed-Size as dpkg-gencontrol counts it: files in KiB rounded up, 1 per other entry."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        if Path(dirpath) == tree / "DEBIAN":
            dirnames.clear()
            continue
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                total += max(1, math.ceil(p.stat().st_size / 1024))
            else:
                total += 1
    return total


def copy(src: Path, dest: Path, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def stage(tree: Path, arch: str, version: str, wheels: Path) -> int:
    """The package's files under `tree` and its DEBIAN/ folder; the Installed-Size."""
    machine = ARCHES[arch]
    for w in sorted(wheels.glob("*.whl")):
        copy(w, tree / PREFIX.lstrip("/") / "wheels" / w.name)
    venv_bin = tree / "usr" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "campus-agent").symlink_to(f"{PREFIX}/venv/bin/campus-agent")
    copy(
        ROOT / "systemd" / "campus-agent.service", tree / "lib/systemd/system/campus-agent.service"
    )
    copy(HERE / "agent.toml", tree / "etc/campus-agent/agent.toml")
    doc = tree / "usr/share/doc/campus-agent"
    copy(ROOT / "README.md", doc / "README.md")
    copy(ROOT / "CHANGELOG.md", doc / "CHANGELOG.md")
    copy(ROOT / "systemd" / "README.md", doc / "systemd" / "README.md")
    copy(HERE / "agent.toml", doc / "examples" / "agent.toml")
    copy(ROOT / "examples" / "demo.toml", doc / "examples" / "demo.toml")
    copy(HERE / "copyright", doc / "copyright")
    for f in sorted((ROOT / "docs").rglob("*")):
        if f.is_file():
            copy(f, doc / "docs" / f.relative_to(ROOT / "docs"))
    for d in [tree, *(p for p in tree.rglob("*") if p.is_dir() and not p.is_symlink())]:
        d.chmod(0o755)

    shipped = sorted((tree / PREFIX.lstrip("/") / "wheels").glob("*.whl"))
    size = installed_size_kib(tree) + venv_estimate_kib(shipped)
    major, minor = glibc_needed(shipped)
    libc = f"{major}.{minor}"
    debian = tree / "DEBIAN"
    debian.mkdir()
    control = f"""\
Package: campus-agent
Version: {version}
Architecture: {arch}
Maintainer: {MAINTAINER}
Installed-Size: {size}
Depends: python3 (>= 3.11), python3 (<< 3.14), python3-venv, adduser, libc6 (>= {libc})
Suggests: bluez
Section: net
Priority: optional
Description: campus edge agent: school devices to the district MQTT broker
 Reads a school's devices (Modbus RTU/TCP, serial card readers, OSDP readers,
 Bluetooth LE sensors, class boards, microcontroller nodes), keeps every event
 on disk until the district broker has acknowledged it, and publishes them
 over MQTT. Runs as the campus-agent user under a hardened systemd unit.
 .
 The agent and its dependencies ({machine} wheels for Python {", ".join(PYTHONS)})
 are installed into a private virtualenv in {PREFIX}/venv when the package
 is configured, without network access.
"""
    (debian / "control").write_text(control)
    (debian / "conffiles").write_text("/etc/campus-agent/agent.toml\n")
    for script in ("postinst", "prerm", "postrm"):
        copy(HERE / script, debian / script, 0o755)
    debian.chmod(0o755)
    return size


def build(arch: str, version: str, out: Path) -> Path:
    if arch not in ARCHES:
        raise BuildError(f"--arch {arch}: use one of {', '.join(ARCHES)}")
    if not re.fullmatch(r"[0-9][A-Za-z0-9.+~-]*", version):
        raise BuildError(f"--version {version!r} is not a Debian version")
    dpkg_deb = shutil.which("dpkg-deb")
    if dpkg_deb is None:
        raise BuildError("dpkg-deb is not installed: apt-get install dpkg")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="campus-agent-deb-") as tmp:
        work = Path(tmp)
        wheels = work / "wheels"
        fetch_wheels(wheels, ARCHES[arch], work)
        tree = work / "tree"
        tree.mkdir()
        size = stage(tree, arch, version, wheels)
        deb = out / f"campus-agent_{version}_{arch}.deb"
        # Wheels are zip files already: xz gains a few per cent for many seconds; gzip -9.
        run([dpkg_deb, "--root-owner-group", "-Zgzip", "-z9", "--build", str(tree), str(deb)])
    print(f"{deb}: {deb.stat().st_size / 1e6:.1f} MB, Installed-Size {size} KiB")
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, choices=sorted(ARCHES))
    parser.add_argument("--version", default=None, help="default: agent/__init__.py's")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="default: dist/")
    args = parser.parse_args(argv)
    try:
        build(args.arch, args.version or project_version(), args.out.resolve())
    except BuildError as e:
        print(f"build.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
