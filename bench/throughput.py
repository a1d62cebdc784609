"""Throughput: how many events per second the agent delivers, against what paho can do here.

One run measures, on the same private mosquitto:

* the CEILING: raw paho-mqtt 2.x publishing N telemetry payloads at QoS 1, driven from
  asyncio the way agent/publisher.py drives it (socket callbacks + add_reader/add_writer,
  loop_read/loop_write/loop_misc), the window bounded by the application (a semaphore
  released in on_publish, the agent's default window), timed from the first publish to
  the last PUBACK. The payloads are built by the agent's own code (profile, DevicePoints,
  events.encode) from the same config, so topic and bytes are alike.
* the AGENT: a real `python -m agent.cli run` process with a synthetic device asked for far
  more readings than it can deliver (its profile with heartbeat 0, so that report-by-
  exception keeps every reading), plus a fence device. After a warm-up, PUBACKs/s and
  committed/s come from the deltas of its status file (broker.acked, store.committed and
  their `written` stamps); its CPU (utime+stime) and RSS (VmRSS) come from /proc.

Runs alternate the order (ceiling first, then agent first, ...) so a drift of the machine
does not always favour the same side. The table gives medians, min-max, and the ratio
agent/ceiling (the median of the per-run ratios): ratios are what we quote.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttSection, SiteConfig, load_config
from agent.events import Origin, encode, uuid7
from agent.points import DevicePoints
from agent.profiles import shipped_profiles
from agent.sample import Sample
from bench.peers import Mosquitto, ProcStat, mosquitto_version, read_json, stop_process
from bench.report import (
    RESULTS,
    ceiling_table,
    result_file,
    result_suffix,
    timestamp,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
WINDOW: int = MqttSection.model_fields["window"].default  # the agent's default window
SCHOOL, GATEWAY = "pt-023", "gw-bench"
ENV_DEVICE = "a101-env"
ENV_PROFILE = "synthetic-env"

# The agent's config in throughput, drain and latency: this head, the env device on its
# synthetic bus (ENV_DEVICE_TOML), then each benchmark's own devices.
AGENT_HEAD = """\
{profile_dirs}
[agent]
school = "{school}"
gateway = "{gateway}"
drain_timeout = "3s"

[mqtt]
url = "{url}"
protocol = "{protocol}"
window = {window}
{mqtt_extra}
[store]
path = "outbox.db"
max_size = "{max_size}"
"""

ENV_DEVICE_TOML = """
[[buses]]
id = "sim"
driver = "synthetic"

[[devices]]
id = "{env}"
profile = "{profile}"
bus = "sim"
location = {{ building = "A", floor = 1, room = "101" }}
{setting}
"""

FENCE_TOML = """
[[devices]]
id = "north-fence"
profile = "synthetic-fence"
bus = "sim"
poll_interval = "1s"
alarm_every = "5s"
"""


@dataclass
class Params:
    """What one invocation measures."""

    runs: int
    seconds: float
    warmup: float
    messages: int
    rate: float
    window: int
    paho_inflight: int
    protocol: str
    quick: bool
    profile: bool
    out: Path | None


@dataclass
class CeilingRun:
    """Raw paho: N payloads published, timed until the last PUBACK."""

    messages: int
    elapsed_s: float
    acked_per_s: float


@dataclass
class AgentRun:
    """The agent over its measured window (deltas of its status file)."""

    window_s: float
    acked_per_s: float
    committed_per_s: float
    cpu_percent: float  # of one core
    rss_mib_peak: float
    rss_mib_end: float
    backlog_end: int
    connects: int
    exit_code: int | None


# ---- payloads ----------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _toml(doc: dict[str, Any]) -> str:
    """A profile document as TOML: scalars, then [tables], then [[arrays of tables]]."""
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items() if not _table(v)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += ["", f"[{json.dumps(k)}]"]
            lines += [f"{json.dumps(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
        elif _table(v):
            for item in v:
                lines += ["", f"[[{json.dumps(k)}]]"]
                lines += [f"{json.dumps(kk)} = {_toml_value(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


def _table(v: Any) -> bool:
    return isinstance(v, dict) or (
        isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)
    )


def write_profile(folder: Path) -> Path:
    """The shipped env profile with `heartbeat = 0`: every reading becomes an event.

    The agent reports telemetry by exception (deadband + heartbeat), and the synthetic
    values barely change between two readings a few microseconds apart: with the shipped
    profile almost every reading would be suppressed and the pipeline would carry nothing.
    Same id, points and units, so topic and payload are those of the shipped profile.
    """
    doc = tomllib.loads(shipped_profiles()[ENV_PROFILE].read_text(encoding="utf-8"))
    doc.setdefault("defaults", {})["heartbeat"] = 0
    for point in doc.get("points", []):
        point.pop("deadband", None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ENV_PROFILE}.toml"
    path.write_text(_toml(doc), encoding="utf-8")
    return path


def agent_head(
    url: str,
    *,
    protocol: str,
    window: int,
    max_size: str,
    profiles: Path | None,
    gateway: str = GATEWAY,
    mqtt_extra: str = "",
) -> str:
    """AGENT_HEAD: `profiles`, the profile folder (None: the shipped profiles only);
    `mqtt_extra`, more lines of [mqtt]."""
    return AGENT_HEAD.format(
        profile_dirs="" if profiles is None else f'profile_dirs = ["{profiles}"]\n',
        school=SCHOOL,
        gateway=gateway,
        url=url,
        protocol=protocol,
        window=window,
        mqtt_extra=mqtt_extra,
        max_size=max_size,
    )


def env_device(setting: str) -> str:
    """ENV_DEVICE_TOML: the env device on bus `sim`; `setting`: its `rate` or `poll_interval`."""
    return ENV_DEVICE_TOML.format(env=ENV_DEVICE, profile=ENV_PROFILE, setting=setting)


def write_config(folder: Path, url: str, p: Params) -> Path:
    """The agent's config for one run (its store and its profile folder live beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    profiles = write_profile(folder / "profiles").parent
    head = agent_head(url, protocol=p.protocol, window=p.window, max_size="2GiB", profiles=profiles)
    cfg = folder / "agent.toml"
    cfg.write_text(head + env_device(f"rate = {p.rate}") + FENCE_TOML)
    return cfg


def build_payloads(config: SiteConfig, n: int) -> tuple[str, list[bytes]]:
    """N telemetry payloads of the env device, built by the agent's own code path."""
    origin = Origin(config.agent.topic_prefix, config.agent.school, config.agent.gateway)
    device = config.device(ENV_DEVICE)
    if device is None:
        raise RuntimeError(f"benchmark config has no device {ENV_DEVICE!r}")
    points = DevicePoints(device)
    topic = ""
    out: list[bytes] = []
    t0 = time.time()
    for i in range(n):
        ts = t0 + i / 1000
        values = {
            "temperature": round(19.0 + 7.0 * ((i * 7919) % 1000) / 1000, 3),
            "humidity": round(35.0 + 25.0 * ((i * 104729) % 1000) / 1000, 3),
            "co2": round(420 + 980 * ((i * 15485863) % 1000) / 1000, 3),
        }
        (ev,) = points.events(Sample(device.id, ts, values))
        topic = origin.topic(ev.kind, ev.category, ev.device)
        out.append(encode(origin, ev, i + 1, uuid7(int(ts * 1000))))
    return topic, out


# ---- the ceiling -------------------------------------------------------------------------


async def _ceiling(
    host: str,
    port: int,
    topic: str,
    payloads: list[bytes],
    *,
    window: int,
    paho_inflight: int,
    protocol: str,
) -> CeilingRun:
    loop = asyncio.get_running_loop()
    v5 = protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-ceiling-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else True,
    )
    # paho's own in-flight limit (default 20) rescans its messages on every PUBACK: the
    # ceiling leaves it off and bounds the window itself (PERFORMANCE.md, finding 1).
    client.max_inflight_messages_set(paho_inflight)
    slots = asyncio.Semaphore(window)
    connack: asyncio.Future[ReasonCode] = loop.create_future()
    finished: asyncio.Future[float] = loop.create_future()
    total = len(payloads)
    acked = 0

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        if not connack.done():
            connack.set_result(rc)

    def on_disconnect(c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        if not finished.done():
            finished.set_exception(RuntimeError(f"ceiling client disconnected: {rc}"))

    def on_publish(c: mqtt.Client, u: Any, mid: int, rc: ReasonCode, p: Any) -> None:
        nonlocal acked
        slots.release()
        acked += 1
        if acked == total and not finished.done():
            finished.set_result(time.perf_counter())

    def on_socket_open(c: mqtt.Client, u: Any, sock: Any) -> None:
        loop.add_reader(sock, c.loop_read)

    def on_socket_close(c: mqtt.Client, u: Any, sock: Any) -> None:
        loop.remove_reader(sock)
        loop.remove_writer(sock)

    def on_register_write(c: mqtt.Client, u: Any, sock: Any) -> None:
        loop.add_writer(sock, c.loop_write)

    def on_unregister_write(c: mqtt.Client, u: Any, sock: Any) -> None:
        loop.remove_writer(sock)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    client.on_socket_open = on_socket_open
    client.on_socket_close = on_socket_close
    client.on_socket_register_write = on_register_write
    client.on_socket_unregister_write = on_unregister_write

    async def misc() -> None:
        while True:
            await asyncio.sleep(1.0)
            client.loop_misc()

    # Loopback: connect() returns at once; the socket callbacks run on this thread.
    client.connect(host, port, keepalive=60)
    ticker = asyncio.create_task(misc())
    try:
        rc = await asyncio.wait_for(connack, 10)
        if rc.is_failure:
            raise RuntimeError(f"broker refused the ceiling client: {rc}")
        started = time.perf_counter()
        for payload in payloads:
            await slots.acquire()
            info = client.publish(topic, payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"ceiling publish not queued: rc={info.rc}")
        ended = await asyncio.wait_for(finished, 120)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop_write()
        sock = client.socket()
        if sock is not None:
            loop.remove_reader(sock)
            loop.remove_writer(sock)
        with contextlib.suppress(Exception):
            client._sock_close()
    elapsed = ended - started
    return CeilingRun(total, round(elapsed, 4), round(total / elapsed, 1))


def measure_ceiling(
    host: str,
    port: int,
    topic: str,
    payloads: list[bytes],
    *,
    window: int = WINDOW,
    paho_inflight: int = 0,
    protocol: str = "5",
) -> CeilingRun:
    """Raw paho QoS 1, asyncio-native: publish `payloads` to `topic`, timed to the last PUBACK.

    One measurement in a fresh event loop of this process; other benchmarks (drain) import
    this to measure the same ceiling on their own broker in the same run.
    """
    return asyncio.run(
        _ceiling(
            host,
            port,
            topic,
            payloads,
            window=window,
            paho_inflight=paho_inflight,
            protocol=protocol,
        )
    )


def run_ceiling(broker: Mosquitto, topic: str, payloads: list[bytes], p: Params) -> CeilingRun:
    """One ceiling measurement in a fresh event loop of this process."""
    return measure_ceiling(
        broker.host,
        broker.port,
        topic,
        payloads,
        window=p.window,
        paho_inflight=p.paho_inflight,
        protocol=p.protocol,
    )


# ---- the agent ---------------------------------------------------------------------------


class AgentProcess:
    """`python -m agent.cli run` on a config; stopped by its PID only."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.status_file = config.parent / "outbox.db.status.json"
        self.log = config.parent / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        cmd = [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*cmd, "--log-level", "warning"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
            )
        return self.proc.pid

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def status(self) -> dict[str, Any] | None:
        return read_json(self.status_file)

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"agent exited (code {code}):\n{self.log_tail()}")

    def written(self) -> float:
        """The `written` stamp of the current status file (0 if there is none yet)."""
        doc = self.status()
        return float(doc.get("written", 0)) if doc else 0.0

    def wait_status(self, newer_than: float, timeout: float) -> dict[str, Any]:
        """The next status document written after `newer_than` (its `written` stamp)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            doc = self.status()
            if doc and doc.get("pid") and float(doc.get("written", 0)) > newer_than:
                return doc
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent status not refreshed within {timeout:g}s")
            time.sleep(0.02)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the agent drains and exits 0); SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        return stop_process(proc, timeout)


def run_agent(
    broker: Mosquitto, folder: Path, p: Params, profile_to: Path | None = None
) -> AgentRun:
    """Start the agent, warm up, measure `p.seconds` from its status file, stop it."""
    agent = AgentProcess(write_config(folder, broker.url, p))
    pid = agent.start()
    stat = ProcStat(pid)
    exit_code: int | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 60
        while True:
            doc = agent.wait_status(0.0, max(1.0, deadline - time.monotonic()))
            if doc["broker"]["connected"] and doc["broker"]["acked"] > 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent never delivered an event:\n{agent.log_tail()}")
            time.sleep(0.1)
        time.sleep(p.warmup)
        first = agent.wait_status(agent.written(), 10)
        cpu0, t0 = stat.cpu_seconds(), time.monotonic()
        if profile_to is not None:
            spy = start_py_spy(pid, p.seconds, profile_to)
        rss = stat.rss_while(lambda: time.monotonic() - t0 < p.seconds - 0.05, agent.check_alive)
        last = agent.wait_status(agent.written(), 10)
        cpu1, t1 = stat.cpu_seconds(), time.monotonic()
        rss.append(stat.rss_mib())
    finally:
        if spy is not None:
            stop_py_spy(spy, p.seconds)
        exit_code = agent.stop()
    dt = float(last["written"]) - float(first["written"])
    acked = last["broker"]["acked"] - first["broker"]["acked"]
    committed = last["store"]["committed"] - first["store"]["committed"]
    return AgentRun(
        window_s=round(dt, 3),
        acked_per_s=round(acked / dt, 1),
        committed_per_s=round(committed / dt, 1),
        cpu_percent=round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        rss_mib_peak=round(max(rss), 1),
        rss_mib_end=round(rss[-1], 1),
        backlog_end=int(last.get("backlog", 0)),
        connects=int(last["broker"]["connects"]),
        exit_code=exit_code,
    )


# ---- profiling (optional) ------------------------------------------------------------------


def start_py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy record (collapsed stacks) of the agent over the measured window."""
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
    """'encode (agent/events.py:120)' -> 'encode (agent/events.py)': lines of a function merged."""
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


# ---- the report --------------------------------------------------------------------------


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def figures(ceilings: list[CeilingRun], agents: list[AgentRun]) -> list[dict[str, Any]]:
    """One row per figure: median, min, max, ceiling median, ratio (median of run ratios)."""
    ceil = [c.acked_per_s for c in ceilings]
    ceil_median = _median(ceil)
    rows: list[dict[str, Any]] = [
        {
            "figure": "ceiling: raw paho QoS 1 PUBACKs/s",
            "unit": "msg/s",
            "median": ceil_median,
            "min": min(ceil),
            "max": max(ceil),
            "ceiling_median": None,
            "ratio": None,
        }
    ]
    specs: list[tuple[str, str, str, bool]] = [
        ("agent: PUBACKs/s", "msg/s", "acked_per_s", True),
        ("agent: committed/s", "events/s", "committed_per_s", True),
        ("agent: CPU (% of one core)", "%", "cpu_percent", False),
        ("agent: RSS peak", "MiB", "rss_mib_peak", False),
    ]
    for name, unit, attr, vs_ceiling in specs:
        xs = [float(getattr(a, attr)) for a in agents]
        ratio = (
            round(statistics.median(x / c for x, c in zip(xs, ceil, strict=True)), 3)
            if vs_ceiling
            else None
        )
        rows.append(
            {
                "figure": name,
                "unit": unit,
                "median": _median(xs),
                "min": min(xs),
                "max": max(xs),
                "ceiling_median": ceil_median if vs_ceiling else None,
                "ratio": ratio,
            }
        )
    return rows


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table."""
    return ceiling_table(rows, _num)


def environment() -> dict[str, Any]:
    """What the figures were measured with."""
    return {
        "python": platform.python_version(),
        "paho_mqtt": metadata.version("paho-mqtt"),
        "mosquitto": mosquitto_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
    }


# ---- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Params:
    ap = argparse.ArgumentParser(
        prog="python -m bench throughput",
        description="Agent PUBACKs/s and committed/s against raw paho QoS 1 on the same broker.",
    )
    ap.add_argument("--runs", type=int, default=3, help="runs (each: ceiling + agent); 3")
    ap.add_argument("--seconds", type=float, default=30.0, help="agent measured window; 30")
    ap.add_argument("--warmup", type=float, default=2.0, help="agent warm-up seconds; 2")
    ap.add_argument(
        "--messages", type=int, default=100_000, help="ceiling payloads per run; 100000"
    )
    ap.add_argument(
        "--rate", type=float, default=200_000, help="synthetic readings/s asked of the agent"
    )
    ap.add_argument("--window", type=int, default=WINDOW, help=f"in-flight window; {WINDOW}")
    ap.add_argument(
        "--paho-inflight",
        type=int,
        default=0,
        help="paho's own in-flight limit in the ceiling client; 0 = off (paho's default is 20)",
    )
    ap.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version; 5")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 run, 2 s, tiny sizes")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy record the agent during the last run (needs py-spy in the venv)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON file (default bench/results/throughput.json; -quick/-profiled variants)",
    )
    a = ap.parse_args(argv)
    if a.quick:
        a.runs, a.seconds, a.warmup, a.messages = 1, 2.0, 1.0, 2_000
    if a.runs < 1 or a.seconds < 1 or a.messages < 1:
        ap.error("--runs, --messages must be >= 1 and --seconds >= 1")
    return Params(
        runs=a.runs,
        seconds=a.seconds,
        warmup=a.warmup,
        messages=a.messages,
        rate=a.rate,
        window=a.window,
        paho_inflight=a.paho_inflight,
        protocol=a.protocol,
        quick=a.quick,
        profile=a.profile,
        out=a.out,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write results/throughput.json."""
    p = parse_args(argv)
    out = p.out or result_file("throughput", result_suffix(p.quick, p.profile))
    profile_out = RESULTS / "throughput-agent.pyspy.txt"
    started = timestamp()
    ceilings: list[CeilingRun] = []
    agents: list[AgentRun] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp, Mosquitto() as broker:
        work = Path(tmp)
        config = load_config(write_config(work / "payloads", broker.url, p))
        topic, payloads = build_payloads(config, p.messages)
        print(
            f"throughput: broker {broker.url} (pid {broker.pid}), {p.runs} run(s), "
            f"ceiling {p.messages} msgs, agent {p.warmup:g}s warm-up + {p.seconds:g}s, "
            f"window {p.window}, MQTT {p.protocol}, payload {len(payloads[0])} B",
            flush=True,
        )
        for i in range(p.runs):
            order = ("ceiling", "agent") if i % 2 == 0 else ("agent", "ceiling")
            profile_to = profile_out if p.profile and i == p.runs - 1 else None
            if order[0] == "ceiling":
                ceiling = run_ceiling(broker, topic, payloads, p)
                agent = run_agent(broker, work / f"agent-{i + 1}", p, profile_to)
            else:
                agent = run_agent(broker, work / f"agent-{i + 1}", p, profile_to)
                ceiling = run_ceiling(broker, topic, payloads, p)
            ceilings.append(ceiling)
            agents.append(agent)
            print(
                f"  run {i + 1}/{p.runs} ({' then '.join(order)}): "
                f"ceiling {ceiling.acked_per_s:,.0f}/s, agent {agent.acked_per_s:,.0f} acked/s, "
                f"{agent.committed_per_s:,.0f} committed/s, CPU {agent.cpu_percent:.0f}%, "
                f"RSS {agent.rss_mib_peak:.1f} MiB, backlog {agent.backlog_end:,}",
                flush=True,
            )
            if agent.committed_per_s < 0.5 * min(p.rate, 1000):
                print(
                    f"  warning: the agent committed only {agent.committed_per_s:g} events/s "
                    f"for {p.rate:g} readings/s asked: are readings suppressed (profile "
                    f"deadband/heartbeat) or the driver failing? See the agent log.",
                    file=sys.stderr,
                    flush=True,
                )
            runs.append(
                {
                    "run": i + 1,
                    "order": list(order),
                    "ceiling": asdict(ceiling),
                    "agent": asdict(agent),
                    "profiled": p.profile and i == p.runs - 1,
                }
            )
    rows = figures(ceilings, agents)
    print()
    print(table(rows))
    doc: dict[str, Any] = {
        "benchmark": "throughput",
        "started": started,
        "params": {**asdict(p), "out": str(out), "payload_bytes": len(payloads[0]), "topic": topic},
        "environment": environment(),
        "figures": rows,
        "runs": runs,
    }
    if p.profile and profile_out.exists():
        doc["profile"] = profile_report("agent", profile_out)
    write_json(out, doc)
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
