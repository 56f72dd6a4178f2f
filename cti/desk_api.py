"""Desk helpers under /api/v1: reply templates, tags, wrap-up codes, notes.

Routes (bearer token):

- ``GET /api/v1/templates`` (``?channel=``): every agent; ``POST`` (create),
  ``PUT /api/v1/templates/{id}`` (update), ``DELETE /api/v1/templates/{id}``:
  supervisors and admins. A body may hold ``{name}``, ``{order}``,
  ``{agent}``: the desk fills them from the customer card; the server
  stores the text as given (it is data, never markup).
- ``GET /api/v1/tags``, ``POST /api/v1/tags`` ``{"name"}`` (any agent).
- ``GET /api/v1/wrap-up-codes``, ``POST`` ``{"code", "label"?}`` (supervisor).
- ``POST /api/v1/conversations/{id}/tags`` ``{"tags": [...]}``: set the
  conversation's tags (known tags only; its owner or a supervisor); a
  ``tagged`` history event records the change.
- ``POST /api/v1/customers/{id}/notes`` ``{"text"}``: a ``note`` history event
  on the customer's timeline (201 with the event).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from cti.api import principal, services
from cti.auth import Role
from cti.conversations import conversation_json
from cti.errors import Conflict, Forbidden, InvalidInput, NotFound
from cti.history import HistoryEntry, entry_json
from cti.models import Conversation, Tag, Template, WrapUpCode
from cti.presence import setup_presence
from cti.services import Services
from cti.validation import json_body, path_id, req_string, string, string_list

routes = web.RouteTableDef()
ID = r"{id:\d{1,18}}"
_CHANNEL = re.compile(r"^[a-z]{1,8}$")
_NAME = re.compile(r"^[^\x00-\x1f]{1,64}$")
MAX_TEMPLATE = 4096
MAX_NOTE = 10_000
MAX_LIST = 1000

DEMO_TEMPLATES: tuple[tuple[str, str | None, str], ...] = (
    ("Greeting", None, "Hello {name}, this is {agent}. How can I help you?"),
    ("Order shipped", "sms", "Dear {name}, your order {order} has been shipped."),
    ("Order delayed", None, "{name}, we are sorry: order {order} is delayed by a day."),
    ("Goodbye", None, "Thank you for contacting us, {name}. Have a nice day!"),
)
DEMO_TAGS = ("billing", "delivery", "complaint", "vip", "technical")
DEMO_WRAP_UPS = (
    ("resolved", "Resolved"),
    ("callback", "Callback needed"),
    ("complaint", "Complaint"),
    ("info", "Information given"),
)


def template_json(t: Template) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "channel": t.channel, "body": t.body}


def _channel(body: dict[str, Any]) -> str | None:
    channel = string(body, "channel", required=False, max_len=8)
    if channel is not None and channel != "" and not _CHANNEL.match(channel):
        raise InvalidInput("channel must be a channel name (sms, chat, ...)", field="channel")
    return channel or None


def _label(body: dict[str, Any], name: str, max_len: int = 64) -> str:
    value = req_string(body, name, max_len=max_len).strip()
    if not value or not _NAME.match(value):
        raise InvalidInput(f"{name} must be 1..64 printable characters", field=name)
    return value


@routes.get("/api/v1/templates")
async def list_templates(request: web.Request) -> web.Response:
    principal(request)
    channel = request.query.get("channel")
    if channel is not None and not _CHANNEL.match(channel):
        raise InvalidInput("channel must be a channel name", field="channel")
    query = select(Template).order_by(Template.name).limit(MAX_LIST)
    if channel:
        query = query.where((Template.channel.is_(None)) | (Template.channel == channel))
    async with services(request).sessions() as session:
        rows = list(await session.scalars(query))
    return web.json_response({"templates": [template_json(t) for t in rows]})


@routes.post("/api/v1/templates")
async def create_template(request: web.Request) -> web.Response:
    principal(request, Role.SUPERVISOR)
    body = await json_body(request)
    row = Template(
        name=_label(body, "name", 100),
        channel=_channel(body),
        body=req_string(body, "body", max_len=MAX_TEMPLATE),
    )
    try:
        async with services(request).sessions() as session, session.begin():
            session.add(row)
    except IntegrityError:
        raise Conflict(f"a template named {row.name!r} exists", field="name") from None
    return web.json_response(template_json(row), status=201)


@routes.put(f"/api/v1/templates/{ID}")
async def update_template(request: web.Request) -> web.Response:
    principal(request, Role.SUPERVISOR)
    body = await json_body(request)
    template_id = path_id(request)
    try:
        async with services(request).sessions() as session, session.begin():
            row = await session.get(Template, template_id)
            if row is None:
                raise NotFound(f"template {template_id} does not exist", id=template_id)
            if "name" in body:
                row.name = _label(body, "name", 100)
            if "channel" in body:
                row.channel = _channel(body)
            if "body" in body:
                row.body = req_string(body, "body", max_len=MAX_TEMPLATE)
    except IntegrityError:
        raise Conflict("another template has this name", field="name") from None
    return web.json_response(template_json(row))


@routes.delete(f"/api/v1/templates/{ID}")
async def delete_template(request: web.Request) -> web.Response:
    principal(request, Role.SUPERVISOR)
    template_id = path_id(request)
    async with services(request).sessions() as session, session.begin():
        row = await session.get(Template, template_id)
        if row is None:
            raise NotFound(f"template {template_id} does not exist", id=template_id)
        await session.delete(row)
    return web.json_response({"id": template_id, "deleted": True})


@routes.get("/api/v1/tags")
async def list_tags(request: web.Request) -> web.Response:
    principal(request)
    async with services(request).sessions() as session:
        rows = list(await session.scalars(select(Tag).order_by(Tag.name).limit(MAX_LIST)))
    return web.json_response({"tags": [{"id": t.id, "name": t.name} for t in rows]})


@routes.post("/api/v1/tags")
async def create_tag(request: web.Request) -> web.Response:
    principal(request)
    body = await json_body(request)
    row = Tag(name=_label(body, "name"))
    try:
        async with services(request).sessions() as session, session.begin():
            session.add(row)
    except IntegrityError:
        raise Conflict(f"the tag {row.name!r} exists", field="name") from None
    return web.json_response({"id": row.id, "name": row.name}, status=201)


@routes.get("/api/v1/wrap-up-codes")
async def list_wrap_up_codes(request: web.Request) -> web.Response:
    principal(request)
    async with services(request).sessions() as session:
        rows = list(
            await session.scalars(select(WrapUpCode).order_by(WrapUpCode.code).limit(MAX_LIST))
        )
    return web.json_response(
        {"codes": [{"id": c.id, "code": c.code, "label": c.label} for c in rows]}
    )


@routes.post("/api/v1/wrap-up-codes")
async def create_wrap_up_code(request: web.Request) -> web.Response:
    principal(request, Role.SUPERVISOR)
    body = await json_body(request)
    row = WrapUpCode(
        code=_label(body, "code"),
        label=string(body, "label", required=False, max_len=200, default="") or "",
    )
    try:
        async with services(request).sessions() as session, session.begin():
            session.add(row)
    except IntegrityError:
        raise Conflict(f"the wrap-up code {row.code!r} exists", field="code") from None
    return web.json_response({"id": row.id, "code": row.code, "label": row.label}, status=201)


@routes.post(f"/api/v1/conversations/{ID}/tags")
async def tag_conversation(request: web.Request) -> web.Response:
    who = principal(request)
    body = await json_body(request)
    if not isinstance(body.get("tags"), list):
        raise InvalidInput("tags must be a list of tag names", field="tags")
    tags = sorted({t.strip() for t in string_list(body, "tags", max_items=20, max_len=64)})
    svc = services(request)
    conv = await svc.conversations.get(path_id(request))
    if conv.owner_id != who.agent_id and not who.at_least(Role.SUPERVISOR):
        raise Forbidden("this conversation belongs to another agent", conversation_id=conv.id)
    async with svc.sessions() as session, session.begin():
        known = set(await session.scalars(select(Tag.name).where(Tag.name.in_(tags))))
        unknown = [t for t in tags if t not in known]
        if unknown:
            raise InvalidInput(f"unknown tags: {', '.join(unknown)}", field="tags", unknown=unknown)
        await session.execute(
            update(Conversation)
            .where(Conversation.id == conv.id)
            .values(tags=tags)
            .execution_options(synchronize_session=False)
        )
    await svc.history.add(
        HistoryEntry(
            customer_id=conv.customer_id,
            conversation_id=conv.id,
            kind="tagged",
            channel=conv.channel,
            payload={"tags": tags, "before": list(conv.tags or []), "by": who.agent_id},
        )
    )
    conv = await svc.conversations.get(conv.id)
    return web.json_response(conversation_json(conv, await svc.conversations.owner_login(conv)))


@routes.post(f"/api/v1/customers/{ID}/notes")
async def add_note(request: web.Request) -> web.Response:
    who = principal(request)
    body = await json_body(request)
    text = req_string(body, "text", max_len=MAX_NOTE)
    if not text.strip():
        raise InvalidInput("the note is empty", field="text")
    svc = services(request)
    customer = await svc.customers.get(path_id(request))
    agent = await svc.agents.get(who.agent_id)
    conversation_id = body.get("conversation_id")
    if conversation_id is not None and (
        not isinstance(conversation_id, int) or isinstance(conversation_id, bool)
    ):
        raise InvalidInput("conversation_id must be an integer", field="conversation_id")
    entry = HistoryEntry(
        customer_id=customer.id,
        conversation_id=conversation_id,
        kind="note",
        channel="note",
        payload={"text": text, "agent": agent.login, "by": agent.id},
    )
    if conversation_id is not None:
        await svc.conversations.get(conversation_id)  # 404 for a conversation that is not there
    await svc.history.add(entry)
    return web.json_response(entry_json(entry), status=201)


async def seed_desk(services: Services) -> None:
    """Demo templates, tags and wrap-up codes (only those missing)."""
    async with services.sessions() as session, session.begin():
        names = set(await session.scalars(select(Template.name)))
        for name, channel, text in DEMO_TEMPLATES:
            if name not in names:
                session.add(Template(name=name, channel=channel, body=text))
        tags = set(await session.scalars(select(Tag.name)))
        session.add_all(Tag(name=t) for t in DEMO_TAGS if t not in tags)
        codes = set(await session.scalars(select(WrapUpCode.code)))
        session.add_all(WrapUpCode(code=c, label=lbl) for c, lbl in DEMO_WRAP_UPS if c not in codes)


DESK_API_INSTALLED = web.AppKey("desk_api_installed", bool)


def setup_desk_api(app: web.Application) -> None:
    """Add the desk routes and the agent-status follower (``cti.presence``); idempotent."""
    if app.get(DESK_API_INSTALLED):
        return
    app[DESK_API_INSTALLED] = True
    app.add_routes(routes)
    setup_presence(app)
