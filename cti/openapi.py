"""The OpenAPI 3.1 document served at /api/v1/openapi.json."""

from __future__ import annotations

from typing import Any


def _op(
    summary: str,
    *,
    body: dict[str, Any] | None = None,
    auth: bool = True,
    ok: int = 200,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            str(ok): {"description": "success"},
            "default": {
                "description": "error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        },
    }
    if auth:
        op["security"] = [{"bearer": []}]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _obj(required: list[str], **props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


STR = {"type": "string"}
STRS = {"type": "array", "items": {"type": "string"}}
INT = {"type": "integer"}
ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": INT}


def _q(name: str, schema: dict[str, Any] = STR) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "CTI server API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": _obj(
                ["error"],
                error=_obj(
                    ["code", "message", "details"],
                    code=STR,
                    message=STR,
                    details={"type": "object"},
                ),
            ),
        },
    },
    "paths": {
        "/api/v1/auth/token": {
            "post": _op(
                "Issue a bearer token",
                auth=False,
                body=_obj(["login", "password"], login=STR, password=STR),
            )
        },
        "/api/v1/me": {"get": _op("The calling agent")},
        "/api/v1/agents": {
            "post": _op(
                "Create an agent (admin)",
                ok=201,
                body=_obj(
                    ["login", "password"],
                    login=STR,
                    password=STR,
                    name=STR,
                    role=STR,
                    endpoint=STR,
                    queues=STRS,
                    skills=STRS,
                    max_text=INT,
                ),
            )
        },
        "/api/v1/customers": {
            "post": _op(
                "Create a customer",
                ok=201,
                body=_obj(
                    ["name"],
                    name=STR,
                    phones=STRS,
                    emails=STRS,
                    segment=STR,
                    notes=STR,
                    external_id=STR,
                    tags=STRS,
                    custom={"type": "object"},
                ),
            ),
            "get": _op(
                "Find customers by phone (any format) or email", params=[_q("phone"), _q("email")]
            ),
        },
        "/api/v1/customers/{id}": {"get": _op("A customer card", params=[ID_PARAM])},
        "/api/v1/customers/{id}/history": {
            "get": _op(
                "The customer's history across channels, newest first",
                params=[ID_PARAM, _q("limit", INT), _q("cursor"),
                        _q("before", {"type": "string", "format": "date-time"})],
            )
        },
        "/api/v1/customers/{id}/identities": {
            "post": _op(
                "Link a contact to the customer",
                params=[ID_PARAM],
                body=_obj(["kind", "value"], kind=STR, value=STR),
            )
        },
        "/api/v1/customers/{id}/merge": {
            "post": _op(
                "Merge another customer into this one (supervisor)",
                params=[ID_PARAM],
                body=_obj(["source_id"], source_id=INT),
            )
        },
        "/api/v1/merges/{id}/undo": {"post": _op("Undo a merge (supervisor)", params=[ID_PARAM])},
        "/api/v1/conversations": {
            "get": _op("My open conversations, or the queue", params=[_q("scope"), _q("queue")])
        },
        "/api/v1/conversations/{id}": {"get": _op("A conversation", params=[ID_PARAM])},
        "/api/v1/conversations/{id}/take": {
            "post": _op("Take a queued conversation (409 names the owner)", params=[ID_PARAM])
        },
        "/api/v1/conversations/{id}/transfer": {
            "post": _op(
                "Transfer to an agent or a queue",
                params=[ID_PARAM],
                body=_obj([], agent=STR, queue=STR),
            )
        },
        "/api/v1/conversations/{id}/close": {
            "post": _op(
                "Close with a wrap-up code", params=[ID_PARAM], body=_obj([], wrap_up_code=STR)
            )
        },
        "/api/v1/conversations/{id}/messages": {
            "post": _op(
                "Reply by SMS or chat", ok=201, params=[ID_PARAM], body=_obj(["text"], text=STR)
            )
        },
        "/api/v1/chat/{token}": {
            "get": _op(
                "Customer web chat: state (waiting + place in line, or the agent's name) and "
                "messages so far; 403 chat_token_invalid / chat_token_expired / chat_closed",
                auth=False,
                params=[{"name": "token", "in": "path", "required": True, "schema": STR}],
            )
        },
        "/api/v1/chat/{token}/ws": {
            "get": _op(
                "Customer web chat WebSocket: snapshot, then live messages; send "
                '{"type":"message","text":...}; error frames too_large, rate_limited',
                auth=False,
                ok=101,
                params=[{"name": "token", "in": "path", "required": True, "schema": STR}],
            )
        },
        "/api/v1/agents/me/phone": {
            "post": _op(
                "Send answer/hangup/hold/unhold/dtmf to my linked softphone (409 no_softphone)",
                ok=202,
                body=_obj(["action"], action=STR, digits=STR),
            ),
            "get": _op("How many softphones I have linked (this node)"),
        },
        "/api/v1/agents/me/phone/state": {
            "post": _op(
                "The softphone reports its state (published to my desk as phone_state)",
                ok=202,
                body=_obj(["state"], state=STR, call={"type": "object"}, command_id=STR,
                          error=STR),
            )
        },
        "/api/v1/callbacks": {
            "get": _op(
                "Callback bookings in place-in-line order (supervisor)",
                params=[_q("status"), _q("limit", INT)],
            )
        },
        "/api/v1/callbacks/{id}": {
            "get": _op("One callback booking (supervisor)", params=[ID_PARAM]),
            "delete": _op("Cancel a waiting callback (supervisor; 409 when not open)",
                          params=[ID_PARAM]),
        },
        "/api/v1/wallboard": {
            "get": _op(
                "Supervisor wallboard: queues, agents by state, today's figures, open texts"
                " with SLA state (live: wallboard messages on supervisors' sockets)"
            )
        },
        "/api/v1/health": {
            "get": _op(
                "State of each link; in cluster mode links.cluster: node_id, redis, holds "
                "(PBX links held), leases, bus (last_seq, pending, lag_ms)",
                auth=False,
            )
        },
        "/api/v1/health/cluster": {
            "get": _op(
                "Cluster-wide health: status (ok when every node is up and ok), mode "
                "(single/cluster), up/down counts, nodes: each live node's summary (node_id, "
                "status, started, seen, links {kind, up, detail}, holds, bus) or, for a node "
                "whose report expired, status down with last_seen (kept for an hour)",
                auth=False,
            )
        },
        "/metrics": {"get": _op("Prometheus metrics of this node (text format)", auth=False)},
        "/api/v1/events": {
            "get": _op(
                "WebSocket of live events (screen_pop, ...), each with seq; resume with last_seq",
                auth=False,
                ok=101,
                params=[_q("token"), _q("last_seq", INT)],
            )
        },
        "/api/v1/calls/{call_id}/atxfer": {
            "post": _op(
                "Attended transfer (AMI Atxfer on the agent's leg)",
                params=[{"name": "call_id", "in": "path", "required": True, "schema": STR}],
                body=_obj(["target"], target=STR),
            )
        },
        "/api/v1/agents/me/status": {
            "get": _op("The agent's pause state and queue memberships from the PBX")
        },
        "/api/v1/templates": {
            "get": _op("Reply templates ({name}, {order}, {agent})", params=[_q("channel")]),
            "post": _op(
                "Create a template (supervisor)",
                ok=201,
                body=_obj(["name", "body"], name=STR, body=STR, channel=STR),
            ),
        },
        "/api/v1/templates/{id}": {
            "put": _op(
                "Update a template (supervisor)",
                params=[ID_PARAM],
                body=_obj([], name=STR, body=STR, channel=STR),
            ),
            "delete": _op("Delete a template (supervisor)", params=[ID_PARAM]),
        },
        "/api/v1/tags": {
            "get": _op("Conversation tags"),
            "post": _op("Create a tag", ok=201, body=_obj(["name"], name=STR)),
        },
        "/api/v1/wrap-up-codes": {
            "get": _op("Wrap-up codes"),
            "post": _op(
                "Create a wrap-up code (supervisor)",
                ok=201,
                body=_obj(["code"], code=STR, label=STR),
            ),
        },
        "/api/v1/conversations/{id}/tags": {
            "post": _op(
                "Set a conversation's tags", params=[ID_PARAM], body=_obj(["tags"], tags=STRS)
            )
        },
        "/api/v1/customers/{id}/notes": {
            "post": _op(
                "Add a note to the customer's timeline",
                ok=201,
                params=[ID_PARAM],
                body=_obj(["text"], text=STR, conversation_id=INT),
            )
        },
        "/api/v1/reports/{name}": {
            "get": _op(
                "A report (voice, text, fcr, tags, agents) as JSON or CSV (supervisor)",
                params=[
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["voice", "text", "fcr", "tags", "agents"]},
                    },
                    _q("from"),
                    _q("to"),
                    _q("tz"),
                    _q("group_by", {"enum": ["queue", "agent", "channel", "tag", "day", "hour"]}),
                    _q("format", {"enum": ["json", "csv"]}),
                    _q("fcr_days", INT),
                ],
            )
        },
        "/api/v1/conversations/{id}/marking": {
            "post": _op(
                "Mark a conversation with tags and the customer's sentiment",
                params=[ID_PARAM],
                body=_obj(
                    ["tags"],
                    tags=STRS,
                    sentiment={"enum": ["positive", "negative", "neutral"]},
                ),
            )
        },
        "/api/v1/openapi.json": {"get": _op("This document", auth=False)},
    },
}
