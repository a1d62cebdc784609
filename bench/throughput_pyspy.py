"""py-spy for `--profile` (throughput, modbus): record a process over the measured window,
and the top functions of what it recorded."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def start_py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy record (collapsed stacks) of process `pid` over the measured window."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "200",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_py_spy(spy: subprocess.Popen[bytes], seconds: float) -> None:
    """Let py-spy finish its `seconds` of recording and write its file (SIGKILL if stuck)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.wait(seconds + 30)
    if spy.poll() is None:
        spy.kill()
        spy.wait()


def _function(frame: str) -> str:
    """'encode (agent/contract.py:120)' -> 'encode (agent/contract.py)': lines merged."""
    name, sep, where = frame.rpartition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if sep and ":" in where else frame


def summarize_profile(path: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Top functions (% of samples) from py-spy's collapsed stacks.

    `own`: where the time is spent (the innermost frame); `inclusive`: the function or
    anything it calls; `tasks`: what each event-loop callback (the frame under
    Handle._run) or thread costs with all it calls.
    """
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    tasks: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_function(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
        names = [f.split(" (", 1)[0] for f in frames]
        if "Handle._run" in names:
            i = len(names) - 1 - names[::-1].index("Handle._run")
            tasks[frames[i + 1] if i + 1 < len(frames) else "Handle._run"] += n
        elif "BaseEventLoop._run_once" in names:
            tasks["(event loop: select / scheduling)"] += n
        elif names[0] in ("_run_module_as_main", "Thread._bootstrap"):
            tasks[frames[min(1, len(frames) - 1)]] += n
        else:
            tasks["(incomplete stack)"] += n
    if not total:
        return {"own": [], "inclusive": [], "tasks": []}

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / total, 1)) for f, n in c.most_common(top)]

    return {"own": pct(own), "inclusive": pct(incl), "tasks": pct(tasks)}


def profile_report(who: str, path: Path) -> dict[str, Any]:
    """The file and its summarize_profile(), for the result file; prints its top 10."""
    summary = {"file": str(path), **summarize_profile(path)}
    print(f"\npy-spy ({who}, last run): {path}")
    for key, title in (("tasks", "by loop callback / thread"), ("own", "own time")):
        print(f"  {title}:")
        for frame, pct in summary[key][:10]:
            print(f"    {pct:5.1f}%  {frame}")
    return summary
