"""Two ``cti serve`` nodes answer the same whichever one a client talks to.

Node A holds the lab PBX's AMI link, node B does not. One test, one pair of
nodes (their start is most of the cost):

- a softphone (a WebSocket that identifies as ``client=softphone``, as
  ``cti phone`` does) linked to A gets the command that agent1's desk posts to
  B; B counts it and says which node delivered it; B reports the softphone in
  ``GET /api/v1/agents/me/phone``; a user with no softphone anywhere gets 409;
- the same chat link open on A and on B: frames sent alternately through both
  share one rate limit (burst 10: per-node buckets would pass all 16), and
  each customer message reaches the window on the other node; a reply an
  agent sends through A reaches a window open only on B (``delivered``), as
  does the assignment status;
- a SIPp caller waiting in the sales queue (no agent logged in): the admin's
  wallboard on B (REST and live socket) shows the same queue as on A; once
  the PBX hangs the caller up, neither board shows it.

``test_live_channel_between_hubs``: the live channel itself between two
ClusterHubs in one process: replies from the other node only, none asked with
``within=0``, a stale message dropped, ``None`` while Redis is stopped, and
the channel back after Redis restarts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cti.cluster.hub import LIVE_CHANNEL, ClusterHub
from cti.cluster.redis_client import connect_redis
from cti.config import Settings
from cti.lab import LabPbx
from cti.links.pbx import ami_url
from cti.services import Services
from cti.webchat.tokens import ChatTokenSigner
from tests.integration.cluster.conftest import OwnRedis
from tests.integration.cluster.nodes import (
    ADMIN,
    SECRET,
    Node,
    close_all,
    node_env,
    start_pair,
    until,
)
from tests.integration.cluster.test_two_nodes import fresh_database
from tests.peers.asterisk import hangup_caller
from tests.peers.ports import free_port
from tests.peers.sipp import caller_call

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FRAMES = 16
BURST, PER_SECOND = 10, 0.5  # ChatLimits' defaults, what `cti serve` runs with


async def chat_conversations(db_url: str, count: int) -> list[int]:
    """Web chat conversations queued in support, written to the shared database."""
    services = Services(Settings(db_url=db_url, secret_key=SECRET))
    await services.start()
    try:
        customer = await services.customers.create("Клиент чата", [])
        return [(await services.conversations.open("chat", customer.id, queue="support"))[0].id
                for _ in range(count)]
    finally:
        await services.stop()


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Callable[..., Node]]:
    started: list[Node] = []

    def make(name: str, db_url: str, redis_url: str, ami: str) -> Node:
        port = free_port()
        node = Node(name, port, node_env(name, port, db_url, redis_url, ami),
                    tmp_path / f"node-{name}.log")
        started.append(node)
        return node

    yield make
    await close_all(started)


async def frame(ws: aiohttp.ClientWebSocketResponse, accept: Callable[[dict[str, Any]], bool],
                within: float = 20.0, seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching frame within {within:g} s")
        msg = await ws.receive(timeout=left)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        data: dict[str, Any] = json.loads(msg.data)
        if seen is not None:
            seen.append(data)
        if accept(data):
            return data


async def test_same_behaviour_on_both_nodes(
    postgres_url: str, own_redis: OwnRedis, lab_pbx: LabPbx, nodes: Callable[..., Node],
    tmp_path: Path,
) -> None:
    db_url = fresh_database(postgres_url)
    ami = ami_url(lab_pbx.host, lab_pbx.ami_port, lab_pbx.ami_user, lab_pbx.ami_secret)
    node_a = nodes("A", db_url, own_redis.url, ami)
    node_b = nodes("B", db_url, own_redis.url, ami)

    async def a_holds_the_link() -> bool:
        links = (await node_a.health())["links"]
        return links["cluster"]["holds"] == ["pbx1"] and bool(links["pbx:pbx1"]["up"])

    await start_pair(node_a, node_b, db_url, a_first=a_holds_the_link,
                     what="node A holding pbx1")
    assert (await node_b.health())["links"]["cluster"]["holds"] == []

    # Tokens are signed with the cluster's shared secret: one login serves both nodes.
    admin_a = admin_b = await node_a.login(*ADMIN)
    status, body = await node_a.call("POST", "/api/v1/agents", admin_a, {
        "login": "agent1", "password": "agent1-password", "name": "agent1",
        "endpoint": "PJSIP/agent1"})
    assert status == 201, body
    agent1_a = agent1_b = await node_b.login("agent1", "agent1-password")
    http_a, http_b = await node_a.session(), await node_b.session()

    # -- softphone on A, command posted to B -------------------------------------
    phone = await http_a.ws_connect("/api/v1/events",
                                    params={"token": agent1_a, "client": "softphone"})
    try:
        await frame(phone, lambda d: d.get("type") == "hello")

        async def b_sees_the_softphone() -> bool:
            status, body = await node_b.call("GET", "/api/v1/agents/me/phone", agent1_b)
            assert status == 200, body
            return bool(body["softphones"] == 1)

        await until("node B counting agent1's softphone on A", b_sees_the_softphone, 20)
        status, body = await node_b.call("POST", "/api/v1/agents/me/phone", agent1_b,
                                         {"action": "dtmf", "digits": "12#"})
        assert status == 202, body
        assert body["delivered"] == 1 and body["nodes"] == ["A"], body
        command = await frame(phone, lambda d: d.get("type") == "phone_command")
        assert command == {"type": "phone_command", "action": "dtmf", "digits": "12#",
                           "id": body["id"]}
        # Figures, not assertions: command round trip posted to B vs to A (same node).
        took: dict[str, list[float]] = {"A": [], "B": []}
        for _ in range(5):
            for node, token in ((node_a, agent1_a), (node_b, agent1_b)):
                started = time.perf_counter()
                status, body = await node.call("POST", "/api/v1/agents/me/phone", token,
                                               {"action": "hold"})
                took[node.name].append(time.perf_counter() - started)
                assert status == 202 and body["delivered"] == 1, body
                await frame(phone, lambda d, i=body["id"]: d.get("id") == i)
        med = {name: sorted(v)[2] * 1000 for name, v in took.items()}
        print(f"phone command POST -> 202, softphone on A: via A {med['A']:.1f} ms, "
              f"via B {med['B']:.1f} ms (median of 5; ratio {med['B'] / med['A']:.1f})")
        status, body = await node_b.call("POST", "/api/v1/agents/me/phone", admin_b,
                                         {"action": "answer"})
        assert status == 409 and body["error"]["code"] == "no_softphone", body
    finally:
        await phone.close()

    # -- one chat link open on both nodes: one rate limit ------------------------
    conv, other = await chat_conversations(db_url, 2)
    signer = ChatTokenSigner(SECRET, 3600)
    token = signer.issue(conv)
    chat_a = await http_a.ws_connect(f"/api/v1/chat/{token}/ws")
    chat_b = await http_b.ws_connect(f"/api/v1/chat/{token}/ws")
    only_b = await http_b.ws_connect(f"/api/v1/chat/{signer.issue(other)}/ws")
    passed: list[str] = []
    rejected = 0
    seen_on_b: list[dict[str, Any]] = []
    try:
        for ws in (chat_a, chat_b):
            await frame(ws, lambda d: d.get("type") == "snapshot")
        started = time.monotonic()
        for i in range(FRAMES):
            ws = chat_a if i % 2 == 0 else chat_b
            text = f"сообщение {i}"
            await ws.send_json({"type": "message", "text": text})
            answer = await frame(ws, lambda d, t=text: d.get("type") == "error" or (
                d.get("type") == "message" and d["message"]["text"] == t),
                seen=seen_on_b if ws is chat_b else None)
            if answer["type"] == "error":
                assert answer["code"] == "rate_limited", answer
                rejected += 1
            else:
                passed.append(text)
        elapsed = time.monotonic() - started
        allowed = BURST + int(elapsed * PER_SECOND) + 1
        print(f"chat frames through two nodes: {len(passed)} passed, {rejected} rate-limited "
              f"in {elapsed:.1f} s (one shared bucket allows <= {allowed}; "
              f"per-node buckets would pass {FRAMES})")
        assert rejected >= 1 and len(passed) <= allowed, (passed, rejected, elapsed)
        # The last message that passed through A reached the window on B too.
        last_a = next(t for t in reversed(passed) if int(t.split()[-1]) % 2 == 0)
        if not any(d.get("type") == "message" and d["message"]["text"] == last_a
                   for d in seen_on_b):
            await frame(chat_b, lambda d: d.get("type") == "message"
                        and d["message"]["text"] == last_a)
        # A window open on B only; the agent takes the chat and replies through A.
        await frame(only_b, lambda d: d.get("type") == "snapshot")
        status, body = await node_a.call("POST", f"/api/v1/conversations/{other}/take",
                                         agent1_a)
        assert status == 200, body
        await frame(only_b, lambda d: d.get("type") == "status"
                    and d["conversation"]["agent"] == "agent1")
        status, body = await node_a.call("POST", f"/api/v1/conversations/{other}/messages",
                                         agent1_a, {"text": "Ответ <b>агента</b>"})
        assert status == 201 and body["status"] == "delivered", body  # "stored" if unseen
        reply = await frame(only_b, lambda d: d.get("type") == "message")
        assert reply["message"]["from"] == "agent"
        assert reply["message"]["text"] == "Ответ <b>агента</b>"
        health = (await node_b.health())["links"]["webchat"]
        assert health["rate_limits"] == "shared" and health["up"], health
    finally:
        await chat_a.close()
        await chat_b.close()
        await only_b.close()

    # -- a caller waits in sales: the same board on both nodes -------------------
    board = await http_b.ws_connect("/api/v1/events", params={"token": admin_b})
    number = "+79160000012"
    caller = caller_call(lab_pbx, tmp_path / "sipp", number="200", caller_number=number,
                         caller_name="Ждущий", hangup_after=None, timeout=120)
    try:
        async def sales(node: Node, token: str) -> dict[str, Any] | None:
            status, body = await node.call("GET", "/api/v1/wallboard", token)
            assert status == 200, body
            assert "unavailable" not in body, body
            return next((q for q in body["queues"] if q["name"] == "sales"), None)

        async def both_show_the_caller() -> bool:
            for node, token in ((node_a, admin_a), (node_b, admin_b)):
                queue = await sales(node, token)
                if queue is None or queue["waiting"] != 1:
                    return False
            return True

        await until("the waiting caller on both wallboards", both_show_the_caller, 40)
        on_a, on_b = await sales(node_a, admin_a), await sales(node_b, admin_b)
        assert on_a is not None and on_b is not None
        for key in ("pbx", "waiting", "agents", "members", "completed", "abandoned"):
            assert on_a[key] == on_b[key], (key, on_a, on_b)
        assert on_b["waits"][0] > 0 and on_b["longest_wait"] > 0, on_b
        live = await frame(board, lambda d: d.get("type") == "wallboard" and any(
            q["name"] == "sales" and q["waiting"] == 1 for q in d["queues"]), within=30)
        assert live["queues"] and "seq" not in live

        # The PBX ends the call (SIPp gets its BYE): the caller leaves both boards.
        await hangup_caller(lab_pbx, number)
        result = await caller.wait_async(30)
        assert result.ok, result

        async def both_show_no_caller() -> bool:
            for node, token in ((node_a, admin_a), (node_b, admin_b)):
                queue = await sales(node, token)
                if queue is None or queue["waiting"] != 0:
                    return False
            return True

        await until("the caller gone from both wallboards", both_show_no_caller, 40)
    finally:
        caller.stop()  # a no-op once the call ended; only a failed test gets here with it
        await board.close()


async def test_live_channel_between_hubs(own_redis: OwnRedis) -> None:
    redis = connect_redis(own_redis.url)
    hub_a, hub_b = ClusterHub("A"), ClusterHub("B")
    got: list[dict[str, Any]] = []

    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        got.append(body)
        return {"n": body["n"]}

    hub_a.on_live("echo", echo)
    hub_b.on_live("echo", echo)
    await hub_a.start(redis)
    await hub_b.start(redis)
    try:
        async def subscribed() -> bool:
            return hub_a.live_subscribed and hub_b.live_subscribed

        await until("both hubs on the live channel", subscribed, 20)
        assert await hub_a.request_live("echo", {"n": 1}) == [{"node": "B", "n": 1}]
        assert got == [{"n": 1}]  # the sender does not run its own handler
        assert await hub_b.request_live("echo", {"n": 2}, within=0) == []
        stale = json.dumps({"kind": "echo", "node": "C", "id": "x", "ts": time.time() - 60,
                            "body": {"n": 3}})
        await redis.publish(LIVE_CHANNEL, stale)

        async def both_got_two() -> bool:
            return got.count({"n": 2}) == 1 and hub_a.live_dropped + hub_b.live_dropped == 2

        await until("the no-ack message handled, the stale one dropped", both_got_two, 20)
        assert {"n": 3} not in got
        await asyncio.to_thread(own_redis.stop)
        assert await hub_a.request_live("echo", {"n": 4}) is None
        await asyncio.to_thread(own_redis.start)
        async def answered_again() -> bool:
            return await hub_b.request_live("echo", {"n": 5}) == [{"node": "A", "n": 5}]

        await until("A answering B again after Redis restarted", answered_again, 30)
    finally:
        await hub_a.stop()
        await hub_b.stop()
        await redis.aclose()
