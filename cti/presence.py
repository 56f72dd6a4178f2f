"""Agent status (available / paused with a reason) as Asterisk's queues see it.

The source of truth is the queue membership in each AMI link's live tracker:
pausing in the desk sends QueuePause (``cti.links.callcontrol``), and a pause
made anywhere else (the phone's feature code, ``queue pause member`` on the
CLI, another AMI client) reaches us as ``QueueMemberChanged``.

Theory of operation: :class:`Presence` follows every PBX change
(``services.calls.listeners``). For each member change it compares the
member's pause state with the last one it saw for that (pbx, queue,
interface); only a change of pause state, reason or membership is published
(device-state churn while ringing or talking is not), as one ``agent_status``
frame carrying the agent's whole status, rebuilt from the trackers so the
desk never has to merge partial updates.

Cluster (several PBXes, held by different nodes): a member change reaches only
the node holding that PBX's AMI link, whose trackers know only its own PBXes.
That node then asks the holders of the other PBXes for the agent's memberships
over the live channel (``ClusterHub.request_live``, kind ``callcontrol``, op
``status``: the question ``GET /api/v1/agents/me/status`` asks too), waits at
most ``FRAME_WITHIN`` s and merges. A PBX whose holder did not answer (node
down, no holder during a takeover, Redis unreachable) is listed in
``unavailable``: the frame is partial, never late. This runs off the PBX change
lane (one task per agent, changes in order), so the wait never delays the
changes of calls. Two nodes may build a frame for one agent at once (a pause
in every queue touches every PBX): each takes a number from ``INCR
cti:presence:ver:<endpoint>`` before asking; the one with the highest number
asked last and so saw every change, and a builder that finds a higher number
after its answers drops its frame. The frame's followers (``followers``: the
text availability of ``cti.links.ivr``) are run with the published status.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from cti.cluster.hub import ClusterHub
from cti.keys import SERVICES
from cti.links.pbx import PBX_LINKS
from cti.services import Services
from pbx.changes import (
    CallAnswered,
    CallEnded,
    CallOffered,
    CallTransferred,
    Change,
    QueueMemberChanged,
)
from pbx.link import AmiLink

log = logging.getLogger(__name__)

MAX_TRACKED = 10_000
MAX_LANE = 100  # member changes waiting per agent (beyond: the oldest are dropped)
STATUS_KIND = "callcontrol"  # the live-channel kind whose op ``status`` callcontrol answers
FRAME_WITHIN = 2.0  # s an agent_status frame waits for the other PBXes' holders
VERSION_KEY = "cti:presence:ver:{endpoint}"
VERSION_TTL = 60

StatusFollower = Callable[[str, dict[str, Any]], Awaitable[None]]


def member_status(links: Iterable[AmiLink], endpoint: str) -> dict[str, Any]:
    """The agent's status from the queue members of every linked PBX.

    ``paused`` is true when the agent is a member of at least one queue and
    paused in every one of them (what the desk's pause does); ``reason`` is the
    first pause reason found.
    """
    queues: list[dict[str, Any]] = []
    pbxs: list[str] = []
    for link in links:
        pbxs.append(link.name)
        for queue in link.queues():
            for m in queue.members:
                if m.interface == endpoint:
                    queues.append(
                        {
                            "pbx": link.name,
                            "queue": queue.name,
                            "paused": m.paused,
                            "reason": m.pause_reason,
                            "device_state": m.device_state,
                            "in_call": m.in_call,
                            "calls_taken": m.calls_taken,
                        }
                    )
    paused = bool(queues) and all(q["paused"] for q in queues)
    reason = next((q["reason"] for q in queues if q["paused"] and q["reason"]), "")
    return {
        "endpoint": endpoint,
        "paused": paused,
        "reason": reason if paused else "",
        "queues": queues,
        "pbx": pbxs,
    }


def merge_status(endpoint: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One status from several nodes' ``member_status`` (as ``member_status`` builds it)."""
    queues = [q for part in parts for q in part.get("queues", ())]
    pbxs = [name for part in parts for name in part.get("pbx", ())]
    paused = bool(queues) and all(q["paused"] for q in queues)
    reason = next((q["reason"] for q in queues if q["paused"] and q["reason"]), "")
    return {"endpoint": endpoint, "paused": paused, "reason": reason if paused else "",
            "queues": queues, "pbx": pbxs}


def _local_links(app: web.Application) -> dict[str, AmiLink]:
    registry = app.get(PBX_LINKS)
    return dict(registry.links) if registry is not None else {}


def missing_pbxs(app: web.Application) -> list[str]:
    """Cluster mode: the configured PBXes whose links this node does not run."""
    services = app[SERVICES]
    if not isinstance(services.hub, ClusterHub) or services.redis is None:
        return []
    local = _local_links(app)
    return [s.name for s in services.settings.ami if s.name not in local]


async def cluster_status(app: web.Application, endpoint: str, within: float) -> dict[str, Any]:
    """The agent's status over every PBX of the cluster: this node's links, and the
    holders of the others asked over the live channel (at most ``within`` s). PBXes
    that did not answer are listed in ``unavailable`` (absent when none)."""
    local = _local_links(app)
    here = member_status(list(local.values()), endpoint)
    missing = missing_pbxs(app)
    hub = app[SERVICES].hub
    if not missing or not isinstance(hub, ClusterHub):
        return here
    replies = await hub.request_live(
        STATUS_KIND, {"op": "status", "endpoint": endpoint, "pbx": missing}, within=within,
        enough=lambda got: set(missing) <= {n for r in got for n in r.get("pbx", ())})
    parts: dict[str, dict[str, Any]] = {name: {"queues": [], "pbx": []} for name in missing}
    for reply in replies or ():
        names = reply.get("pbx", ())
        if not isinstance(names, list) or not isinstance(reply.get("queues"), list):
            continue
        for name in names:
            if name in parts:
                parts[name] = {"pbx": [name], "queues": [
                    q for q in reply["queues"] if isinstance(q, dict) and q.get("pbx") == name]}
    out = merge_status(endpoint, [here, *parts.values()])
    unavailable = [name for name in missing if not parts[name]["pbx"]]
    if unavailable:
        out["unavailable"] = unavailable
    return out


class Presence:
    """Publishes ``agent_status`` to an agent's desk when its queue pause state changes."""

    def __init__(self, app: web.Application, services: Services) -> None:
        self._app = app
        self._services = services
        self._seen: dict[tuple[str, str, str], tuple[bool, str, bool]] = {}
        self.published = 0
        self.superseded = 0  # cluster: frames dropped for a newer one (another node's)
        self.followers: list[StatusFollower] = []
        self._lanes: dict[str, deque[QueueMemberChanged]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _links(self) -> list[AmiLink]:
        return list(_local_links(self._app).values())

    async def on_change(self, change: Change) -> None:
        if not isinstance(change, QueueMemberChanged):
            return
        key = (change.pbx, change.queue, change.interface)
        state = (change.paused, change.pause_reason, change.removed)
        if self._seen.get(key) == state:
            return
        if len(self._seen) >= MAX_TRACKED and key not in self._seen:
            self._seen.clear()
        self._seen[key] = state
        if missing_pbxs(self._app):
            self._enqueue(change)  # other nodes are asked: not on the PBX change lane
            return
        await self._apply(change, member_status(self._links(), change.interface))

    def _enqueue(self, change: QueueMemberChanged) -> None:
        lane = self._lanes.get(change.interface)
        if lane is not None:
            lane.append(change)
            return
        lane = deque((change,), maxlen=MAX_LANE)
        self._lanes[change.interface] = lane
        task = asyncio.create_task(self._drain(change.interface, lane),
                                   name=f"presence-{change.interface}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, endpoint: str, lane: deque[QueueMemberChanged]) -> None:
        try:
            while lane:
                change = lane.popleft()
                try:
                    await self._gather_and_apply(change)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("agent_status of %s after a change on %s failed", endpoint,
                                  change.pbx)
        finally:
            if self._lanes.get(endpoint) is lane:
                del self._lanes[endpoint]

    async def _gather_and_apply(self, change: QueueMemberChanged) -> None:
        key = VERSION_KEY.format(endpoint=change.interface)
        redis = self._services.redis
        version: int | None = None
        if redis is not None:
            try:
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.incr(key)
                    pipe.expire(key, VERSION_TTL)
                    version = int((await pipe.execute())[0])
            except (RedisError, OSError):
                version = None  # the live channel is down too: a partial frame from here
        status = await cluster_status(self._app, change.interface, FRAME_WITHIN)
        if redis is not None and version is not None:
            try:
                latest = await redis.get(key)
            except (RedisError, OSError):
                latest = None
            if latest is not None and int(latest) > version:
                self.superseded += 1  # a later builder saw this change too
                return
        await self._apply(change, status)

    async def _apply(self, change: QueueMemberChanged, body: dict[str, Any]) -> None:
        for follower in list(self.followers):
            try:
                await follower(change.interface, body)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("agent status follower %r failed for %s", follower,
                              change.interface)
        agent = await self._services.agents.by_endpoint(change.interface)
        if agent is None:
            return
        body = dict(body)
        body["changed"] = {
            "pbx": change.pbx,
            "queue": change.queue,
            "paused": change.paused,
            "reason": change.pause_reason,
            "removed": change.removed,
        }
        self._services.hub.publish([agent.id], "agent_status", body)
        self.published += 1

    async def close(self) -> None:
        """Stop the frames being built (cluster mode) at shutdown."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class TransferFollower:
    """The customer card follows a transferred call to the agent who takes it.

    A transfer to a queue pops the card before the new agent answers (the
    queue offers the call: CallOffered, handled by ``cti.calls``). A blind or
    attended transfer straight to a colleague's extension is a plain Dial,
    which the tracker reports only once answered: this pops the card to that
    agent at CallAnswered, unless that agent already had a pop for the call.
    """

    def __init__(self, services: Services) -> None:
        self._services = services
        self._transferred: dict[str, set[str]] = {}  # call_id -> interfaces that had a pop

    async def on_change(self, change: Change) -> None:
        match change:
            case CallOffered() if change.call_id in self._transferred:
                self._transferred[change.call_id].add(change.agent_interface)
            case CallTransferred():
                if len(self._transferred) >= MAX_TRACKED:
                    self._transferred.clear()
                popped = {change.agent_interface} if change.agent_interface else set()
                self._transferred.setdefault(change.call_id, set()).update(popped)
                if change.kind == "attended" and change.target:
                    # The tracker reconnects the call to the target with no CallAnswered.
                    await self._follow(change.call_id, change.pbx, change.target, None)
            case CallAnswered() if change.call_id in self._transferred:
                await self._follow(change.call_id, change.pbx, change.agent_interface, change.queue)
            case CallEnded():
                self._transferred.pop(change.call_id, None)
            case _:
                pass

    async def _follow(self, call_id: str, pbx: str, interface: str, queue: str | None) -> None:
        popped = self._transferred[call_id]
        if not interface or interface in popped:
            return
        popped.add(interface)
        agent = await self._services.agents.by_endpoint(interface)
        conv = await self._services.conversations.by_ref(call_id)
        if agent is None or conv is None:
            return
        interaction = {
            "call_id": call_id,
            "pbx": pbx,
            "queue": queue,
            "caller": conv.contact,
            "transferred": True,
            "answered": True,
        }
        await self._services.screen_pop.pop(agent, conv, interaction)


PRESENCE: web.AppKey[Presence] = web.AppKey("presence", Presence)


def setup_presence(app: web.Application) -> Presence:
    """Follow PBX changes for agent status (idempotent)."""
    existing = app.get(PRESENCE)
    if existing is not None:
        return existing
    presence = Presence(app, app[SERVICES])
    app[SERVICES].calls.listeners.append(presence.on_change)

    async def close(_: web.Application) -> None:
        await presence.close()

    app.on_shutdown.append(close)
    app[SERVICES].calls.listeners.append(TransferFollower(app[SERVICES]).on_change)
    app[PRESENCE] = presence
    return presence
