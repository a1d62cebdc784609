"""The board page (GET /board/) in headless Chromium against the real agent and mosquitto.

Issue #11's acceptance: the page loads in a real browser, an emergency notice posted by a
district command appears in the page's DOM within 2 s of the command's publish (a
functional deadline, measured from the publish to the DOM showing it), and the page's
`displayed` receipt reaches the broker. Also: the page's own heartbeats (app_version
web-1) reach the broker, dismissing the emergency sends `dismissed`, a revoke clears the
page, nothing breaks the Content-Security-Policy, and the token (in the URL's fragment)
is in no log of the agent.

Chromium is Debian's `chromium` (tests/setup.sh installs it), driven over the DevTools
protocol with aiohttp's websocket client: no new dependency, no chromedriver to keep in
step with the browser, and the protocol also reports console errors and CSP violations.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from typing import Any

import aiohttp
import pytest

from drivers.classboard.page import ASSETS, CSP, PAGE_ROUTES
from tests.classboard_peer import ALLOW, PRIVACY, TOKENS, Board, hub_config, new_port, write_secrets
from tests.harness.chromium import Chromium, Tab
from tests.harness.waiting import eventually, wait_for

pytestmark = pytest.mark.slow

CMD = "campus/v1/pt-023/gw-main/cmd/boards-hub"
DEADLINE = 2.0  # issue #11: the emergency notice on the page within 2 s of the publish


def hub_answers(port: int, board: str) -> bool:
    """The hub answers the board's notices; False while it is not yet listening."""
    try:
        return Board(port, board).notices(wait=0)[0] == 200
    except ConnectionRefusedError:
        return False


def receipts(sub: Any, device: str) -> list[tuple[str, str]]:
    return [
        (e["notice_id"], e["notice_status"])
        for e in sub.events("state")
        if e["device"] == device and "notice_status" in e
    ]


def command(sub: Any, cid: str, action: str, **args: Any) -> None:
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc = {"id": cid, "action": action, "ts": ts, "args": args}
    sub.publish(CMD, json.dumps(doc).encode())


EMERGENCY = "#emergency:not([hidden]) #emergency-title"


async def scenario(tab: Tab, sub: Any, agent: Any, port: int) -> float:
    """The page up, the emergency notice, its receipts; the publish -> DOM time in s."""
    await tab.send("Runtime.enable")
    await tab.send("Log.enable")
    url = f"http://127.0.0.1:{port}/board/#token={TOKENS['c3-2-board']}"
    await tab.send("Page.navigate", url=url)
    await eventually(
        lambda: tab.js("document.getElementById('class')?.textContent === '3-2'"),
        15,
        "the page showing its class",
    )
    assert await tab.js("document.getElementById('where').textContent") == "A · 302"
    await eventually(
        lambda: [
            e
            for e in sub.events("state")
            if e["device"] == "c3-2-board" and e.get("app_version") == "web-1"
        ],
        15,
        "the page's heartbeat at the broker",
    )
    hb = [e for e in sub.events("state") if e["device"] == "c3-2-board" and "screen" in e]
    assert hb and hb[-1]["screen"] == "on"
    await eventually(
        lambda: agent.status().get("buses", {}).get("boards", {}).get("polls_waiting") == 1,
        15,
        "the page long-polling its notices",
    )
    assert await tab.js(f"document.querySelector('{EMERGENCY}')") is None

    sent = time.monotonic()
    command(sub, "cmd-page-0001", "notice_post", id="fire-drill", title="Fire drill",
            level="emergency", body="Leave by the east stairs.\nGather on the sports field.",
            targets="class:3-2")  # fmt: skip
    await eventually(
        lambda: tab.js(f"document.querySelector('{EMERGENCY}')?.textContent === 'Fire drill'"),
        10,
        "the emergency notice on the page",
        every=0.01,
    )
    elapsed = time.monotonic() - sent
    body = await tab.js(
        "(() => { const b = document.getElementById('emergency-body');"
        " return [b.textContent, b.childElementCount]; })()"
    )
    assert body == ["Leave by the east stairs.\nGather on the sports field.", 0]
    await eventually(
        lambda: ("fire-drill", "displayed") in receipts(sub, "c3-2-board"),
        10,
        "the page's displayed receipt at the broker",
    )

    await tab.js("document.getElementById('dismiss').click()")
    await eventually(
        lambda: tab.js("document.getElementById('emergency').hidden"), 5, "the overlay gone"
    )
    await eventually(
        lambda: ("fire-drill", "dismissed") in receipts(sub, "c3-2-board"),
        10,
        "the dismissed receipt at the broker",
    )
    assert await tab.js("document.querySelectorAll('#notices li').length") == 1
    command(sub, "cmd-page-0002", "notice_revoke", id="fire-drill")
    await eventually(
        lambda: tab.js("document.querySelectorAll('#notices li').length === 0"),
        10,
        "the revoked notice gone from the page",
    )
    assert tab.problems() == []
    return elapsed


def test_the_board_page_shows_an_emergency_notice_within_2_s_and_its_receipt_reaches_the_broker(
    broker, subscribers, make_agent, tmp_path
):
    sub = subscribers(broker, v5=True)
    port = new_port()
    write_secrets(tmp_path / "agent")
    agent = make_agent(broker.url, hub_config(port), extra=PRIVACY, allow=ALLOW)
    agent.wait_status(lambda s: s["broker"]["connected"], 15, "connection")
    wait_for(lambda: hub_answers(port, "c3-3-board"), 15, "the hub")
    browser = Chromium(tmp_path / "chromium")

    async def run() -> float:
        async with aiohttp.ClientSession() as http:
            tab = await Tab.open(http, browser.port())
            try:
                return await scenario(tab, sub, agent, port)
            finally:
                await tab.close()

    try:
        elapsed = asyncio.run(run())
    finally:
        browser.close()
    print(f"command publish -> emergency notice in the page's DOM: {1000 * elapsed:.0f} ms")
    assert elapsed < DEADLINE, f"{elapsed:.2f} s"
    assert agent.terminate() == 0
    token = TOKENS["c3-2-board"]
    assert not [ln for ln in agent.log_lines() if token in ln]


def test_the_page_is_served_with_its_csp_and_puts_notices_in_as_text_only(
    broker, make_agent, tmp_path
):
    port = new_port()
    write_secrets(tmp_path / "agent")
    agent = make_agent(broker.url, hub_config(port), extra=PRIVACY, allow=ALLOW)
    agent.wait_status(lambda s: s["broker"]["connected"], 15, "connection")
    wait_for(lambda: hub_answers(port, "c3-2-board"), 15, "the hub")
    for f in PAGE_ROUTES:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f.path)  # no token: the page itself is no secret
        r = conn.getresponse()
        body = r.read()
        conn.close()
        assert r.status == 200, f.path
        assert r.getheader("Content-Type", "").startswith(f.content_type), f.path
        assert r.getheader("Content-Security-Policy") == CSP
        assert r.getheader("X-Content-Type-Options") == "nosniff"
        assert body == (ASSETS / f.file).read_bytes()
    assert CSP.startswith("default-src 'self';")
    html = (ASSETS / "index.html").read_text()
    assert "<script>" not in html and " style=" not in html and "http" not in html
    script = (ASSETS / "board.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):  # fmt: skip
        assert sink not in script, sink
    assert Board(port, None, token="x" * 20).request("GET", "/board")[0] == 401
    status, _, doc = Board(port, "c3-2-board").request("GET", "/board")
    assert status == 200 and doc["class_name"] == "3-2" and doc["room"] == "302"
