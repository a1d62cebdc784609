"""`campus-agent tail --local`: the events the gateway publishes, read from the running agent's
own status page server (`/api/events`, agent/status_page.py) instead of the broker.

It needs no broker credentials: only the config's [status_page] address and token. It prints
through the caller's formatter (agent/cli.py's `describe`/`printable`), so a local tail reads
exactly like a broker tail. It never writes to the agent.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from agent.config import SiteConfig
from agent.contract import topic_level

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3
STATUS_FRESH = 10.0  # s: the running agent rewrites its status file every second
READ_TIMEOUT = 60.0  # the agent writes an empty line every 15 s on a quiet stream


def _connect_host(bind: str) -> str:
    """Where to connect for a bind address: any-address binds are reached on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)  # noqa: S104 - a lookup


def _say(text: str) -> None:
    print(f"tail --local: {text}", file=sys.stderr, flush=True)


def tail_local(
    args: argparse.Namespace,
    config: SiteConfig,
    *,
    describe: Callable[[str, bytes, str], str],
    printable: Callable[[str], str],
) -> int:
    """`tail --local` (args: count, kind, raw): print each event the agent commits, as
    `campus-agent tail` prints it from the broker, until `count` are printed (0: until
    stopped); the exit code."""
    prefix = config.agent.topic_prefix

    def line_of(topic: str, payload: bytes) -> str:
        text = f"{topic} {payload.decode()}" if args.raw else describe(topic, payload, prefix)
        return printable(text)

    def wanted(topic: str) -> bool:
        return not args.kind or topic_level(topic, prefix) == args.kind

    return _tail(config, wanted=wanted, line_of=line_of, count=args.count)


def _page_error(config: SiteConfig) -> str | None:
    """Why the running agent says it does not serve its page, from its status file (which
    it rewrites every second: an older one is not the running agent's)."""
    path = config.agent.status_file  # load_config always sets it
    if path is None:
        return None
    try:
        doc = orjson.loads(path.read_bytes())
        fresh = time.time() - float(doc["written"]) < STATUS_FRESH and doc["pid"]
        error = doc["status_page"]["error"] if fresh else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(error) if error else None


def _tail(
    config: SiteConfig,
    *,
    wanted: Callable[[str], bool],
    line_of: Callable[[str, bytes], str],
    count: int,
) -> int:
    page = config.status_page
    if not page.enabled:
        _say(
            f"the status page is off in {config.path} ([status_page] enabled = false): "
            "enable it, or use `campus-agent tail` (through the broker)"
        )
        return EXIT_CONFIG
    page_error = _page_error(config)
    if page_error:
        # Something else holds the port: asking it would only hang or mislead.
        _say(f"the agent runs but does not serve its page: {page_error}")
        return EXIT_NOT_RUNNING
    host = _connect_host(page.bind)
    shown = f"http://{f'[{host}]' if ':' in host else host}:{page.port}/api/events"
    headers = {"Accept": "application/x-ndjson"}
    if config.status_token is not None:
        headers["Authorization"] = f"Bearer {config.status_token}"
    conn = http.client.HTTPConnection(host, page.port, timeout=READ_TIMEOUT)
    try:
        try:
            conn.request("GET", "/api/events", headers=headers)
            reply = conn.getresponse()
        except OSError as e:
            _say(
                f"the agent is not running, or not with this config (nothing answers at "
                f"{shown}: {e.strerror or e}); see `systemctl status campus-agent`"
            )
            return EXIT_NOT_RUNNING
        if reply.status != 200:
            why = {
                401: "the agent refused the token (is token_file the one it runs with?)",
                503: "too many local tails are reading already",
            }.get(reply.status, f"HTTP {reply.status}")
            _say(why)
            return EXIT_FAILED
        _say(f"listening on {shown}")
        return _follow(reply, wanted=wanted, line_of=line_of, count=count)
    except KeyboardInterrupt:
        return 0
    finally:
        conn.close()


def _follow(
    reply: http.client.HTTPResponse,
    *,
    wanted: Callable[[str], bool],
    line_of: Callable[[str, bytes], str],
    count: int,
) -> int:
    seen = 0
    while True:
        try:
            raw = reply.readline()
        except (OSError, http.client.HTTPException) as e:
            _say(f"the stream broke: {e}")
            return EXIT_FAILED
        if not raw:
            _say("the agent ended the stream (it is stopping)")
            return EXIT_FAILED
        if not raw.strip():
            continue  # keep-alive
        try:
            doc: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            _say(f"not a JSON line: {raw[:80]!r}")
            continue
        if not isinstance(doc, dict):
            continue
        if "error" in doc:
            _say(f"{doc.get('error')}: {doc.get('detail')}")
            return EXIT_FAILED
        topic = str(doc.get("topic", ""))
        if not wanted(topic):
            continue
        print(line_of(topic, orjson.dumps(doc.get("payload"))), flush=True)
        seen += 1
        if count and seen >= count:
            return 0
