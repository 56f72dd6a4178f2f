"""A cluster node inside ``cti serve``: the AMI link leases, the duties, the ``cluster`` health.

In cluster mode (``settings.redis_url`` set) ``pbx_links_ctx`` starts no AMI
link by itself; :func:`setup_cluster` adds a cleanup_ctx that runs one
:class:`Lease` per ``settings.ami`` server: the node holding it runs the link
(``PbxLinks.add``, which resyncs on connect), the others report who holds it.

In both modes it installs :class:`~cti.cluster.duties.Duties` (``DUTIES``), on
which the SMS links, the callback schedulers and the SLA watch register (leased
in cluster mode, run locally otherwise), and the SLA watch itself (``cti.sla``).
``LEASES`` (PBX name -> its lease) tells duties that must run beside one PBX's
link where it is: ``callbacks:<pbx>`` is eligible only while ``LEASES[pbx].held``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from cti.cluster.duties import DUTIES, Duties, duties_ctx
from cti.cluster.hub import ClusterHub
from cti.cluster.lease import Lease
from cti.keys import SERVICES
from cti.links.pbx import PBX_LINKS, ami_url, setup_pbx_links
from cti.services import LinkProbe, Services

LEASES: web.AppKey[dict[str, Lease]] = web.AppKey("cluster_leases")
LEASE_TTL = 5.0
RENEW_EVERY = 1.0


def cluster_probe(
    services: Services, leases: dict[str, Lease] | None = None, duties: Duties | None = None
) -> LinkProbe:
    async def probe() -> dict[str, Any]:
        hub = services.hub
        info: dict[str, Any] = {"kind": "cluster", "node_id": services.settings.node_id}
        if not isinstance(hub, ClusterHub) or hub.bus is None:
            return {**info, "up": False, "detail": "the event bus is not running"}
        stats = hub.bus.stats()
        info["bus"] = {
            "up": stats.up,
            "last_seq": stats.last_seq,
            "pending": stats.pending,
            "published": stats.published,
            "consumed": stats.consumed,
            "dropped": stats.dropped,
            "lag_ms": None if stats.lag_ms is None else round(stats.lag_ms, 1),
        }
        info["redis"] = "up" if stats.up else "down"
        if leases is not None:
            info["holds"] = sorted(name for name, lease in leases.items() if lease.held)
            info["leases"] = {
                name: {"held": lease.held, "token": lease.token, "holder": lease.holder,
                       "detail": lease.detail}
                for name, lease in leases.items()
            }
        if duties is not None:
            info["duties"] = duties.state()
            info["holds_duties"] = [name for name, d in info["duties"].items() if d["held"]]
        return {**info, "up": stats.up, "detail": stats.detail}

    return probe


def _held_elsewhere_probe(lease: Lease) -> LinkProbe:
    async def probe() -> dict[str, Any]:
        holder = lease.holder
        return {
            "kind": "pbx",
            "up": holder is not None,
            "held_by": holder,
            "detail": f"AMI link held by node {holder}" if holder else "no node holds the link",
        }

    return probe


async def _cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    links = app[PBX_LINKS]
    redis = services.redis
    leases = app[LEASES]
    tasks: set[asyncio.Task[None]] = set()
    for server in services.settings.ami:
        url = ami_url(server.host, server.port, server.username, server.secret)

        async def acquire(token: int, name: str = server.name, url: str = url) -> None:
            await links.add(services, name, url)

        async def lose(name: str = server.name) -> None:
            await links.remove(name)
            services.links.register(f"pbx:{name}", _held_elsewhere_probe(leases[name]))

        lease = Lease(redis, f"pbx:{server.name}", services.settings.node_id,
                      on_acquire=acquire, on_lose=lose, ttl=LEASE_TTL,
                      renew_every=RENEW_EVERY)
        leases[server.name] = lease
        services.links.register(f"pbx:{server.name}", _held_elsewhere_probe(lease))
        task = asyncio.create_task(lease.run(), name=f"lease-{server.name}")
        tasks.add(task)
    services.links.register("cluster", cluster_probe(services, leases, app[DUTIES]))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lease in leases.values():
            with contextlib.suppress(Exception):
                await lease.release()


def setup_cluster(app: web.Application) -> None:
    """The node's duties (``DUTIES``) and the SLA watch; in cluster mode also the
    lease-held AMI links. Without Redis every duty runs here (single node)."""
    from cti.sla import setup_sla  # cti.sla registers itself on DUTIES

    services = app[SERVICES]
    clustered = bool(services.settings.redis_url) and isinstance(services.hub, ClusterHub)
    duties = Duties(services.settings.node_id, clustered=clustered, ttl=LEASE_TTL,
                    renew_every=RENEW_EVERY)
    app[DUTIES] = duties
    app.cleanup_ctx.append(duties_ctx)
    if clustered:
        setup_pbx_links(app)
        leases: dict[str, Lease] = {}
        app[LEASES] = leases
        duties.holds_pbx = lambda: any(lease.held for lease in leases.values())
        app.cleanup_ctx.append(_cluster_ctx)
    setup_sla(app)
