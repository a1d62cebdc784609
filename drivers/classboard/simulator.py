"""Simulated class boards speaking the canonical API v1 to a hub, for tests, the demo and the bench.

    python -m drivers.classboard.simulator --url http://127.0.0.1:8480 --boards 3 \
        --token-dir tokens [--names c3-2-board,c3-3-board] [--interval 30] \
        [--swipes 5 [--spread 60]] [--die 1 --die-after 60] [--duration 120] [--stats stats.json]

Board i is named by --names (default board-1 … board-N) and authenticates with the token in
TOKEN_DIR/<name>.token. Each board sends heartbeats every --interval seconds, posts --swipes
swipes of made-up cards (in one batch with an id; with --spread S one by one at random
moments over S seconds, a morning burst), long-polls its notices with the ETag and
answers every new notice with a `displayed` receipt. The first --die boards stop (no more
requests) after --die-after seconds. At --duration (or SIGTERM) it writes --stats as JSON:
per board the request counts, and per notice id the time each board got it and receipted it.
The card numbers it makes up are random and never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp


class SimBoard:
    def __init__(self, url: str, name: str, token: str, interval: float) -> None:
        self.url, self.name, self.interval = url.rstrip("/") + "/api/v1", name, interval
        self.headers = {"Authorization": f"Bearer {token}"}
        self.counts: dict[str, int] = {}
        self.notices: dict[str, dict[str, float]] = {}
        self.dead = False

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def heartbeats(self, http: aiohttp.ClientSession) -> None:
        started = time.monotonic()
        while not self.dead:
            doc = {
                "app_version": "sim-1.0",
                "screen": "on",
                "mode": "normal",
                "brightness": 80,
                "volume": 30,
                "uptime": round(time.monotonic() - started),
                "free_storage": 1024,
            }
            await self._post(http, "/heartbeat", doc, "heartbeat")
            await asyncio.sleep(self.interval)

    async def swipe(self, http: aiohttp.ClientSession, n: int, spread: float = 0.0) -> None:
        """n swipes: one batch now, or (spread > 0) one at a time at random moments over
        `spread` seconds, as students tap their cards in the morning."""
        if n <= 0:
            return
        if spread <= 0:
            now = datetime.now(UTC).isoformat()
            cards = [{"card": str(random.randrange(1, 2**32)), "time": now} for _ in range(n)]
            batch = f"{self.name}-{random.randrange(2**48):x}"
            await self._post(http, "/swipes", {"batch": batch, "swipes": cards}, "swipes")
            return
        t0 = time.monotonic()
        for at in sorted(random.uniform(0, spread) for _ in range(n)):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))  # the swipe's moment
            card = {"card": str(random.randrange(1, 2**32)), "time": datetime.now(UTC).isoformat()}
            await self._post(http, "/swipes", {"swipes": [card]}, "swipes")

    async def poll(self, http: aiohttp.ClientSession) -> None:
        etag: str | None = None
        while not self.dead:
            headers = dict(self.headers)
            if etag:
                headers["If-None-Match"] = etag
            try:
                async with http.get(f"{self.url}/notices", headers=headers) as r:
                    self.count(f"notices_{r.status}")
                    if r.status != 200:
                        if r.status != 304:
                            await asyncio.sleep(1.0)
                        continue
                    etag = r.headers.get("ETag")
                    doc = await r.json()
            except (aiohttp.ClientError, TimeoutError):
                self.count("errors")
                await asyncio.sleep(1.0)
                continue
            for n in doc["notices"]:
                key = f"{n['id']}@{n['rev']}"
                if key in self.notices:
                    continue
                self.notices[key] = {"received": time.time()}
                await self._post(
                    http, "/notices/receipts", {"id": n["id"], "status": "displayed"}, "receipt"
                )
                self.notices[key]["receipted"] = time.time()

    async def _post(self, http: aiohttp.ClientSession, path: str, doc: Any, what: str) -> None:
        try:
            async with http.post(self.url + path, json=doc, headers=self.headers) as r:
                self.count(f"{what}_{r.status}")
                await r.read()
        except (aiohttp.ClientError, TimeoutError):
            self.count("errors")


async def main_async(args: argparse.Namespace) -> int:
    boards = [SimBoard(args.url, n, t, args.interval) for n, t in args.tokens.items()]
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        tasks = []
        for b in boards:
            tasks.append(asyncio.create_task(b.heartbeats(http)))
            tasks.append(asyncio.create_task(b.poll(http)))
            tasks.append(asyncio.create_task(b.swipe(http, args.swipes, args.spread)))

        async def die() -> None:
            await asyncio.sleep(args.die_after)
            for b in boards[: args.die]:
                b.dead = True
            for i, b in enumerate(boards):
                if b.dead:
                    tasks[3 * i].cancel()
                    tasks[3 * i + 1].cancel()

        if args.die:
            tasks.append(asyncio.create_task(die()))
        # SIGTERM ends the run early, as --duration does: the stats are still written.
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        stopped = asyncio.create_task(stop.wait())
        ends: list[asyncio.Future[Any]] = [asyncio.gather(*tasks, return_exceptions=True), stopped]
        await asyncio.wait(ends, timeout=args.duration, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        for t in tasks:
            t.cancel()
    stats: dict[str, Any] = {
        "boards": {b.name: {"counts": b.counts, "dead": b.dead} for b in boards},
        "notices": {},
    }
    for b in boards:
        for key, times in b.notices.items():
            stats["notices"].setdefault(key, {})[b.name] = times
    args.result = stats
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drivers.classboard.simulator")
    p.add_argument("--url", required=True)
    p.add_argument("--boards", type=int, default=1)
    p.add_argument("--names", default="")
    p.add_argument("--token-dir", required=True)
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--swipes", type=int, default=0)
    p.add_argument("--spread", type=float, default=0.0, help="swipes one by one over S s")
    p.add_argument("--die", type=int, default=0, help="how many boards stop")
    p.add_argument("--die-after", type=float, default=60.0)
    p.add_argument("--duration", type=float, default=3600.0)
    p.add_argument("--stats", default="")
    args = p.parse_args(argv)
    names = args.names.split(",") if args.names else [f"board-{i + 1}" for i in range(args.boards)]
    try:
        args.tokens = {
            n: (Path(args.token_dir) / f"{n}.token").read_text().strip()
            for n in names[: args.boards]
        }
        rc = asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        sys.stderr.write(f"simulator: {e}\n")
        return 2
    text = json.dumps(args.result, indent=1, sort_keys=True)
    if args.stats:
        Path(args.stats).write_text(text)
    else:
        sys.stdout.write(text + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
