"""The gateway-class benchmark's parts (bench/school.py): the CPU cap, the school's config,
the card readers' feeder and the subscriber that accounts for every seq.

`CpuCap` is a cgroup v1 CPU group, `/sys/fs/cgroup/cpu/campus-bench-<bench pid>/`, with
`cpu.cfs_period_us = 100000` and `cpu.cfs_quota_us = 25000` (25 % of one core): the agent
is started as `sh -c 'echo $$ > <group>/cgroup.procs; exec python -m agent.cli run ...'`,
so it is in the group before it runs a line of Python, and every thread it starts is too.
The group is removed (rmdir) once the agent has exited. Needs root and the cgroup v1 `cpu`
controller mounted at /sys/fs/cgroup/cpu; `CpuCap.unavailable()` says why not otherwise.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from agent.cards import CardNumber, card_hash
from agent.profiles import load_profile_file, shipped_profiles
from bench.agent_process import AgentProcess
from bench.ble import ble_toml
from bench.classboard import boards_toml
from bench.modbus_devices import Load, modbus_toml, write_bench_profile
from bench.peers import free_port
from bench.rush import KEY
from bench.throughput_config import ORIGIN
from drivers.card_serial.frames import FrameSpec, encode
from tests.harness.pty import PtyPair
from tests.harness.subscriber import Subscriber
from tests.harness.waiting import wait_for

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000
CLIENT_ID = f"{ORIGIN.school}.{ORIGIN.gateway}"  # the agent's MQTT client id


class CpuCap:
    """A cgroup v1 CPU group with a CFS quota: `percent` % of one core."""

    def __init__(self, percent: float) -> None:
        self.percent = percent
        self.quota_us = round(PERIOD_US * percent / 100)
        self.path = CGROUP_CPU / f"campus-bench-{os.getpid()}"

    @staticmethod
    def unavailable() -> str | None:
        """None if the group can be made here, else why not."""
        if os.geteuid() != 0:
            return "needs root (it creates a cgroup v1 CPU group under /sys/fs/cgroup/cpu)"
        if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
            return f"no cgroup v1 cpu controller at {CGROUP_CPU} (cpu.cfs_quota_us missing)"
        return None

    def describe(self) -> str:
        return (
            f"cgroup v1 {self.path}: cpu.cfs_period_us={PERIOD_US}, "
            f"cpu.cfs_quota_us={self.quota_us} ({self.percent:g} % of one core)"
        )

    def create(self) -> None:
        self.path.mkdir(exist_ok=True)
        (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))

    def wrap(self, cmd: list[str]) -> list[str]:
        """`cmd` run from a shell that first moves itself into the group."""
        script = 'echo $$ > "$0" && exec "$@"'
        return ["sh", "-c", script, str(self.path / "cgroup.procs"), *cmd]

    def holds(self, pid: int) -> bool:
        """Whether process `pid` is in the group (its /proc/<pid>/cgroup names it)."""
        return f"/{self.path.name}\n" in Path(f"/proc/{pid}/cgroup").read_text()

    def throttling(self) -> dict[str, int]:
        """cpu.stat: nr_periods, nr_throttled, throttled_time (ns)."""
        out: dict[str, int] = {}
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            out[key] = int(value)
        return out

    def remove(self, timeout: float = 10.0) -> None:
        """rmdir the group (it must be empty: its processes have exited)."""

        def removed() -> bool:
            try:
                self.path.rmdir()
            except FileNotFoundError:
                return True
            except OSError:
                return False  # busy: its last process is still exiting
            return True

        wait_for(removed, timeout, f"{self.path} to be empty and removed", every=0.1)


class CappedAgent(AgentProcess):
    """The agent, inside `cap`'s group from its first instruction."""

    def __init__(self, config: Path, cap: CpuCap) -> None:
        super().__init__(config)
        self.cap = cap

    def command(self) -> list[str]:
        return self.cap.wrap(super().command())


HEAD = """\
profile_dirs = ["{profiles}"]

[agent]
school = "{school}"
gateway = "{gateway}"
status_interval = "1s"
drain_timeout = "10s"

[mqtt]
url = "mqtt://127.0.0.1:{port}"
reconnect_min = "200ms"
reconnect_max = "2s"

[store]
path = "outbox.db"
max_size = "256MiB"

[privacy]
card_key_file = "card.key"
card_key_id = "{key_id}"
dedup_window = "{dedup}s"

[status_page]
port = {page_port}

[[buses]]
id = "fence"
driver = "synthetic"

[[devices]]
id = "north-fence"
profile = "synthetic-fence"
bus = "fence"
poll_interval = "100ms"
alarm_every = "{alarm_every}s"
"""
READER = """
[[buses]]
id = "s{i}"
driver = "card-serial"
port = "{port}"

[[devices]]
id = "gate-s{i}"
profile = "rdm6300"
bus = "s{i}"
door = "main-gate"
direction = "in"
"""
STORM = """
[[buses]]
id = "storm"
driver = "synthetic"

[[devices]]
id = "south-fence"
profile = "synthetic-fence"
bus = "storm"
rate = {rate}
alarm_every = "1ms"
"""


@dataclass
class School:
    """The parts of the school's config that stay; `write` adds the Modbus load and storm."""

    work: Path
    fixed: str
    ports: list[int]
    devices: int
    simulators: int
    case_every: float
    storm_rate: float

    @classmethod
    def make(
        cls,
        work: Path,
        *,
        broker_port: int,
        sim_ports: list[int],
        load: Load,
        readers: list[PtyPair],
        boards: int,
        boards_listen: int,
        ble: int,
        alarm_every: float,
        dedup: float,
        storm_rate: float,
    ) -> School:
        (work / "card.key").write_bytes(KEY.secret)
        os.chmod(work / "card.key", 0o600)
        text = HEAD.format(
            profiles=write_bench_profile(work),
            school=ORIGIN.school,
            gateway=ORIGIN.gateway,
            port=broker_port,
            key_id=KEY.key_id,
            dedup=f"{dedup:g}",
            alarm_every=f"{alarm_every:g}",
            page_port=free_port(),  # the page runs, as on a gateway, on a free port here
        )
        text += "".join(READER.format(i=i, port=line.a) for i, line in enumerate(readers))
        if boards:
            text += boards_toml(work, boards, boards_listen)
        if ble:
            text += ble_toml(work, ble)
        return cls(
            work, text, sim_ports, load.devices, load.simulators, load.case_every, storm_rate
        )

    def load(self, interval: float) -> Load:
        return Load(self.devices, interval, self.simulators, self.case_every)

    def write(self, interval: float, *, storm: bool = False) -> Path:
        """The config with the Modbus devices polled every `interval` s (and the storm)."""
        text = self.fixed + modbus_toml(self.ports, self.load(interval))
        if storm:
            text += STORM.format(rate=f"{self.storm_rate:g}")
        path = self.work / "agent.toml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # the agent never reads half a file on SIGHUP
        return path


class Cards(threading.Thread):
    """Writes RDM6300 frames (one new student card a read) to the readers' ptys at the
    times it is given (`add`, epoch seconds); `sent`: (time, reader, card hash)."""

    def __init__(self, readers: list[PtyPair], seed: int = 1) -> None:
        super().__init__(name="card-reads", daemon=True)
        self.spec = FrameSpec.model_validate(
            load_profile_file(shipped_profiles()["rdm6300"]).point("card").wire  # type: ignore[union-attr]
        )
        self.fds = [os.open(line.b, os.O_WRONLY | os.O_NOCTTY) for line in readers]
        self.due: list[float] = []
        self.sent: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.paused = threading.Event()  # the agent is restarting: reads wait, then go on
        self.n = 0
        self.seed = seed

    def add(self, times: list[float]) -> None:
        with self.lock:
            for t in times:
                heapq.heappush(self.due, t)

    def run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                at = self.due[0] if self.due else None
            if at is None or at > time.time() or self.paused.is_set():
                self.stopping.wait(0.02 if at is None else min(0.02, at - time.time()))
                continue
            with self.lock:
                heapq.heappop(self.due)
            self.read()

    def read(self) -> None:
        reader = (self.n * 7 + self.seed) % len(self.fds)
        value = 0x0A00000000 + 100_000 + self.n  # student n's card: one read each
        self.n += 1
        h = card_hash(KEY, CardNumber(value, 40), "exact")
        when = time.time()
        os.write(self.fds[reader], encode(self.spec, value))
        self.sent.append((when, f"gate-s{reader}", h))

    def close(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(5)
        for fd in self.fds:
            os.close(fd)


class Seen(Subscriber):
    """Every event of the gateway (persistent QoS 1 session): receipt time and payload."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[float, bytes]] = []
        self._parsed = 0
        self._seqs: set[int] = set()
        super().__init__(
            "127.0.0.1",
            port,
            f"{ORIGIN.base}/+/+/+",
            client_id="school-checker",
            persistent=True,
            resubscribe=False,
        )

    def handle(self, msg: Any) -> None:
        with self.lock:
            self.got.append((time.time(), msg.payload))

    def docs(self) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            got = list(self.got)
        return [(t, orjson.loads(p)) for t, p in got]

    def seqs(self) -> set[int]:
        """The seqs received so far (parsed once each, as they come)."""
        with self.lock:
            fresh = self.got[self._parsed :]
            self._parsed += len(fresh)
        self._seqs.update(int(orjson.loads(p)["seq"]) for _, p in fresh)
        return self._seqs
