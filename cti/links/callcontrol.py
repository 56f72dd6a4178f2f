"""Call control by the agent over the AMI links (``cti.links.pbx``).

Routes (bearer token; an agent acts on its own endpoint and its own calls, a
supervisor on any call):

- ``POST /api/v1/calls`` ``{"number", "pbx"?}``: click-to-dial. The agent's
  phone rings first; once answered, ``number`` is dialled. 201 with
  ``{"pbx", "call_id", "correlation_id", "channel"}``.
- ``POST /api/v1/calls/{call_id}/hangup``: hang up every leg of the call.
- ``POST /api/v1/calls/{call_id}/transfer`` ``{"target"}``: blind transfer of
  the other party to ``target`` (an extension or number in the originate
  context); the agent's leg is released by Asterisk.
- ``POST /api/v1/calls/{call_id}/atxfer`` ``{"target"}``: attended transfer
  (AMI Atxfer on the agent's own leg: the other party waits on hold while the
  agent talks to ``target``; the agent hanging up completes the transfer).
  Needs ``atxfer`` in the PBX's features.conf ``[featuremap]``.
- ``POST /api/v1/agents/me/pause`` ``{"paused", "reason"?, "queue"?, "pbx"?}``:
  pause or unpause the agent in one queue or all (on one PBX or every PBX).
- ``GET /api/v1/agents/me/status``: paused, reason and each queue membership
  of the agent's endpoint, from the live trackers (``cti.presence``).

PBX errors map to HTTP: link down 503 ``pbx_unavailable``, refused by
Asterisk 502 ``pbx_refused`` (with its message), outcome unknown 504
``pbx_unknown_outcome`` (never re-sent), agent did not answer 409.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web

from cti.api import principal, services
from cti.auth import Principal, Role
from cti.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound
from cti.links.pbx import PBX_LINKS
from cti.models import Agent
from cti.presence import member_status
from cti.validation import json_body, req_string, string
from pbx.actions import (
    AmiActionError,
    BadActionArgument,
    OriginateFailed,
    PbxUnavailable,
    UnknownOutcome,
)
from pbx.link import AmiLink
from pbx.state import CallSnapshot

T = TypeVar("T")

routes = web.RouteTableDef()
CALL_ID = r"{call_id:[A-Za-z0-9_.:-]{1,160}}"
_NUMBER = re.compile(r"^\+?[0-9*#]{1,32}$")


class PbxDown(DomainError):
    status = 503
    code = "pbx_unavailable"


class PbxRefused(DomainError):
    status = 502
    code = "pbx_refused"


class PbxUnknownOutcome(DomainError):
    status = 504
    code = "pbx_unknown_outcome"


class AgentDidNotAnswer(Conflict):
    code = "agent_did_not_answer"


async def _pbx(action: Awaitable[T]) -> T:
    try:
        return await action
    except PbxUnavailable as exc:
        raise PbxDown(f"the PBX link is down: {exc}") from None
    except OriginateFailed as exc:
        raise AgentDidNotAnswer(str(exc), reason=exc.reason) from None
    except AmiActionError as exc:
        raise PbxRefused(f"the PBX refused {exc.action}", pbx_message=exc.pbx_message) from None
    except UnknownOutcome as exc:
        raise PbxUnknownOutcome(f"the outcome of the action is unknown: {exc}") from None
    except BadActionArgument as exc:
        raise InvalidInput(str(exc)) from None


def _number(body: dict[str, Any], name: str) -> str:
    value = req_string(body, name, max_len=32).strip()
    compact = re.sub(r"[\s()-]", "", value)
    if not _NUMBER.match(compact):
        raise InvalidInput(f"{name} must be a phone number or extension", field=name)
    return compact


def _links(request: web.Request) -> dict[str, AmiLink]:
    registry = request.app.get(PBX_LINKS)
    links = dict(registry.links) if registry is not None else {}
    if not links:
        raise PbxDown("no PBX link is configured")
    return links


def _one_link(request: web.Request, name: str | None) -> AmiLink:
    links = _links(request)
    if name is not None:
        if name not in links:
            raise NotFound(f"no PBX named {name!r}", pbx=name)
        return links[name]
    if len(links) > 1:
        raise InvalidInput("several PBXs are linked: name one in pbx", field="pbx")
    return next(iter(links.values()))


async def _me(request: web.Request) -> tuple[Principal, Agent, str]:
    who = principal(request)
    agent = await services(request).agents.get(who.agent_id)
    if not agent.endpoint:
        raise Conflict("this agent has no SIP endpoint", agent=agent.login)
    return who, agent, agent.endpoint


def _is_leg_of(channel: str, endpoint: str) -> bool:
    return channel.startswith(f"{endpoint}-")


async def _call(request: web.Request) -> tuple[AmiLink, CallSnapshot, str]:
    who, _, endpoint = await _me(request)
    call_id = request.match_info["call_id"]
    pbx_name = call_id.partition(":")[0]
    link = _links(request).get(pbx_name)
    snap = link.call(call_id) if link is not None else None
    if link is None or snap is None:
        raise NotFound("no such call", call_id=call_id)
    mine = snap.agent_interface == endpoint or any(_is_leg_of(c, endpoint) for c in snap.legs)
    if not mine and not who.at_least(Role.SUPERVISOR):
        raise Forbidden("this is not your call", call_id=call_id)
    return link, snap, endpoint


@routes.post("/api/v1/calls")
async def dial(request: web.Request) -> web.Response:
    _, agent, endpoint = await _me(request)
    body = await json_body(request)
    number = _number(body, "number")
    link = _one_link(request, string(body, "pbx", required=False, max_len=64))
    result = await _pbx(link.originate(endpoint, number, caller_id=f"{agent.name} <{number}>"))
    return web.json_response(
        {
            "pbx": link.name,
            "call_id": result.call_id,
            "correlation_id": result.correlation_id,
            "channel": result.channel,
        },
        status=201,
    )


@routes.post(f"/api/v1/calls/{CALL_ID}/hangup")
async def hangup(request: web.Request) -> web.Response:
    link, snap, _ = await _call(request)
    hung = 0
    for channel in snap.legs or (snap.channel,):
        try:
            await _pbx(link.hangup(channel))
            hung += 1
        except PbxRefused:  # that leg was already gone
            continue
    if hung == 0:
        raise NotFound("the call has already ended", call_id=snap.call_id)
    return web.json_response({"call_id": snap.call_id, "hung_up": hung})


@routes.post(f"/api/v1/calls/{CALL_ID}/transfer")
async def transfer(request: web.Request) -> web.Response:
    link, snap, endpoint = await _call(request)
    body = await json_body(request)
    target = _number(body, "target")
    others = [
        c for c in snap.legs or (snap.channel,)
        if not _is_leg_of(c, endpoint) and not c.startswith("Local/")
    ]
    if not others:
        raise Conflict("the call has no other party to transfer", call_id=snap.call_id)
    await _pbx(link.redirect(others[0], target, link.originate_context))
    return web.json_response({"call_id": snap.call_id, "channel": others[0], "target": target})


@routes.post(f"/api/v1/calls/{CALL_ID}/atxfer")
async def attended_transfer(request: web.Request) -> web.Response:
    link, snap, endpoint = await _call(request)
    body = await json_body(request)
    target = _number(body, "target")
    mine = [c for c in snap.legs or (snap.channel,) if _is_leg_of(c, endpoint)]
    if not mine:
        raise Conflict("you have no leg in this call to transfer from", call_id=snap.call_id)
    await _pbx(link.atxfer(mine[0], target, link.originate_context))
    return web.json_response({"call_id": snap.call_id, "channel": mine[0], "target": target})


@routes.get("/api/v1/agents/me/status")
async def my_status(request: web.Request) -> web.Response:
    _, _, endpoint = await _me(request)
    registry = request.app.get(PBX_LINKS)
    links = list(registry.links.values()) if registry is not None else []
    return web.json_response(member_status(links, endpoint))


@routes.post("/api/v1/agents/me/pause")
async def pause(request: web.Request) -> web.Response:
    _, _, endpoint = await _me(request)
    body = await json_body(request)
    paused = body.get("paused")
    if not isinstance(paused, bool):
        raise InvalidInput("paused must be true or false", field="paused")
    reason = string(body, "reason", required=False, max_len=80, default="") or ""
    queue = string(body, "queue", required=False, max_len=80)
    name = string(body, "pbx", required=False, max_len=64)
    links = [_one_link(request, name)] if name is not None else list(_links(request).values())
    done: list[str] = []
    for link in links:
        await _pbx(link.queue_pause(endpoint, paused, queue, reason if paused else ""))
        done.append(link.name)
    return web.json_response(
        {"endpoint": endpoint, "paused": paused, "reason": reason, "queue": queue, "pbx": done}
    )


def setup_call_control(app: web.Application) -> None:
    """Add the call-control routes (the AMI links come from ``PBX_LINKS``)."""
    app.add_routes(routes)
