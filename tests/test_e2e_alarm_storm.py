"""An alarm storm from one device (issue #9): a flapping node sent 74k critical alarms in
15 s and the other buses' telemetry waited 5 s. Its edges are now coalesced at the points
layer; the other bus keeps flowing; the storm's start, counts and end are state events."""

from __future__ import annotations

import itertools
import signal

import pytest

from tests.harness.waiting import wait_for

pytestmark = pytest.mark.slow

STORM = """
[alarms]
storm_rate = 5
storm_burst = 10
storm_report = "1s"

[[buses]]
id = "other"
driver = "synthetic"

[[devices]]
id = "a101-env"
profile = "synthetic-load"
bus = "other"
rate = 20

[[devices]]
id = "north-fence"
profile = "synthetic-fence"
bus = "sim"
rate = 1000
alarm_every = "{every}"
"""


def test_a_flapping_device_is_coalesced_and_the_other_bus_keeps_flowing(
    broker, subscribers, make_agent
):
    sub = subscribers(broker)
    agent = make_agent(broker.url, STORM.format(every="1ms"))
    agent.wait_status(lambda s: s["broker"]["connected"], 10, "connection")

    def storm_states():
        return [
            e for e in sub.events("state") if "alarm_storm" in e and e["device"] == "north-fence"
        ]

    wait_for(lambda: [s for s in storm_states() if s["alarm_storm_edges"] > 1000], 15, "a storm")
    env_before = len([e for e in sub.events("telemetry") if e["device"] == "a101-env"])
    # The other bus goes on: its readings keep arriving during the storm.
    wait_for(
        lambda: (
            len([e for e in sub.events("telemetry") if e["device"] == "a101-env"]) > env_before + 20
        ),
        10,
        "the other bus's telemetry during the storm",
    )
    # The node stops flapping (reconfigured): the storm ends, its last edge is sent.
    agent.write_config(
        agent.config.read_text().replace('alarm_every = "1ms"', 'alarm_every = "1h"')
    )
    agent.signal(signal.SIGHUP)
    wait_for(lambda: [s for s in storm_states() if s["alarm_storm"] is False], 15, "the end")
    assert agent.terminate() == 0
    states = storm_states()
    assert states[0]["alarm_storm"] is True
    coalesced = states[-1]["alarm_storm_edges"]
    alarms = [e for e in sub.events("alarm") if e["device"] == "north-fence"]
    # Thousands of edges, a few dozen alarm events: the burst and one per point per second.
    assert coalesced > 1000
    assert len(alarms) < 10 + 2 * len(states) + 2 < coalesced
    # Sent edges alternate: the district's picture of the zone is never contradicted. (The
    # reconfigured device starts afresh: its first reading may raise the alarm again.)
    end = states[-1]["seq"]
    seen = [a["state"] for a in sorted(alarms, key=lambda a: a["seq"]) if a["seq"] < end]
    assert all(a != b for a, b in itertools.pairwise(seen)), seen
