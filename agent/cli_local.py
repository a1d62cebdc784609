"""`campus-agent tail --local`: the events the gateway publishes, read from the running agent's
own status page server (`/api/events`, agent/status_page.py) instead of the broker.

It needs no broker credentials: only the config's [status_page] address and token. It prints
through the caller's formatter (agent/cli.py's `describe`/`printable`), so a local tail reads
exactly like a broker tail. It never writes to the agent.
"""

from __future__ import annotations

import http.client
import sys
from collections.abc import Callable
from typing import Any

import orjson

from agent.config import SiteConfig

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3
READ_TIMEOUT = 60.0  # the agent writes an empty line every 15 s on a quiet stream


def _connect_host(bind: str) -> str:
    """Where to connect for a bind address: any-address binds are reached on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)  # noqa: S104 - a lookup


def _say(text: str) -> None:
    print(f"tail --local: {text}", file=sys.stderr, flush=True)


def tail_local(
    config: SiteConfig,
    *,
    wanted: Callable[[str], bool],
    line_of: Callable[[str, bytes], str],
    count: int,
    page_error: str | None,
) -> int:
    """Print each event the agent commits (as `line_of(topic, payload)`) until `count` are
    printed (0: until stopped); the exit code. `page_error`: why the running agent says it
    does not serve its page (from its status file), if it does."""
    page = config.status_page
    if not page.enabled:
        _say(
            f"the status page is off in {config.path} ([status_page] enabled = false): "
            "enable it, or use `campus-agent tail` (through the broker)"
        )
        return EXIT_CONFIG
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
            if page_error:
                _say(f"the agent runs but does not serve its page: {page_error}")
            else:
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
