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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

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

MAX_TRACKED = 10_000


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


class Presence:
    """Publishes ``agent_status`` to an agent's desk when its queue pause state changes."""

    def __init__(self, app: web.Application, services: Services) -> None:
        self._app = app
        self._services = services
        self._seen: dict[tuple[str, str, str], tuple[bool, str, bool]] = {}
        self.published = 0

    def _links(self) -> list[AmiLink]:
        registry = self._app.get(PBX_LINKS)
        return list(registry.links.values()) if registry is not None else []

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
        agent = await self._services.agents.by_endpoint(change.interface)
        if agent is None:
            return
        body = member_status(self._links(), change.interface)
        body["changed"] = {
            "pbx": change.pbx,
            "queue": change.queue,
            "paused": change.paused,
            "reason": change.pause_reason,
            "removed": change.removed,
        }
        self._services.hub.publish([agent.id], "agent_status", body)
        self.published += 1


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
    app[SERVICES].calls.listeners.append(TransferFollower(app[SERVICES]).on_change)
    app[PRESENCE] = presence
    return presence
