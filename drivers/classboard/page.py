"""The board page: a class board that is a kiosk browser opens the hub's `/board/`.

Static HTML, JS and CSS from drivers/classboard/board/ (no external resource, no framework),
served with `Content-Security-Policy: default-src 'self'` (no inline script or style, no
other origin). The page needs no login of its own: the kiosk URL carries the board's token
in the fragment, `http://HUB:8480/board/#token=...`; a browser never sends a fragment to the
server, so the token is in no request line or log, and the page's JS sends it as
`Authorization: Bearer` with each API call, as any board does. docs/classboard.md says more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

ASSETS = Path(__file__).with_name("board")
CSP = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


@dataclass(frozen=True)
class PageFile:
    path: str
    file: str
    content_type: str


PAGE_ROUTES = (
    PageFile("/board/", "index.html", "text/html"),
    PageFile("/board/board.js", "board.js", "text/javascript"),
    PageFile("/board/board.css", "board.css", "text/css"),
)


def add_routes(app: web.Application) -> None:
    """GET (and HEAD) of each page file, read once now: the page is the same for every board."""
    for f in PAGE_ROUTES:
        body = (ASSETS / f.file).read_bytes()

        async def serve(
            _: web.Request, body: bytes = body, kind: str = f.content_type
        ) -> web.Response:
            return web.Response(
                body=body,
                content_type=kind,
                charset="utf-8",
                headers={
                    "Content-Security-Policy": CSP,
                    "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer",
                    "Cache-Control": "no-cache",
                },
            )

        app.router.add_get(f.path, serve)
