"""The two systems of the peer benchmark: how each runs, and how its telemetry reads.

The peer (ThingsBoard IoT Gateway 3.8.x from PyPI) runs in its own virtual environment
(`bench/results/peer-venv`, made by `ensure_peer_venv` on first use: its Modbus connector
insists on pymodbus 3.9.2, the agent uses 3.x latest) through `bench/peer_tb/launch.py`
(`PeerGateway`), on a config folder written by `write_peer_config`. The agent is
bench.agent_process's `AgentProcess` on bench.modbus_devices's config. `SYSTEMS` says, for
each, where it publishes, the Modbus requests one poll costs it, and how to read a value
out of its messages (`parse`: (device, stamp in epoch seconds, [(key, value)]) per poll).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import venv
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.agent_process import BenchProcess
from bench.modbus_devices import BENCH_POINTS, TELEMETRY_TOPIC, Load, bench_blocks, device_name
from bench.peers import HOST, Mosquitto
from bench.report import RESULTS

PEER_DIR = Path(__file__).resolve().parent / "peer_tb"
LAUNCHER = PEER_DIR / "launch.py"
PEER_VENV = RESULTS / "peer-venv"
PEER_PY = PEER_VENV / "bin" / "python"
PEER_REQUIREMENTS = [
    "thingsboard-gateway>=3.8,<3.9",
    "pymodbus==3.9.2",  # what its Modbus connector pins (and would pip install at start-up)
    "pyserial",  # imported by that connector even for TCP (installed at start-up if missing)
    "pyserial-asyncio",
]
PEER_TOPIC = "v1/gateway/telemetry"
POINTS = len(BENCH_POINTS)
# The peer reads one register range per key (10 requests per poll: its range form
# "address": "a-b" would decode every register of the range with one type); the agent plans
# 2 block reads (bench.modbus_devices).
PEER_REQUESTS_PER_POLL = POINTS
TB_TYPES = {"uint16": "16uint", "int16": "16int", "float32": "32float"}
TB_FUNCTION = {"holding": 3, "input": 4}

Polls = list[tuple[str, float, list[tuple[str, Any]]]]  # (device, stamp, [(key, value)])


# ---- the peer's own virtual environment ----------------------------------------------------


def peer_versions() -> dict[str, str]:
    """Versions inside the peer venv (python, thingsboard-gateway, pymodbus, ...)."""
    code = (
        "import json, platform\n"
        "from importlib import metadata as m\n"
        "names = ['thingsboard-gateway', 'tb-mqtt-client', 'tb-paho-mqtt-client', "
        "'pymodbus', 'pyserial', 'pyserial-asyncio']\n"
        "out = {'python': platform.python_version()}\n"
        "for n in names:\n"
        "    try:\n"
        "        out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError:\n"
        "        out[n] = None\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run(
        [str(PEER_PY), "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    return dict(json.loads(r.stdout))


def ensure_peer_venv() -> dict[str, str]:
    """Create bench/results/peer-venv and install the peer into it, unless it is there."""
    if PEER_PY.exists():
        v = peer_versions()
        tb = v.get("thingsboard-gateway") or ""
        if tb.startswith("3.8.") and v.get("pymodbus") == "3.9.2" and v.get("pyserial-asyncio"):
            return v
    print(f"peer: installing {', '.join(PEER_REQUIREMENTS)} into {PEER_VENV}", flush=True)
    venv.EnvBuilder(with_pip=True, clear=False).create(PEER_VENV)
    subprocess.run(
        [str(PEER_PY), "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS],
        check=True,
        timeout=1800,
    )
    v = peer_versions()
    if v.get("pymodbus") != "3.9.2" or not (v.get("thingsboard-gateway") or "").startswith("3.8"):
        raise RuntimeError(f"peer venv: unexpected versions {v}")
    return v


# ---- the peer's config ---------------------------------------------------------------------


def peer_modbus_config(ports: list[int], load: Load) -> dict[str, Any]:
    """The peer's Modbus connector: the bench profile's 10 points per device, one key each."""
    timeseries = [
        {
            "tag": name,
            "type": TB_TYPES[reg["type"]],
            "functionCode": TB_FUNCTION[reg["table"]],
            "objectsCount": 2 if reg["type"] == "float32" else 1,
            "address": reg["address"],
        }
        for name, reg in BENCH_POINTS
    ]
    slaves = [
        {
            "host": HOST,
            "port": ports[sim],
            "type": "tcp",
            "method": "socket",
            "unitId": unit,
            "deviceName": device_name(n),
            "deviceType": "bench-modbus10",
            "timeout": 1,  # s, as the agent's bus
            "byteOrder": "BIG",
            "wordOrder": "BIG",  # float32 high word first, as the simulator serves them
            "retries": 3,
            "retryOnEmpty": True,
            "retryOnInvalid": True,
            "pollPeriod": int(load.interval * 1000),
            "connectAttemptTimeMs": 5000,
            "connectAttemptCount": 5,
            "waitAfterFailedAttemptsMs": 300000,
            "attributes": [],
            "timeseries": timeseries,
            "attributeUpdates": [],
            "rpc": [],
        }
        for n, (sim, unit) in enumerate(load.placement())
    ]
    return {"name": "Modbus", "logLevel": "WARNING", "master": {"slaves": slaves}}


def write_peer_config(folder: Path, broker: Mosquitto, ports: list[int], load: Load) -> Path:
    """tb_gateway.json (to `broker`) and logs.json from bench/peer_tb, and modbus.json."""
    folder.mkdir(parents=True, exist_ok=True)
    main = json.loads((PEER_DIR / "tb_gateway.json").read_text())
    main["thingsboard"]["host"] = broker.host
    main["thingsboard"]["port"] = broker.port
    (folder / "tb_gateway.json").write_text(json.dumps(main, indent=2))
    (folder / "logs.json").write_text((PEER_DIR / "logs.json").read_text())
    modbus = peer_modbus_config(ports, load)
    (folder / "modbus.json").write_text(json.dumps(modbus, indent=2))
    return folder


# ---- the systems ---------------------------------------------------------------------------


class PeerGateway(BenchProcess):
    """The ThingsBoard IoT Gateway under bench/peer_tb/launch.py, in the peer venv; each
    start appends to `launcher.log` in its config folder."""

    name = "peer"
    stop_signal = signal.SIGINT  # the gateway's own stop handler
    stop_timeout = 30.0
    append_log = True

    def __init__(self, folder: Path) -> None:
        super().__init__(folder / "launcher.log")
        self.folder = folder

    def start(self) -> int:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.folder),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [str(PEER_PY), str(LAUNCHER), "--config-dir", str(self.folder)]
        return self.launch(cmd, cwd=self.folder, env=env)

    def blocked(self) -> list[dict[str, Any]]:
        """What the launcher's loopback guard refused (one JSON line each)."""
        try:
            lines = (self.folder / "blocked.jsonl").read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]


def parse_peer(payload: bytes) -> Polls:
    """A `v1/gateway/telemetry` message: {device: [{"ts": ms, "values": {...}}, ...]}."""
    doc = json.loads(payload)
    out = []
    for device, entries in doc.items():
        for entry in entries if isinstance(entries, list) else [entries]:
            values = entry.get("values", {})
            kept = [(k, v) for k, v in values.items() if v is not None]
            out.append((device, int(entry["ts"]) / 1000, kept))
    return out


def parse_agent(payload: bytes) -> Polls:
    """An agent telemetry event: one poll of one device."""
    doc = json.loads(payload)
    ts = datetime.fromisoformat(doc["ts"]).timestamp()
    # A failed read is reported as null with a bad quality: not a delivered value.
    kept = [(k, v) for k, v in doc.get("values", {}).items() if v is not None]
    return [(doc["device"], ts, kept)]


@dataclass(frozen=True)
class System:
    """What the benchmark needs to know of a system's telemetry."""

    topic: str  # the bench subscribes to
    requests_per_poll: int  # Modbus requests one poll of a device costs it
    parse: Callable[[bytes], Polls]


SYSTEMS: dict[str, System] = {
    "peer": System(PEER_TOPIC, PEER_REQUESTS_PER_POLL, parse_peer),
    "agent": System(TELEMETRY_TOPIC, len(bench_blocks()), parse_agent),
}
