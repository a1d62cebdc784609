"""Hypothesis over the site config (#9): `check` never prints a traceback and exits 0 or 2; what
it accepts is within each field's declared range; and a config it accepts runs.

Documents are generated field by field, each absent, within its range (often at an end of
it) or hostile (inf, nan, negatives, huge numbers and suffixes, wrong types, junk text). The
`run` part starts the real agent against a real mosquitto for a handful of accepted configs
at the ends of the ranges and stops it with SIGTERM.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.config import load_config
from agent.contract import Origin
from tests.harness.agent import AgentProcess
from tests.harness.broker import Broker
from tests.harness.subscriber import Subscriber
from tests.harness.waiting import wait_for

KiB, TiB, HOUR, DAY = 1024, 1024**4, 3600.0, 86400.0


@dataclass(frozen=True)
class Field:
    section: str  # a [section], or "device" for the one [[devices]] entry
    key: str
    kind: str  # "duration", "size" or "int"
    lo: float
    hi: float
    off: bool = False  # 0 is allowed too (meaning: off)


FIELDS = (
    Field("agent", "status_interval", "duration", 1, DAY),
    Field("agent", "drain_timeout", "duration", 0, 300),
    Field("mqtt", "keepalive", "duration", 5, 18 * HOUR),
    Field("mqtt", "connect_timeout", "duration", 1, 300),
    Field("mqtt", "reconnect_min", "duration", 0.1, HOUR),
    Field("mqtt", "reconnect_max", "duration", 0.1, HOUR),
    Field("mqtt", "reconnect_probe", "duration", 0.2, HOUR, off=True),
    Field("mqtt", "reconnect_spread", "duration", 0, HOUR),
    Field("mqtt", "window", "int", 1, 10000),
    Field("store", "max_size", "size", 256 * KiB, TiB),
    Field("store", "commit_interval", "duration", 0.001, 1),
    Field("store", "telemetry_delay", "duration", 0, 10),
    Field("commands", "max_age", "duration", 1, DAY),
    Field("commands", "clock_skew", "duration", 0, HOUR),
    Field("device", "poll_interval", "duration", 0.01, DAY),
    Field("device", "alarm_every", "duration", 0.001, DAY, off=True),
)
UNITS = {"duration": ["ms", "s", "min", "m", "h", "d", "", "us", "S"], "int": [""]}
UNITS["size"] = ["B", "kB", "KiB", "MiB", "GiB", "", "TiB", "mb"]


def toml_value(v: Any) -> str:
    """A TOML literal for a generated value (inf and nan included)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


def hostile(f: Field) -> st.SearchStrategy[Any]:
    number = st.one_of(
        st.integers(0, 10**30).map(str),
        st.floats(0, 1e30, allow_nan=False).map(lambda x: f"{x:f}"),
        st.text("0123456789", min_size=1, max_size=400),
    )
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(2**70), 2**70),
        st.booleans(),
        st.builds(lambda n, u: n + u, number, st.sampled_from(UNITS[f.kind])),
        st.text(max_size=12),
        st.lists(st.integers(0, 9), max_size=2),
        st.sampled_from([f.lo / 2, f.hi * 2, -1, 0]),
    )


def in_range(f: Field) -> st.SearchStrategy[Any]:
    ends = [f.lo, f.hi] + ([0] if f.off else [])
    if f.kind == "duration":
        inside = st.floats(f.lo, f.hi, allow_nan=False, allow_infinity=False)
    else:
        inside = st.integers(int(f.lo), int(f.hi))
    return st.one_of(st.sampled_from(ends), inside).map(
        lambda v: int(v) if f.kind != "duration" else float(v)
    )


def document(values: dict[Field, Any], gateway: str = "gw-main") -> str:
    """A whole config with these field values (the rest default)."""
    lines = {s: [] for s in ("agent", "mqtt", "store", "commands", "device")}
    for f, v in values.items():
        lines[f.section].append(f"{f.key} = {toml_value(v)}")
    text = f'[agent]\nschool = "pt-023"\ngateway = "{gateway}"\n'
    text += "\n".join(lines["agent"])
    text += '\n[mqtt]\nurl = "{url}"\n' + "\n".join(lines["mqtt"])
    text += '\n[store]\npath = "outbox.db"\n' + "\n".join(lines["store"])
    text += "\n[commands]\n" + "\n".join(lines["commands"])
    text += '\n[[buses]]\nid = "sim"\ndriver = "synthetic"\n'
    text += '[[devices]]\nid = "fence"\nprofile = "synthetic-fence"\nbus = "sim"\n'
    return text + "\n".join(lines["device"]) + "\n"


@st.composite
def any_values(draw: st.DrawFn) -> dict[Field, Any]:
    out: dict[Field, Any] = {}
    for f in FIELDS:
        choice = draw(st.sampled_from(["absent", "in range", "hostile"]))
        if choice != "absent":
            out[f] = draw(in_range(f) if choice == "in range" else hostile(f))
    return out


def _check(cfg: Path) -> tuple[int, str]:
    """`campus-agent check` in process: its exit code and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["check", "--config", str(cfg)])
    return code, out.getvalue()


def _within(f: Field, v: float) -> bool:
    return (f.off and v == 0) or f.lo <= v <= f.hi


def _loaded(config: Any, f: Field) -> float:
    if f.section == "device":
        d = config.devices[0]
        return float(d.poll_interval if f.key == "poll_interval" else d.options.alarm_every)
    return float(getattr(getattr(config, f.section), f.key))


FIELD = {f.key: f for f in FIELDS}


@settings(max_examples=300, deadline=None)
@given(any_values())
@example({FIELD["keepalive"]: float("inf")})
@example({FIELD["keepalive"]: "1000d"})
@example({FIELD["keepalive"]: 0})
@example({FIELD["connect_timeout"]: 0})
@example({FIELD["reconnect_min"]: 0, FIELD["reconnect_max"]: 0, FIELD["reconnect_probe"]: 0})
@example({FIELD["max_size"]: "1000000000000GiB"})
@example({FIELD["max_size"]: "9" * 400 + "GiB"})
@example({FIELD["poll_interval"]: 0})
@example({FIELD["commit_interval"]: "1d"})
def test_check_exits_0_or_2_and_accepts_only_values_in_range(values):
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "agent.toml"
        cfg.write_text(document(values).replace("{url}", "mqtt://127.0.0.1:1883"), "utf-8")
        code, printed = _check(cfg)
        assert code in (0, 2), printed
        assert "Traceback" not in printed
        if code == 2:
            assert "problem" in printed
            return
        config = load_config(cfg)
        for f in values:
            assert _within(f, _loaded(config, f)), f"{f.key} accepted out of range: {printed}"
        assert config.mqtt.reconnect_min <= config.mqtt.reconnect_max


# ---- what `check` accepts runs --------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker(tmp_path_factory.mktemp("fuzz-broker")) as b:
        yield b


@st.composite
def accepted_values(draw: st.DrawFn) -> dict[Field, Any]:
    """Every field within its range, mostly at one end of it."""
    out = {f: draw(in_range(f)) for f in FIELDS if draw(st.booleans())}
    lo = out.get(FIELD["reconnect_min"], 1.0)
    assume(lo <= out.get(FIELD["reconnect_max"], 60.0))
    return out


RUNS = iter(range(10**6))


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(accepted_values())
def test_a_config_that_check_accepts_runs_publishes_its_status_and_stops_with_0(
    fuzz_broker, tmp_path_factory, values
):
    gateway = f"gw-fuzz-{next(RUNS)}-{os.getpid()}"
    folder = tmp_path_factory.mktemp("fuzz-run")
    agent = AgentProcess(folder)
    agent.write_config(document(values, gateway).replace("{url}", fuzz_broker.url))
    code, printed = _check(agent.config)
    assert code == 0, printed
    status = Origin("campus/v1", "pt-023", gateway).status_topic
    sub = Subscriber(fuzz_broker.host, fuzz_broker.port, status, persistent=False)
    try:
        agent.start(log_level="info")
        st_ = agent.wait_status(
            lambda s: s.get("pid") == agent.pid and s["broker"]["connected"],
            30,
            f"the agent to connect with {printed.strip()} and {values}",
        )
        assert st_["broker"]["connected"]
        wait_for(
            lambda: any(b'"online"' in m.payload for m in sub.snapshot()), 20, "status: online"
        )
        assert agent.alive(), agent.log_tail()
        code = agent.terminate(timeout=60)
        assert code == 0, agent.log_tail()
        assert "Traceback" not in agent.log_text()
    finally:
        sub.close()
        if agent.alive():
            agent.kill()
