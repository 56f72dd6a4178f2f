"""Customer web chat over a real server and database (SQLite and PostgreSQL).

Signed links (forged, expired, foreign, closed -> 403), chat both ways with an
agent on the agent socket and the REST reply, the rate limit, the size limit,
bad frames, and HTML kept as data.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from cti.app import create_app
from cti.auth import Principal, Role
from cti.cluster.redis_client import connect_redis
from cti.config import Settings, SmppLink
from cti.history import HistoryEntry, timeline
from cti.keys import SERVICES
from cti.links.sms import sms_links
from cti.models import Conversation
from cti.webchat import chat_link, chat_signer
from cti.webchat.routes import CHAT, setup_webchat
from cti.webchat.service import ChatLimits
from cti.webchat.tokens import ChatTokenSigner
from tests.functional.cti.conftest import Api
from tests.peers.smsc import Smsc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
TIMEOUT = 20
IMG = "<img src=x onerror=alert('x')>"
LIMITS = ChatLimits(burst=5, per_second=0.01, max_sockets=2)


@pytest.fixture
async def chat_api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    setup_webchat(app, LIMITS)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Api(client, app[SERVICES])
    finally:
        await client.close()


async def recv(ws: aiohttp.ClientWebSocketResponse, type_: str | None = None) -> dict[str, Any]:
    """The next frame (of that type, skipping others)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        frame: dict[str, Any] = json.loads(msg.data)
        if type_ is None or frame["type"] == type_:
            return frame


async def chat_conversation(api: Api, name: str, queue: str = "support") -> Conversation:
    svc = api.services
    customer = await svc.customers.create(name, [])
    conv, _ = await svc.conversations.open("chat", customer.id, queue=queue)
    return conv


def token_of(link: str) -> str:
    return link.rsplit("/c/", 1)[1]


async def refused(api: Api, token: str, code: str) -> None:
    resp = await api.client.get(f"/api/v1/chat/{token}")
    assert resp.status == 403, await resp.text()
    assert (await resp.json())["error"]["code"] == code
    page = await api.client.get(f"/c/{token}")
    assert page.status == 403 and "<script" not in await page.text()
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await api.client.ws_connect(f"/api/v1/chat/{token}/ws")
    assert err.value.status == 403


async def test_links_are_signed_bound_to_one_conversation_and_expire(chat_api: Api) -> None:
    api, svc = chat_api, chat_api.services
    conv = await chat_conversation(api, "Анна")
    other = await chat_conversation(api, "Борис")
    await svc.history.add(
        HistoryEntry(other.customer_id, "message_in", "chat", {"text": "Борис пишет"}, other.id)
    )
    link = chat_link(svc, conv.id)
    token = token_of(link)
    assert link.startswith(svc.settings.base_url() + "/c/") and len(token) < 60

    resp = await api.client.get(f"/api/v1/chat/{token}")
    assert resp.status == 200
    body = await resp.json()
    assert body["conversation"]["conversation_id"] == conv.id and body["messages"] == []
    page = await api.client.get(f"/c/{token}")
    assert page.status == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "no-referrer"
    html = await page.text()
    assert 'name="viewport"' in html and "<script>" not in html  # no inline script

    raw = bytearray(base64.urlsafe_b64decode(token + "="))
    raw[6] ^= other.id ^ conv.id  # the claims of another conversation, the old MAC
    foreign = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    other_key = ChatTokenSigner("another-secret", 3600).issue(conv.id)
    agent_token = svc.signer.issue(Principal(1, Role.ADMIN))
    for bad in (foreign, flipped, other_key, agent_token, "x" * 43, token + "A", "%00"):
        await refused(api, bad, "chat_token_invalid")

    ttl = svc.settings.chat_token_ttl
    expired = chat_signer(svc).issue(conv.id, now=time.time() - ttl - 5)
    await refused(api, expired, "chat_token_expired")

    # The other customer's link shows only that conversation.
    other_body = await (
        await api.client.get(f"/api/v1/chat/{token_of(chat_link(svc, other.id))}")
    ).json()
    assert [m["text"] for m in other_body["messages"]] == ["Борис пишет"]
    assert (await (await api.client.get(f"/api/v1/chat/{token}")).json())["messages"] == []

    ws = await api.client.ws_connect(f"/api/v1/chat/{token}/ws")
    assert (await recv(ws))["type"] == "snapshot"
    admin = Principal(1, Role.ADMIN)
    await svc.conversations.close(conv.id, admin, None)
    await ws.send_json({"type": "message", "text": "still there?"})
    closing = await recv(ws)
    assert closing["type"] == "error" and closing["code"] == "chat_closed"
    assert (await ws.receive(timeout=TIMEOUT)).type is aiohttp.WSMsgType.CLOSE
    await refused(api, token, "chat_closed")


async def test_chat_both_ways_with_an_agent(chat_api: Api) -> None:
    api, svc = chat_api, chat_api.services
    conv = await chat_conversation(api, "Анна")
    token = token_of(chat_link(svc, conv.id))
    customer = await api.client.ws_connect(f"/api/v1/chat/{token}/ws")
    snap = await recv(customer)
    assert snap["type"] == "snapshot" and snap["messages"] == []
    assert snap["conversation"]["state"] == "waiting" and snap["conversation"]["position"] == 1

    agent_token = await api.agent("agent1", queues=["support"], name="Мария Иванова")
    agent = await api.client.ws_connect("/api/v1/events", params={"token": agent_token})
    assert (await recv(agent))["type"] == "hello"

    await customer.send_json({"type": "message", "text": "Здравствуйте, где мой заказ?"})
    echo = await recv(customer, "message")
    assert echo["message"]["from"] == "customer" and echo["message"]["text"].startswith("Здрав")
    pop = await recv(agent, "screen_pop")
    assert pop["channel"] == "chat" and pop["conversation"]["id"] == conv.id
    status = await recv(customer, "status")
    assert status["conversation"]["state"] == "assigned"
    assert status["conversation"]["agent"] == "Мария Иванова"  # display name, not the login

    resp = await api.client.post(
        f"/api/v1/conversations/{conv.id}/messages",
        json={"text": "Добрый день! Смотрю."},
        headers=api.auth(agent_token),
    )
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["status"] == "delivered"
    reply = await recv(customer, "message")
    assert reply["message"] == {**reply["message"], "from": "agent", "agent": "Мария Иванова"}
    assert reply["message"]["text"] == "Добрый день! Смотрю."

    await customer.send_json({"type": "message", "text": "Спасибо"})
    live = await recv(agent, "message")
    assert (live["conversation_id"], live["channel"], live["text"]) == (conv.id, "chat", "Спасибо")
    second = await recv(customer, "message")
    await svc.history.add(
        HistoryEntry(conv.customer_id, "note", "chat", {"text": "internal: VIP"}, conv.id)
    )

    # Replies pushed while a window is between joining and its snapshot show once:
    # live, not in the snapshot (the Idempotency-Key path writes its row first).
    chat = api.client.app[CHAT]
    agent_id = (await (await api.client.get("/api/v1/me", headers=api.auth(agent_token))).json())[
        "id"
    ]
    window = chat.join(conv.id, token)
    me = Principal(agent_id, Role.AGENT)
    await svc.conversations.send_message(conv.id, me, "Минуту", idempotency_key="reply-1")
    await svc.conversations.send_message(conv.id, me, "Минуту")
    early = await chat.snapshot(conv, window)
    assert [m["text"] for m in early["messages"]][-1] == "Спасибо"
    assert window.queue.qsize() == 2
    chat.leave(window)
    for _ in range(2):
        assert (await recv(customer, "message"))["message"]["text"] == "Минуту"

    # A second window (or a reconnect) gets everything once, in order, and no notes.
    again = await api.client.ws_connect(f"/api/v1/chat/{token}/ws")
    snap = await recv(again, "snapshot")
    texts = [(m["from"], m["text"]) for m in snap["messages"]]
    assert texts == [
        ("customer", "Здравствуйте, где мой заказ?"),
        ("agent", "Добрый день! Смотрю."),
        ("customer", "Спасибо"),
        ("agent", "Минуту"),
        ("agent", "Минуту"),
    ]
    ids = [m["id"] for m in snap["messages"]]
    assert (
        len(set(ids)) == 5 and ids[0] == echo["message"]["id"] and ids[2] == second["message"]["id"]
    )
    state = await (await api.client.get(f"/api/v1/chat/{token}")).json()
    assert [m["text"] for m in state["messages"]] == [t for _, t in texts]
    assert "VIP" not in json.dumps(state, ensure_ascii=False)

    await svc.history.flush()
    events, _ = await timeline(svc.sessions, conv.customer_id, limit=50)
    kinds = [(e.kind, e.channel) for e in events if e.conversation_id == conv.id]
    assert kinds.count(("message_in", "chat")) == 2 and kinds.count(("message_out", "chat")) == 3
    for ws in (customer, again, agent):
        await ws.close()


async def test_place_in_line_while_waiting(chat_api: Api) -> None:
    api, svc = chat_api, chat_api.services
    first = await chat_conversation(api, "Первый", queue="sales")
    second = await chat_conversation(api, "Второй", queue="sales")
    await chat_conversation(api, "Другая очередь", queue="billing")
    body = await (
        await api.client.get(f"/api/v1/chat/{token_of(chat_link(svc, second.id))}")
    ).json()
    assert body["conversation"] == {**body["conversation"], "state": "waiting", "position": 2}
    assert body["conversation"]["agent"] is None
    body = await (await api.client.get(f"/api/v1/chat/{token_of(chat_link(svc, first.id))}")).json()
    assert body["conversation"]["position"] == 1


async def test_flood_size_and_bad_frames_get_error_frames(chat_api: Api) -> None:
    api, svc = chat_api, chat_api.services
    conv = await chat_conversation(api, "Анна")
    token = token_of(chat_link(svc, conv.id))
    ws = await api.client.ws_connect(f"/api/v1/chat/{token}/ws")
    await recv(ws, "snapshot")

    await ws.send_json({"type": "message", "text": "я" * 4097})
    too_large = await recv(ws)
    assert (too_large["type"], too_large["code"], too_large["max"]) == ("error", "too_large", 4096)
    await ws.send_str("{not json")
    assert (await recv(ws))["code"] == "invalid_json"
    await ws.send_json({"type": "hello", "text": "x"})
    assert (await recv(ws))["code"] == "invalid_message"
    await ws.send_json({"type": "message", "text": IMG})
    assert (await recv(ws, "message"))["message"]["text"] == IMG
    await ws.send_json({"type": "message", "text": "я" * 4096})  # exactly at the limit
    assert len((await recv(ws, "message"))["message"]["text"]) == 4096
    await ws.send_json({"type": "message", "text": "flood"})
    limited = await recv(ws)
    assert limited["type"] == "error" and limited["code"] == "rate_limited"
    assert limited["retry_after"] > 0
    await ws.send_str("ping")
    assert (await recv(ws))["type"] == "pong"  # the socket stays open

    # Only the two accepted messages are stored, the HTML as plain data.
    state = await (await api.client.get(f"/api/v1/chat/{token}")).json()
    assert [m["text"] for m in state["messages"]] == [IMG, "я" * 4096]

    # At most two sockets per link; a frame over the frame limit closes the socket.
    second = await api.client.ws_connect(f"/api/v1/chat/{token}/ws")
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await api.client.ws_connect(f"/api/v1/chat/{token}/ws")
    assert err.value.status == 429
    await second.send_str("x" * 70_000)
    closed = await second.receive(timeout=TIMEOUT)
    while closed.type is aiohttp.WSMsgType.TEXT:
        closed = await second.receive(timeout=TIMEOUT)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await ws.close()


async def test_link_in_an_sms_conversation_gets_replies_in_the_window(chat_api: Api) -> None:
    api, svc = chat_api, chat_api.services
    agent_id = (await svc.agents.create("agent2", "pw-agent2", name="Олег", role=Role.AGENT)).id
    conv = await svc.inbox.receive("sms", "+79035550101", "Хочу в чат")
    assert conv.channel == "sms" and conv.owner_id == agent_id
    token = token_of(chat_link(svc, conv.id))
    ws = await api.client.ws_connect(f"/api/v1/chat/{token}/ws")
    snap = await recv(ws, "snapshot")
    assert [m["text"] for m in snap["messages"]] == ["Хочу в чат"]
    assert snap["conversation"]["agent"] == "Олег"
    sent, _ = await svc.conversations.send_message(conv.id, Principal(agent_id, Role.AGENT), "Да")
    assert sent["status"] == "no_gateway"  # the SMS copy went to the sender behind the chat
    live = await recv(ws, "message")
    assert (live["message"]["from"], live["message"]["text"]) == ("agent", "Да")
    await ws.close()


async def test_deflected_chat_replies_by_sms_while_no_window_is_open(
    tmp_path: Path, smsc: Smsc
) -> None:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'sms.sqlite3'}",
        data_dir=tmp_path,
        secret_key="test-secret",
        history_flush_interval=0.01,
        smpp=(SmppLink("smpp1", "127.0.0.1", smsc.smpp_port, "cti", "secret"),),
    )
    app = create_app(settings)
    app.cleanup_ctx.append(sms_links())
    setup_webchat(app)  # after the SMS links, as in build_app
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        svc = app[SERVICES]
        agent = await svc.agents.create("olga", "pw-olga-1234", name="Ольга", queues=["support"])
        customer = await svc.customers.create("Анна", [])
        conv, _ = await svc.conversations.open(
            "chat", customer.id, queue="support", contact="+79161234567"
        )
        await svc.conversations.take(conv.id, agent.id)
        olga = Principal(agent.id, Role.AGENT)

        by_sms = "Ответ по SMS: окно чата закрыто"
        sent, _ = await svc.conversations.send_message(conv.id, olga, by_sms)
        assert sent["status"] not in ("stored", "delivered", "no_gateway"), sent

        async def submitted(text: str) -> bool:
            return any(s["text"] == text for s in smsc.recorded_submits())

        deadline = time.monotonic() + TIMEOUT
        while not await submitted(by_sms):
            assert time.monotonic() < deadline, "the SMSC never got the reply"
            await asyncio.sleep(0.1)

        token = token_of(chat_link(svc, conv.id))
        ws = await client.ws_connect(f"/api/v1/chat/{token}/ws")
        snap = await recv(ws, "snapshot")
        assert [m["text"] for m in snap["messages"]] == [by_sms]
        in_window = "Ответ в окне чата"
        sent, _ = await svc.conversations.send_message(conv.id, olga, in_window)
        assert sent["status"] == "delivered"
        assert (await recv(ws, "message"))["message"]["text"] == in_window
        await ws.close()
        await asyncio.sleep(1.0)  # an SMS would have been submitted by now
        assert not await submitted(in_window)
    finally:
        await client.close()


async def test_rate_limit_is_shared_in_redis_and_local_when_redis_is_down(
    redis_url: str,
) -> None:

    from cti.webchat.limiter import ChatRateLimiter
    from tests.peers.ports import free_port

    client = connect_redis(redis_url)
    token = f"token-{time.time_ns()}"
    try:
        node_a = ChatRateLimiter(0.01, 3, redis=client)
        node_b = ChatRateLimiter(0.01, 3, redis=client)
        waits = [await (node_a if i % 2 == 0 else node_b).take(token) for i in range(6)]
        assert waits[:3] == [0.0, 0.0, 0.0], waits  # one bucket of 3 for both "nodes"
        assert all(0 < w <= 100 for w in waits[3:]), waits
        assert await node_b.take(token + "-other") == 0.0  # each link has its own bucket
        keys = [k.decode() for k in await client.keys("cti:chat:rate:*")]
        assert keys and not any(token in k for k in keys)  # a token is a credential
        assert node_a.health() == {"kind": "webchat", "up": True, "rate_limits": "shared",
                                   "fallbacks": 0, "detail": ""}
    finally:
        await client.aclose()

    down = connect_redis(f"redis://127.0.0.1:{free_port()}/0", timeout=1)
    try:
        limiter = ChatRateLimiter(0.01, 2, redis=down)
        waits = [await limiter.take(token) for _ in range(3)]
        assert waits[:2] == [0.0, 0.0] and waits[2] > 0, waits  # chat goes on, limited here
        health = limiter.health()
        assert not health["up"] and health["rate_limits"] == "per_node", health
        assert health["fallbacks"] == 3 and "Redis unreachable" in health["detail"]
    finally:
        await down.aclose()
    single = ChatRateLimiter(0.01, 2)
    assert [await single.take(token) for _ in range(2)] == [0.0, 0.0]
    assert await single.take(token) > 0
    assert single.health()["up"] and single.health()["rate_limits"] == "per_node"
