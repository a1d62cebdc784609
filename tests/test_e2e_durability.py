"""Outages, crashes and a full store, done for real: mosquitto stopped, the agent SIGKILLed."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections import defaultdict

import pytest

from tests.harness.agent import env_device, fence_device
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.slow


def seqs(events):
    return {e["seq"] for e in events}


def assert_in_order_per_device_and_kind(events):
    first: dict[tuple[str, str], list[int]] = defaultdict(list)
    seen = set()
    for e in events:
        if e["seq"] in seen:
            continue
        seen.add(e["seq"])
        first[(e["device"], e["kind"])].append(e["seq"])
    for key, order in first.items():
        assert order == sorted(order), f"{key} arrived out of seq order"


def wait_all_seqs(sub, upto, timeout, agent=None):
    try:
        wait_for(
            lambda: seqs(sub.events()) >= set(range(1, upto + 1)),
            timeout,
            f"every seq up to {upto}",
        )
    except AssertionError:
        missing = sorted(set(range(1, upto + 1)) - seqs(sub.events()))
        st = agent.status() if agent else {}
        raise AssertionError(
            f"{len(missing)} seqs never arrived, e.g. {missing[:10]}; agent backlog={st.get('backlog')} "
            f"broker={st.get('broker')} subscriber connected={sub.connected.is_set()} got={len(sub.snapshot())}"
        ) from None


def committed_high_water(store_path) -> int:
    con = sqlite3.connect(store_path)
    try:
        (value,) = con.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        return int(value) - 1
    finally:
        con.close()


def test_broker_outage_every_seq_arrives_in_order(broker, subscribers, make_agent):
    sub = subscribers(broker)
    agent = make_agent(broker.url, env_device(rate=200) + fence_device(alarm_every="500ms"))
    wait_for(lambda: len(sub.events()) > 200, 20, "events before the outage")
    broker.stop()
    agent.wait_status(
        lambda s: not s["broker"]["connected"] and s["backlog"] > 600, 20, "a backlog"
    )
    broker.start()
    agent.wait_status(lambda s: s["broker"]["connected"], 20, "reconnect")
    upto = agent.wait_status(lambda s: s["store"]["last_seq"] > 0, 5, "status")["store"]["last_seq"]
    wait_all_seqs(sub, upto, 30, agent)
    assert_in_order_per_device_and_kind(sub.events())
    assert agent.terminate() == 0


def test_broker_back_is_found_by_probe_long_before_the_backoff_ends(
    broker, subscribers, make_agent
):
    # A backoff of 30-60 s after the first failed attempt: only the probe can bring the
    # agent back within seconds.
    sub = subscribers(broker)
    agent = make_agent(
        broker.url,
        env_device(rate=50),
        reconnect='reconnect_min = "20s"\nreconnect_max = "60s"\nreconnect_spread = "200ms"',
    )
    wait_for(lambda: len(sub.events("telemetry")) > 20, 20, "events before the outage")
    broker.stop()
    agent.wait_status(
        lambda s: "cannot reach" in str(s["broker"]["last_error"]), 20, "a failed reconnect"
    )
    broker.start()
    back = time.monotonic()
    st = agent.wait_status(lambda s: s["broker"]["connected"], 60, "reconnect")
    took = time.monotonic() - back
    assert took < 15, f"reconnected {took:.1f}s after the broker came back: the backoff decided"
    assert st["broker"]["probes_answered"] >= 1
    upto = st["store"]["last_seq"]
    wait_all_seqs(sub, upto, 30, agent)
    assert agent.terminate() == 0


def test_sigkill_mid_stream_loses_nothing_committed(broker, subscribers, make_agent):
    sub = subscribers(broker)
    agent = make_agent(broker.url, env_device(rate=500) + fence_device())
    wait_for(lambda: len(sub.events()) > 300, 20, "events before the kill")
    agent.kill()
    hwm = committed_high_water(agent.dir / "outbox.db")
    assert hwm > 300
    # The last will tells the district the gateway went away.
    wait_for(
        lambda: any(
            m.topic.endswith("/status") and m.json()["state"] == "offline" for m in sub.snapshot()
        ),
        10,
        "the last-will offline status",
    )
    agent.start()
    wait_all_seqs(sub, hwm, 30, agent)
    # seq keeps increasing across the restart.
    wait_for(lambda: max(seqs(sub.events())) > hwm + 50, 20, "new events after the restart")
    status_msgs = [m.json() for m in sub.snapshot() if m.topic.endswith("/status")]
    assert status_msgs[-1]["state"] == "online"
    assert agent.terminate() == 0


def test_alarm_raised_during_backlog_arrives_before_backlog(broker, subscribers, make_agent):
    sub = subscribers(broker)
    agent = make_agent(
        broker.url,
        env_device(rate=2500) + fence_device(alarm_every="300ms", poll="50ms"),
        mqtt_extra="window = 50",
    )
    wait_for(lambda: len(sub.events("telemetry")) > 100, 20, "events before the outage")
    broker.stop()
    down_at = time.time()
    agent.wait_status(lambda s: s["backlog"] > 12000, 60, "a large telemetry backlog")
    outage_hwm = agent.status()["store"]["last_seq"]
    broker.start()
    up_at = time.time()
    agent.wait_status(lambda s: s["backlog"] < 500, 60, "the backlog to drain")
    events = sub.events()
    # In arrival order, after the outage: every alarm created during the outage came before
    # every telemetry event created during it.
    # down_at is taken once mosquitto has exited: whatever it accepted was created before.
    outage = [e for e in events if down_at < _ts(e) < up_at]
    kinds = [e["kind"] for e in outage]
    assert "alarm" in kinds and "telemetry" in kinds
    last_alarm = max(i for i, k in enumerate(kinds) if k == "alarm")
    first_tele = min(i for i, k in enumerate(kinds) if k == "telemetry")
    assert last_alarm < first_tele
    # An alarm raised after the broker came back overtook older backlog telemetry.
    idx = {id(e): i for i, e in enumerate(events)}
    fresh_alarms = [e for e in events if e["kind"] == "alarm" and e["seq"] > outage_hwm]
    assert fresh_alarms, "no alarm was raised during the drain"
    backlog_tele = [e for e in events if e["kind"] == "telemetry" and e["seq"] <= outage_hwm]
    last_backlog = max(idx[id(e)] for e in backlog_tele)
    assert idx[id(fresh_alarms[0])] < last_backlog, "the fresh alarm waited behind the backlog"
    assert agent.terminate() == 0


def _ts(e):
    from datetime import datetime

    return datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()


def test_byte_cap_evicts_oldest_telemetry_and_keeps_alarms(broker, subscribers, make_agent):
    sub = subscribers(broker)
    broker.stop()
    agent = make_agent(
        broker.url,
        env_device(rate=1500) + fence_device(alarm_every="200ms", poll="50ms"),
        max_size="256KiB",
    )
    st = agent.wait_status(lambda s: s["evicted"]["telemetry"] > 3000, 40, "telemetry eviction")
    assert st["evicted"]["alarm"] == 0
    assert st["store"]["used_bytes"] <= 256 * 1024
    on_disk = sum(
        (agent.dir / f).stat().st_size
        for f in ("outbox.db", "outbox.db-wal")
        if (agent.dir / f).exists()
    )
    assert on_disk <= 256 * 1024, f"{on_disk} bytes on disk for a 256 KiB cap"
    assert agent.terminate() == 0  # nothing more is produced from here on
    final = agent.status()
    broker.start()
    agent.start()
    last = final["store"]["last_seq"]

    def accounted():
        # Events up to `last` are either received or counted as evicted (the restarted
        # agent may evict a little more at start: the file it inherits is near its cap).
        got = {s for s in seqs(sub.events()) if s <= last}
        return len(got) + sum(agent.status().get("evicted", {}).values()) >= last

    wait_for(accounted, 30, "every event that was not evicted")
    assert agent.terminate() == 0
    end = agent.status()
    events = [e for e in sub.events() if e["seq"] <= last]
    committed = final["store"]["committed_by_priority"]
    alarms = {e["seq"] for e in events if e["kind"] == "alarm"}
    assert len(alarms) == committed["alarm"], "an alarm was lost"
    assert end["evicted"]["alarm"] == 0
    missing = set(range(1, last + 1)) - seqs(events)
    assert final["evicted"]["telemetry"] <= len(missing) <= end["evicted"]["telemetry"]
    tele = sorted(e["seq"] for e in events if e["kind"] == "telemetry")
    assert max(missing) < tele[0], "eviction did not take the oldest telemetry first"


def test_full_disk_keeps_alarms_and_accounts_for_every_event(broker, subscribers, make_agent):
    """The store lives on a 3 MiB tmpfs (in a mount namespace of the agent's own): the disk
    fills long before the 16 MiB cap. The agent keeps running, evicts telemetry inside its
    file to make room, never an alarm, and every event is received or counted."""
    unshare = shutil.which("unshare") or pytest.fail(
        "unshare is missing: apt-get install util-linux"
    )
    sub = subscribers(broker)
    broker.stop()
    agent = make_agent(
        broker.url,
        env_device(rate=1500) + fence_device(alarm_every="200ms", poll="50ms"),
        max_size="16MiB",
        start=False,
    )
    store_dir = agent.dir / "small-disk"
    store_dir.mkdir()
    text = agent.config.read_text().replace('path = "outbox.db"', 'path = "small-disk/outbox.db"')
    # The status file lives off the full disk (where a gateway puts it: /run/campus-agent).
    agent.config.write_text(text.replace("[agent]\n", '[agent]\nstatus_file = "status.json"\n'))
    ns = [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-r", "-m"]
    mount = f'mount -t tmpfs -o size=3m tmpfs {store_dir} && exec "$@"'
    agent.start(wrapper=[*ns, "sh", "-c", mount, "sh"], log_level="info")
    st = agent.wait_status(
        lambda s: s["evicted"]["telemetry"] > 500 and s["store"]["last_error"] is None,
        90,  # generous: on a loaded machine the disk-full retries take longer to clear
        "the disk to fill and the store to make room",
    )
    assert st["evicted"]["alarm"] == 0
    assert "full" in agent.log_text()
    broker.start()
    agent.wait_status(lambda s: s["broker"]["connected"], 20, "reconnect")
    st = agent.status()
    last = st["store"]["last_seq"]

    def accounted():
        s = agent.status()
        got = {e["seq"] for e in sub.events() if e["seq"] <= last}
        return s and len(got) + sum(s["evicted"].values()) >= last

    wait_for(accounted, 40, "every event received or counted as evicted")
    end = agent.status()
    assert end["evicted"]["alarm"] == 0
    assert end["lost_uncommitted"] == 0
    alarms = {e["seq"] for e in sub.events("alarm") if e["seq"] <= last}
    assert len(alarms) >= st["store"]["committed_by_priority"]["alarm"], "an alarm was lost"
    assert agent.terminate() == 0
