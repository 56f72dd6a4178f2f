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

Cluster mode (a :class:`~cti.cluster.hub.ClusterHub` and Redis): only the node
holding a PBX's AMI lease has its link. A node that does not hold the link an
action needs reads the holder from the lease key (``cti:lease:pbx:<name>``)
and forwards the action over the live channel (kind ``callcontrol``, body
``{"to", "pbx", "op", "actor", "args"}``: the actor is the principal this node
authenticated: agent id, role, endpoint, name). Every node answers; the others
say ``skip`` at once, and the wait ends as soon as the holder replied. The
holder runs the same operation (same checks: an agent acts on its own calls)
and replies ``{"status", "body"}``: the result or the error JSON, returned
unchanged. The holder trusts the actor in the message: Redis is a trusted
component of the cluster (private network, password/ACL). Nothing is
re-sent: a holder that received the action but did not answer within the
action's time gives 504 ``pbx_unknown_outcome``; no holder (Redis says so),
Redis unreachable, or a holder not on the live channel give 503
``pbx_unavailable``. ``GET /api/v1/agents/me/status`` asks the holders of the
PBXs this node does not hold for the agent's memberships and merges them (the
same JSON as on a holder; PBXs that did not answer are listed in
``unavailable``). Single-node mode: all links are local, nothing is forwarded.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from redis.exceptions import RedisError

from cti.api import principal, services
from cti.auth import RANK, Role
from cti.cluster.hub import ClusterHub
from cti.cluster.lease import LEASE_KEY
from cti.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound
from cti.keys import SERVICES
from cti.links.pbx import PBX_LINKS
from cti.presence import cluster_status, member_status
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


log = logging.getLogger(__name__)

KIND = "callcontrol"  # the live-channel kind of a forwarded action
# Seconds the forwarding node waits for the holder's answer: the longest the
# action may take on the holder (AmiLink: ring 30 s + action 10 s for Originate;
# 10 s per AMI action) plus a margin.
WITHIN = {"dial": 45.0, "hangup": 35.0, "transfer": 15.0, "atxfer": 15.0, "pause": 15.0}
STATUS_WITHIN = 3.0
UNSENT_SLACK = 0.5  # all receivers answered this much before the deadline: the holder had none

Reply = tuple[int, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: the authenticated principal and its agent's endpoint (sent to the holder)."""

    agent_id: int
    role: Role
    endpoint: str
    name: str

    def at_least(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]

    def to_json(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "role": str(self.role), "endpoint": self.endpoint,
                "name": self.name}

    @classmethod
    def from_json(cls, data: Any) -> Actor:
        try:
            agent_id, role = data["agent_id"], Role(data["role"])
            endpoint, name = data["endpoint"], data["name"]
        except (KeyError, TypeError, ValueError):
            raise InvalidInput("a forwarded action without a valid actor") from None
        if not (isinstance(agent_id, int) and isinstance(endpoint, str) and endpoint
                and isinstance(name, str)):
            raise InvalidInput("a forwarded action without a valid actor")
        return cls(agent_id, role, endpoint, name)


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


def _local(app: web.Application) -> dict[str, AmiLink]:
    registry = app.get(PBX_LINKS)
    return dict(registry.links) if registry is not None else {}


def _cluster(request: web.Request) -> ClusterHub | None:
    """The hub when this node is one of a cluster (links may be held elsewhere)."""
    svc = services(request)
    hub = svc.hub
    return hub if isinstance(hub, ClusterHub) and svc.redis is not None else None


def _known(request: web.Request) -> list[str]:
    """Every PBX of the cluster: this node's links, then the configured ones."""
    names = list(_local(request.app))
    names += [s.name for s in services(request).settings.ami if s.name not in names]
    return names


def _one_name(request: web.Request, name: str | None) -> str:
    """The PBX an action goes to (cluster mode: held here or not)."""
    names = _known(request)
    if not names:
        raise PbxDown("no PBX link is configured")
    if name is not None:
        if name not in names:
            raise NotFound(f"no PBX named {name!r}", pbx=name)
        return name
    if len(names) > 1:
        raise InvalidInput("several PBXs are linked: name one in pbx", field="pbx")
    return names[0]


async def _me(request: web.Request) -> Actor:
    who = principal(request)
    agent = await services(request).agents.get(who.agent_id)
    if not agent.endpoint:
        raise Conflict("this agent has no SIP endpoint", agent=agent.login)
    return Actor(who.agent_id, who.role, agent.endpoint, agent.name)


def _is_leg_of(channel: str, endpoint: str) -> bool:
    return channel.startswith(f"{endpoint}-")


def _call(link: AmiLink, actor: Actor, call_id: str) -> CallSnapshot:
    snap = link.call(call_id)
    if snap is None:
        raise NotFound("no such call", call_id=call_id)
    mine = snap.agent_interface == actor.endpoint or any(
        _is_leg_of(c, actor.endpoint) for c in snap.legs)
    if not mine and not actor.at_least(Role.SUPERVISOR):
        raise Forbidden("this is not your call", call_id=call_id)
    return snap


def _call_id(args: dict[str, Any]) -> str:
    call_id = args.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidInput("call_id is required", field="call_id")
    return call_id


# -- the operations: the same code on the node that holds the link, forwarded or not --


async def _op_dial(link: AmiLink, actor: Actor, args: dict[str, Any]) -> Reply:
    number = _number(args, "number")
    result = await _pbx(link.originate(actor.endpoint, number,
                                       caller_id=f"{actor.name} <{number}>"))
    return 201, {
        "pbx": link.name,
        "call_id": result.call_id,
        "correlation_id": result.correlation_id,
        "channel": result.channel,
    }


async def _op_hangup(link: AmiLink, actor: Actor, args: dict[str, Any]) -> Reply:
    snap = _call(link, actor, _call_id(args))
    hung = 0
    for channel in snap.legs or (snap.channel,):
        try:
            await _pbx(link.hangup(channel))
            hung += 1
        except PbxRefused:  # that leg was already gone
            continue
    if hung == 0:
        raise NotFound("the call has already ended", call_id=snap.call_id)
    return 200, {"call_id": snap.call_id, "hung_up": hung}


async def _op_transfer(link: AmiLink, actor: Actor, args: dict[str, Any]) -> Reply:
    snap = _call(link, actor, _call_id(args))
    target = _number(args, "target")
    others = [
        c for c in snap.legs or (snap.channel,)
        if not _is_leg_of(c, actor.endpoint) and not c.startswith("Local/")
    ]
    if not others:
        raise Conflict("the call has no other party to transfer", call_id=snap.call_id)
    await _pbx(link.redirect(others[0], target, link.originate_context))
    return 200, {"call_id": snap.call_id, "channel": others[0], "target": target}


async def _op_atxfer(link: AmiLink, actor: Actor, args: dict[str, Any]) -> Reply:
    snap = _call(link, actor, _call_id(args))
    target = _number(args, "target")
    mine = [c for c in snap.legs or (snap.channel,) if _is_leg_of(c, actor.endpoint)]
    if not mine:
        raise Conflict("you have no leg in this call to transfer from", call_id=snap.call_id)
    await _pbx(link.atxfer(mine[0], target, link.originate_context))
    return 200, {"call_id": snap.call_id, "channel": mine[0], "target": target}


async def _op_pause(link: AmiLink, actor: Actor, args: dict[str, Any]) -> Reply:
    paused = args.get("paused")
    if not isinstance(paused, bool):
        raise InvalidInput("paused must be true or false", field="paused")
    reason = string(args, "reason", required=False, max_len=80, default="") or ""
    queue = string(args, "queue", required=False, max_len=80)
    await _pbx(link.queue_pause(actor.endpoint, paused, queue, reason if paused else ""))
    return 200, {"pbx": link.name}


Op = Callable[[AmiLink, Actor, dict[str, Any]], Awaitable[Reply]]
OPS: dict[str, Op] = {"dial": _op_dial, "hangup": _op_hangup, "transfer": _op_transfer,
                      "atxfer": _op_atxfer, "pause": _op_pause}


def _error_json(exc: DomainError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}


class Forwarded(DomainError):
    """The holder's answer, returned unchanged by the node the client talks to."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        raw = body.get("error")
        error: dict[str, Any] = raw if isinstance(raw, dict) else {}
        details = error.get("details")
        super().__init__(str(error.get("message", "")),
                         **(details if isinstance(details, dict) else {}))
        self.status = status
        self.code = str(error.get("code", "error"))
        self.body = body


async def holder_of(request: web.Request, pbx: str) -> str | None:
    """The node holding ``pbx``'s AMI lease, read from Redis (key of ``cti.cluster.lease``)."""
    redis = services(request).redis
    try:
        value = await redis.get(LEASE_KEY.format(duty=f"pbx:{pbx}"))
    except (RedisError, OSError) as exc:
        raise PbxDown(f"Redis, the cluster's shared state, is unreachable from this node "
                      f"({type(exc).__name__}): the node holding the AMI link to {pbx} "
                      f"cannot be reached", pbx=pbx) from None
    if not value:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text.rpartition(":")[0] or None


async def _forward(request: web.Request, hub: ClusterHub, pbx: str, op: str, actor: Actor,
                   args: dict[str, Any]) -> Reply:
    holder = await holder_of(request, pbx)
    if holder is None:
        raise PbxDown(f"no node holds the AMI link to {pbx} now", pbx=pbx)
    if holder == hub.node_id:  # the lease is ours but the link is not up yet / any more
        raise PbxDown(f"the AMI link to {pbx} is not up on this node", pbx=pbx)
    within = WITHIN[op]
    body = {"to": holder, "pbx": pbx, "op": op, "actor": actor.to_json(), "args": args}
    started = time.monotonic()
    replies = await hub.request_live(
        KIND, body, within=within,
        enough=lambda got: any(r.get("node") == holder for r in got))
    took = time.monotonic() - started
    reply = next((r for r in replies or () if r.get("node") == holder), None)
    if reply is None:
        reached = replies is not None and took < within - UNSENT_SLACK
        if reached or op == "pause":  # every receiver answered, none was the holder: not sent
            why = ("is not on the live channel" if replies is not None
                   else "could not be reached: Redis is unreachable")
            raise PbxDown(f"node {holder}, which holds the AMI link to {pbx}, {why}",
                          pbx=pbx, node=holder)
        raise PbxUnknownOutcome(
            f"node {holder}, which holds the AMI link to {pbx}, did not answer within "
            f"{within:g} s: the {op} may or may not have happened (not re-sent)",
            pbx=pbx, node=holder)
    status, out = reply.get("status"), reply.get("body")
    if not isinstance(status, int) or not isinstance(out, dict):
        raise PbxUnknownOutcome(f"node {holder} answered the {op} without a result",
                                pbx=pbx, node=holder)
    return status, out


async def _run(request: web.Request, pbx: str, op: str, actor: Actor,
               args: dict[str, Any]) -> Reply:
    """Run ``op`` on this node's link to ``pbx``, or on the node holding it."""
    link = _local(request.app).get(pbx)
    if link is not None:
        return await OPS[op](link, actor, args)
    hub = _cluster(request)
    if hub is None:
        raise PbxDown(f"the AMI link to {pbx} is not up", pbx=pbx)
    status, out = await _forward(request, hub, pbx, op, actor, args)
    if status >= 400:
        raise Forwarded(status, out)
    return status, out


def _call_pbx(request: web.Request) -> str:
    call_id = request.match_info["call_id"]
    pbx = call_id.partition(":")[0]
    known = _known(request) if _cluster(request) is not None else list(_links(request))
    if pbx not in known:
        raise NotFound("no such call", call_id=call_id)
    return pbx


@routes.post("/api/v1/calls")
async def dial(request: web.Request) -> web.Response:
    actor = await _me(request)
    body = await json_body(request)
    number = _number(body, "number")
    name = string(body, "pbx", required=False, max_len=64)
    pbx = _one_name(request, name) if _cluster(request) else _one_link(request, name).name
    status, out = await _run(request, pbx, "dial", actor, {"number": number})
    return web.json_response(out, status=status)


async def _on_call(request: web.Request, op: str, target: bool) -> web.Response:
    actor = await _me(request)
    pbx = _call_pbx(request)
    args: dict[str, Any] = {"call_id": request.match_info["call_id"]}
    if target:  # checked by the operation, after the call (as before)
        args["target"] = (await json_body(request)).get("target")
    status, out = await _run(request, pbx, op, actor, args)
    return web.json_response(out, status=status)


@routes.post(f"/api/v1/calls/{CALL_ID}/hangup")
async def hangup(request: web.Request) -> web.Response:
    return await _on_call(request, "hangup", target=False)


@routes.post(f"/api/v1/calls/{CALL_ID}/transfer")
async def transfer(request: web.Request) -> web.Response:
    return await _on_call(request, "transfer", target=True)


@routes.post(f"/api/v1/calls/{CALL_ID}/atxfer")
async def attended_transfer(request: web.Request) -> web.Response:
    return await _on_call(request, "atxfer", target=True)


@routes.get("/api/v1/agents/me/status")
async def my_status(request: web.Request) -> web.Response:
    actor = await _me(request)
    return web.json_response(await cluster_status(request.app, actor.endpoint, STATUS_WITHIN))


@routes.post("/api/v1/agents/me/pause")
async def pause(request: web.Request) -> web.Response:
    actor = await _me(request)
    body = await json_body(request)
    paused = body.get("paused")
    if not isinstance(paused, bool):
        raise InvalidInput("paused must be true or false", field="paused")
    reason = string(body, "reason", required=False, max_len=80, default="") or ""
    queue = string(body, "queue", required=False, max_len=80)
    name = string(body, "pbx", required=False, max_len=64)
    if _cluster(request) is not None:
        names = [_one_name(request, name)] if name is not None else _known(request)
        if not names:
            raise PbxDown("no PBX link is configured")
    else:
        names = [_one_link(request, name).name] if name is not None else list(_links(request))
    args = {"paused": paused, "reason": reason, "queue": queue}
    done: list[str] = []
    for pbx in names:
        await _run(request, pbx, "pause", actor, args)
        done.append(pbx)
    return web.json_response(
        {"endpoint": actor.endpoint, "paused": paused, "reason": reason, "queue": queue,
         "pbx": done}
    )


async def answer_forwarded(app: web.Application, node_id: str,
                           body: dict[str, Any]) -> dict[str, Any]:
    """The live-channel handler: run a forwarded action if this node is its target.

    Trusts the actor in ``body``: only nodes of the cluster write to its Redis.
    """
    local = _local(app)
    if body.get("op") == "status":
        wanted = body.get("pbx")
        endpoint = body.get("endpoint")
        if not isinstance(wanted, list) or not isinstance(endpoint, str):
            return {"skip": True}
        mine = [link for name, link in local.items() if name in wanted]
        if not mine:
            return {"skip": True}
        return member_status(mine, endpoint)
    if body.get("to") != node_id:
        return {"skip": True}
    try:
        op = OPS.get(str(body.get("op")))
        args = body.get("args")
        if op is None or not isinstance(args, dict):
            raise InvalidInput("a forwarded action that is not ours")
        actor = Actor.from_json(body.get("actor"))
        pbx = str(body.get("pbx"))
        link = local.get(pbx)
        if link is None:
            raise PbxDown(f"node {node_id} no longer holds the AMI link to {pbx}", pbx=pbx)
        status, out = await op(link, actor, args)
    except DomainError as exc:
        return {"status": exc.status, "body": _error_json(exc)}
    except Exception:
        log.exception("a forwarded %s failed", body.get("op"))
        return {"status": 500, "body": {"error": {
            "code": "internal_error", "message": f"the {body.get('op')} failed on node "
            f"{node_id}", "details": {}}}}
    return {"status": status, "body": out}


def setup_call_control(app: web.Application) -> None:
    """Add the call-control routes (the AMI links come from ``PBX_LINKS``); in a
    cluster, answer the actions other nodes forward to this one."""
    app.add_routes(routes)
    hub = app[SERVICES].hub
    if isinstance(hub, ClusterHub):
        node_id = hub.node_id

        async def forwarded(body: dict[str, Any]) -> dict[str, Any]:
            return await answer_forwarded(app, node_id, body)

        hub.on_live(KIND, forwarded)
