"""The desk drives the agent's own softphone (``cti phone``) through the server.

Routes (bearer token, the calling agent only):

- ``POST /api/v1/agents/me/phone`` ``{"action": "answer"|"hangup"|"hold"|"unhold"|"dtmf",
  "digits"?}``: sends ``{"type": "phone_command", "action", "id", "digits"?}`` to every
  WebSocket of this agent that identified as ``client=softphone`` on this node;
  202 ``{"delivered": n, "id"}``; 409 ``no_softphone`` when none is linked.
- ``POST /api/v1/agents/me/phone/state`` ``{"state", "call"?, "command_id"?, "error"?}``:
  the softphone reports its state; published to the agent's sockets as
  ``{"type": "phone_state", ...}`` (seq'd, replayed like every desk event).
- ``GET /api/v1/agents/me/phone``: ``{"softphones": n}`` linked on this node.

Commands are not replayed: a softphone that reconnects must not answer a call
because of a click made minutes ago. The count of linked softphones is per
node (with several nodes the desk's request must reach the node the softphone
is linked to, or the Redis bus must carry the command).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from aiohttp import web

from cti.api import principal, services
from cti.errors import Conflict, InvalidInput
from cti.hub import Subscription
from cti.validation import json_body, req_string, string

routes = web.RouteTableDef()

ACTIONS = frozenset({"answer", "hangup", "hold", "unhold", "dtmf"})
STATES = frozenset({"registered", "unregistered", "ringing", "calling", "connected", "held",
                    "idle"})
DIGITS = re.compile(r"^[0-9*#A-Da-d]{1,32}$")
CALL_FIELDS = {"caller_number": 64, "caller_name": 200, "called_number": 64, "sip_call_id": 200}


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


@routes.post("/api/v1/agents/me/phone")
async def phone_command(request: web.Request) -> web.Response:
    who = principal(request)
    command = command_body(await json_body(request))
    command["id"] = str(uuid.uuid4())

    def mine(sub: Subscription) -> bool:
        return sub.agent_id == who.agent_id and sub.client == "softphone"

    delivered = services(request).hub.send_live(mine, "phone_command", command)
    if delivered == 0:
        raise NoSoftphone("no softphone is linked for this agent: start `cti phone`")
    return web.json_response({"delivered": delivered, "id": command["id"]}, status=202)


@routes.post("/api/v1/agents/me/phone/state")
async def phone_state(request: web.Request) -> web.Response:
    who = principal(request)
    report = state_body(await json_body(request))
    seq = services(request).hub.publish([who.agent_id], "phone_state", report)
    return web.json_response({"seq": seq}, status=202)


@routes.get("/api/v1/agents/me/phone")
async def phone_link(request: web.Request) -> web.Response:
    who = principal(request)
    return web.json_response({"softphones": services(request).hub.clients(who.agent_id,
                                                                          "softphone")})


def setup_phone_api(app: web.Application) -> None:
    app.add_routes(routes)
