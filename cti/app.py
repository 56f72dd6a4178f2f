"""The aiohttp application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from cti import api, ws
from cti.cluster.health import setup_cluster_health
from cti.cluster.hub import ClusterHub
from cti.cluster.node import cluster_probe
from cti.config import Settings
from cti.errors import DomainError
from cti.keys import SERVICES
from cti.logs import correlation_middleware
from cti.services import Services

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str, details: dict[str, Any]) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "details": details}}, status=status
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DomainError as exc:
        return _error(exc.status, exc.code, exc.message, exc.details)
    except web.HTTPRequestEntityTooLarge as exc:
        return _error(
            413,
            "body_too_large",
            "the request body is too large",
            {"max_bytes": request.app[SERVICES].settings.max_body_bytes, "text": exc.text or ""},
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return _error(exc.status, code, exc.reason, {})
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, "internal", "internal server error", {})


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    await services.start()
    yield
    await services.stop()


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    url = services.settings.redis_url
    if not url:
        yield
        return
    from cti.cluster.redis_client import connect_redis

    client = connect_redis(url)
    services.redis = client

    async def probe() -> dict[str, Any]:
        await client.ping()
        return {"kind": "redis", "up": True}

    services.links.register("redis", probe)
    if isinstance(services.hub, ClusterHub):
        await services.hub.start(client)
        services.links.register("cluster", cluster_probe(services))
    try:
        yield
    finally:
        if isinstance(services.hub, ClusterHub):
            await services.hub.stop()
        await client.aclose()


def create_app(settings: Settings, services: Services | None = None) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[correlation_middleware, error_middleware],
    )
    app[SERVICES] = services or Services(settings)
    app.cleanup_ctx.append(_services_ctx)
    app.cleanup_ctx.append(_redis_ctx)
    setup_cluster_health(app)  # after Redis: it publishes this node's health there
    app.add_routes(api.routes)
    app.router.add_get("/api/v1/events", ws.events)
    return app
