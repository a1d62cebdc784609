"""The fault soak, 60 seconds of it (bench/soak.py; `python -m bench.soak` runs 10 minutes).

Broker restarts, agent SIGKILLs, a store pushed past its cap and a pulled serial cable, on a
seeded schedule that starts with one fault of each kind; then every seq is accounted for.
"""

from __future__ import annotations

import pytest

from tests.harness.process import ROOT

pytestmark = pytest.mark.slow

SEED = 3


def test_soak_60s_loses_no_alarm_and_no_event_outside_eviction(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.soak import REQUIRED, run_soak, table

    report = run_soak(
        60, seed=SEED, out=tmp_path / "soak.json", workdir=tmp_path / "run", verbose=False
    )
    summary = table(report)
    print(summary)  # shown with -s, or -rP
    events, alarms, faults = report["events"], report["alarms"], report["faults"]["by_kind"]
    for kind in REQUIRED:
        assert faults[kind] >= 1, f"no {kind} fault happened\n{summary}"
    assert events["evicted"].get("telemetry", 0) > 0, f"the store never reached its cap\n{summary}"
    assert alarms["received"] > 0, summary
    assert alarms["lost"] == 0, f"{alarms}\n{summary}"
    assert alarms["evicted"] == 0, summary
    assert events["lost"] == 0, f"{events}\n{summary}"
    assert events["unexplained_missing"] == 0, summary
    assert not events["seq_reused"], summary
    assert report["run"]["drained_before_sigterm"], summary
    assert report["run"]["agent_exit_code"] == 0, summary
    assert not report["run"]["agent_unexpected_exits"], summary
