"""WebSocket /api/v1/events: live events for one agent, with seq resume.

The token comes in the query (``?token=...&last_seq=N``) or in the first
message (``{"type": "auth", "token": ..., "last_seq": N}``). After ``hello``
the server sends the missed messages, then live ones. A client whose queue
overflows is closed with code 4008; it reconnects with its last seq.

A client may say what it is (``client``: ``desk``, the default, ``softphone``
or ``wallboard``) in the query or the auth message: the project's softphone
says ``softphone`` so that ``POST /api/v1/agents/me/phone`` can send it
``phone_command`` messages (cti.phone_api).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from cti.auth import Principal
from cti.errors import DomainError, Unauthorized
from cti.hub import EventHub, Subscription
from cti.keys import SERVICES

AUTH_TIMEOUT = 10.0
MAX_CLIENT_MESSAGE = 4096
SLOW_CONSUMER = 4008
UNAUTHORIZED = 4001
CLIENTS = frozenset({"desk", "softphone", "wallboard"})
OPEN_SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("open_sockets", set)


async def _close_sockets(app: web.Application) -> None:
    """On shutdown: close every socket (1001) so shutdown does not wait for clients."""
    sockets: set[web.WebSocketResponse] = app[OPEN_SOCKETS]
    for ws in tuple(sockets):
        with contextlib.suppress(ConnectionError):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def setup_ws(app: web.Application) -> None:
    """Track open sockets and close them when the server shuts down."""
    if OPEN_SOCKETS not in app:
        app[OPEN_SOCKETS] = set()
        app.on_shutdown.append(_close_sockets)


def _client(value: Any) -> str:
    if value is None or value == "":
        return "desk"
    if not isinstance(value, str) or value not in CLIENTS:
        raise Unauthorized("client must be desk, softphone or wallboard")
    return value


def _last_seq(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        seq = int(value)
    except (TypeError, ValueError):
        raise Unauthorized("last_seq must be an integer") from None
    return seq if seq >= 0 else None


def _phone_link(hub: EventHub, agent_id: int) -> None:
    hub.publish([agent_id], "phone_link", {"softphones": hub.clients(agent_id, "softphone")})


async def _pump(ws: web.WebSocketResponse, sub: Subscription) -> None:
    while True:
        text = await sub.queue.get()
        if sub.overflowed:
            await ws.close(code=SLOW_CONSUMER, message=b"slow consumer: reconnect with last_seq")
            return
        await ws.send_str(text)
        sub.delivered += 1


async def events(request: web.Request) -> web.WebSocketResponse:
    services = request.app[SERVICES]
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_CLIENT_MESSAGE)
    await ws.prepare(request)
    token = request.query.get("token")
    last_seq_raw: Any = request.query.get("last_seq")
    client_raw: Any = request.query.get("client")
    try:
        if token is None:
            msg = await ws.receive(timeout=AUTH_TIMEOUT)
            if msg.type is not WSMsgType.TEXT:
                raise Unauthorized("the first message must be an auth message")
            try:
                first = json.loads(msg.data)
            except ValueError:
                raise Unauthorized("the first message must be JSON") from None
            if not isinstance(first, dict) or first.get("type") != "auth":
                raise Unauthorized('the first message must be {"type":"auth","token":...}')
            token = str(first.get("token") or "")
            last_seq_raw = first.get("last_seq", last_seq_raw)
            client_raw = first.get("client", client_raw)
        who: Principal = services.agents.authenticate(token)
        last_seq = _last_seq(last_seq_raw)
        client = _client(client_raw)
    except (DomainError, TimeoutError) as exc:
        message = exc.message if isinstance(exc, DomainError) else "no auth message in time"
        # A client that sent no auth and left is gone already: nothing to tell it.
        with contextlib.suppress(ConnectionResetError):
            await ws.send_json(
                {"type": "error", "error": {"code": "unauthorized", "message": message}}
            )
            await ws.close(code=UNAUTHORIZED, message=b"unauthorized")
        return ws
    sub = services.hub.subscribe(who.agent_id, last_seq, client=client, role=str(who.role))
    if client == "softphone":
        _phone_link(services.hub, who.agent_id)
    await ws.send_json(
        {
            "type": "hello",
            "agent_id": who.agent_id,
            "role": str(who.role),
            "epoch": services.hub.epoch,
            "last_seq": services.hub.seq,
        }
    )
    pump = asyncio.create_task(_pump(ws, sub), name=f"ws-pump-{who.agent_id}")
    open_sockets = request.app.get(OPEN_SOCKETS)
    if open_sockets is not None:
        open_sockets.add(ws)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT and msg.data == "ping":
                await ws.send_str('{"type":"pong"}')
            elif msg.type is WSMsgType.ERROR:
                break
    finally:
        if open_sockets is not None:
            open_sockets.discard(ws)
        services.hub.unsubscribe(sub)
        if client == "softphone":
            _phone_link(services.hub, who.agent_id)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await pump
    return ws
