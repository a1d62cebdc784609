"""A class board as the tests see it: real HTTP on loopback to the agent's hub (http.client).

Shared by tests/test_classboard_*.py: the agent config of a hub with boards, token and key
files written 0600, and one request helper that returns (status, headers, JSON or None).
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from tests.harness.ports import free_port

TOKENS = {
    "c3-2-board": "tok-c3-2-aaaaaaaaaaaaaaaa",
    "c3-3-board": "tok-c3-3-bbbbbbbbbbbbbbbb",
    "vendor-board": "tok-vendor-cccccccccccccccc",
}
# Card numbers the tests swipe: none of them, in decimal or hex, may appear anywhere.
CARDS = [3735928559, 305419896, 2882343476, 4023233417]


def card_forms(n: int) -> list[str]:
    return [str(n), f"{n:010d}", f"{n:x}", f"{n:X}", f"{n:08x}", f"{n:08X}"]


def write_secrets(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "card.key"
    key.write_bytes(b"campus-classboard-test-key-qwertyuiopasdfghjklzxcvbnm")
    key.chmod(0o600)
    (folder / "tokens").mkdir(exist_ok=True)
    for board, token in TOKENS.items():
        p = folder / "tokens" / f"{board}.token"
        p.write_text(token + "\n")
        p.chmod(0o600)


def hub_config(port: int, *, profile: str = "classboard-v1", extra_bus: str = "") -> str:
    return f"""
[[buses]]
id = "boards"
driver = "classboard"
listen = "127.0.0.1:{port}"
{extra_bus}

[[devices]]
id = "c3-2-board"
profile = "{profile}"
bus = "boards"
token_file = "tokens/c3-2-board.token"
class = "3-2"
location = {{ building = "A", floor = 3, room = "302" }}

[[devices]]
id = "c3-3-board"
profile = "{profile}"
bus = "boards"
token_file = "tokens/c3-3-board.token"
class = "3-3"
location = {{ building = "B", floor = 3, room = "303" }}

[[devices]]
id = "vendor-board"
profile = "vendor-banpai"
bus = "boards"
token_file = "tokens/vendor-board.token"
class = "4-1"
device_number = "BP2024000123"
location = {{ building = "A", floor = 4, room = "401" }}

[[devices]]
id = "boards-hub"
profile = "classboard-hub"
bus = "boards"
"""


PRIVACY = """
[privacy]
card_key_file = "card.key"
dedup_window = "0s"
"""
ALLOW = '["classboard.notice_post", "classboard.notice_revoke"]'


def new_port() -> int:
    return free_port()


class Board:
    """One board's HTTP client."""

    def __init__(self, port: int, board: str | None, token: str | None = None) -> None:
        self.port = port
        self.token = token if token is not None else (TOKENS[board] if board else "")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 40.0,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            h["Content-Type"] = content_type
        try:
            conn.request(method, "/api/v1" + path, body=data, headers=h)
            r = conn.getresponse()
            payload = r.read()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
        finally:
            conn.close()
        doc = json.loads(payload) if payload and "json" in hdrs.get("content-type", "") else None
        return r.status, hdrs, doc

    def heartbeat(self, **fields: Any) -> tuple[int, dict[str, str], Any]:
        doc = {"app_version": "2.3.1", "screen": "on", "brightness": 80, **fields}
        return self.request("POST", "/heartbeat", doc)

    def listening(self) -> bool:
        """The hub answers a heartbeat with 200; False while it is not yet listening."""
        try:
            return self.heartbeat()[0] == 200
        except ConnectionRefusedError:
            return False

    def notices(
        self, etag: str | None = None, wait: float | None = None
    ) -> tuple[int, dict[str, str], Any]:
        q = "" if wait is None else f"?wait={wait}"
        return self.request(
            "GET", "/notices" + q, headers={"If-None-Match": etag} if etag else None
        )


def fast_profile(folder: Path) -> None:
    """profiles/fast-board.toml: classboard-v1 with a 5 s heartbeat, offline after 7.5 s."""
    from agent.profiles import PROFILES_DIR

    profiles = folder / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    text = (PROFILES_DIR / "classboard" / "classboard-v1.toml").read_text()
    text = text.replace('id = "classboard-v1"', 'id = "fast-board"')
    text = text.replace(
        'heartbeat_interval = "30s", offline_after = 2.5',
        'heartbeat_interval = "5s", offline_after = 1.5',
    )
    (profiles / "fast-board.toml").write_text(text)
