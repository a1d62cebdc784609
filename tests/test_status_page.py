"""The local status page (agent/status_page.py) in headless Chromium against the real agent,
a real broker and pymodbus's simulator; its token; its port taken.

Issue #13's acceptance: the page shows the devices with their last values, and a device
going offline (the Modbus simulator stopped: the agent's own detection, then the state event
at the broker) is shown offline within the page's refresh interval. Labels follow the
browser's language, the toggle and `?lang=`; a configured token is enforced (on loopback
too); a port already taken is an error in the log and in `campus-agent status`, and the
agent runs on. Chromium: tests/harness/chromium.py (Debian's `chromium`, over CDP).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.status_page import CSP
from tests.harness.agent import AgentProcess, fence_device
from tests.harness.chromium import Chromium, Tab
from tests.harness.modbus import ModbusSim
from tests.harness.process import ROOT
from tests.harness.waiting import eventually, wait_for

pytestmark = pytest.mark.slow

VECTORS = Path(__file__).parent / "vectors"
REFRESH = 1.0  # [status_page] refresh of these tests
SLACK = 1.5  # the fetch and the render after a refresh: the page's own work
TOKEN = "page-token-0123456789abcdef"


def modbus_devices(sim: ModbusSim) -> str:
    return f"""
[[buses]]
id = "io"
driver = "modbus-tcp"
host = "127.0.0.1"
port = {sim.port}
timeout = "300ms"

[[devices]]
id = "a101-climate"
profile = "xy-md02"
bus = "io"
address = 1
poll_interval = "200ms"
location = {{ building = "A", room = "101" }}
""" + fence_device(alarm_every="2s", poll="200ms")


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """One plain HTTP GET on loopback: status, the response (for headers), body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r, r.read()
    finally:
        conn.close()


def page_up(agent: AgentProcess) -> None:
    """Wait for the page to answer (a refused connection while the agent starts: not yet)."""
    port = agent.status_port
    assert port is not None

    def answers() -> bool:
        if not agent.alive():
            raise AssertionError(f"the agent exited: {agent.log_text()[-2000:]}")
        try:
            return get(port, "/api/status", {"Authorization": f"Bearer {TOKEN}"})[0] in (200, 401)
        except ConnectionRefusedError:
            return False

    wait_for(answers, 20, "the status page to listen")


async def device_state(tab: Tab, device: str) -> str | None:
    state: str | None = await tab.js(
        f"document.querySelector('#devices li[data-device=\"{device}\"]')?.dataset.online ?? null"
    )
    return state


async def badge(tab: Tab, device: str) -> str | None:
    text: str | None = await tab.js(
        f"document.querySelector('#devices li[data-device=\"{device}\"] .state')?.textContent"
        " ?? null"
    )
    return text


def test_the_page_shows_the_devices_and_a_device_going_offline_within_its_refresh(
    tmp_path, broker, subscribers, make_agent
):
    sim = ModbusSim(tmp_path / "sim", {1: VECTORS / "xy-md02.toml"})
    sim.start()
    browser: Chromium | None = None
    try:
        sub = subscribers(broker)
        agent = make_agent(broker.url, modbus_devices(sim), status_page=f'refresh = "{REFRESH:g}s"')
        page_up(agent)
        wait_for(
            lambda: [e for e in sub.events("telemetry") if e["device"] == "a101-climate"],
            20,
            "the climate sensor's readings at the broker",
        )
        browser = Chromium(tmp_path / "chromium")
        url = f"http://127.0.0.1:{agent.status_port}/?lang=en"

        async def run() -> float:
            assert browser is not None
            async with aiohttp.ClientSession() as http:
                tab = await Tab.open(http, browser.port())
                try:
                    await tab.send("Runtime.enable")
                    await tab.send("Log.enable")
                    await tab.send("Page.navigate", url=url)
                    await eventually(
                        lambda: device_state(tab, "a101-climate"), 15, "the device on the page"
                    )
                    assert await device_state(tab, "a101-climate") == "true"
                    assert await device_state(tab, "north-fence") == "true"
                    assert await badge(tab, "a101-climate") == "online"
                    # Its last values, as the profile names and units them.
                    cell = (
                        'document.querySelector(\'#devices li[data-device="a101-climate"] '
                        "tr[data-point=\"temperature\"] td.v')?.textContent ?? ''"
                    )
                    shown = await eventually(lambda: tab.js(cell), 10, "the temperature")
                    assert shown.endswith(" °C"), shown
                    last = [e for e in sub.events("telemetry") if e["device"] == "a101-climate"]
                    assert float(shown.split()[0]) == pytest.approx(
                        last[-1]["values"]["temperature"]
                    )
                    assert "A · 101" in await tab.js(
                        "document.querySelector('#devices li[data-device=\"a101-climate\"]')"
                        ".textContent"
                    )
                    assert await tab.js("document.getElementById('school').textContent") == (
                        "pt-023"
                    )
                    assert (
                        await tab.js("document.getElementById('broker-state').textContent")
                        == "connected"
                    )
                    # The fence raises its alarm every other 2 s: it shows among the alarms.
                    await eventually(
                        lambda: tab.js(
                            "document.querySelector('#alarms li[data-device=\"north-fence\"]')"
                            "?.textContent.includes('zone_3') ?? false"
                        ),
                        10,
                        "the fence's alarm on the page",
                    )

                    # The sensor goes away: the agent sees it (its own detection), the
                    # district gets the state event, and the page shows it within a refresh.
                    sim.stop()
                    wait_for(
                        lambda: any(
                            e["device"] == "a101-climate" and e["online"] is False
                            for e in sub.events("state")
                        ),
                        30,
                        "the sensor's offline state event at the broker",
                    )
                    seen = time.monotonic()
                    await eventually(
                        lambda: tab.js(
                            "document.querySelector('#devices li[data-device=\"a101-climate\"]')"
                            "?.dataset.online === 'false'"
                        ),
                        REFRESH + SLACK,
                        "the sensor shown offline within the page's refresh",
                        every=0.02,
                    )
                    elapsed = time.monotonic() - seen
                    assert await badge(tab, "a101-climate") == "OFFLINE"
                    assert await device_state(tab, "north-fence") == "true"
                    reason = await tab.js(
                        'document.querySelector(\'#devices li[data-device="a101-climate"]'
                        " .reason')?.textContent ?? ''"
                    )
                    assert reason.startswith("reason: "), reason

                    # The agent stops: the page keeps what it showed, marked stale.
                    assert await tab.js("document.getElementById('stale').hidden") is True
                    assert agent.terminate() == 0
                    await eventually(
                        lambda: tab.js("!document.getElementById('stale').hidden"),
                        REFRESH + SLACK,
                        "the page marked stale",
                    )
                    assert await device_state(tab, "north-fence") == "true"
                    assert tab.problems() == []  # no script error, no CSP violation
                    return elapsed
                finally:
                    await tab.close()

        elapsed = asyncio.run(run())
        print(f"state event at the broker -> offline on the page: {1000 * elapsed:.0f} ms")
    finally:
        if browser is not None:
            browser.close()
        sim.stop()


def test_labels_follow_the_browser_language_the_toggle_and_lang_and_it_fits_a_phone(
    tmp_path, broker, make_agent
):
    columns = (
        "getComputedStyle(document.querySelector('main')).gridTemplateColumns.split(' ').length"
    )
    agent = make_agent(
        broker.url, fence_device(alarm_every="0s"), status_page=f'refresh = "{REFRESH:g}s"'
    )
    page_up(agent)
    agent.wait_status(lambda s: s["broker"]["connected"], 15, "connection")
    browser = Chromium(tmp_path / "chromium")
    base = f"http://127.0.0.1:{agent.status_port}/"

    async def run() -> None:
        async with aiohttp.ClientSession() as http:
            tab = await Tab.open(http, browser.port())
            try:
                await tab.send("Runtime.enable")
                # A phone set to Chinese: navigator.language and Accept-Language say zh-CN.
                ua = await tab.js("navigator.userAgent")
                await tab.send(
                    "Emulation.setUserAgentOverride", userAgent=ua, acceptLanguage="zh-CN,zh"
                )
                await tab.send("Page.navigate", url=base)
                await eventually(
                    lambda: tab.js("document.querySelector('#devices .state') !== null"),
                    15,
                    "the devices on the page",
                )
                assert await tab.js("navigator.language") == "zh-CN"
                assert await tab.js("document.querySelector('h1').textContent") == "校园网关"
                assert await badge(tab, "north-fence") == "在线"
                assert await tab.js("document.getElementById('broker-state').textContent") == (
                    "已连接"
                )
                assert await tab.js("document.documentElement.lang") == "zh-CN"
                # The toggle: English, and the URL says so (a bookmark keeps it).
                await tab.js("document.getElementById('lang').click()")
                assert await tab.js("document.querySelector('h1').textContent") == (
                    "Campus gateway"
                )
                assert await badge(tab, "north-fence") == "online"
                assert await tab.js("location.search") == "?lang=en"
                # ?lang=zh wins over the saved choice.
                await tab.send("Page.navigate", url=base + "?lang=zh")
                await eventually(
                    lambda: tab.js("document.querySelector('#devices .state')?.textContent"),
                    15,
                    "the devices on the page",
                )
                assert await badge(tab, "north-fence") == "在线"
                assert await tab.js("document.getElementById('lang').textContent") == "English"
                # A phone: one column, nothing wider than the screen.
                assert await tab.js(columns) == 3
                await tab.send(
                    "Emulation.setDeviceMetricsOverride",
                    width=390,
                    height=844,
                    deviceScaleFactor=2,
                    mobile=True,
                )
                await eventually(lambda: tab.js(f"{columns} === 1"), 5, "one column")
                assert await tab.js("document.documentElement.scrollWidth") <= 390
                assert tab.problems() == []
            finally:
                await tab.close()

    try:
        asyncio.run(run())
    finally:
        browser.close()


def test_a_configured_token_is_enforced_and_never_logged(tmp_path, broker, make_agent):
    folder = tmp_path / "agent"
    folder.mkdir()
    (folder / "page.token").write_text(TOKEN + "\n")
    (folder / "page.token").chmod(0o600)
    agent = make_agent(broker.url, fence_device(), status_page='token_file = "page.token"')
    page_up(agent)
    port = agent.status_port
    assert port is not None
    for path in ("/", "/status.js", "/api/status", "/api/events"):
        status, r, body = get(port, path)
        assert status == 401, path
        assert json.loads(body)["error"] == "unauthorized"
        assert r.getheader("WWW-Authenticate") == "Bearer"
    assert get(port, "/api/status", {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
    assert get(port, "/?token=wrong-token-0123456789")[0] == 401

    status, _, body = get(port, "/api/status", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    doc = json.loads(body)
    assert [d["id"] for d in doc["devices"]] == ["north-fence"]
    status, r, body = get(port, "/", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and r.getheader("Content-Security-Policy") == CSP
    assert b'name="viewport"' in body

    # The page's URL with ?token=: a cookie (HttpOnly, SameSite=Strict, not the token
    # itself) and a redirect to the URL without it; the cookie then opens the API.
    status, r, _ = get(port, f"/?token={TOKEN}&lang=zh")
    assert status == 303
    assert r.getheader("Location") == "/?lang=zh"
    cookie = r.getheader("Set-Cookie")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    pair = cookie.split(";")[0]
    assert get(port, "/api/status", {"Cookie": pair})[0] == 200
    assert get(port, "/api/status", {"Cookie": pair[:-4] + "0000"})[0] == 401

    st = agent.wait_status(lambda s: s["status_page"]["unauthorized"] >= 7, 10, "the count")
    assert st["status_page"]["listening"] is True and st["status_page"]["token"] is True
    assert agent.terminate() == 0
    assert not [ln for ln in agent.log_lines() if TOKEN in ln]
    assert any("status page: refused a request" in ln for ln in agent.log_lines("WARNING"))


def test_without_a_token_only_a_loopback_host_is_served(broker, make_agent):
    agent = make_agent(broker.url, fence_device())
    page_up(agent)
    port = agent.status_port
    assert get(port, "/api/status")[0] == 200
    assert get(port, "/api/status", {"Host": f"localhost:{port}"})[0] == 200
    # A name that resolved to 127.0.0.1 for a web page elsewhere (DNS rebinding).
    status, _, body = get(port, "/api/status", {"Host": f"evil.example:{port}"})
    assert status == 421 and json.loads(body)["error"] == "wrong_host"


def test_a_port_already_taken_is_an_error_in_the_log_and_status_and_the_agent_runs_on(
    tmp_path, broker, subscribers, make_agent
):
    sub = subscribers(broker)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = make_agent(broker.url, fence_device(), start=False)
        text = agent.config.read_text().replace(f"port = {agent.status_port}", f"port = {port}")
        agent.write_config(text)
        agent.status_port = port
        agent.start()
        st = agent.wait_status(
            lambda s: s["broker"]["connected"] and s.get("status_page", {}).get("error"),
            20,
            "the page's error in the status",
        )
        assert st["status_page"]["listening"] is False
        assert f"127.0.0.1:{port}" in st["status_page"]["error"]
        n = len(sub.events("telemetry"))
        wait_for(lambda: len(sub.events("telemetry")) > n + 3, 15, "events flowing on")
        errors = [ln for ln in agent.log_lines(" ERROR ") if "status page not served" in ln]
        assert len(errors) == 1 and "the agent runs on without it" in errors[0]
        shown = subprocess.run(
            [sys.executable, "-m", "agent.cli", "status", "--config", str(agent.config)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        assert f"page:     NOT SERVED: cannot listen on 127.0.0.1:{port}" in shown.stdout
        # tail --local does not ask whatever holds the port: it says why there is no page.
        tail = subprocess.run(
            [sys.executable, "-m", "agent.cli", "tail", "--local", "--config", str(agent.config)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
            check=False,
        )
        assert tail.returncode == 3
        assert "the agent runs but does not serve its page: cannot listen on" in tail.stderr
        assert agent.terminate() == 0
