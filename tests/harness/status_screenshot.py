"""The status page's screenshots in the docs, regenerated: `python -m tests.harness.status_screenshot`.

A real mosquitto, a real agent (synthetic sensors and a fence whose alarm is active, plus a
Modbus sensor nobody answers for, so one device is offline and the recent errors show it),
and headless Chromium at a phone's size (390 x 844 CSS pixels, 2x), in English and Chinese:
docs/status-page.png and docs/status-page-zh.png (or the folder given with --out). The
Chinese one needs a CJK font (Debian: fonts-wqy-microhei or fonts-noto-cjk).
Stops only what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from tests.harness.agent import AgentProcess
from tests.harness.broker import Broker
from tests.harness.chromium import Chromium, Tab
from tests.harness.ports import free_port, listening
from tests.harness.process import ROOT
from tests.harness.waiting import eventually, wait_for

PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}

CONFIG = """\
[agent]
school = "pt-023"
gateway = "gw-main"

[mqtt]
url = "{url}"

[store]
path = "outbox.db"

[status_page]
port = {port}
refresh = "5s"

[[buses]]
id = "sim"
driver = "synthetic"

[[buses]]
id = "rs485-1"
driver = "modbus-tcp"
host = "127.0.0.1"
port = {dead_port}
timeout = "300ms"

[[devices]]
id = "a101-climate"
profile = "synthetic-env"
bus = "sim"
poll_interval = "1s"
location = {{ building = "A", floor = 1, room = "101" }}

[[devices]]
id = "north-fence"
profile = "synthetic-fence"
bus = "sim"
poll_interval = "200ms"
alarm_every = "{alarm_every}"

[[devices]]
id = "b204-meter"
profile = "eastron-sdm120"
bus = "rs485-1"
address = 2
location = {{ building = "B", room = "204" }}
"""


def cjk_font() -> bool:
    fc = shutil.which("fc-list")
    if fc is None:
        return False
    out = subprocess.run([fc, ":lang=zh"], capture_output=True, text=True, check=False)
    return bool(out.stdout.strip())


async def capture(tab: Tab, url: str, out: Path) -> None:
    await tab.send("Page.navigate", url=url)
    await eventually(
        lambda: tab.js("document.querySelector('#alarms li') !== null"),
        30,
        "the fence's alarm on the page",
    )
    await eventually(
        lambda: tab.js(
            "document.querySelector('#devices li[data-online=\"false\"]') !== null"
            " && document.querySelectorAll('#devices .values').length >= 2"
        ),
        30,
        "the offline meter and the sensors' values",
    )
    height = await tab.js("Math.ceil(document.documentElement.scrollHeight)")
    shot = await tab.send(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": PHONE["width"], "height": height, "scale": 1},
    )
    out.write_bytes(base64.b64decode(shot["data"]))
    print(f"{out} ({out.stat().st_size // 1024} KiB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    if not cjk_font():
        print(
            "no CJK font: apt-get install fonts-wqy-microhei (or fonts-noto-cjk)", file=sys.stderr
        )
        return 2
    with (
        tempfile.TemporaryDirectory(prefix="status-shot-") as tmp,
        Broker(Path(tmp) / "broker") as b,
    ):
        agent = AgentProcess(Path(tmp) / "agent", log_level="info")
        agent.status_port = free_port()
        dead = free_port()  # nothing listens there: the meter stays offline
        # The fence's alarm toggles every second: the shot is taken while it shows.
        agent.write_config(
            CONFIG.format(url=b.url, port=agent.status_port, dead_port=dead, alarm_every="1s")
        )
        agent.start()
        browser = Chromium(Path(tmp) / "chromium")
        try:
            wait_for(lambda: listening("127.0.0.1", agent.status_port), 20, "the page")
            # Connected, and up long enough for the ages on the page to read like a gateway's.
            agent.wait_status(
                lambda s: s["broker"]["connected"] and s["uptime"] > 20, 40, "the broker"
            )

            async def run() -> None:
                async with aiohttp.ClientSession() as http:
                    tab = await Tab.open(http, browser.port())
                    try:
                        await tab.send("Emulation.setDeviceMetricsOverride", **PHONE)
                        base = f"http://127.0.0.1:{agent.status_port}/"
                        await capture(tab, base + "?lang=en", args.out / "status-page.png")
                        await capture(tab, base + "?lang=zh", args.out / "status-page-zh.png")
                    finally:
                        await tab.close()

            asyncio.run(run())
        finally:
            browser.close()
            agent.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
