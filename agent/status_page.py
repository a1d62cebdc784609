"""The local status page: the agent's own read-only HTTP server for facilities staff.

`/` is a static page (agent/web/: no external resource, no framework, served with
`Content-Security-Policy: default-src 'self'`) that fetches `/api/status` every `refresh`;
`/api/events` streams every committed event as NDJSON (`{"topic": …, "payload": {…}}`,
the payload exactly as the broker gets it) for `campus-agent tail --local`. Nothing here
changes the agent: there is no POST, no command, no config.

Access: bound to 127.0.0.1 unless configured. With a `token_file` (required off loopback,
enforced whenever set) every request needs `Authorization: Bearer TOKEN`, or the cookie the
page URL's `?token=TOKEN` sets (HttpOnly, SameSite=Strict; the reply redirects to the URL
without it). Without a token only a loopback Host header is served (a web page elsewhere
cannot read it through DNS rebinding). The token is never logged: aiohttp's access log, which
would print the request line, is off. A port already taken is logged as an error and shown
in `campus-agent status`; the agent keeps running without the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from agent import __version__
from agent.config_sections import StatusPageSection
from agent.status_live import LiveView

if TYPE_CHECKING:
    from agent.runtime import Agent

log = logging.getLogger(__name__)

ASSETS = Path(__file__).with_name("web")
CSP = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
COOKIE = "campus_status"
COOKIE_AGE = 7 * 86400
KEEPALIVE = 15.0  # an empty line on a quiet event stream: a gone client is noticed
FILES = {
    "/": ("status.html", "text/html"),
    "/status.js": ("status.js", "text/javascript"),
    "/status.css": ("status.css", "text/css"),
}
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def page_status(agent: Agent, refresh: float) -> dict[str, Any]:
    """What `/api/status` answers: everything the page shows, times as epoch seconds."""
    now = time.time()
    s = agent.store.stats
    p = agent.publisher.stats
    live = agent.live
    devices = []
    for d in agent.config.devices:
        st = agent.devices.get(d.id)
        devices.append(
            {
                "id": d.id,
                "category": d.profile.category,
                "profile": d.profile.id,
                "location": dict(d.location),
                "online": st.online if st else None,
                "since": st.since if st else None,
                "reason": st.reason if st else "",
                **live.device_doc(d.id),
            }
        )
    return {
        "now": now,
        "refresh": refresh,
        "gateway": {
            "school": agent.config.agent.school,
            "gateway": agent.config.agent.gateway,
            "version": __version__,
            "started": agent.started,
            "uptime": now - agent.started,
            "host": socket.gethostname(),
        },
        "broker": {
            "url": agent.config.mqtt.url,
            "connected": p.connected,
            "since": p.since,
            "last_error": p.last_error,
        },
        "backlog": s.backlog,
        "oldest_unsent_age": agent.oldest_age,
        "store": {"used_bytes": s.used_bytes, "max_size": agent.store.max_size},
        "devices": devices,
        "alarms": live.active_alarms({d.id for d in agent.config.devices}),
        "errors": live.errors.docs(),
    }


def _cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the browser never stores it."""
    return hashlib.sha256(b"campus-agent status page cookie\0" + token.encode()).hexdigest()


class StatusPage:
    """The HTTP server: started by the runtime when [status_page] is enabled."""

    def __init__(
        self,
        section: StatusPageSection,
        token: str | None,
        live: LiveView,
        snapshot: Callable[[], dict[str, Any]],
    ) -> None:
        self.section = section
        self.token = token
        self.live = live
        self.snapshot = snapshot
        self.files = {path: ((ASSETS / f).read_bytes(), kind) for path, (f, kind) in FILES.items()}
        self.runner: web.AppRunner | None = None
        self.listening = False
        self.error: str | None = None
        self.requests = 0
        self.unauthorized = 0

    @property
    def url(self) -> str:
        host = self.section.bind
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.section.port}/"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=4096)
        for path in FILES:
            app.router.add_get(path, self._file)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/events", self._events)
        return app

    async def start(self) -> None:
        """Listen; a taken port or a missing address is logged and shown, never fatal."""
        runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        self.runner = runner
        try:
            await web.TCPSite(runner, self.section.bind, self.section.port).start()
        except OSError as e:
            self.error = f"cannot listen on {self.section.bind}:{self.section.port}: {e.strerror}"
            log.error("status page not served: %s; the agent runs on without it", self.error)
            return
        self.listening = True

    def shown(self) -> str:
        """For the start-up line: where the page is, or that it is not served."""
        return self.url if self.listening else "not-served"

    async def stop(self) -> None:
        self.live.end_all()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.listening = False

    def status(self) -> dict[str, Any]:
        """For the status file (`campus-agent status`)."""
        return {
            "url": self.url,
            "listening": self.listening,
            "error": self.error,
            "token": self.token is not None,
            "requests": self.requests,
            "unauthorized": self.unauthorized,
            **self.live.status(),
        }

    # ---- access ---------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        assert self.token is not None  # noqa: S101 - only asked when a token is set
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), _cookie_value(self.token).encode())

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests += 1
        headers = {
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        }
        if self.token is None:
            if _host_name(request.host or "") not in LOOPBACK_HOSTS:
                return _error(421, "wrong_host", "open the page as http://127.0.0.1:PORT/", headers)
        elif "token" in request.query:
            given = request.query["token"]
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return self._refuse(request, headers)
            rest = {k: v for k, v in request.query.items() if k != "token"}
            where = request.path + (f"?{urlencode(rest)}" if rest else "")
            reply = web.HTTPSeeOther(where, headers=headers)
            reply.set_cookie(
                COOKIE,
                _cookie_value(self.token),
                max_age=COOKIE_AGE,
                path="/",
                httponly=True,
                samesite="Strict",
            )
            return reply
        elif not self._authorized(request):
            return self._refuse(request, headers)
        try:
            response = await handler(request)
        except web.HTTPException as e:
            return _error(
                e.status, "not_found" if e.status == 404 else "refused", e.reason, headers
            )
        if not response.prepared:
            response.headers.update(headers)
        return response

    def _refuse(self, request: web.Request, headers: dict[str, str]) -> web.Response:
        self.unauthorized += 1
        if self.unauthorized in (1, 10, 100) or self.unauthorized % 1000 == 0:
            # The address, never what was given.
            log.warning(
                "status page: refused a request without the token from %s (%d so far)",
                request.remote,
                self.unauthorized,
            )
        return _error(
            401,
            "unauthorized",
            "open the page as /?token=TOKEN (the token_file's content) once, "
            "or send Authorization: Bearer TOKEN",
            {**headers, "WWW-Authenticate": "Bearer"},
        )

    # ---- handlers -------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.Response:
        body, kind = self.files[request.path]
        return web.Response(
            body=body,
            content_type=kind,
            charset="utf-8",
            headers={"Content-Security-Policy": CSP},
        )

    async def _status(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.snapshot()), content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        tail = self.live.open_tail()
        if tail is None:
            return _error(503, "busy", "too many clients are reading the events", {})
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson",
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            }
        )
        response.force_close()  # a stream: the connection ends with it
        try:
            await response.prepare(request)
            await response.write(b"\n")  # the stream is open: the client may say so
            end = False
            while not end:
                try:
                    async with asyncio.timeout(KEEPALIVE):
                        line = await tail.queue.get()
                except TimeoutError:
                    await response.write(b"\n")
                    continue
                chunk: list[bytes] = []
                while line is not None:
                    chunk.append(line)
                    if tail.queue.empty():
                        break
                    line = tail.queue.get_nowait()
                end = line is None
                if chunk:
                    await response.write(b"".join(chunk))
        except ConnectionError:
            return response  # the client went away
        finally:
            self.live.close_tail(tail)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


def _host_name(host: str) -> str:
    """The Host header without its port: '127.0.0.1:8470' -> '127.0.0.1', '[::1]:80' -> '[::1]'."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _error(status: int, code: str, detail: str, headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": code, "detail": detail}),
        content_type="application/json",
        headers=headers,
    )
