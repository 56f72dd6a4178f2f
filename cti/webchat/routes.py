"""HTTP and WebSocket routes of the customer web chat.

``GET /c/{token}`` is the page (strict CSP, no inline script, the token never
leaves through a Referer), ``GET /api/v1/chat/{token}`` the conversation as the
customer may see it, ``/api/v1/chat/{token}/ws`` the live socket. A bad,
expired or closed link answers 403 before any upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import WSMsgType, web

from cti.errors import DomainError
from cti.keys import SERVICES
from cti.webchat.service import ChatLimits, ChatService, ChatSocket

STATIC = Path(__file__).resolve().parents[1] / "web" / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_FRAME = 64 * 1024  # bytes; the text limit (characters) is checked per message
SLOW_CONSUMER = 4008
CLOSED = 4003
CHAT = web.AppKey("webchat", ChatService)
_ERROR_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Chat</title><link rel="stylesheet" href="/chat/chat.css"></head>
<body><main class="chat-error"><h1>Chat unavailable</h1><p>{message}</p></main></body></html>
"""
_PAGE_MESSAGES = {
    "chat_token_expired": "This chat link has expired. Please call us or reply to our SMS.",
    "chat_closed": "This conversation is closed. Thank you for contacting us.",
}


async def chat_page(request: web.Request) -> web.StreamResponse:
    try:
        await request.app[CHAT].open(request.match_info["token"])
    except DomainError as exc:
        message = _PAGE_MESSAGES.get(exc.code, "This chat link is not valid.")
        return web.Response(
            status=exc.status,
            text=_ERROR_PAGE.format(message=message),
            content_type="text/html",
            headers=PAGE_HEADERS,
        )
    return web.FileResponse(STATIC / "chat.html", headers=PAGE_HEADERS)


async def chat_js(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "chat.js", headers={"X-Content-Type-Options": "nosniff"})


async def chat_css(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "chat.css", headers={"X-Content-Type-Options": "nosniff"})


async def chat_state(request: web.Request) -> web.Response:
    chat = request.app[CHAT]
    conv = await chat.open(request.match_info["token"])
    body = {"conversation": await chat.summary(conv), "messages": await chat.messages(conv)}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def _pump(ws: web.WebSocketResponse, sock: ChatSocket) -> None:
    while True:
        text = await sock.queue.get()
        if sock.overflowed:
            await ws.close(code=SLOW_CONSUMER, message=b"slow consumer: reconnect")
            return
        await ws.send_str(text)


async def chat_socket(request: web.Request) -> web.StreamResponse:
    chat = request.app[CHAT]
    token = request.match_info["token"]
    conv = await chat.open(token)
    sock = chat.join(conv.id, token)
    pump: asyncio.Task[None] | None = None
    closing: str | None = None
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_FRAME)
    try:
        await ws.prepare(request)
        await ws.send_json(await chat.snapshot(conv, sock))
        pump = asyncio.create_task(_pump(ws, sock), name=f"chat-pump-{conv.id}")
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data == "ping":
                    sock.offer('{"type":"pong"}')
                    continue
                try:
                    reply = await chat.handle_frame(sock, msg.data)
                except DomainError as exc:
                    reply = {"type": "error", "code": exc.code, "message": exc.message}
                    if exc.code == "chat_closed":
                        closing = json.dumps(reply)
                        break
                if reply is not None:
                    sock.offer(json.dumps(reply))
            elif msg.type is WSMsgType.BINARY:
                sock.offer('{"type":"error","code":"invalid_frame","message":"text frames only"}')
            elif msg.type is WSMsgType.ERROR:
                break
    finally:
        chat.leave(sock)
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pump
    if not ws.closed:
        if closing is not None:
            with contextlib.suppress(ConnectionError):
                await ws.send_str(closing)
        await ws.close(code=CLOSED if closing else 1000, message=b"bye")
    return ws


def _ctx(chat: ChatService) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        chat.install()
        yield
        chat.uninstall()

    return ctx


def setup_webchat(app: web.Application, limits: ChatLimits | None = None) -> None:
    """Add the chat routes and put the chat sender in front of ``conversations.outbound``.

    Call it after the SMS links are added so chat replies of an SMS conversation
    reach the open chat window as well as the phone.
    """
    if CHAT in app:
        return
    chat = ChatService(app[SERVICES], limits)
    app[CHAT] = chat
    app.cleanup_ctx.append(_ctx(chat))
    app.router.add_get("/c/{token}", chat_page)
    app.router.add_get("/chat/chat.js", chat_js)
    app.router.add_get("/chat/chat.css", chat_css)
    app.router.add_get("/api/v1/chat/{token}", chat_state)
    app.router.add_get("/api/v1/chat/{token}/ws", chat_socket)
