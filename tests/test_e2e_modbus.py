"""The Modbus driver end to end: pymodbus's own server (the simulator) over TCP and over RTU
on socat pseudo-terminals, a real agent process, a real broker and subscriber."""

from __future__ import annotations

import math
import time
import tomllib
from pathlib import Path

import pytest

from agent.profiles import load_profile_file, shipped_profiles
from drivers.modbus.codec import Register, plan_reads
from tests.harness.modbus import ModbusSim
from tests.harness.pty import PtyPair
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.slow
VECTORS = Path(__file__).parent / "vectors"


def vector(pid: str) -> Path:
    return VECTORS / f"{pid}.toml"


def first_case(pid: str) -> dict:
    return tomllib.loads(vector(pid).read_text())["case"][0]["expect"]


def tcp_bus(sim: ModbusSim, bus_id: str = "io", extra: str = "") -> str:
    return f'\n[[buses]]\nid = "{bus_id}"\ndriver = "modbus-tcp"\nhost = "127.0.0.1"\nport = {sim.port}\ntimeout = "300ms"\n{extra}\n'


def device(
    dev_id: str, profile: str, bus: str, unit: int, *, poll: str = "200ms", extra: str = ""
) -> str:
    return f'\n[[devices]]\nid = "{dev_id}"\nprofile = "{profile}"\nbus = "{bus}"\naddress = {unit}\npoll_interval = "{poll}"\n{extra}\n'


def latest_values(sub, dev_id: str) -> dict:
    tele = [e for e in sub.events("telemetry") if e["device"] == dev_id and e["quality"] == "good"]
    return tele[-1]["values"] if tele else {}


def assert_values(got: dict, want: dict) -> None:
    for k, v in want.items():
        if isinstance(v, bool):
            continue  # alarm and state points are not telemetry values
        assert math.isclose(got[k], v, rel_tol=1e-6, abs_tol=1e-9), (k, got[k], v)


def test_sensor_meter_and_fence_over_tcp_publish_their_values(
    tmp_path, broker, subscribers, make_agent
):
    sim = ModbusSim(
        tmp_path / "sim",
        {1: vector("xy-md02"), 2: vector("eastron-sdm120"), 3: vector("generic-pulse-fence")},
        every={3: 1.5},
    )
    sim.start()
    try:
        sub = subscribers(broker)
        agent = make_agent(
            broker.url,
            tcp_bus(sim)
            + device("a101-env", "xy-md02", "io", 1)
            + device("main-meter", "eastron-sdm120", "io", 2)
            + device("north-fence", "generic-pulse-fence", "io", 3),
        )
        wait_for(
            lambda: latest_values(sub, "a101-env") and latest_values(sub, "main-meter"),
            20,
            "telemetry",
        )
        assert_values(latest_values(sub, "a101-env"), first_case("xy-md02"))
        assert_values(latest_values(sub, "main-meter"), first_case("eastron-sdm120"))
        meter = next(e for e in sub.events("telemetry") if e["device"] == "main-meter")
        assert meter["units"]["voltage"] == "V" and meter["category"] == "energy"
        # The fence cycles between its vector cases: zone 3 is cut, then restored.
        wait_for(
            lambda: (
                {e["state"] for e in sub.events("alarm") if e["alarm"] == "zone_3"}
                >= {"active", "cleared"}
            ),
            20,
            "zone 3 raised and cleared",
        )
        alarm = next(e for e in sub.events("alarm") if e["alarm"] == "zone_3")
        assert alarm["severity"] in ("critical", "major") and alarm["zone"] == "3"
        assert agent.terminate() == 0
    finally:
        sim.stop()


def test_block_reads_are_coalesced_and_counted_at_the_server(tmp_path, broker, make_agent):
    profile = load_profile_file(shipped_profiles()["eastron-sdm630"])
    points = [(p.name, Register.model_validate(p.wire)) for p in profile.points]
    blocks = plan_reads(points, profile.defaults.max_gap)
    assert len(blocks) < len(points)
    sim = ModbusSim(tmp_path / "sim", {5: vector("eastron-sdm630")})
    sim.start()
    try:
        agent = make_agent(
            broker.url, tcp_bus(sim) + device("meter-3p", "eastron-sdm630", "io", 5, poll="100ms")
        )
        agent.wait_status(
            lambda s: s.get("buses", {}).get("io", {}).get("requests", 0) >= 10 * len(blocks),
            20,
            "polls",
        )
        assert agent.terminate() == 0
        st = agent.status()
        polls = st["buses"]["io"]["requests_saved"] // (len(points) - len(blocks))
        served = sim.requests(5, 4)
        assert polls * len(blocks) - len(blocks) <= served <= polls * len(blocks) + len(blocks)
        assert served < polls * len(points) / 2, "points were not read in blocks"
    finally:
        sim.stop()


def test_dead_device_on_rtu_bus_does_not_slow_the_live_ones(
    tmp_path, broker, subscribers, make_agent
):
    pty = PtyPair(tmp_path / "pty")
    pty.start()
    sim = ModbusSim(
        tmp_path / "sim",
        {1: vector("xy-md02"), 2: vector("xy-md02")},
        dead=[3],
        rtu=pty.a,
        baud=38400,
    )
    sim.start()
    try:
        sub = subscribers(broker)
        bus = f'\n[[buses]]\nid = "rs485-1"\ndriver = "modbus-rtu"\nport = "{pty.b}"\nbaudrate = 38400\ntimeout = "250ms"\nretries = 0\n'
        agent = make_agent(
            broker.url,
            bus
            + device("a101", "xy-md02", "rs485-1", 1, poll="500ms")
            + device("a102", "xy-md02", "rs485-1", 2, poll="500ms")
            + device("a103", "xy-md02", "rs485-1", 3, poll="500ms"),
        )
        wait_for(
            lambda: any(
                e["device"] == "a103" and e["online"] is False for e in sub.events("state")
            ),
            20,
            "the dead device reported offline",
        )
        offline = next(
            e for e in sub.events("state") if e["device"] == "a103" and e["online"] is False
        )
        assert offline["reason"]
        before = {u: sim.requests(u, 4) for u in (1, 2)}
        t0 = time.monotonic()
        time.sleep(6.0)  # a measuring window: the poll rate is what is measured
        elapsed = time.monotonic() - t0
        for u in (1, 2):
            period = elapsed / (sim.requests(u, 4) - before[u])
            assert abs(period - 0.5) <= 0.1, f"unit {u} polled every {period:.3f}s instead of 0.5s"
        assert agent.alive()
        assert agent.terminate() == 0
    finally:
        sim.stop()
        pty.stop()


def test_chattering_zone_is_debounced_and_a_held_alarm_is_reported(
    tmp_path, broker, subscribers, make_agent
):
    sim = ModbusSim(
        tmp_path / "sim",
        {1: vector("generic-di8-fence"), 2: vector("generic-di8-fence")},
        every={1: 0.25, 2: 2.0},
    )
    sim.start()
    try:
        sub = subscribers(broker)
        agent = make_agent(
            broker.url,
            tcp_bus(sim)
            + device("chatter", "generic-di8-fence", "io", 1, poll="100ms")
            + device("steady", "generic-di8-fence", "io", 2, poll="100ms"),
        )
        wait_for(
            lambda: [
                e
                for e in sub.events("alarm")
                if e["device"] == "steady" and e["state"] == "cleared"
            ],
            20,
            "the steady fence's alarms raised and cleared",
        )
        chatter = [e for e in sub.events("alarm") if e["device"] == "chatter"]
        assert chatter == [], (
            f"a zone switching every 250 ms (debounce 500 ms) sent {len(chatter)} alarms"
        )
        assert agent.terminate() == 0
    finally:
        sim.stop()


def test_exception_responses_and_garbage_give_bad_quality_not_a_crash(
    tmp_path, broker, subscribers, make_agent
):
    bad_profile = tmp_path / "odd-meter.toml"
    bad_profile.write_text(
        'id = "odd-meter"\nvendor = "test"\nmodel = "reads an address the device lacks"\ncategory = "energy"\n'
        'driver = "modbus"\nsource = "test"\n[[points]]\nname = "voltage"\nunit = "V"\n'
        'register = { table = "input", address = 65000, type = "float32" }\n'
    )
    sim = ModbusSim(tmp_path / "sim", {1: vector("xy-md02"), 2: vector("xy-md02")})
    noisy = ModbusSim(tmp_path / "noisy", {1: vector("xy-md02")}, noise=0.5, seed=7)
    sim.start()
    noisy.start()
    try:
        sub = subscribers(broker)
        agent = make_agent(
            broker.url,
            tcp_bus(sim)
            + tcp_bus(noisy, "noisy")
            + device("odd", str(bad_profile), "io", 2)
            + device("good", "xy-md02", "io", 1)
            + device("noisy-env", "xy-md02", "noisy", 1, poll="100ms"),
        )
        wait_for(
            lambda: any(
                e["device"] == "odd" and e["quality"] == "bad" for e in sub.events("telemetry")
            ),
            20,
            "bad quality for the exception response",
        )
        wait_for(
            lambda: any(e["device"] == "odd" and e["online"] is False for e in sub.events("state")),
            20,
            "the failing device offline",
        )
        st = agent.wait_status(
            lambda s: s.get("buses", {}).get("noisy", {}).get("errors", 0) >= 3,
            20,
            "garbage counted as errors",
        )
        assert st["buses"]["noisy"]["requests"] > st["buses"]["noisy"]["errors"]
        assert latest_values(sub, "good"), "one failing device stopped the others"
        assert latest_values(sub, "noisy-env"), "no good reading got through the noise"
        assert agent.alive()
        assert agent.terminate() == 0
    finally:
        sim.stop()
        noisy.stop()


def test_write_action_from_a_command_reaches_the_simulated_coil(
    tmp_path, broker, subscribers, make_agent
):
    import json
    from datetime import UTC, datetime

    sim = ModbusSim(tmp_path / "sim", {4: vector("generic-pulse-fence")})
    sim.start()
    try:
        sub = subscribers(broker)
        agent = make_agent(
            broker.url, tcp_bus(sim) + device("gate-fence", "generic-pulse-fence", "io", 4)
        )
        agent.wait_status(
            lambda s: s["broker"]["connected"] and s["devices"]["gate-fence"]["online"], 20, "up"
        )
        cmd = {"id": "cmd-arm-modbus-01", "action": "arm", "ts": datetime.now(UTC).isoformat()}
        sub.publish("campus/v1/pt-023/gw-main/cmd/gate-fence", json.dumps(cmd).encode())
        reply = wait_for(
            lambda: [m.json() for m in sub.snapshot() if "/cmd-reply/" in m.topic], 10, "a reply"
        )[0]
        assert reply["result"] == "ok", reply
        stats = sim.wait_stats(lambda s: s["writes"], 10, "the write at the simulator")
        assert [4, "coil", 0, 1] in stats["writes"]
        assert agent.terminate() == 0
    finally:
        sim.stop()


def test_rtu_cable_pulled_then_plugged_back_recovers_by_itself(
    tmp_path, broker, subscribers, make_agent
):
    pty = PtyPair(tmp_path / "pty")
    pty.start()
    sim = ModbusSim(tmp_path / "sim", {1: vector("xy-md02")}, rtu=pty.a, baud=19200)
    sim.start()
    try:
        sub = subscribers(broker)
        bus = f'\n[[buses]]\nid = "rs485-1"\ndriver = "modbus-rtu"\nport = "{pty.b}"\nbaudrate = 19200\ntimeout = "250ms"\n'
        agent = make_agent(broker.url, bus + device("a101", "xy-md02", "rs485-1", 1, poll="200ms"))
        wait_for(lambda: latest_values(sub, "a101"), 20, "readings")
        pty.pull_cable()
        wait_for(
            lambda: any(
                e["device"] == "a101" and e["online"] is False for e in sub.events("state")
            ),
            20,
            "offline after the cable is pulled",
        )
        n = len(sub.events("state"))
        pty.plug_cable()
        wait_for(
            lambda: any(
                e["device"] == "a101" and e["online"] is True for e in sub.events("state")[n:]
            ),
            40,
            "online again after the cable is back",
        )
        assert agent.terminate() == 0
    finally:
        sim.stop()
        pty.stop()


def test_unit_answering_only_exceptions_is_never_online_until_a_good_reading(
    tmp_path, broker, subscribers, make_agent
):
    """An exception reply is an answer on the wire but not a reading: a unit whose every
    read gets exception 4 is offline with the code as the reason, and it stays offline (no
    online/offline flapping) until it answers with values."""
    broken = tmp_path / "sensor-broken"
    broken.touch()
    sim = ModbusSim(tmp_path / "sim", {1: vector("xy-md02")}, failing={1: broken})
    sim.start()
    try:
        sub = subscribers(broker)
        agent = make_agent(
            broker.url, tcp_bus(sim) + device("a101-env", "xy-md02", "io", 1, poll="100ms")
        )

        def states() -> list[dict]:
            return [e for e in sub.events("state") if e["device"] == "a101-env"]

        wait_for(states, 20, "the failing unit's first state event")
        first = states()[0]
        assert first["online"] is False, f"shown online without a reading: {first}"
        assert "exception 4" in first["reason"] and "device failure" in first["reason"]
        # Many more exception replies (the driver backs off up to its poll interval x 2^n):
        # still offline, and no state event has said online.
        seen = sim.requests(1, 4)
        sim.wait_stats(
            lambda s: int(s.get("requests", {}).get("1", {}).get("4", 0)) >= seen + 4,
            30,
            "more reads of the failing unit",
        )
        st = agent.wait_status(
            lambda s: s.get("devices", {}).get("a101-env", {}).get("online") is False,
            10,
            "the status to show the unit offline",
        )
        assert "exception 4" in st["devices"]["a101-env"]["reason"]
        assert not [e for e in states() if e["online"]], "online on an exception reply"
        assert not latest_values(sub, "a101-env")
        broken.unlink()  # the sensor is repaired: the unit answers with its registers
        wait_for(lambda: any(e["online"] for e in states()), 90, "online after a good reading")
        wait_for(lambda: latest_values(sub, "a101-env"), 20, "a good reading")
        assert_values(latest_values(sub, "a101-env"), first_case("xy-md02"))
        assert agent.terminate() == 0
    finally:
        sim.stop()
