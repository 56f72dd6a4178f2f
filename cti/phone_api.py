"""The desk drives the agent's own softphone (``cti phone``) through the server.

Routes (bearer token, the calling agent only):

- ``POST /api/v1/agents/me/phone`` ``{"action": "answer"|"hangup"|"hold"|"unhold"|"dtmf",
  "digits"?}``: sends ``{"type": "phone_command", "action", "id", "digits"?}`` to every
  WebSocket of this agent that identified as ``client=softphone``, on every node;
  202 ``{"delivered": n, "id", "nodes"?}``; 409 ``no_softphone`` when none is linked.
- ``POST /api/v1/agents/me/phone/state`` ``{"state", "call"?, "command_id"?, "error"?}``:
  the softphone reports its state; published to the agent's sockets as
  ``{"type": "phone_state", ...}`` (seq'd, replayed like every desk event).
- ``GET /api/v1/agents/me/phone``: ``{"softphones": n}`` linked on any node.

Commands are not replayed: a softphone that reconnects must not answer a call
because of a click made minutes ago. In cluster mode the node that takes the
request offers the command to the softphones linked to it, then sends it to
the other nodes over the live channel (``ClusterHub.request_live``: Redis
Pub/Sub, no stream, dropped when older than ``LIVE_MAX_AGE``); each node
answers how many of the agent's softphone sockets it offered it to, and
``delivered`` is the sum of the answers received within ``ACK_WITHIN``
seconds (``nodes`` lists the nodes that delivered). A node that did not answer
in time is not counted (its softphone may still run the command). With Redis
down the command reaches this node's softphones only.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from aiohttp import web

from cti.api import principal, services
from cti.cluster.hub import ClusterHub
from cti.errors import Conflict, InvalidInput
from cti.hub import EventHub, Subscription
from cti.keys import SERVICES
from cti.validation import json_body, req_string, string

routes = web.RouteTableDef()

ACTIONS = frozenset({"answer", "hangup", "hold", "unhold", "dtmf"})
STATES = frozenset({"registered", "unregistered", "ringing", "calling", "connected", "held",
                    "idle"})
DIGITS = re.compile(r"^[0-9*#A-Da-d]{1,32}$")
CALL_FIELDS = {"caller_number": 64, "caller_name": 200, "called_number": 64, "sip_call_id": 200}
ACK_WITHIN = 1.0  # seconds to gather the other nodes' delivery counts


class NoSoftphone(Conflict):
    code = "no_softphone"


def command_body(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a phone command (pure): ``{"action", "digits"?}``."""
    action = req_string(body, "action", max_len=16)
    if action not in ACTIONS:
        raise InvalidInput(f"action must be one of {', '.join(sorted(ACTIONS))}", field="action")
    out: dict[str, Any] = {"action": action}
    if action == "dtmf":
        digits = req_string(body, "digits", max_len=32)
        if not DIGITS.match(digits):
            raise InvalidInput("digits: 1..32 of 0-9 * # A-D", field="digits")
        out["digits"] = digits.upper()
    elif body.get("digits") is not None:
        raise InvalidInput("digits go with the dtmf action only", field="digits")
    return out


def state_body(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a softphone state report (pure)."""
    state = req_string(body, "state", max_len=16)
    if state not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(sorted(STATES))}", field="state")
    out: dict[str, Any] = {"state": state}
    call = body.get("call")
    if call is not None:
        if not isinstance(call, dict):
            raise InvalidInput("call must be an object", field="call")
        out["call"] = {
            name: value
            for name, limit in CALL_FIELDS.items()
            if (value := string(call, name, required=False, max_len=limit)) is not None
        }
    for name in ("command_id", "error"):
        value = string(body, name, required=False, max_len=200)
        if value is not None:
            out[name] = value
    return out


def _softphones_of(agent_id: int) -> Any:
    def mine(sub: Subscription) -> bool:
        return sub.agent_id == agent_id and sub.client == "softphone"

    return mine


def _deliver_here(hub: EventHub, agent_id: int, command: dict[str, Any]) -> int:
    return hub.send_live(_softphones_of(agent_id), "phone_command", command)


async def _remote_count(hub: EventHub, kind: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(hub, ClusterHub):
        return []
    return await hub.request_live(kind, body, within=ACK_WITHIN) or []


@routes.post("/api/v1/agents/me/phone")
async def phone_command(request: web.Request) -> web.Response:
    who = principal(request)
    command = command_body(await json_body(request))
    command["id"] = str(uuid.uuid4())
    hub = services(request).hub
    here = _deliver_here(hub, who.agent_id, command)
    delivered, nodes = here, []
    if isinstance(hub, ClusterHub):
        if here:
            nodes.append(hub.node_id)
        replies = await _remote_count(hub, "phone_command",
                                      {"agent_id": who.agent_id, "command": command})
        for reply in replies:
            count = reply.get("delivered")
            if isinstance(count, int) and count > 0:
                delivered += count
                nodes.append(str(reply.get("node")))
    if delivered == 0:
        raise NoSoftphone("no softphone is linked for this agent: start `cti phone`")
    out: dict[str, Any] = {"delivered": delivered, "id": command["id"]}
    if isinstance(hub, ClusterHub):
        out["nodes"] = sorted(nodes)
    return web.json_response(out, status=202)


@routes.post("/api/v1/agents/me/phone/state")
async def phone_state(request: web.Request) -> web.Response:
    who = principal(request)
    report = state_body(await json_body(request))
    seq = services(request).hub.publish([who.agent_id], "phone_state", report)
    return web.json_response({"seq": seq}, status=202)


@routes.get("/api/v1/agents/me/phone")
async def phone_link(request: web.Request) -> web.Response:
    who = principal(request)
    hub = services(request).hub
    count = hub.clients(who.agent_id, "softphone")
    for reply in await _remote_count(hub, "phone_count", {"agent_id": who.agent_id}):
        remote = reply.get("softphones")
        count += remote if isinstance(remote, int) else 0
    return web.json_response({"softphones": count})


def _live_handlers(hub: ClusterHub) -> None:
    async def command(body: dict[str, Any]) -> dict[str, Any]:
        agent_id, cmd = body.get("agent_id"), body.get("command")
        if not isinstance(agent_id, int) or not isinstance(cmd, dict):
            return {"delivered": 0}
        return {"delivered": _deliver_here(hub, agent_id, command_body(cmd) | {
            "id": str(cmd.get("id", ""))[:64]})}

    async def count(body: dict[str, Any]) -> dict[str, Any]:
        agent_id = body.get("agent_id")
        if not isinstance(agent_id, int):
            return {"softphones": 0}
        return {"softphones": hub.clients(agent_id, "softphone")}

    hub.on_live("phone_command", command)
    hub.on_live("phone_count", count)


def setup_phone_api(app: web.Application) -> None:
    app.add_routes(routes)
    hub = app[SERVICES].hub
    if isinstance(hub, ClusterHub):
        _live_handlers(hub)
