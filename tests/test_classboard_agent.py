"""The class board hub end to end: the real agent process, real mosquitto, real HTTP on loopback.

Heartbeats become state and telemetry; swipes (canonical and vendor-style, late, batched,
replayed) become hashed access events, and no card number is anywhere (store, WAL, log,
status, broker); bad requests get a status and a reason, never a traceback; a silent board
goes offline with the reason and comes back; `check` refuses a wildcard address.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.classboard_peer import (
    ALLOW,
    CARDS,
    PRIVACY,
    TOKENS,
    Board,
    card_forms,
    hub_config,
    new_port,
    write_secrets,
)
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.slow


def start(make_agent, broker, tmp_path, port, **kw):
    write_secrets(tmp_path / "agent")
    agent = make_agent(broker.url, hub_config(port, **kw), extra=PRIVACY, allow=ALLOW)
    agent.wait_status(lambda s: s["broker"]["connected"], 15, "connection")
    wait_for(Board(port, "c3-2-board").listening, 15, "the hub listening")
    return agent


def of(sub, kind, device):
    return [e for e in sub.events(kind) if e["device"] == device]


def test_heartbeat_and_swipes_become_state_and_hashed_access_events(
    broker, subscribers, make_agent, tmp_path
):
    sub = subscribers(broker)
    port = new_port()
    agent = start(make_agent, broker, tmp_path, port)
    b = Board(port, "c3-2-board")
    status, _, doc = b.heartbeat(app_version="2.4.0", screen="off", mode="exam", uptime=12)
    assert status == 200, doc
    reply_ts = datetime.fromisoformat(doc["time"].replace("Z", "+00:00")).timestamp()
    assert abs(reply_ts - datetime.now(UTC).timestamp()) < 60 and doc["interval"] == 30
    wait_for(
        lambda: any(
            e.get("app_version") == "2.4.0" and e.get("screen") == "off" and e["online"]
            for e in of(sub, "state", "c3-2-board")
        ),
        10,
        "the board's state event",
    )
    # A batch of two swipes, one of them buffered two hours on the board.
    late = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    now = datetime.now(UTC).isoformat()
    batch = {"batch": "b-0001", "swipes": [{"card": str(CARDS[0]), "time": late},
                                          {"card": str(CARDS[1]), "time": now}]}  # fmt: skip
    status, _, doc = b.request("POST", "/swipes", batch)
    assert status == 200 and doc == {"accepted": 2, "rejected": [], "replayed": False}
    # The same batch again (the board did not get the reply): acknowledged, not taken twice.
    status, _, doc = b.request("POST", "/swipes", batch)
    assert status == 200 and doc["replayed"] is True and doc["accepted"] == 0
    # A vendor board: {"deviceNumber","cardId","signTime"}, local China Standard Time.
    v = Board(port, "vendor-board")
    status, _, doc = v.request(
        "POST",
        "/heartbeat",
        {"deviceNumber": "BP2024000123", "appVersion": "V1.0.7", "screenStatus": 1, "mode": 0},
    )
    assert status == 200, doc
    assert len(doc["local_time"]) == 19  # "YYYY-MM-DD HH:MM:SS" for a board without NTP
    local = (datetime.now(UTC) + timedelta(hours=8) - timedelta(minutes=30)).replace(microsecond=0)
    swipe = {"deviceNumber": "BP2024000123", "cardId": f"{CARDS[2]:010d}",
             "signTime": local.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    status, _, doc = v.request("POST", "/swipes", [swipe, {**swipe, "cardId": str(CARDS[3])}])
    assert status == 200 and doc["accepted"] == 2, doc
    access = wait_for(
        lambda: len(sub.events("access")) >= 4 and sub.events("access"), 10, "4 access events"
    )
    assert len(access) == 4
    for e in access:
        assert set(e["card"]) == {"hash", "key_id", "format", "bits"}
        assert e["card"]["format"] == "mifare-uid" and e["card"]["bits"] == 32
        assert e["reader"] == "board" and e["reads"] == 1 and e["category"] == "classboard"
    board = [e for e in access if e["device"] == "c3-2-board"]
    assert all(
        e["location"] == {"building": "A", "floor": 3, "room": "302", "class": "3-2"} for e in board
    )
    by_dev = {e["device"] for e in access}
    assert by_dev == {"c3-2-board", "vendor-board"}
    vendor = [e for e in access if e["device"] == "vendor-board"]
    want = (local - timedelta(hours=8)).replace(tzinfo=UTC)  # CST is UTC+8, no DST
    got = datetime.fromisoformat(vendor[0]["ts"].replace("Z", "+00:00"))
    assert got == want, (got, want)
    oldest = min(e["ts"] for e in access if e["device"] == "c3-2-board")
    assert oldest[:13] == late.replace("+00:00", "")[:13]  # the board's time, not arrival
    assert len({e["card"]["hash"] for e in access}) == 4
    agent.wait_status(lambda s: s.get("cards", {}).get("events", 0) >= 4, 10, "card counts")
    assert agent.terminate() == 0
    # No card number anywhere: store (+ WAL), logs, status file, broker traffic.
    blobs = [p.read_bytes() for p in agent.dir.rglob("*") if p.is_file() and "token" not in p.name]
    blobs += [m.payload for m in sub.snapshot()]
    for n in CARDS:
        for form in card_forms(n):
            for blob in blobs:
                assert form.encode() not in blob, "a card number left the privacy pipeline"
    assert "Traceback" not in agent.log_text()


def test_bad_requests_get_a_status_and_a_reason_never_a_traceback(
    broker, subscribers, make_agent, tmp_path
):
    sub = subscribers(broker)
    port = new_port()
    agent = start(
        make_agent, broker, tmp_path, port, extra_bus='max_body = "4KiB"\nrate = 2.0\nburst = 40'
    )
    b = Board(port, "c3-2-board")
    assert Board(port, None, token="not-the-token-xxxxxxxx").heartbeat()[0] == 401
    assert Board(port, None, token="").heartbeat()[0] == 401
    assert b.request("POST", "/heartbeat", raw=b"{not json")[0] == 400
    status, _, doc = b.request("POST", "/heartbeat", {"app_version": "1", "photo": "AAAA"})
    assert status == 400 and "photo" in doc["detail"], doc
    status, _, doc = b.request(
        "POST", "/swipes", {"swipes": [{"card": "1", "time": "x", "name": "Li Lei"}]}
    )
    assert status == 400 and "name" in doc["detail"]
    assert b.request("POST", "/heartbeat", {"app_version": "<script>x</script>"})[0] == 400
    assert b.request("POST", "/heartbeat", {"app_version": "1", "brightness": 900})[0] == 400
    status, _, doc = b.request("POST", "/swipes", raw=b"x" * 10000)
    assert status == 413 and doc["error"] == "too_large"
    assert (
        b.request(
            "POST", "/swipes", raw=b"--x\r\n", content_type="multipart/form-data; boundary=x"
        )[0]
        == 415
    )
    assert b.request("POST", "/photos", {"x": 1})[0] == 404
    assert b.request("DELETE", "/notices")[0] == 405
    # A swipe with a bad card or time is refused alone, with its index and no value.
    now = datetime.now(UTC).isoformat()
    status, _, doc = b.request(
        "POST", "/swipes",
        {"swipes": [{"card": "12ab", "time": now}, {"card": str(CARDS[0]), "time": "yesterday"},
                    {"card": str(CARDS[1]), "time": "2001-01-01T00:00:00Z"}]},
    )  # fmt: skip
    assert (
        status == 200
        and doc["accepted"] == 0
        and [r["index"] for r in doc["rejected"]] == [0, 1, 2]
    )
    assert str(CARDS[0]) not in json.dumps(doc)
    # A vendor board naming another board's device number: refused.
    v = Board(port, "vendor-board")
    status, _, doc = v.request(
        "POST",
        "/swipes",
        {"deviceNumber": "OTHER", "cardId": "1", "signTime": "2026-01-01 00:00:00"},
    )
    assert status == 400 and "deviceNumber" in doc["detail"]
    # Past the board's burst: 429, and the other boards are not slowed down.
    codes = [b.heartbeat()[0] for _ in range(60)]
    assert 429 in codes
    assert Board(port, "c3-3-board").heartbeat()[0] == 200
    st = agent.wait_status(lambda s: s["buses"].get("boards", {}).get("rate_limited"), 10, "counts")
    counts = st["buses"]["boards"]
    assert counts["auth_failed"] >= 2 and counts["http_400"] >= 5 and counts["http_413"] == 1
    assert sub.events("access") == []
    log = agent.log_text()
    assert "Traceback" not in log and TOKENS["c3-2-board"] not in log
    assert agent.terminate() == 0


def test_check_refuses_every_interface_unless_allowed_and_a_board_without_token(tmp_path):
    write_secrets(tmp_path)
    head = '[agent]\nschool = "s"\ngateway = "g"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
    cfg = tmp_path / "agent.toml"

    def check(text):
        cfg.write_text(head + text + '[privacy]\ncard_key_file = "card.key"\n')
        return subprocess.run(
            [sys.executable, "-m", "agent.cli", "check", "--config", str(cfg)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    good = hub_config(8480)
    assert check(good).returncode == 0
    out = check(good.replace("127.0.0.1:8480", "0.0.0.0:8480"))
    assert out.returncode == 2 and "buses[0]" in out.stderr and "allow_all_interfaces" in out.stderr
    assert "Traceback" not in out.stderr
    assert check(good.replace("127.0.0.1:8480", "[::]:8480")).returncode == 2
    allowed = good.replace(
        'listen = "127.0.0.1:8480"', 'listen = "0.0.0.0:8480"\nallow_all_interfaces = true'
    )
    assert check(allowed).returncode == 0
    out = check(good.replace('token_file = "tokens/c3-2-board.token"\n', ""))
    assert out.returncode == 2 and "devices[0].token_file" in out.stderr
    # Without the school's card key: refused (boards take swipes).
    cfg.write_text(head + good)
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2 and "privacy.card_key_file" in out.stderr


def test_a_silent_board_goes_offline_with_the_reason_and_comes_back(
    broker, subscribers, make_agent, tmp_path
):
    profiles = tmp_path / "agent" / "profiles"
    profiles.mkdir(parents=True)
    from agent.profiles import PROFILES_DIR

    text = (PROFILES_DIR / "classboard" / "classboard-v1.toml").read_text()
    text = text.replace('id = "classboard-v1"', 'id = "fast-board"')
    text = text.replace(
        'heartbeat_interval = "30s", offline_after = 2.5',
        'heartbeat_interval = "5s", offline_after = 1.5',
    )
    (profiles / "fast-board.toml").write_text(text)
    sub = subscribers(broker)
    port = new_port()
    write_secrets(tmp_path / "agent")
    agent = make_agent(
        broker.url,
        hub_config(port, profile="fast-board"),
        extra=PRIVACY,
        allow=ALLOW,
        start=False,
    )
    # profile_dirs must precede the tables: put it at the top of the file.
    agent.write_config('profile_dirs = ["profiles"]\n' + agent.config.read_text())
    agent.start()
    agent.wait_status(lambda s: s["broker"]["connected"], 15, "connection")
    b = Board(port, "c3-2-board")
    wait_for(b.listening, 15, "the hub listening")
    wait_for(lambda: any(e["online"] for e in of(sub, "state", "c3-2-board")), 10, "online")
    off = wait_for(
        lambda: [e for e in of(sub, "state", "c3-2-board") if e["online"] is False], 20, "offline"
    )
    assert "no heartbeat for" in off[0]["reason"], off[0]
    # c3-3 never spoke: offline since the start, said so.
    wait_for(
        lambda: any(
            e["online"] is False and "since the gateway started" in e.get("reason", "")
            for e in of(sub, "state", "c3-3-board")
        ),
        20,
        "never seen",
    )
    assert b.heartbeat()[0] == 200
    wait_for(lambda: of(sub, "state", "c3-2-board")[-1]["online"] is True, 10, "back online")
    assert agent.terminate() == 0
