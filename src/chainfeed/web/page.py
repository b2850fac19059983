"""The live feed page (``GET /feed``) and its static files: plain HTML, CSS and ES modules, no build step."""

from __future__ import annotations

from pathlib import Path

from litestar import Response, get
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

__all__ = ["ROUTES"]

STATIC_DIR = Path(__file__).parent / "static"
#: The page loads only our own scripts and styles and talks only to this origin (REST and WebSocket).
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@get("/feed", sync_to_thread=False, include_in_schema=False)
def feed_page() -> Response[bytes]:
    """The single-page live feed."""
    return Response(
        (STATIC_DIR / "feed.html").read_bytes(),
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        },
    )


@get("/", sync_to_thread=False, include_in_schema=False)
def root() -> Redirect:
    """A browser pointed at the service lands on the feed (it answered 404)."""
    return Redirect(path="/feed", status_code=302)


ROUTES: list[ControllerRouterHandler] = [
    root,
    feed_page,
    create_static_files_router(path="/static", directories=[STATIC_DIR], include_in_schema=False),
]
