"""Call control forwarded to the node holding the AMI link (cti.links.callcontrol).

Node B is a real app in cluster mode (real redis-server, SQLite); the lease of
its PBX is held by "node A" (the lease key written as A's lease would be), a
ClusterHub on the same Redis. No PBX is needed: what is checked here is the
forwarding and the mapping of the holder's answers, not the AMI actions
(tests/integration/cluster/test_callcontrol_nodes.py runs them on the lab PBX).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cti.app import create_app
from cti.cluster.hub import ClusterHub
from cti.cluster.lease import LEASE_KEY
from cti.cluster.node import setup_cluster
from cti.cluster.redis_client import connect_redis
from cti.config import AmiServer, BootstrapAdmin, Settings
from cti.keys import SERVICES
from cti.links import callcontrol
from cti.links.callcontrol import KIND, answer_forwarded, setup_call_control
from cti.links.pbx import setup_pbx_links
from tests.peers.ports import free_port

ADMIN = ("admin", "admin-password")


@dataclass
class Pair:
    client: TestClient[Any, Any]
    hub_a: ClusterHub
    redis: aioredis.Redis
    pbx: str
    token: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def hold(self, node: str | None) -> None:
        key = LEASE_KEY.format(duty=f"pbx:{self.pbx}")
        if node is None:
            await self.redis.delete(key)
        else:
            await self.redis.set(key, f"{node}:7", px=120_000)

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None
                   ) -> tuple[int, Any]:
        resp = await self.client.request(method, path, json=body,
                                         headers={"Authorization": f"Bearer {self.token}"})
        return resp.status, await resp.json()


@pytest.fixture
async def pair(redis_url: str, tmp_path: Path) -> AsyncIterator[Pair]:
    pbx = f"fw{uuid.uuid4().hex[:8]}"
    redis = connect_redis(redis_url)
    hub_a = ClusterHub(f"A-{pbx}")
    pair = Pair(None, hub_a, redis, pbx)  # type: ignore[arg-type]
    await pair.hold(hub_a.node_id)  # before B starts: B's lease sees A's and waits
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}", data_dir=tmp_path,
        secret_key="test-secret", bootstrap_admin=BootstrapAdmin(*ADMIN), redis_url=redis_url,
        node_id=f"B-{pbx}",
        ami=(AmiServer(pbx, "127.0.0.1", free_port(), "u", "s"),),  # nobody listens
    )
    app = create_app(settings)
    setup_pbx_links(app)
    setup_cluster(app)
    setup_call_control(app)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    pair.client = client
    await hub_a.start(redis)
    try:
        resp = await client.post("/api/v1/auth/token", json=dict(zip(("login", "password"),
                                                                      ADMIN, strict=True)))
        admin = (await resp.json())["token"]
        resp = await client.post("/api/v1/agents", headers={"Authorization": f"Bearer {admin}"},
                                 json={"login": "fw1", "password": "fw1-password",
                                       "name": "Агент <b>1</b>", "endpoint": "PJSIP/fw1"})
        assert resp.status == 201, await resp.text()
        resp = await client.post("/api/v1/auth/token",
                                 json={"login": "fw1", "password": "fw1-password"})
        pair.token = (await resp.json())["token"]
        deadline = time.monotonic() + 20
        hub_b = app[SERVICES].hub
        assert isinstance(hub_b, ClusterHub)
        while not (hub_a.live_subscribed and hub_b.live_subscribed):
            assert time.monotonic() < deadline, "hub A not on the live channel"
            await asyncio.sleep(0.05)
        yield pair
    finally:
        await client.close()
        await hub_a.stop()
        await redis.delete(LEASE_KEY.format(duty=f"pbx:{pbx}"))
        await redis.aclose()


def recording(pair: Pair, reply: dict[str, Any] | None, delay: float = 0.0) -> None:
    async def handler(body: dict[str, Any]) -> dict[str, Any] | None:
        if body.get("to") == pair.hub_a.node_id or body.get("op") == "status":
            pair.seen.append(body)
        await asyncio.sleep(delay)
        return reply

    pair.hub_a.on_live(KIND, handler)


async def test_the_holders_answer_is_returned_unchanged(pair: Pair) -> None:
    # The real holder-side handler on A, which has no link: its 503 comes back as is.
    app_a = web.Application()
    node_a = pair.hub_a.node_id

    async def real(body: dict[str, Any]) -> dict[str, Any]:
        return await answer_forwarded(app_a, node_a, body)

    pair.hub_a.on_live(KIND, real)
    status, body = await pair.call("POST", "/api/v1/agents/me/pause", {"paused": True})
    assert status == 503, body
    assert body["error"] == {"code": "pbx_unavailable",
                             "message": f"node {node_a} no longer holds the AMI link to "
                                        f"{pair.pbx}", "details": {"pbx": pair.pbx}}

    # A domain error and a result from the holder: same status, same JSON; the actor sent.
    error = {"error": {"code": "forbidden", "message": "this is not your call",
                       "details": {"call_id": f"{pair.pbx}:1.2"}}}
    recording(pair, {"status": 403, "body": error})
    status, body = await pair.call("POST", f"/api/v1/calls/{pair.pbx}:1.2/hangup")
    assert (status, body) == (403, error)
    [sent] = pair.seen
    assert sent["op"] == "hangup" and sent["pbx"] == pair.pbx and sent["to"] == node_a
    assert sent["args"] == {"call_id": f"{pair.pbx}:1.2"}
    assert sent["actor"]["endpoint"] == "PJSIP/fw1" and sent["actor"]["role"] == "agent"
    assert sent["actor"]["name"] == "Агент <b>1</b>"

    pair.seen.clear()
    recording(pair, {"status": 200, "body": {"pbx": pair.pbx}})
    status, body = await pair.call("POST", "/api/v1/agents/me/pause",
                                   {"paused": True, "reason": "обед"})
    assert status == 200, body
    assert body == {"endpoint": "PJSIP/fw1", "paused": True, "reason": "обед", "queue": None,
                    "pbx": [pair.pbx]}
    assert pair.seen[0]["args"] == {"paused": True, "reason": "обед", "queue": None}

    # Bad input is refused on B, before anything is forwarded.
    pair.seen.clear()
    status, body = await pair.call("POST", "/api/v1/calls", {"number": "12; drop"})
    assert status == 422 and body["error"]["details"]["field"] == "number", body
    assert pair.seen == []


async def test_status_merged_from_the_holder(pair: Pair) -> None:
    queue = {"pbx": pair.pbx, "queue": "support", "paused": True, "reason": "обед",
             "device_state": "NOT_INUSE", "in_call": False, "calls_taken": 3}
    recording(pair, {"endpoint": "PJSIP/fw1", "paused": True, "reason": "обед",
                     "queues": [queue], "pbx": [pair.pbx]})
    status, body = await pair.call("GET", "/api/v1/agents/me/status")
    assert status == 200, body
    assert body == {"endpoint": "PJSIP/fw1", "paused": True, "reason": "обед",
                    "queues": [queue], "pbx": [pair.pbx]}
    recording(pair, {"skip": True})  # nobody holds it: listed as unavailable
    status, body = await pair.call("GET", "/api/v1/agents/me/status")
    assert status == 200, body
    assert body == {"endpoint": "PJSIP/fw1", "paused": False, "reason": "", "queues": [],
                    "pbx": [], "unavailable": [pair.pbx]}


async def test_no_holder_or_no_answer(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    await pair.hold(None)
    status, body = await pair.call("POST", "/api/v1/calls", {"number": "100"})
    assert status == 503 and body["error"]["code"] == "pbx_unavailable", body
    assert "no node holds the AMI link" in body["error"]["message"]

    # The lease names a node that is not on the live channel: nothing was sent, 503
    # as soon as every node on the channel said "not me" (the message says so only
    # when the wait ended before the 45 s deadline).
    await pair.hold("C-gone")
    recording(pair, {"skip": True})
    status, body = await pair.call("POST", "/api/v1/calls", {"number": "100"})
    assert status == 503 and "is not on the live channel" in body["error"]["message"], body

    # The holder got the Originate and does not answer in time: 504, never re-sent.
    await pair.hold(pair.hub_a.node_id)
    monkeypatch.setitem(callcontrol.WITHIN, "dial", 1.5)
    recording(pair, {"status": 201, "body": {}}, delay=4.0)
    status, body = await pair.call("POST", "/api/v1/calls", {"number": "100"})
    assert status == 504 and body["error"]["code"] == "pbx_unknown_outcome", body
    assert "not re-sent" in body["error"]["message"]
    assert len(pair.seen) == 1 and pair.seen[0]["op"] == "dial"
