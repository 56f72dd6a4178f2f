"""The agent desk: static pages served by cti (no build step, nothing fetched from outside).

``setup_web(app)`` adds ``/`` (redirect), ``/desk/`` (the single page) and
``/desk/static/`` (its modules and styles). Pages carry a strict
Content-Security-Policy: scripts and styles only from this server, no inline
script, so a customer string that slipped into markup still could not run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WEB_INSTALLED = web.AppKey("desk_web_installed", bool)


async def _root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/desk/")


async def _desk(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if request.path == "/desk" or request.path.startswith("/desk/"):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
    return response


def setup_web(app: web.Application) -> None:
    """Add the desk routes; a second call on the same app does nothing."""
    if app.get(WEB_INSTALLED):
        return
    app[WEB_INSTALLED] = True
    app.middlewares.append(_security_headers)
    app.router.add_get("/", _root)
    app.router.add_get("/desk", _root)
    app.router.add_get("/desk/", _desk)
    app.router.add_static("/desk/static/", STATIC, append_version=False)
