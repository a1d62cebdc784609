"""Run a command under the seccomp part of a systemd unit's sandbox, without systemd.

systemd is not PID 1 where the tests run, so `systemd-run` cannot apply the unit. What a
unit file enforces with seccomp can be applied here as systemd 252-255 does it, with the
same library (libseccomp, which systemd itself links): `SystemCallFilter=` (the groups
expanded by `systemd-analyze syscall-filter`, so the lists are those of the installed
systemd), `SystemCallErrorNumber=`, `MemoryDenyWriteExecute=yes` (no mmap with PROT_WRITE
and PROT_EXEC, no mprotect/pkey_mprotect adding PROT_EXEC, no shmat with SHM_EXEC) and
`RestrictAddressFamilies=` (socket() of another family fails with EAFNOSUPPORT). Then it
execs the command, which inherits the filter, as a unit's ExecStart= does.

The mount-namespace, cgroup and user settings (ProtectSystem=, ProtectProc=, DeviceAllow=,
MemoryMax=, TasksMax=, User=) are not applied here.

    python -m tests.harness.unit_sandbox systemd/campus-agent.service -- COMMAND ARGS...

`unit_settings` and `syscall_filter` are also what tests read the unit with.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import subprocess
import sys
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
SCMP_CMP_MASKED_EQ = 7
SHM_EXEC = 0o100000
AF_MAX = 64  # above every address family Linux defines (46 in 6.x)
# Families a Python built without their headers does not name (<linux/socket.h>).
AF_NUMBERS = {"AF_NETLINK": 16, "AF_PACKET": 17, "AF_BLUETOOTH": 31, "AF_CAN": 29}


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp from <seccomp.h>."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def unit_settings(unit: Path, section: str = "Service") -> dict[str, list[str]]:
    """Every key of `section` with its values in order; an empty assignment resets the
    list, as systemd does. Continuation lines (a trailing backslash) are joined."""
    out: dict[str, list[str]] = {}
    current = ""
    pending = ""
    for raw in unit.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        if current != section or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if value:
            out.setdefault(key, []).append(value)
        else:
            out[key] = []
    return out


def expand(names: list[str], analyze: str = "systemd-analyze") -> set[str]:
    """System call names for `names` (calls and @groups, nested groups included), as the
    installed systemd defines the groups."""
    calls: set[str] = set()
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if not name.startswith("@"):
            calls.add(name)
            continue
        if name in seen:
            continue
        seen.add(name)
        text = subprocess.run(
            [analyze, "syscall-filter", "--no-pager", name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for line in text.splitlines()[1:]:
            item = line.strip()
            if item and not item.startswith("#"):
                todo.append(item)
    return calls


def syscall_filter(settings: dict[str, list[str]]) -> tuple[bool, set[str]]:
    """(allow_list, calls) from the SystemCallFilter= lines, with systemd's rule: the first
    line decides whether it is an allow-list or a deny-list (`~`); later lines of the other
    kind take their calls out of it. (False, empty): no filter."""
    lines = settings.get("SystemCallFilter", [])
    if not lines:
        return False, set()
    allow_list = not lines[0].startswith("~")
    calls: set[str] = set()
    for line in lines:
        deny = line.startswith("~")
        named = expand(line.lstrip("~").split())
        if deny != allow_list:  # a line of the list's own kind
            calls |= named
        else:
            calls -= named
    return allow_list, calls


def address_families(settings: dict[str, list[str]]) -> set[int] | None:
    """The socket families RestrictAddressFamilies= allows (None: no restriction)."""
    lines = settings.get("RestrictAddressFamilies", [])
    if not lines:
        return None
    names = " ".join(lines).split()
    if names[0].startswith("~") or names == ["none"]:
        raise ValueError("only an allow-list of RestrictAddressFamilies= is supported here")
    unknown = [n for n in names if not hasattr(socket, n) and n not in AF_NUMBERS]
    if unknown:
        raise ValueError(f"unknown address families: {unknown}")
    return {AF_NUMBERS[n] if n in AF_NUMBERS else int(getattr(socket, n)) for n in names}


class Filter:
    """A libseccomp filter context."""

    def __init__(self, default: int) -> None:
        self.lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_init.argtypes = [ctypes.c_uint32]
        self.lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(ArgCmp),
        ]
        self.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.ctx = self.lib.seccomp_init(default)
        if not self.ctx:
            raise OSError("seccomp_init failed")

    def number(self, name: str) -> int | None:
        """The call's number on this architecture (None: it has none here)."""
        nr = int(self.lib.seccomp_syscall_resolve_name(name.encode()))
        return nr if nr >= 0 else None

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = self.number(name)
        if nr is None:
            return
        arr = (ArgCmp * max(len(cmps), 1))(*(ArgCmp(*c) for c in cmps))
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), arr)
        if rc < 0:
            raise OSError(-rc, f"seccomp_rule_add {name}: {os.strerror(-rc)}")

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")


def apply(unit: Path) -> None:
    """Load the unit's seccomp settings into this process (and what it execs)."""
    settings = unit_settings(unit)
    allow_list, calls = syscall_filter(settings)
    errnos = settings.get("SystemCallErrorNumber", [])
    denied = scmp_act_errno(getattr(errno, errnos[-1])) if errnos else SCMP_ACT_KILL_PROCESS
    f = Filter(denied if allow_list else SCMP_ACT_ALLOW)
    for name in sorted(calls):
        f.rule(SCMP_ACT_ALLOW if allow_list else denied, name)
    if settings.get("MemoryDenyWriteExecute", ["no"])[-1] in ("yes", "true", "on", "1"):
        eperm = scmp_act_errno(errno.EPERM)
        wx = mmap.PROT_WRITE | mmap.PROT_EXEC
        f.rule(eperm, "mmap", (2, SCMP_CMP_MASKED_EQ, wx, wx))
        f.rule(eperm, "mprotect", (2, SCMP_CMP_MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
        f.rule(eperm, "pkey_mprotect", (2, SCMP_CMP_MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
        f.rule(eperm, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
    families = address_families(settings)
    if families is not None:
        nosupport = scmp_act_errno(errno.EAFNOSUPPORT)
        for af in range(AF_MAX):
            if af not in families:
                f.rule(nosupport, "socket", (0, SCMP_CMP_EQ, af, 0))
        f.rule(nosupport, "socket", (0, SCMP_CMP_GE, AF_MAX, 0))
    f.load()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m tests.harness.unit_sandbox UNIT -- COMMAND...\n")
        return 2
    apply(Path(argv[0]))
    os.execvp(argv[2], argv[2:])  # noqa: S606 - the command the caller gave
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
