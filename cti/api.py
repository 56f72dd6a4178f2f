"""REST handlers under /api/v1: parse, call a service, return JSON."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cti.agents import agent_json
from cti.auth import Principal, Role
from cti.conversations import conversation_json
from cti.customers import ContactInput
from cti.errors import Forbidden, InvalidInput, Unauthorized
from cti.history import event_json, parse_instant, timeline
from cti.keys import SERVICES
from cti.models import Conversation
from cti.openapi import OPENAPI
from cti.services import Services
from cti.validation import (
    integer,
    json_body,
    path_id,
    query_int,
    req_string,
    string,
    string_list,
)

routes = web.RouteTableDef()
ID = r"{id:\d{1,18}}"


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def principal(request: web.Request, role: Role = Role.AGENT) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("a bearer token is required")
    who = services(request).agents.authenticate(token.strip())
    if not who.at_least(role):
        raise Forbidden(f"this needs the {role} role", role=str(role))
    return who


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


@routes.post("/api/v1/auth/token")
async def issue_token(request: web.Request) -> web.Response:
    body = await json_body(request)
    login = req_string(body, "login", max_len=64)
    password = req_string(body, "password", max_len=256)
    token = await services(request).agents.issue_token(login, password)
    return web.json_response({"token": token, "token_type": "bearer"})


@routes.get("/api/v1/me")
async def me(request: web.Request) -> web.Response:
    who = principal(request)
    return web.json_response(agent_json(await services(request).agents.get(who.agent_id)))


@routes.post("/api/v1/agents")
async def create_agent(request: web.Request) -> web.Response:
    principal(request, Role.ADMIN)
    body = await json_body(request)
    role_text = string(body, "role", required=False, default="agent", max_len=16)
    try:
        role = Role(role_text or "agent")
    except ValueError:
        raise InvalidInput("role must be agent, supervisor or admin", field="role") from None
    agent = await services(request).agents.create(
        req_string(body, "login", max_len=64),
        req_string(body, "password", max_len=256),
        name=string(body, "name", required=False, default="") or "",
        role=role,
        endpoint=string(body, "endpoint", required=False, max_len=128),
        queues=string_list(body, "queues", max_len=64),
        skills=string_list(body, "skills", max_len=64),
        max_text=integer(body, "max_text", required=False, hi=100),
    )
    return web.json_response(agent_json(agent), status=201)


@routes.post("/api/v1/customers")
async def create_customer(request: web.Request) -> web.Response:
    principal(request)
    body = await json_body(request)
    contacts = [ContactInput("phone", p) for p in string_list(body, "phones")]
    contacts += [ContactInput("email", e) for e in string_list(body, "emails")]
    custom = body.get("custom") or {}
    if not isinstance(custom, dict) or len(str(custom)) > 16384:
        raise InvalidInput("custom must be a JSON object under 16 KiB", field="custom")
    svc = services(request).customers
    customer = await svc.create(
        req_string(body, "name", max_len=200),
        contacts,
        segment=string(body, "segment", required=False, max_len=64),
        notes=string(body, "notes", required=False, max_len=10000, default="") or "",
        external_id=string(body, "external_id", required=False, max_len=128),
        tags=string_list(body, "tags", max_len=64),
        custom=custom,
    )
    return web.json_response(await svc.card(customer), status=201)


@routes.get("/api/v1/customers")
async def find_customers(request: web.Request) -> web.Response:
    principal(request)
    svc = services(request).customers
    for kind, param in (("phone", "phone"), ("email", "email")):
        value = request.query.get(param)
        if value is not None:
            customer = await svc.lookup(kind, value)
            cards = [await svc.card(customer)] if customer else []
            return web.json_response({"customers": cards})
    raise InvalidInput("give phone or email", field="phone")


@routes.get(f"/api/v1/customers/{ID}")
async def get_customer(request: web.Request) -> web.Response:
    principal(request)
    svc = services(request).customers
    return web.json_response(await svc.card(await svc.get(path_id(request))))


@routes.get(f"/api/v1/customers/{ID}/history")
async def customer_history(request: web.Request) -> web.Response:
    principal(request)
    svc = services(request)
    customer = await svc.customers.get(path_id(request))
    limit = query_int(request, "limit", 50, 1, 200)
    cursor = request.query.get("cursor")
    if cursor is not None and len(cursor) > 200:
        raise InvalidInput("the cursor is not valid", field="cursor")
    raw_before = request.query.get("before")
    before = None if raw_before is None else parse_instant(raw_before, "before")
    events, next_cursor = await timeline(
        svc.sessions, customer.id, limit=limit, cursor=cursor, before=before
    )
    return web.json_response(
        {"events": [event_json(e) for e in events], "next_cursor": next_cursor}
    )


@routes.post(f"/api/v1/customers/{ID}/identities")
async def link_identity(request: web.Request) -> web.Response:
    who = principal(request)
    body = await json_body(request)
    svc = services(request).customers
    customer = await svc.link(
        path_id(request),
        req_string(body, "kind", max_len=16),
        req_string(body, "value", max_len=256),
        who.agent_id,
    )
    return web.json_response(await svc.card(customer))


@routes.post(f"/api/v1/customers/{ID}/merge")
async def merge_customers(request: web.Request) -> web.Response:
    who = principal(request, Role.SUPERVISOR)
    body = await json_body(request)
    source = integer(body, "source_id", lo=1)
    assert source is not None
    audit = await services(request).customers.merge(source, path_id(request), who.agent_id)
    return web.json_response(
        {"merge_id": audit.id, "source_id": audit.source_id, "target_id": audit.target_id}
    )


@routes.post(f"/api/v1/merges/{ID}/undo")
async def undo_merge(request: web.Request) -> web.Response:
    who = principal(request, Role.SUPERVISOR)
    audit = await services(request).customers.undo_merge(path_id(request), who.agent_id)
    return web.json_response(
        {
            "merge_id": audit.id,
            "source_id": audit.source_id,
            "target_id": audit.target_id,
            "undone": True,
        }
    )


async def _conv_json(request: web.Request, conv: Conversation) -> dict[str, Any]:
    return conversation_json(conv, await services(request).conversations.owner_login(conv))


@routes.get("/api/v1/conversations")
async def list_conversations(request: web.Request) -> web.Response:
    who = principal(request)
    svc = services(request).conversations
    scope = request.query.get("scope", "mine")
    if scope == "mine":
        rows = await svc.mine(who.agent_id)
    elif scope == "queue":
        queue = request.query.get("queue")
        if queue is not None and len(queue) > 64:
            raise InvalidInput("queue is too long", field="queue")
        rows = await svc.queued(queue)
    else:
        raise InvalidInput("scope must be mine or queue", field="scope")
    return web.json_response({"conversations": [await _conv_json(request, c) for c in rows]})


@routes.get(f"/api/v1/conversations/{ID}")
async def get_conversation(request: web.Request) -> web.Response:
    principal(request)
    conv = await services(request).conversations.get(path_id(request))
    return web.json_response(await _conv_json(request, conv))


@routes.post(f"/api/v1/conversations/{ID}/take")
async def take(request: web.Request) -> web.Response:
    who = principal(request)
    conv = await services(request).conversations.take(path_id(request), who.agent_id)
    return web.json_response(await _conv_json(request, conv))


@routes.post(f"/api/v1/conversations/{ID}/transfer")
async def transfer(request: web.Request) -> web.Response:
    who = principal(request)
    body = await json_body(request)
    conv = await services(request).conversations.transfer(
        path_id(request),
        who,
        to_agent=string(body, "agent", required=False, max_len=64),
        to_queue=string(body, "queue", required=False, max_len=64, min_len=1),
    )
    return web.json_response(await _conv_json(request, conv))


@routes.post(f"/api/v1/conversations/{ID}/close")
async def close(request: web.Request) -> web.Response:
    who = principal(request)
    body = await json_body(request) if request.can_read_body else {}
    conv = await services(request).conversations.close(
        path_id(request), who, string(body, "wrap_up_code", required=False, max_len=64)
    )
    return web.json_response(await _conv_json(request, conv))


@routes.post(f"/api/v1/conversations/{ID}/messages")
async def send_message(request: web.Request) -> web.Response:
    who = principal(request)
    body = await json_body(request)
    result, sent_now = await services(request).conversations.send_message(
        path_id(request),
        who,
        req_string(body, "text", max_len=4096),
        idempotency_key=request.headers.get("Idempotency-Key"),
    )
    return web.json_response(result, status=201 if sent_now else 200)


@routes.get("/api/v1/health")
async def health(request: web.Request) -> web.Response:
    links = await services(request).links.report()
    ok = all(link.get("up") for link in links.values())
    return web.json_response({"status": "ok" if ok else "degraded", "links": links})
