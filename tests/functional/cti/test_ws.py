"""WebSocket /api/v1/events: screen-pop from a PBX change, seq resume, auth; Redis health."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from cti.app import create_app
from cti.config import Settings
from cti.keys import SERVICES
from pbx.changes import CallOffered, CallQueued
from tests.functional.cti.conftest import Api

pytestmark = pytest.mark.integration
TIMEOUT = 20


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)  # type: ignore[no-any-return]


async def test_screen_pop_reaches_the_offered_agent(api: Api) -> None:
    t1 = await api.agent("agent1", "PJSIP/agent1")
    t2 = await api.agent("agent2", "PJSIP/agent2")
    resp = await api.client.post(
        "/api/v1/customers",
        json={"name": "Иван Петров", "phones": ["8 916 123-45-67"]},
        headers=api.auth(t1),
    )
    card = await resp.json()
    ws1 = await api.client.ws_connect("/api/v1/events", params={"token": t1})
    ws2 = await api.client.ws_connect("/api/v1/events")
    await ws2.send_json({"type": "auth", "token": t2})
    hello1, hello2 = await recv(ws1), await recv(ws2)
    assert hello1["type"] == hello2["type"] == "hello" and hello1["epoch"] == hello2["epoch"]

    call = "pbx1:1700000000.7"
    await api.services.calls.handle(
        CallQueued("pbx1", call, "support", 1, "+79161234567", "IVAN", 1_700_000_000.0)
    )
    await api.services.calls.handle(
        CallOffered(
            "pbx1",
            call,
            "support",
            "PJSIP/agent1",
            "+79161234567",
            "IVAN",
            "100",
            3.5,
            1_700_000_003.5,
        )
    )
    pop = await recv(ws1)
    assert pop["type"] == "screen_pop" and pop["channel"] == "voice" and pop["seq"] > 0
    assert pop["customer"]["id"] == card["id"] and pop["customer"]["name"] == "Иван Петров"
    assert pop["conversation"]["external_ref"] == call
    assert pop["interaction"] == {
        "queue": "support",
        "wait": 3.5,
        "dialled": "100",
        "caller": "+79161234567",
        "caller_name": "IVAN",
        "call_id": call,
        "pbx": "pbx1",
    }
    await ws2.send_str("ping")
    assert (await recv(ws2))["type"] == "pong"  # agent2 got no pop before the pong
    await ws1.close()
    await ws2.close()


async def test_reconnect_with_last_seq_gets_what_was_missed(api: Api) -> None:
    token = await api.agent("agent1", "PJSIP/agent1")
    hub = api.services.hub
    me = (await (await api.client.get("/api/v1/me", headers=api.auth(token))).json())["id"]
    ws = await api.client.ws_connect("/api/v1/events", params={"token": token})
    await recv(ws)
    first = [hub.publish([me], "note", {"n": n}) for n in range(2)]
    got = [await recv(ws) for _ in first]
    assert [m["seq"] for m in got] == first
    await ws.close()
    missed = [hub.publish([me], "note", {"n": n}) for n in range(2, 5)]
    hub.publish([me + 1000], "note", {"n": -1})  # someone else's
    ws = await api.client.ws_connect("/api/v1/events")
    await ws.send_json({"type": "auth", "token": token, "last_seq": got[-1]["seq"]})
    assert (await recv(ws))["type"] == "hello"
    replay = [await recv(ws) for _ in missed]
    assert [(m["seq"], m["n"]) for m in replay] == list(zip(missed, [2, 3, 4], strict=True))
    live = hub.publish([me], "note", {"n": 5})
    assert (await recv(ws))["seq"] == live
    await ws.close()


async def test_bad_tokens_are_refused(api: Api) -> None:
    for params in ({"token": "forged.token"}, {"token": ""}):
        ws = await api.client.ws_connect("/api/v1/events", params=params)
        err = await recv(ws)
        assert err["type"] == "error" and err["error"]["code"] == "unauthorized"
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 4001
    ws = await api.client.ws_connect("/api/v1/events")
    await ws.send_str("not json")
    assert (await recv(ws))["type"] == "error"


async def test_health_reports_redis(settings: Settings, redis_url: str) -> None:
    app = create_app(dataclasses.replace(settings, redis_url=redis_url))
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        body = await (await client.get("/api/v1/health")).json()
        assert body["status"] == "ok"
        assert body["links"]["redis"]["up"] is True
        assert body["links"]["database"]["up"] is True
        assert app[SERVICES].redis is not None
    finally:
        await client.close()


async def test_health_reports_each_pbx_from_link_changes(settings: Settings) -> None:
    from cti.config import parse_ami_url
    from pbx.changes import PbxLinkChanged

    two = (
        parse_ami_url("ami://u:s@127.0.0.1:5038", pbx="north"),
        parse_ami_url("ami://u:s@127.0.0.1:5039", pbx="south"),
    )
    app = create_app(dataclasses.replace(settings, ami=two))
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        await app[SERVICES].calls.handle(PbxLinkChanged("north", True, "connected", False, 1.0))
        resp = await client.get("/api/v1/health")
        body = await resp.json()
        assert body["status"] == "degraded"
        assert body["links"]["pbx:north"]["up"] is True
        assert body["links"]["pbx:south"]["up"] is False
        assert "s@" not in json.dumps(body)
    finally:
        await client.close()


async def test_slow_socket_is_dropped_and_resumes(api: Api) -> None:
    token = await api.agent("agent1")
    hub = api.services.hub
    me = (await (await api.client.get("/api/v1/me", headers=api.auth(token))).json())["id"]
    slow = await api.client.ws_connect("/api/v1/events", params={"token": token})
    await recv(slow)
    seqs = [hub.publish([me], "note", {"n": n}) for n in range(200)]  # no await: queue floods
    msg = await slow.receive(timeout=TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.CLOSE and slow.close_code == 4008
    ws = await api.client.ws_connect("/api/v1/events", params={"token": token, "last_seq": "0"})
    assert (await recv(ws))["type"] == "hello"
    first = await recv(ws)
    assert first["type"] == "resync"  # more was missed than the replay buffer holds
    rest = [await recv(ws) for _ in range(50)]
    assert [m["seq"] for m in rest] == seqs[-50:]
    await ws.close()
