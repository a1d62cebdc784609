"""Modbus polls batched per wake-up (#14): the pure schedule, then 50 devices with mixed
intervals and a dead one on a real agent against the real pymodbus simulator over TCP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from drivers.modbus.schedule import Schedule, batch_window, first_offsets
from tests.harness.modbus import ModbusSim
from tests.harness.waiting import wait_for

VECTORS = Path(__file__).parent / "vectors"


# ---- the schedule (no I/O) ------------------------------------------------------------------


def test_one_wake_up_takes_every_device_due_within_the_window_and_nothing_later() -> None:
    s: Schedule[str] = Schedule(0.05)
    for name, due in (("a", 1.0), ("b", 1.04), ("c", 1.05), ("d", 1.06), ("e", 2.0)):
        s.put(name, due)
    assert s.next_wake() == 1.0
    assert [n for n, _ in s.pop_due(1.0)] == ["a", "b", "c"]
    assert s.next_wake() == 1.06
    assert s.pop_due(1.0) == []
    assert [n for n, _ in s.pop_due(1.06)] == ["d"]
    assert [n for n, _ in s.pop_due(5.0)] == ["e"]
    assert s.next_wake() is None and len(s) == 0  # nothing due: no timer to arm


def test_rescheduling_replaces_the_entry_and_says_when_the_timer_must_move() -> None:
    s: Schedule[str] = Schedule(0.01)
    assert s.put("a", 5.0) is True  # the first entry: arm
    assert s.put("b", 6.0) is False  # later than the next wake-up: the timer stays
    assert s.put("b", 1.0) is True  # earlier (a read-back): re-arm
    assert s.pop_due(1.0) == [("b", 1.0)]  # once, at its new time, not also at 6.0
    s.discard("a")
    assert s.next_wake() is None and s.pop_due(100.0) == []


def test_window_is_bounded_by_the_shortest_interval_and_first_polls_sit_on_its_grid() -> None:
    assert batch_window([1.0, 30.0]) == 0.05
    assert batch_window([0.1, 1.0]) == pytest.approx(0.01)
    w = batch_window([1.0] * 200)
    offsets = first_offsets([1.0] * 200, w)
    assert len(set(offsets)) == 21  # 0, 0.05, ... 1.0: 200 devices in 20-21 wake-ups
    assert all(abs(o / w - round(o / w)) < 1e-9 for o in offsets)
    assert all(abs(o - i / 200) <= w / 2 + 1e-9 for i, o in enumerate(offsets))


# ---- the agent ------------------------------------------------------------------------------

INTERVALS = (0.2, 0.3, 0.5)
DEAD = 50


@pytest.mark.slow
def test_fifty_devices_keep_their_periods_in_shared_wake_ups_with_a_dead_one_among_them(
    tmp_path, broker, make_agent
) -> None:
    """49 live xy-md02 (one input-register read per poll) at 200/300/500 ms and one unit that
    never answers, on one TCP bus (4 connections, timeout 300 ms): every live unit is asked at
    its own period (±15 %, counted at the simulator), and polls share timer wake-ups."""
    live = range(1, DEAD)
    sim = ModbusSim(
        tmp_path / "sim",
        {u: VECTORS / "xy-md02.toml" for u in live},
        dead=[DEAD],
        log_level="info",
    )
    sim.start()
    try:
        config = (
            f'\n[[buses]]\nid = "io"\ndriver = "modbus-tcp"\nhost = "127.0.0.1"\n'
            f'port = {sim.port}\ntimeout = "300ms"\n'
        )
        for u in range(1, DEAD + 1):
            config += (
                f'\n[[devices]]\nid = "d{u}"\nprofile = "xy-md02"\nbus = "io"\naddress = {u}\n'
                f'poll_interval = "{int(INTERVALS[u % 3] * 1000)}ms"\n'
            )
        agent = make_agent(broker.url, config)
        agent.wait_status(
            lambda s: (
                s.get("devices", {}).get(f"d{DEAD}", {}).get("online") is False
                and all(s["devices"].get(f"d{u}", {}).get("online") for u in live)
            ),
            30,
            "live units online, the dead one offline",
        )
        first = sim.stats()["requests"]
        t0 = time.monotonic()
        # Until the slowest live unit (500 ms) has been asked 12 more times: about 6 s.
        last = wait_for(
            lambda: (
                (
                    st
                    if all(
                        int(st["requests"].get(str(u), {}).get("4", 0))
                        - int(first.get(str(u), {}).get("4", 0))
                        >= 12
                        for u in live
                    )
                    else None
                )
                if (st := sim.stats())
                else None
            ),
            30,
            "12 polls of every live unit",
        )
        elapsed = time.monotonic() - t0
        slow = []
        for u in live:
            n = int(last["requests"][str(u)]["4"]) - int(first[str(u)]["4"])
            want = elapsed / INTERVALS[u % 3]
            if abs(n - want) > 0.15 * want + 1:
                slow.append((u, INTERVALS[u % 3], n, round(want, 1)))
        assert not slow, f"(unit, interval, polls, expected) off their period: {slow}"
        bus = agent.status()["buses"]["io"]
        assert bus["polls"] >= 2.5 * bus["batches"], f"polls did not share wake-ups: {bus}"
        assert agent.alive()
        assert agent.terminate() == 0
    finally:
        sim.stop()


@pytest.mark.slow
def test_a_write_is_read_back_at_once_then_the_period_goes_on(
    tmp_path, broker, subscribers, make_agent
) -> None:
    """A fence polled every 20 s is armed: the driver reads it back at once (not at its next
    poll), once, and not again before a period has passed."""
    import json
    from datetime import UTC, datetime

    sim = ModbusSim(tmp_path / "sim", {4: VECTORS / "generic-pulse-fence.toml"}, log_level="info")
    sim.start()
    try:
        sub = subscribers(broker)
        agent = make_agent(
            broker.url,
            f'\n[[buses]]\nid = "io"\ndriver = "modbus-tcp"\nhost = "127.0.0.1"\n'
            f'port = {sim.port}\ntimeout = "300ms"\n'
            '\n[[devices]]\nid = "gate-fence"\nprofile = "generic-pulse-fence"\nbus = "io"\n'
            'address = 4\npoll_interval = "20s"\n',
        )
        agent.wait_status(
            lambda s: s["broker"]["connected"] and s["devices"]["gate-fence"]["online"], 20, "up"
        )
        assert sim.wait_stats(lambda s: s["requests"].get("4"), 5, "the first poll")
        first = sim.requests(4, 4)
        cmd = {"id": "cmd-arm-readback-1", "action": "arm", "ts": datetime.now(UTC).isoformat()}
        sub.publish("campus/v1/pt-023/gw-main/cmd/gate-fence", json.dumps(cmd).encode())
        reply = wait_for(
            lambda: [m.json() for m in sub.snapshot() if "/cmd-reply/" in m.topic], 10, "a reply"
        )[0]
        assert reply["result"] == "ok", reply
        sim.wait_stats(lambda s: int(s["requests"]["4"].get("4", 0)) > first, 5, "the read-back")
        agent.wait_status(
            lambda s: s["buses"]["io"]["polls"] == first + 1, 10, "the read-back in the status"
        )
        assert sim.requests(4, 4) == first + 1, "read back more than once"
        assert agent.terminate() == 0
    finally:
        sim.stop()
