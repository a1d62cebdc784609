"""The boards' local API, v1 (aiohttp): heartbeat, swipes, notices (long-poll), receipts.

Every request carries `Authorization: Bearer <token>` (the board's token file); the token
names the board (compared in constant time against every board's). Bodies are JSON, at most
`max_body` bytes; unknown fields are refused, so no endpoint takes a photo or a name. Each
board has a token bucket of requests; failed authentications are limited per address. The
reply to any refusal is `{"error": CODE, "detail": TEXT}` with the HTTP status: the detail
names fields, never a value a board sent. docs/classboard-api.yaml is the contract (a test
checks this module's ROUTES and models against it).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.validation import first_error
from drivers.classboard import page
from drivers.classboard.dialect import BadRequest, Dialect
from drivers.classboard.notices import Board, etag, iso

if TYPE_CHECKING:
    from drivers.classboard.driver import ClassboardDriver

log = logging.getLogger(__name__)
PREFIX = "/api/v1"


# ---- request and reply models (the spec's schemas; vendor shapes come from profiles) ----


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReceiptRequest(_Model):
    """POST /notices/receipts: what a board did with a notice."""

    id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    status: Literal["displayed", "dismissed", "failed"]
    rev: int | None = Field(default=None, ge=1)
    reason: str | None = Field(default=None, max_length=200, pattern=r"^[^<>\x00-\x1f]*$")


class HeartbeatReply(_Model):
    ok: bool
    time: str  # the gateway's time, RFC 3339 UTC
    epoch_ms: int
    local_time: str  # the same in the board profile's zone and time format
    interval: float  # seconds until the next heartbeat is expected


class SwipeRefusal(_Model):
    index: int
    reason: str


class SwipesReply(_Model):
    accepted: int
    rejected: list[SwipeRefusal]
    replayed: bool


class NoticeDoc(_Model):
    id: str
    rev: int
    title: str
    body: str
    level: Literal["info", "urgent", "emergency"]
    valid_from: str
    valid_to: str | None
    posted: str


class NoticesReply(_Model):
    notices: list[NoticeDoc]
    time: str


class BoardReply(_Model):
    """GET /board: who the token's board is (the board page shows its class)."""

    id: str
    class_name: str | None
    building: str | None
    room: str | None
    heartbeat_interval: float  # seconds, the board's profile's
    poll_timeout: float  # the longest a notices long-poll waits


class ReceiptReply(_Model):
    ok: bool
    new: bool


class ErrorReply(_Model):
    error: str
    detail: str


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    request: type[BaseModel] | str | None  # a model, or "profile" (the board's dialect)
    reply: type[BaseModel]


ROUTES = (
    Route("GET", f"{PREFIX}/board", None, BoardReply),
    Route("POST", f"{PREFIX}/heartbeat", "profile", HeartbeatReply),
    Route("POST", f"{PREFIX}/swipes", "profile", SwipesReply),
    Route("GET", f"{PREFIX}/notices", None, NoticesReply),
    Route("POST", f"{PREFIX}/notices/receipts", ReceiptRequest, ReceiptReply),
)


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class Bucket:
    """A token bucket: `rate` a second, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.t = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class BoardState:
    """One board as the hub knows it."""

    id: str
    board: Board
    dialect: Dialect
    device_number: str
    room: str | None = None
    token: bytes | None = None
    token_problem: str = ""
    bucket: Bucket | None = None
    last_seen: float | None = None
    online: bool | None = None
    polls: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def _json(
    status: int, doc: BaseModel | dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    body = doc.model_dump(mode="json") if isinstance(doc, BaseModel) else doc
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
            **(headers or {}),
        },
    )


def error(status: int, code: str, detail: str) -> web.Response:
    return _json(status, ErrorReply(error=code, detail=detail))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Api:
    """The HTTP handlers of one hub (one listening endpoint)."""

    def __init__(self, driver: ClassboardDriver) -> None:
        self.d = driver
        self.opts = driver.options
        self.fail_buckets: dict[str, Bucket] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.opts.max_body, middlewares=[self._errors])
        handlers: dict[str, Handler] = {
            f"{PREFIX}/board": self.whoami,
            f"{PREFIX}/heartbeat": self.heartbeat,
            f"{PREFIX}/swipes": self.swipes,
            f"{PREFIX}/notices": self.notices,
            f"{PREFIX}/notices/receipts": self.receipt,
        }
        for r in ROUTES:
            app.router.add_route(r.method, r.path, handlers[r.path])
        page.add_routes(app)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        d = self.d
        d.count("requests")
        try:
            return await handler(request)
        except ApiError as e:
            d.count(f"http_{e.status}")
            return error(e.status, e.code, e.detail)
        except web.HTTPRequestEntityTooLarge:
            d.count("http_413")
            return error(413, "too_large", f"a request body is at most {self.opts.max_body} bytes")
        except web.HTTPException as e:
            d.count(f"http_{e.status}")
            return error(e.status, "not_found" if e.status == 404 else "bad_method", e.reason)

    # ---- what every request goes through ---------------------------------------------

    def _auth(self, request: web.Request) -> BoardState:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode()
        found: BoardState | None = None
        for b in self.d.boards.values():  # every board compared: the time says nothing
            if b.token is not None and hmac.compare_digest(b.token, given) and given:
                found = b
        if scheme.lower() != "bearer" or found is None:
            peer = request.remote or "?"
            bucket = self.fail_buckets.setdefault(peer, Bucket(1.0, 10))
            if len(self.fail_buckets) > 1000:
                self.fail_buckets.clear()
            self.d.count("auth_failed")
            if not bucket.take():
                raise ApiError(429, "rate_limited", "too many failed authentications")
            log.warning("classboard: refused a request without a valid token from %s", peer)
            raise ApiError(401, "unauthorized", "give Authorization: Bearer <the board's token>")
        if found.bucket is not None and not found.bucket.take():
            self.d.count("rate_limited")
            raise ApiError(429, "rate_limited", "too many requests from this board; slow down")
        return found

    async def _body(self, request: web.Request) -> Any:
        if request.content_length is not None and request.content_length > self.opts.max_body:
            raise web.HTTPRequestEntityTooLarge(
                max_size=self.opts.max_body, actual_size=request.content_length
            )
        if request.content_type != "application/json":
            raise ApiError(415, "not_json", "send Content-Type: application/json")
        raw = await request.read()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, "malformed", "the body is not JSON") from None

    # ---- handlers --------------------------------------------------------------------

    async def whoami(self, request: web.Request) -> web.Response:
        b = self._auth(request)
        await self.d.seen(b, {})
        return _json(
            200,
            BoardReply(
                id=b.id,
                class_name=b.board.klass,
                building=b.board.building,
                room=b.room,
                heartbeat_interval=b.dialect.api.heartbeat_interval,
                poll_timeout=self.opts.poll_timeout,
            ),
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        b = self._auth(request)
        doc = await self._body(request)
        try:
            self._device_number(b, doc)
            values = b.dialect.heartbeat(doc)
        except BadRequest as e:
            raise ApiError(400, "invalid", str(e)) from None
        now = time.time()
        await self.d.seen(b, values)
        self.d.count("heartbeats")
        interval = b.dialect.api.heartbeat_interval
        return _json(
            200,
            HeartbeatReply(
                ok=True,
                time=iso(now),
                epoch_ms=math.floor(now * 1000),
                local_time=b.dialect.local_time(now),
                interval=interval,
            ),
        )

    def _device_number(self, b: BoardState, doc: object) -> None:
        number = b.dialect.device_number(doc)
        if number is not None and number != b.device_number:
            raise BadRequest(
                f"field {b.dialect.api.device_field!r} names another board than the token's"
            )

    async def swipes(self, request: web.Request) -> web.Response:
        b = self._auth(request)
        doc = await self._body(request)
        now = time.time()
        try:
            self._device_number(b, doc)
            items = doc if isinstance(doc, list) else [doc]
            for item in items if not b.dialect.api.swipe.list else []:
                self._device_number(b, item)
            batch = b.dialect.swipes(doc, now, self.opts.swipe_max_age, self.opts.max_batch)
        except BadRequest as e:
            raise ApiError(400, "invalid", str(e)) from None
        await self.d.seen(b, {})
        if batch.batch_id is not None and await self.d.book().batch_seen(b.id, batch.batch_id, now):
            self.d.count("swipe_batches_replayed")
            return _json(200, SwipesReply(accepted=0, rejected=[], replayed=True))
        refused = []
        accepted = 0
        for s in batch.swipes:
            if s.number is None:
                refused.append(SwipeRefusal(index=s.index, reason=s.reason))
                continue
            await self.d.card(b, s.ts, s.number)
            accepted += 1
        self.d.count("swipes", accepted)
        self.d.count("swipes_rejected", len(refused))
        return _json(200, SwipesReply(accepted=accepted, rejected=refused, replayed=False))

    async def notices(self, request: web.Request) -> web.Response:
        b = self._auth(request)
        await self.d.seen(b, {})
        book = self.d.book()
        wait = self.opts.poll_timeout
        if "wait" in request.query:
            try:
                wait = min(wait, max(0.0, float(request.query["wait"])))
            except ValueError:
                raise ApiError(400, "invalid", "wait: seconds, a number") from None
        if not math.isfinite(wait):
            wait = self.opts.poll_timeout
        asked = request.headers.get("If-None-Match")
        deadline = time.monotonic() + wait
        b.polls += 1
        try:
            while True:
                changed = book.changed()
                now = time.time()
                current = book.current(b.board, now)
                tag = etag(current)
                left = deadline - time.monotonic()
                if asked != tag:
                    break
                if left <= 0:
                    self.d.count("polls_unchanged")
                    return web.Response(status=304, headers={"ETag": tag})
                try:
                    async with asyncio.timeout(left):
                        await changed.wait()
                except TimeoutError:
                    continue
        finally:
            b.polls -= 1
        await self.d.delivered(b, current, now)
        return _json(
            200,
            NoticesReply(notices=[NoticeDoc(**n.document()) for n in current], time=iso(now)),
            {"ETag": tag},
        )

    async def receipt(self, request: web.Request) -> web.Response:
        b = self._auth(request)
        doc = await self._body(request)
        try:
            r = ReceiptRequest.model_validate(doc)
        except ValidationError as e:
            raise ApiError(400, "invalid", first_error(e)) from None
        await self.d.seen(b, {})
        n = self.d.book().notices.get(r.id)
        if n is None or not n.for_board(b.board):
            raise ApiError(404, "no_notice", "no such notice for this board")
        if r.rev is not None and r.rev != n.rev:
            raise ApiError(409, "old_revision", f"the notice is at revision {n.rev}")
        new = await self.d.receipted(b, r.id, r.status)
        return _json(200, ReceiptReply(ok=True, new=new))
