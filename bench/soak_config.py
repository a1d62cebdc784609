"""The files a soak run writes: the Modbus simulator's register vectors and the agent's config.

The agent (`python -m bench.soak`, bench/soak.py) runs one school gateway: a `modbus-rtu`
bus on one end of a socat pty pair (the simulator serves ENV_VECTOR as unit 1 and
FENCE_VECTOR as unit 2 on the other end), a synthetic env device at a few hundred events/s
and a synthetic fence whose alarm toggles every ALARM_EVERY seconds, with a small store cap.
Only text here: nothing is started.
"""

from __future__ import annotations

from pathlib import Path

from agent.contract import TOPIC_ROOT, Origin
from tests.harness.agent import FENCE_DEVICE_ID, env_device, fence_device

SCHOOL = "pt-023"
GATEWAY = "gw-soak"
TOPIC = Origin(TOPIC_ROOT, SCHOOL, GATEWAY).everything  # campus/v1/pt-023/gw-soak/#
FENCE = FENCE_DEVICE_ID  # the synthetic fence: its zone_3 alarm toggles every ALARM_EVERY
ALARM_EVERY = 1.0
MODBUS_DEVICES = ("b201-env", "gate-zones")

# XY-MD02 input registers 1 (x0.1 degC, signed) and 2 (x0.1 %RH): four readings in turn.
ENV_VECTOR = """\
source = "bench/soak.py"
[[case]]
name = "a"
registers = { input = { 1 = 0x00F5, 2 = 0x01C2 } }
[[case]]
name = "b"
registers = { input = { 1 = 0x0131, 2 = 0x0222 } }
[[case]]
name = "c"
registers = { input = { 1 = 0x00E1, 2 = 0x0190 } }
[[case]]
name = "d"
registers = { input = { 1 = 0x0104, 2 = 0x01F4 } }
"""

# The DI fence module's discrete inputs 0-1 (zone_1, zone_2): every case change is an edge.
FENCE_VECTOR = """\
source = "bench/soak.py"
[[case]]
name = "quiet"
registers = { discrete = { 0 = 0, 1 = 0 } }
[[case]]
name = "zone_1"
registers = { discrete = { 0 = 1, 1 = 0 } }
[[case]]
name = "zone_1_and_2"
registers = { discrete = { 0 = 1, 1 = 1 } }
[[case]]
name = "zone_2"
registers = { discrete = { 0 = 0, 1 = 1 } }
"""

AGENT_HEAD = """\
profile_dirs = ["{profiles}"]

[agent]
school = "{school}"
gateway = "{gateway}"
drain_timeout = "3s"
status_interval = "2s"

[mqtt]
url = "{url}"
reconnect_min = "200ms"
reconnect_max = "1s"
keepalive = "10s"

[store]
path = "outbox.db"
max_size = "{cap}"

[[buses]]
id = "sim"
driver = "synthetic"

[[buses]]
id = "rs485-1"
driver = "modbus-rtu"
port = "{pty}"
baudrate = 38400
timeout = "250ms"
"""

MODBUS_DEVICES_CONFIG = """
[[devices]]
id = "b201-env"
profile = "xy-md02"
bus = "rs485-1"
address = 1
poll_interval = "500ms"

[[devices]]
id = "gate-zones"
profile = "generic-di8-fence"
bus = "rs485-1"
address = 2
poll_interval = "200ms"
"""


def agent_config(*, profiles: Path, url: str, cap: str, pty: Path, rate: float) -> str:
    """The agent's config: the synthetic env device at `rate` events/s and the fence on bus
    `sim`, the two Modbus devices on bus `rs485-1` at the pty's end `pty`, a store cap."""
    head = AGENT_HEAD.format(
        profiles=profiles, school=SCHOOL, gateway=GATEWAY, url=url, cap=cap, pty=pty
    )
    fence = fence_device(alarm_every=f"{ALARM_EVERY}s", poll="100ms")
    return head + env_device(rate) + fence + MODBUS_DEVICES_CONFIG
