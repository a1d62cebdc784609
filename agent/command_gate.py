"""The door of the command channel: what a flood of commands may cost the gateway.

Every message paho hands us passes here first, synchronously, on the event loop's thread:
- a topic that is not one of this gateway's `cmd/{device}` topics is dropped and counted
  (a broker may deliver retained messages matching another client's wider filter);
- a token bucket (`[commands] rate` per second, `burst`) and a bounded queue (`queue`) decide
  whether it is handled at all. Over the limit it is dropped before it is parsed: counted,
  answered `busy` at most `busy_replies` times a second, and summed up in one audit event per
  `busy_audit_interval` (not one per command), with log lines rate-limited the same way.
A few workers take queued commands to the router, which gives each one reply and one audit
event. Memory is bounded by the queue, CPU by the bucket: a 100k-command flood costs the
gateway paho's parsing of 100k packets and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from agent.config_sections import CommandsSection
from agent.contract import (
    UNKNOWN_DEVICE,
    Code,
    CommandOutcome,
    Kind,
    NewEvent,
    Origin,
    reply_document,
)

log = logging.getLogger(__name__)

WORKERS = 4  # commands handled at once (actions on one device still run one at a time)

Handle = Callable[[str, bytes, str | None, bytes | None], Awaitable[None]]
ReplyFn = Callable[[str, bytes, bytes | None], bool]


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._t = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class QuietLog:
    """At most one log line per `every` seconds per key, saying how many it stood for."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        held = self._held.get(key, 0)
        if now - self._last.get(key, -1e9) < self.every:
            self._held[key] = held + 1
            return
        self._last[key] = now
        self._held[key] = 0
        suffix = f" (and {held} more like it since the last line)" if held else ""
        log.warning(message + suffix, *args)


@dataclass
class _Message:
    topic: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None


class CommandGate:
    """Bounded, rate-limited intake of command messages in front of the CommandRouter."""

    def __init__(
        self,
        cfg: CommandsSection,
        origin: Origin,
        *,
        handle: Handle,
        reply: ReplyFn,
        known: Callable[[str], bool],
        record: Callable[[NewEvent], None],
    ) -> None:
        self.origin = origin
        self._handle = handle
        self._reply = reply
        self._known = known
        self._record = record
        self._prefix = origin.command_topic("")
        self._queue: asyncio.Queue[_Message] = asyncio.Queue()
        self._quiet = QuietLog(10.0)
        self.dropped = 0
        self.foreign_topics = 0
        self.busy_replies = 0
        self._dropped_unaudited = 0
        self._since = time.time()
        self.configure(cfg)

    def configure(self, cfg: CommandsSection) -> None:
        """Use a reloaded [commands] section from now on."""
        self.cfg = cfg
        self._bucket = TokenBucket(cfg.rate, cfg.burst)
        self._busy = TokenBucket(cfg.busy_replies, max(1, int(cfg.busy_replies)))

    def status(self) -> dict[str, Any]:
        return {
            "queued": self._queue.qsize(),
            "dropped_busy": self.dropped,
            "busy_replies": self.busy_replies,
            "foreign_topics": self.foreign_topics,
        }

    # ---- intake (paho's on_message, on the loop's thread) ------------------------------

    def offer(
        self, topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None
    ) -> None:
        """Queue one message from the broker, or drop it (counted) if over the limits."""
        device = topic[len(self._prefix) :] if topic.startswith(self._prefix) else ""
        if not device or "/" in device:
            self.foreign_topics += 1
            self._quiet.warning("foreign", "ignored a message on %r: not a command topic", topic)
            return
        if self._queue.qsize() < self.cfg.queue and self._bucket.take():
            self._queue.put_nowait(_Message(topic, payload, response_topic, correlation))
            return
        self.dropped += 1
        self._dropped_unaudited += 1
        self._quiet.warning(
            "busy",
            "command dropped: over the rate limit (%g/s, burst %d) or queue full; %d so far",
            self.cfg.rate,
            self.cfg.burst,
            self.dropped,
        )
        if self._busy.take():
            self.busy_replies += 1
            self._reply_busy(device, payload)

    def _reply_busy(self, device: str, payload: bytes) -> None:
        command_id = action = None
        if len(payload) <= self.cfg.max_payload:  # a few a second: parsing is affordable
            with contextlib.suppress(orjson.JSONDecodeError):
                doc = orjson.loads(payload)
                if isinstance(doc, dict):
                    command_id = _short_str(doc.get("id"))
                    action = _short_str(doc.get("action"))
        outcome = CommandOutcome(Code.BUSY, "gateway busy: too many commands, try again later")
        known = self._known(device)
        body = reply_document(outcome, command_id, device if known else device[:64], action)
        self._reply(self.origin.reply_topic(device if known else UNKNOWN_DEVICE), body, None)

    # ---- work --------------------------------------------------------------------------

    async def run(self) -> None:
        """Hand queued commands to the router; sum drops up in one audit event per interval."""
        async with asyncio.TaskGroup() as tg:
            for i in range(WORKERS):
                tg.create_task(self._worker(), name=f"commands.worker{i}")
            tg.create_task(self._audit_drops(), name="commands.audit")

    async def _worker(self) -> None:
        while True:
            m = await self._queue.get()
            try:
                await self._handle(m.topic, m.payload, m.response_topic, m.correlation)
            except Exception as e:  # noqa: BLE001 - the router answers; this keeps the worker
                log.error("command handling failed: %r", e)

    async def _audit_drops(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.busy_audit_interval)
            self.flush_audit()

    def flush_audit(self) -> None:
        """One audit event for the commands dropped since the last one (if any)."""
        n, self._dropped_unaudited = self._dropped_unaudited, 0
        since, self._since = self._since, time.time()
        if not n:
            return
        outcome = CommandOutcome(
            Code.BUSY,
            f"{n} command(s) dropped over the rate limit ({self.cfg.rate:g}/s, burst "
            f"{self.cfg.burst}) since {time.strftime('%H:%M:%S', time.gmtime(since))}Z",
        )
        command = outcome.record(None, None)
        command["dropped"] = n
        self._record(
            NewEvent(
                kind=Kind.AUDIT,
                device=self.origin.gateway,
                category="gateway",
                profile="gateway",
                ts=time.time(),
                body={"command": command},
            )
        )


def _short_str(v: object) -> str | None:
    return v[:128] if isinstance(v, str) else None
