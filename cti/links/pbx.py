"""Voice as a channel of the contact center: the AMI links wired into cti's services.

``setup_pbx_links(app)`` stores a :class:`PbxLinks` under :data:`PBX_LINKS` and
appends a ``cleanup_ctx`` that, for every configured PBX (``settings.ami``),
starts a ``pbx.link.AmiLink``, forwards each of its changes to
``services.calls.handle`` and registers ``pbx:<name>`` with the health registry.
Other code (the lab, call control) adds links with :meth:`PbxLinks.add`.

Theory of operation (forwarder): one pump task per link reads ``link.changes()``
and never awaits anything but the stream, so the AMI reader is never held up.
Each change goes to a lane keyed by its ``call_id`` (changes without a call go
to one lane per link). A lane is a deque drained by one task, in order; it ends
when its deque is empty and the next change for that call starts a new one.
Changes of one call are handled in order; a slow database write for one call
never delays the screen pop of another. A change whose handling fails is
logged with its call id and dropped; the lane goes on. Before a change joins
its lane it is shown to ``early`` (``CallHandler.early``: a CallOffered's
screen-pop starts at once instead of after the call's earlier changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from cti.keys import SERVICES
from cti.services import LinkProbe, Services
from pbx.changes import Change
from pbx.link import AmiLink, LinkSettings

log = logging.getLogger(__name__)

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]
ChangeHandler = Callable[[Change], Awaitable[None]]
EarlyHook = Callable[[Change], None]

DRAIN_TIMEOUT = 5.0


def ami_url(host: str, port: int, user: str, secret: str) -> str:
    return f"ami://{quote(user, safe='')}:{quote(secret, safe='')}@{host}:{port}"


def link_probe(link: AmiLink) -> LinkProbe:
    """A health probe from ``link.health()`` (cheap, synchronous snapshot)."""

    async def probe() -> dict[str, Any]:
        h = link.health()
        return {
            "kind": "pbx",
            "server": f"{link.endpoint.host}:{link.endpoint.port}",
            "up": h.up,
            "detail": h.detail,
            "since": h.since,
            "connects": h.connects,
            "asterisk_started": h.asterisk_started,
            "bad_events": h.bad_events,
        }

    return probe


class ChangeForwarder:
    """Feeds one link's changes to ``handle``: in order per call, calls in parallel."""

    def __init__(
        self, link: AmiLink, handle: ChangeHandler, early: EarlyHook | None = None
    ) -> None:
        self._link = link
        self._handle = handle
        self._early = early
        self._stream = link.changes()  # subscribed now: nothing after this is missed
        self._lanes: dict[str, deque[Change]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump: asyncio.Task[None] | None = None
        self.handled = 0
        self.failed = 0

    def start(self) -> None:
        if self._pump is None:
            self._pump = asyncio.create_task(self._run(), name=f"pbx-forward-{self._link.name}")

    async def _run(self) -> None:
        async for change in self._stream:
            self._dispatch(change)

    def _dispatch(self, change: Change) -> None:
        if self._early is not None:
            try:
                self._early(change)
            except Exception:
                log.exception("pbx %s: early hook failed on %s", self._link.name, change)
        key = getattr(change, "call_id", None) or f"{self._link.name}:-"
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(change)
            return
        lane = deque((change,))
        self._lanes[key] = lane
        task = asyncio.create_task(self._drain(key, lane), name=f"pbx-lane-{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, key: str, lane: deque[Change]) -> None:
        try:
            while lane:
                await self._apply(lane.popleft())
        finally:
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _apply(self, change: Change) -> None:
        try:
            await self._handle(change)
            self.handled += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            self.failed += 1
            log.exception(
                "pbx %s: %s for call %s could not be handled; going on",
                self._link.name,
                type(change).__name__,
                getattr(change, "call_id", None),
            )

    async def stop(self) -> None:
        """After ``link.stop()``: let queued changes finish (bounded), then cancel."""
        if self._pump is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_TIMEOUT):
                    await asyncio.shield(self._pump)
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=DRAIN_TIMEOUT)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class PbxLinks:
    """The running AMI links of one server: name -> AmiLink, with their forwarders."""

    def __init__(self, link_settings: LinkSettings | None = None) -> None:
        self.link_settings = link_settings
        self.links: dict[str, AmiLink] = {}
        self._forwarders: dict[str, ChangeForwarder] = {}

    def __getitem__(self, name: str) -> AmiLink:
        return self.links[name]

    def __contains__(self, name: object) -> bool:
        return name in self.links

    async def add(
        self, services: Services, name: str, url: str, *, originate_context: str = "from-agents"
    ) -> AmiLink:
        if name in self.links:
            raise ValueError(f"a PBX link named {name!r} already exists")
        link = AmiLink(name, url, self.link_settings, originate_context=originate_context)
        forwarder = ChangeForwarder(link, services.calls.handle, services.calls.early)
        self.links[name] = link
        self._forwarders[name] = forwarder
        services.links.register(f"pbx:{name}", link_probe(link))
        forwarder.start()
        await link.start()
        log.info("pbx %s: AMI link to %s:%s started", name, link.endpoint.host, link.endpoint.port)
        return link

    async def remove(self, name: str) -> None:
        link = self.links.pop(name, None)
        forwarder = self._forwarders.pop(name, None)
        if link is not None:
            await link.stop()
        if forwarder is not None:
            await forwarder.stop()

    async def close(self) -> None:
        for name in list(self.links):
            await self.remove(name)


PBX_LINKS: web.AppKey[PbxLinks] = web.AppKey("pbx_links")


def pbx_links_ctx() -> CleanupCtx:
    """A cleanup_ctx starting one link per ``settings.ami`` entry (needs ``PBX_LINKS``)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        services = app[SERVICES]
        links = app[PBX_LINKS]
        try:
            # Cluster mode (Redis): the node holding the lease runs each link (cti.cluster).
            for server in () if services.settings.redis_url else services.settings.ami:
                url = ami_url(server.host, server.port, server.username, server.secret)
                await links.add(services, server.name, url)
            yield
        finally:
            await links.close()

    return ctx


def setup_pbx_links(app: web.Application, link_settings: LinkSettings | None = None) -> PbxLinks:
    """Install the AMI links of ``settings.ami`` once (idempotent); return the registry."""
    existing = app.get(PBX_LINKS)
    if existing is not None:
        return existing
    links = PbxLinks(link_settings)
    app[PBX_LINKS] = links
    app.cleanup_ctx.append(pbx_links_ctx())
    return links
