"""Cluster-wide health: every node publishes its summary to Redis; any node shows them all.

Theory of operation: each node writes, every ``PUBLISH_EVERY`` seconds, its
summary (node id, started, status, each link's kind/up/detail, the PBX links
it holds, its bus counters) as JSON under ``cti:node:<id>`` with a TTL of
``NODE_TTL`` seconds, and its last-seen time in the sorted set ``cti:nodes``.
``GET /api/v1/health/cluster`` lists every node of the set: a node whose key is
there is reported with its summary; one whose key expired (killed, hung, cut
off from Redis) or was deleted (stopped) is reported ``down`` with its last-seen
time, until it has been gone ``FORGET_AFTER`` seconds. This node's own entry is
always computed live. Without Redis (single node) the answer holds this node only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from cti.keys import SERVICES
from cti.services import Services

log = logging.getLogger(__name__)

NODE_KEY = "cti:node:{node}"
NODES_KEY = "cti:nodes"
PUBLISH_EVERY = 2.0
NODE_TTL = 6  # seconds: three missed publications
FORGET_AFTER = 3600.0
REDIS_TIMEOUT = 3.0
_LINK_FIELDS = ("kind", "up", "detail", "held_by")
_BUS_FIELDS = ("last_seq", "pending", "lag_ms", "dropped")


@dataclass(slots=True)
class NodeStart:
    at: float


STARTED: web.AppKey[NodeStart] = web.AppKey("node_started")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


async def node_summary(services: Services, started: float) -> dict[str, Any]:
    """This node's health in the form published for the others."""
    links = await services.links.report()
    cluster = links.get("cluster", {})
    summary: dict[str, Any] = {
        "node_id": services.settings.node_id,
        "status": "ok" if all(link.get("up") for link in links.values()) else "degraded",
        "started": _iso(started),
        "seen": _iso(time.time()),
        "links": {
            name: {k: link[k] for k in _LINK_FIELDS if k in link} for name, link in links.items()
        },
        "holds": list(cluster.get("holds", [])),
    }
    bus = cluster.get("bus")
    if isinstance(bus, dict):
        summary["bus"] = {k: bus.get(k) for k in _BUS_FIELDS}
    return summary


async def publish(redis: Any, summary: dict[str, Any]) -> None:
    node = summary["node_id"]
    now = time.time()
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(NODE_KEY.format(node=node), json.dumps(summary), ex=NODE_TTL)
        pipe.zadd(NODES_KEY, {node: now})
        pipe.zremrangebyscore(NODES_KEY, "-inf", now - FORGET_AFTER)
        await pipe.execute()


async def withdraw(redis: Any, node: str) -> None:
    """A graceful stop: the node is reported down (last seen now) at once."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(NODE_KEY.format(node=node))
        pipe.zadd(NODES_KEY, {node: time.time()})
        await pipe.execute()


def _down(node: str, last_seen: float, detail: str) -> dict[str, Any]:
    return {
        "node_id": node,
        "status": "down",
        "last_seen": _iso(last_seen),
        "down_for_s": round(max(0.0, time.time() - last_seen), 1),
        "detail": detail,
    }


async def cluster_view(services: Services, started: float) -> dict[str, Any]:
    """Every known node (this one live, the others from Redis) and an overall status."""
    local = await node_summary(services, started)
    node_id = services.settings.node_id
    redis = services.redis
    if redis is None:
        return {"status": local["status"], "mode": "single", "nodes": [local]}
    try:
        async with asyncio.timeout(REDIS_TIMEOUT):
            entries = await redis.zrange(NODES_KEY, 0, -1, withscores=True)
            ids = [_text(member) for member, _ in entries]
            values = await redis.mget([NODE_KEY.format(node=n) for n in ids]) if ids else []
    except (RedisError, OSError, TimeoutError) as exc:
        return {
            "status": "degraded", "mode": "cluster",
            "detail": f"Redis unreachable, other nodes unknown: {type(exc).__name__}: {exc}",
            "nodes": [local],
        }
    nodes: dict[str, dict[str, Any]] = {node_id: local}
    for (_, score), node, raw in zip(entries, ids, values, strict=True):
        if node == node_id:
            continue
        if raw is None:
            nodes[node] = _down(node, float(score), "no report within its TTL (stopped or dead)")
            continue
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            nodes[node] = _down(node, float(score), f"unreadable report: {exc}")
            continue
        nodes[node] = entry
    listed = [nodes[n] for n in sorted(nodes)]
    ok = all(n.get("status") == "ok" for n in listed)
    return {
        "status": "ok" if ok else "degraded",
        "mode": "cluster",
        "up": sum(1 for n in listed if n.get("status") != "down"),
        "down": sum(1 for n in listed if n.get("status") == "down"),
        "nodes": listed,
    }


async def cluster_health_view(request: web.Request) -> web.Response:
    app = request.app
    return web.json_response(await cluster_view(app[SERVICES], app[STARTED].at))


async def _publish_loop(services: Services, started: float) -> None:
    """Publish until cancelled. Nothing but a cancellation ends it: a heartbeat that
    died (once, a probe registered mid-report raised RuntimeError at start-up) left
    a live node listed down by every other node for the rest of its run."""
    failing = False
    while True:
        try:
            summary = await node_summary(services, started)
            async with asyncio.timeout(REDIS_TIMEOUT):
                await publish(services.redis, summary)
            if failing:
                log.info("cluster health: publishing again")
            failing = False
        except (RedisError, OSError, TimeoutError) as exc:
            if not failing:  # once per outage, not every tick
                log.warning("cluster health: cannot publish this node's summary: %s", exc)
            failing = True
        except Exception:
            if not failing:
                log.exception("cluster health: building or publishing the summary failed")
            failing = True
        await asyncio.sleep(PUBLISH_EVERY)


async def cluster_health_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the Redis ctx: remember the start time; in cluster mode, publish."""
    services = app[SERVICES]
    started = app[STARTED].at = time.time()
    if services.redis is None:
        yield
        return
    task = asyncio.create_task(_publish_loop(services, started), name="cluster-health")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(REDIS_TIMEOUT):
                await withdraw(services.redis, services.settings.node_id)


def setup_cluster_health(app: web.Application) -> None:
    app[STARTED] = NodeStart(time.time())
    app.router.add_get("/api/v1/health/cluster", cluster_health_view)
    app.cleanup_ctx.append(cluster_health_ctx)
