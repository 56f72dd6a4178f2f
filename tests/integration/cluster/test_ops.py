"""Cluster-wide health: two ``cti serve`` nodes on one PostgreSQL and one Redis.

Both nodes publish their summary to Redis; ``GET /api/v1/health/cluster`` on
either lists both. Redis then stops for 10 s while both run: both nodes report
it in health; a pop published meanwhile (on A) is buffered and reaches
agent1's desk on B once Redis is back, once. Node B is killed with SIGKILL:
once its report's TTL runs out, A lists it ``down`` with its last-seen time
and the cluster is ``degraded``. With Redis stopped, A answers for itself
(degraded, with the reason); once it is back, A lists both again. Node logs
are JSON lines carrying their node id. One pair of nodes for all of it: their
start is most of the cost.

``test_health_publication_outlives_a_link_starting_mid_report``: in one
process, a node's health publication goes on when a link registers while its
probes are being read (as the web chat's did while a node started, on a
loaded box) and when one publication cannot be written.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from cti.cluster.health import NODE_KEY, NODE_TTL, PUBLISH_EVERY, _publish_loop
from cti.cluster.redis_client import connect_redis
from cti.config import Settings
from cti.services import Services
from tests.integration.cluster.conftest import OwnRedis
from tests.integration.cluster.nodes import (
    ADMIN,
    Desk,
    Node,
    close_all,
    node_env,
    start_pair,
    until,
)
from tests.integration.cluster.test_two_nodes import (
    fresh_database,
    seed_agents,
    sms_conversation,
)
from tests.peers.ports import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
async def json_nodes(tmp_path: Path) -> AsyncIterator[Callable[..., Node]]:
    """Nodes (not started) with JSON logs (``CTI_LOG_FORMAT=json``)."""
    started: list[Node] = []

    def make(name: str, db_url: str, redis_url: str) -> Node:
        port = free_port()
        env = {**node_env(name, port, db_url, redis_url), "CTI_LOG_FORMAT": "json"}
        node = Node(name, port, env, tmp_path / f"node-{name}.log")
        started.append(node)
        return node

    yield make
    await close_all(started)


async def cluster_health(node: Node) -> dict[str, Any]:
    http = await node.session()
    async with http.get("/api/v1/health/cluster") as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


def by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["node_id"]: entry for entry in body["nodes"]}


async def test_cluster_health_lists_both_nodes_and_a_killed_one_as_down(
    postgres_url: str, own_redis: OwnRedis, json_nodes: Callable[..., Node]
) -> None:
    db_url = fresh_database(postgres_url)
    node_a = json_nodes("A", db_url, own_redis.url)
    node_b = json_nodes("B", db_url, own_redis.url)
    await start_pair(node_a, node_b, db_url)

    async def both_listed_up() -> bool:
        for node in (node_a, node_b):
            listed = by_id(await cluster_health(node))
            if set(listed) != {"A", "B"} or any(e["status"] == "down" for e in listed.values()):
                return False
        return True

    await until("both nodes listed up on both nodes", both_listed_up, 30)
    body = await cluster_health(node_a)
    assert body["mode"] == "cluster" and (body["up"], body["down"]) == (2, 0), body
    b_entry = by_id(body)["B"]
    assert b_entry["links"]["redis"]["up"] is True and b_entry["links"]["database"]["up"] is True
    assert b_entry["started"].endswith("Z") and b_entry["holds"] == []
    assert "bus" in b_entry, b_entry

    await redis_outage(node_a, node_b, own_redis, db_url)

    node_b.kill9()
    killed = time.monotonic()

    async def b_down_on_a() -> bool:
        status: str = by_id(await cluster_health(node_a))["B"]["status"]
        return status == "down"

    await until("B reported down on A", b_down_on_a, 30)
    print(f"B reported down {time.monotonic() - killed:.1f} s after kill -9 "
          f"(report TTL {NODE_TTL} s, published every {PUBLISH_EVERY:g} s)")
    body = await cluster_health(node_a)
    b_entry = by_id(body)["B"]
    assert body["status"] == "degraded" and (body["up"], body["down"]) == (1, 1), body
    assert b_entry["last_seen"].endswith("Z") and b_entry["down_for_s"] >= 0, b_entry
    assert by_id(body)["A"]["status"] != "down"

    # Redis stopped: A answers for itself only, degraded, and says why; back: both again.
    await asyncio.to_thread(own_redis.stop)
    body = await cluster_health(node_a)
    assert body["status"] == "degraded" and [n["node_id"] for n in body["nodes"]] == ["A"]
    assert "Redis unreachable" in body["detail"], body
    await asyncio.to_thread(own_redis.start)

    async def a_up_b_down() -> bool:
        listed = by_id(await cluster_health(node_a))
        return (set(listed) == {"A", "B"} and listed["B"]["status"] == "down"
                and listed["A"]["links"]["redis"]["up"] is True)

    await until("A back on Redis, B still down", a_up_b_down, 30)

    # CTI_LOG_FORMAT=json: besides the "listening" banner on stdout, JSON lines with A's id.
    text = node_a.log.read_text()
    lines = [json.loads(line) for line in text.splitlines()
             if not line.startswith("CTI server listening")]
    assert lines and {line["node_id"] for line in lines} == {"A"}, text[-2000:]


async def redis_outage(node_a: Node, node_b: Node, own_redis: OwnRedis, db_url: str) -> None:
    """Redis stops for 10 s: both nodes say so; a pop made on A meanwhile reaches B once."""
    await seed_agents(node_a)
    await node_a.login("agent1", "agent1-password")
    await node_b.login("agent1", "agent1-password")
    desk1 = Desk("agent1")
    await desk1.connect(node_b)  # agent1 on B; the take below runs on A
    conv = await sms_conversation(db_url, "+79160000003", "While Redis is down")
    try:
        await asyncio.to_thread(own_redis.stop)
        stopped = time.monotonic()

        async def both_report_redis_down() -> bool:
            for node in (node_a, node_b):
                body = await node.health()
                cluster = body["links"]["cluster"]
                if body["status"] != "degraded" or cluster["redis"] != "down":
                    return False
            return True

        await until("both nodes reporting Redis down", both_report_redis_down, 15)
        status, body = await node_a.call(  # assigns it to agent1: a pop, published on A
            "POST", f"/api/v1/conversations/{conv}/transfer", node_a.tokens[ADMIN[0]],
            {"agent": "agent1"})
        assert status == 200, body
        pending = (await node_a.health())["links"]["cluster"]["bus"]["pending"]
        assert pending >= 1, "the pop waits in node A's outbox"
        await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - stopped)))
        await asyncio.to_thread(own_redis.start)
        pop = await desk1.next("screen_pop", within=30)
        assert pop["conversation"]["id"] == conv

        async def both_healthy() -> bool:
            for node in (node_a, node_b):
                cluster = (await node.health())["links"]["cluster"]
                if cluster["redis"] != "up" or cluster["bus"]["pending"] != 0:
                    return False
            return True

        await until("both nodes healthy with empty outboxes", both_healthy, 30)
        a_bus = (await node_a.health())["links"]["cluster"]["bus"]
        assert a_bus["dropped"] == 0, a_bus
        assert desk1.seen.count(pop) == 1
    finally:
        await desk1.close()


async def test_health_publication_outlives_a_link_starting_mid_report(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    services = Services(Settings(data_dir=tmp_path, secret_key="s", node_id="X"))
    services.redis = redis = connect_redis(own_redis.url)
    calls = 0

    async def late() -> dict[str, Any]:
        return {"kind": "late", "up": True}

    async def starting() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        services.links.register("late", late)  # another link starts meanwhile
        await asyncio.sleep(0)
        # The first report holds a value JSON cannot write: that publication fails.
        return {"kind": "starting", "up": True, "detail": {"not JSON"} if calls == 1 else ""}

    services.links.register("starting", starting)
    task = asyncio.create_task(_publish_loop(services, time.time()))
    try:
        async def published() -> bool:
            assert not task.done(), task  # the heartbeat must not die
            raw = await redis.get(NODE_KEY.format(node="X"))
            return raw is not None and "late" in json.loads(raw)["links"]

        await until("node X's summary with both links in Redis", published, 20)
        assert calls >= 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # a failure is asserted above
        await redis.aclose()
        await services.engine.dispose()
