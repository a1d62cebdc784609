"""The agent's config in the benchmarks (throughput, drain, latency, modbus), TOML writing.

`agent_head` (AGENT_HEAD: profile folder, [agent], [mqtt], [store]), then `env_device`
(the env device on its synthetic bus), then each benchmark's own devices. `write_profile`
writes the shipped env profile with `heartbeat = 0`, so that every reading is an event;
`toml_document` writes a profile document (also bench.modbus_devices's bench profile).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from agent.config import MqttSection
from agent.contract import TOPIC_ROOT, Origin
from agent.profiles import shipped_profiles

WINDOW: int = MqttSection.model_fields["window"].default  # the agent's default window
SCHOOL, GATEWAY = "pt-023", "gw-bench"
ORIGIN = Origin(TOPIC_ROOT, SCHOOL, GATEWAY)  # the agent's topics in every benchmark
ENV_DEVICE = "a101-env"
ENV_PROFILE = "synthetic-env"

AGENT_HEAD = """\
{profile_dirs}
[agent]
school = "{school}"
gateway = "{gateway}"
drain_timeout = "3s"

[mqtt]
url = "{url}"
{mqtt_lines}
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


def toml_document(doc: dict[str, Any]) -> str:
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
    path.write_text(toml_document(doc), encoding="utf-8")
    return path


def agent_head(
    url: str,
    *,
    max_size: str,
    profiles: Path | None,
    protocol: str | None = None,
    window: int | None = None,
    gateway: str = GATEWAY,
    mqtt_extra: str = "",
) -> str:
    """AGENT_HEAD: `profiles`, the profile folder (None: the shipped profiles only);
    `protocol`, `window` (None: the agent's defaults) and `mqtt_extra`, more lines of
    [mqtt]."""
    mqtt_lines = "" if protocol is None else f'protocol = "{protocol}"\n'
    mqtt_lines += "" if window is None else f"window = {window}\n"
    return AGENT_HEAD.format(
        profile_dirs="" if profiles is None else f'profile_dirs = ["{profiles}"]\n',
        school=SCHOOL,
        gateway=gateway,
        url=url,
        mqtt_lines=mqtt_lines + mqtt_extra,
        max_size=max_size,
    )


def env_device(setting: str) -> str:
    """ENV_DEVICE_TOML: the env device on bus `sim`; `setting`: its `rate` or `poll_interval`."""
    return ENV_DEVICE_TOML.format(env=ENV_DEVICE, profile=ENV_PROFILE, setting=setting)
