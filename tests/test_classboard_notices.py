"""District notices down to the boards: a command on the hub, a long-polling board, receipts.

Real agent, real mosquitto, real HTTP: an emergency notice reaches a board waiting on its
ETag at once, and its receipts (fetched, displayed) reach the broker as the board's state
events; notices survive an agent restart; expiry is honoured and a board that never fetched
a notice gets an `expired` receipt; markup in a notice is refused.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.classboard_peer import ALLOW, PRIVACY, Board, hub_config, new_port, write_secrets
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.slow

CMD = "campus/v1/pt-023/gw-main/cmd/boards-hub"


def iso(delta: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta)).isoformat().replace("+00:00", "Z")


def post(sub, cid: str, **args) -> None:
    doc = {"id": cid, "action": "notice_post", "ts": iso(), "args": args}
    sub.publish(CMD, json.dumps(doc).encode())


def reply(sub, cid):
    def find():
        for m in sub.snapshot():
            if "/cmd-reply/" in m.topic and m.json()["id"] == cid:
                return m.json()
        return None

    return wait_for(find, 10, f"reply to {cid}")


def receipts(sub, device):
    return [
        (e.get("notice_id"), e.get("notice_status"))
        for e in sub.events("state")
        if e["device"] == device and "notice_status" in e
    ]


def start(make_agent, broker, tmp_path, port):
    write_secrets(tmp_path / "agent")
    agent = make_agent(broker.url, hub_config(port), extra=PRIVACY, allow=ALLOW)
    agent.wait_status(lambda s: s["broker"]["connected"], 15, "connection")
    wait_for(Board(port, "c3-2-board").listening, 15, "the hub listening")
    return agent


def test_an_emergency_notice_reaches_a_long_polling_board_at_once_and_its_receipt_the_broker(
    broker, subscribers, make_agent, tmp_path
):
    sub = subscribers(broker, v5=True)
    port = new_port()
    agent = start(make_agent, broker, tmp_path, port)
    b = Board(port, "c3-2-board")
    status, headers, doc = b.notices()
    assert status == 200 and doc["notices"] == []
    tag = headers["etag"]
    assert b.notices(tag, wait=0.2)[0] == 304  # nothing new: not modified
    got: dict[str, object] = {}

    def poll() -> None:
        got["answer"] = b.notices(tag)  # waits up to poll_timeout (25 s)
        got["at"] = time.monotonic()

    t = threading.Thread(target=poll)
    t.start()
    wait_for(
        lambda: agent.status()["buses"].get("boards", {}).get("polls_waiting") == 1,
        10,
        "the board waiting",
    )
    sent = time.monotonic()
    post(sub, "cmd-notice-0001", id="fire-drill", title="Fire drill", level="emergency",
         body="Leave by the east stairs.\nGather on the sports field.", targets="class:3-2")  # fmt: skip
    t.join(30)
    assert not t.is_alive()
    status, headers, doc = got["answer"]  # type: ignore[misc]
    assert status == 200 and headers["etag"] != tag
    # A 200 (not the 304 that ends a 25 s poll without news): the post woke the waiting poll.
    del sent
    (n,) = doc["notices"]
    assert n["id"] == "fire-drill" and n["level"] == "emergency" and n["body"].startswith("Leave")
    r = reply(sub, "cmd-notice-0001")
    assert r["result"] == "ok" and r["data"]["boards"] == 1, r
    # c3-3 is not in class 3-2: it gets nothing.
    assert Board(port, "c3-3-board").notices()[2]["notices"] == []
    status, _, doc = b.request(
        "POST", "/notices/receipts", {"id": "fire-drill", "status": "displayed"}
    )
    assert status == 200 and doc == {"ok": True, "new": True}
    assert (
        b.request("POST", "/notices/receipts", {"id": "fire-drill", "status": "displayed"})[2][
            "new"
        ]
        is False
    )
    assert b.request("POST", "/notices/receipts", {"id": "nope", "status": "displayed"})[0] == 404
    assert (
        b.request("POST", "/notices/receipts", {"id": "fire-drill", "status": "read", "name": "x"})[
            0
        ]
        == 400
    )
    wait_for(
        lambda: (
            receipts(sub, "c3-2-board") == [("fire-drill", "fetched"), ("fire-drill", "displayed")]
        ),
        10,
        "fetched and displayed receipts",
    )
    # Markup is refused, with the reason in the reply; nothing reaches a board.
    post(sub, "cmd-notice-0002", id="x1", title="<b>Hi</b>", body="<img src=x onerror=alert(1)>")
    r = reply(sub, "cmd-notice-0002")
    assert r["result"] != "ok" and "markup" in r["reason"], r
    post(sub, "cmd-notice-0003", id="x2", title="t", body="b", targets="everyone")
    assert reply(sub, "cmd-notice-0003")["result"] != "ok"
    # Revoked: the board's next poll no longer has it.
    sub.publish(CMD, json.dumps({"id": "cmd-revoke-0001", "action": "notice_revoke", "ts": iso(),
                                 "args": {"id": "fire-drill"}}).encode())  # fmt: skip
    assert reply(sub, "cmd-revoke-0001")["result"] == "ok"
    assert b.notices()[2]["notices"] == []
    assert agent.terminate() == 0
    assert "Traceback" not in agent.log_text()


def test_notices_survive_a_restart_and_expire_with_receipts_for_boards_that_never_got_them(
    broker, subscribers, make_agent, tmp_path
):
    sub = subscribers(broker, v5=True)
    port = new_port()
    agent = start(make_agent, broker, tmp_path, port)
    post(sub, "cmd-notice-0101", id="sports-day", title="Sports day", body="Friday, 8:00.",
         targets="building:A", level="info", valid_to=iso(12))  # fmt: skip
    assert reply(sub, "cmd-notice-0101")["data"]["boards"] == 2  # c3-2 and the vendor board
    post(sub, "cmd-notice-0102", id="later", title="Later", body="Not yet.",
         valid_from=iso(3600))  # fmt: skip
    assert reply(sub, "cmd-notice-0102")["result"] == "ok"
    assert agent.terminate() == 0
    agent.start()
    agent.wait_status(lambda s: s["broker"]["connected"], 15, "connection")
    b = Board(port, "c3-2-board")
    wait_for(b.listening, 15, "the hub listening again")
    status, _, doc = b.notices()
    assert status == 200
    assert [n["id"] for n in doc["notices"]] == ["sports-day"]  # "later" is not valid yet
    # The vendor board never fetches it: when it expires, its receipt says so.
    wait_for(
        lambda: ("sports-day", "expired") in receipts(sub, "vendor-board"), 30, "expired receipt"
    )
    assert ("sports-day", "fetched") in receipts(sub, "c3-2-board")
    assert ("sports-day", "expired") not in receipts(sub, "c3-2-board")
    assert b.notices()[2]["notices"] == []
    assert agent.terminate() == 0
