"""Headless Chromium driven over the DevTools protocol (CDP) with aiohttp's websocket client.

Debian's `chromium` (tests/setup.sh installs it): no new dependency, no chromedriver to keep
in step with the browser, and the protocol also reports console errors and CSP violations.
Used by the page tests (class board, status page) and tests/harness/status_screenshot.py.
Stops only the process group it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness.waiting import wait_for


def chromium_binary() -> str:
    """$CHROMIUM, else chromium (Debian's), chromium-browser or google-chrome: not a snap."""
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name) if name else None
        if found is None or os.path.realpath(found).startswith("/snap/"):
            continue
        with open(found, "rb") as f:
            if b"snap" in f.read(1 << 16):  # Ubuntu's chromium-browser: a shim for the snap
                continue
        return found
    raise AssertionError(
        "no chromium: tests/setup.sh installs Debian's `chromium`; elsewhere set CHROMIUM "
        "to a Chrome or Chromium binary (Ubuntu's snap does not run in a container)"
    )


class Chromium:
    """Headless Chromium with its own profile folder, in a process group we started."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.profile = folder / "profile"
        self.log = folder / "chromium.log"
        args = [
            chromium_binary(),
            "--headless=new",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-dev-shm-usage",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            "--window-size=1280,800",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def port(self) -> int:
        active = self.profile / "DevToolsActivePort"

        def ready() -> int | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited: {self.log.read_text()[-2000:]}")
            text = active.read_text() if active.exists() else ""
            return int(text.split()[0]) if text.strip() else None

        port: int = wait_for(ready, 30, "chromium's DevTools port")
        return port

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group we started: its renderers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Tab:
    """One page target over the DevTools protocol: commands, and the events it sent."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = 0
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, port: int) -> Tab:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        page = next(t for t in targets if t["type"] == "page")
        return cls(await http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0))

    async def _read(self) -> None:
        async for msg in self.ws:
            doc = json.loads(msg.data)
            if "id" in doc and doc["id"] in self.waiting:
                self.waiting.pop(doc["id"]).set_result(doc)
            else:
                self.events.append(doc)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.ids += 1
        done = asyncio.get_running_loop().create_future()
        self.waiting[self.ids] = done
        await self.ws.send_str(json.dumps({"id": self.ids, "method": method, "params": params}))
        doc = await asyncio.wait_for(done, 15)
        if "error" in doc:
            raise AssertionError(f"{method}: {doc['error']}")
        result: dict[str, Any] = doc["result"]
        return result

    async def js(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def problems(self) -> list[str]:
        """Exceptions thrown by the page, and console/log errors other than network ones."""
        out = []
        for e in self.events:
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(e["params"]["exceptionDetails"])[:300])
            elif e.get("method") == "Log.entryAdded":
                entry = e["params"]["entry"]
                if entry["level"] == "error" and entry["source"] != "network":
                    out.append(f"{entry['source']}: {entry['text']}")
        return out

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
