"""Duties: work that exactly one node of the cluster must do (one SMPP bind, one scheduler).

A duty is a name and a ``start()`` / ``stop()`` pair. :class:`Duties` runs it:

- single-node mode (no Redis): ``add`` starts it at once, ``close`` stops it;
- cluster mode: one :class:`~cti.cluster.lease.Lease` per duty
  (``cti:lease:<name>``): the node holding it runs ``start()``, a node that
  loses it runs ``stop()`` at once, a graceful stop releases it so another node
  takes over without waiting for the TTL (5 s).

Duty names: ``pbx:<server>`` (the AMI links, run by ``cti.cluster.node``),
``sms:<link>`` and ``modem:<name>`` (``cti.links.sms``), ``callbacks:<pbx>``
per PBX (``callbacks`` in single-node mode; ``cti.callbacks``), ``sla``
(``cti.sla``). What a duty does with work in flight when it stops or its node
dies is the duty's business; every duty here keeps its state in the database so
the next holder continues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from cti.cluster.lease import Lease

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[None]]
LEASE_TTL = 5.0
RENEW_EVERY = 1.0


class _Duty:
    def __init__(self, name: str, start: Step, stop: Step) -> None:
        self.name = name
        self._start = start
        self._stop = stop
        self.running = False
        self.lease: Lease | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, token: int | None = None) -> None:
        if self.running:
            return
        log.info("duty %s starts here (token %s)", self.name, token)
        await self._start()
        self.running = True

    async def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        log.info("duty %s stops here", self.name)
        try:
            await self._stop()
        except asyncio.CancelledError:
            raise
        except Exception:  # stopping must not end the lease loop
            log.exception("duty %s: stop failed", self.name)


class Duties:
    """The duties of this node: leased in cluster mode, local otherwise.

    Cluster mode: ``clustered=True`` and the Redis client given by :meth:`attach`
    (at app startup, before the first ``add``) or ``redis``.
    """

    def __init__(
        self,
        node_id: str,
        redis: Redis | None = None,
        *,
        clustered: bool | None = None,
        ttl: float = LEASE_TTL,
        renew_every: float = RENEW_EVERY,
    ) -> None:
        self.node_id = node_id
        self._redis = redis
        self._clustered = redis is not None if clustered is None else clustered
        self._ttl = ttl
        self._every = renew_every
        self._duties: dict[str, _Duty] = {}
        # Set by cti.cluster.node: does this node run an AMI link now? (duties that
        # dial, e.g. the callback scheduler, follow the links)
        self.holds_pbx: Callable[[], bool] = lambda: True

    @property
    def clustered(self) -> bool:
        return self._clustered

    def attach(self, redis: Redis) -> None:
        self._redis = redis

    async def add(
        self, name: str, start: Step, stop: Step, *, eligible: Callable[[], bool] | None = None
    ) -> None:
        if name in self._duties:
            raise ValueError(f"duty {name!r} is already registered")
        duty = _Duty(name, start, stop)
        self._duties[name] = duty
        if not self._clustered:
            await duty.start()
            return
        if self._redis is None:
            raise RuntimeError("cluster mode: Duties.attach(redis) was not called")
        duty.lease = Lease(self._redis, name, self.node_id, on_acquire=duty.start,
                           on_lose=duty.stop, ttl=self._ttl, renew_every=self._every,
                           eligible=eligible)
        duty.task = asyncio.create_task(duty.lease.run(), name=f"duty-{name}")

    def held(self, name: str) -> bool:
        duty = self._duties.get(name)
        return duty is not None and duty.running

    def holder(self, name: str) -> str | None:
        """The node running the duty (this one in single-node mode), None if nobody."""
        duty = self._duties.get(name)
        if duty is None:
            return None
        if duty.lease is None:
            return self.node_id if duty.running else None
        return duty.lease.holder

    def names(self) -> list[str]:
        return sorted(self._duties)

    def state(self) -> dict[str, dict[str, Any]]:
        """Per duty: held here, holder node, fencing token (None in single-node mode)."""
        out: dict[str, dict[str, Any]] = {}
        for name, duty in sorted(self._duties.items()):
            lease = duty.lease
            if lease is None:
                out[name] = {"held": duty.running, "holder": self.node_id if duty.running
                             else None, "token": None, "detail": ""}
            else:
                out[name] = {"held": duty.running, "holder": lease.holder,
                             "token": lease.token, "detail": lease.detail}
        return out

    async def remove(self, name: str) -> None:
        """Stop running the duty here (a held lease is released: another node takes it)."""
        duty = self._duties.pop(name, None)
        if duty is None:
            return
        if duty.task is not None:
            duty.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await duty.task
        if duty.lease is not None:
            await duty.lease.release()
        await duty.stop()

    async def close(self) -> None:
        for name in list(self._duties):
            await self.remove(name)


DUTIES: web.AppKey[Duties] = web.AppKey("cluster_duties", Duties)


def duties_of(app: web.Application) -> Duties | None:
    return app.get(DUTIES)


def local_duties() -> Duties:
    """For an app built without ``setup_cluster`` (tests, tools): every duty runs here."""
    return Duties("local")


async def duties_ctx(app: web.Application) -> AsyncIterator[None]:
    """Registered by ``setup_cluster`` after the Redis client's context: attaches it,
    and stops whatever duty is left at the end."""
    from cti.keys import SERVICES

    duties = app[DUTIES]
    if duties.clustered:
        duties.attach(app[SERVICES].redis)
    yield
    await duties.close()
