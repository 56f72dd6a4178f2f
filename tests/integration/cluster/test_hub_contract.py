"""The same publish/seq/resume contract on the local EventHub and the Redis ClusterHub."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from cti.cluster.hub import ClusterHub
from cti.cluster.redis_client import connect_redis
from cti.hub import EventHub, Subscription
from tests.integration.cluster.conftest import OwnRedis

pytestmark = pytest.mark.integration
WAIT = 10.0
_dbs = itertools.count(1)

HubFactory = Callable[[str], Awaitable[EventHub]]


async def next_message(sub: Subscription) -> dict[str, Any]:
    text = await asyncio.wait_for(sub.queue.get(), WAIT)
    data: dict[str, Any] = json.loads(text)
    return data


async def no_message(sub: Subscription, within: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sub.queue.get(), within)


@pytest.fixture(params=["local", "cluster"])
async def hub_factory(request: pytest.FixtureRequest) -> AsyncIterator[HubFactory]:
    """Builds hubs of one kind; cluster hubs of one test share a fresh Redis database."""
    clients: list[aioredis.Redis] = []
    hubs: list[ClusterHub] = []
    url = ""
    if request.param == "cluster":
        base: str = request.getfixturevalue("redis_url")
        url = base.rsplit("/", 1)[0] + f"/{next(_dbs) % 12 + 1}"
        client = aioredis.from_url(url)
        await client.flushdb()
        clients.append(client)

    async def make(node: str) -> EventHub:
        if request.param == "local":
            return EventHub(replay=50, queue_size=64)
        client = connect_redis(url)
        clients.append(client)
        hub = ClusterHub(node, replay=50, queue_size=64)
        await hub.start(client, block_ms=200)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.stop()
    for client in clients:
        await client.aclose()


async def test_publish_reaches_only_the_addressed_agents_in_seq_order(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory("A")
    one, two = hub.subscribe(1, None), hub.subscribe(2, None)
    hub.publish([1], "screen_pop", {"n": 1})
    hub.publish([1, 2], "note", {"n": 2})
    hub.publish([2], "note", {"n": 3})
    a1, a2 = await next_message(one), await next_message(one)
    b2, b3 = await next_message(two), await next_message(two)
    assert (a1["type"], a1["n"], a2["n"], b2["n"], b3["n"]) == ("screen_pop", 1, 2, 2, 3)
    assert a1["seq"] < a2["seq"] == b2["seq"] < b3["seq"]
    await no_message(one)


async def test_resume_by_seq_gives_the_missed_events_once(hub_factory: HubFactory) -> None:
    hub = await hub_factory("A")
    first = hub.subscribe(7, None)
    hub.publish([7], "e", {"n": 1})
    seen = await next_message(first)
    hub.unsubscribe(first)
    for n in (2, 3, 4):
        hub.publish([7], "e", {"n": n})
    probe = hub.subscribe(99, None)  # waits until the bus delivered the three (cluster)
    hub.publish([99], "probe", {})
    await next_message(probe)
    resumed = hub.subscribe(7, seen["seq"])
    got = [await next_message(resumed) for _ in range(3)]
    assert [m["n"] for m in got] == [2, 3, 4]
    await no_message(resumed)
    assert hub.seq >= got[-1]["seq"]


@pytest.fixture
async def two_nodes(redis_url: str) -> AsyncIterator[tuple[ClusterHub, ClusterHub]]:
    url = redis_url.rsplit("/", 1)[0] + "/14"
    client = connect_redis(url)
    await client.flushdb()
    node_a, node_b = ClusterHub("A"), ClusterHub("B")
    await node_a.start(client, block_ms=200)
    await node_b.start(client, block_ms=200)
    yield node_a, node_b
    await node_a.stop()
    await node_b.stop()
    await client.aclose()


async def test_cluster_agent_resumes_on_another_node(
    two_nodes: tuple[ClusterHub, ClusterHub],
) -> None:
    node_a, node_b = two_nodes
    assert node_a.epoch == node_b.epoch
    on_a = node_a.subscribe(5, None)
    node_b.publish([5], "e", {"n": 1})  # published on B, delivered on A
    first = await next_message(on_a)
    node_a.unsubscribe(on_a)
    for n in (2, 3):
        node_a.publish([5], "e", {"n": n})
    watcher = node_b.subscribe(6, None)
    node_a.publish([6], "probe", {})
    await next_message(watcher)
    on_b = node_b.subscribe(5, first["seq"])
    assert [(await next_message(on_b))["n"] for _ in range(2)] == [2, 3]
    node_a.publish([5], "e", {"n": 4})
    live = await next_message(on_b)
    assert live["n"] == 4
    await no_message(on_b)


async def test_a_restarted_node_replays_the_retained_tail(redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/15"
    client = connect_redis(url)
    await client.flushdb()
    try:
        early = ClusterHub("A")
        await early.start(client, block_ms=200)
        watch = early.subscribe(3, None)
        for n in range(5):
            early.publish([3], "e", {"n": n})
        got = [await next_message(watch) for _ in range(5)]
        await early.stop()
        later = ClusterHub("B")  # a node that was not running: backfills the tail
        await later.start(client, block_ms=200)
        resumed = later.subscribe(3, got[1]["seq"])
        assert [(await next_message(resumed))["n"] for _ in range(3)] == [2, 3, 4]
        await later.stop()
    finally:
        await client.aclose()


async def test_events_published_while_redis_is_down_are_delivered_once_it_is_back(
    own_redis: OwnRedis,
) -> None:
    client = connect_redis(own_redis.url, timeout=1)
    hub = ClusterHub("A")
    await hub.start(client, block_ms=200)
    try:
        sub = hub.subscribe(1, None)
        hub.publish([1], "e", {"n": 0})
        assert (await next_message(sub))["n"] == 0
        await asyncio.to_thread(own_redis.stop)
        for n in range(1, 4):
            hub.publish([1], "e", {"n": n})
        assert hub.bus is not None
        for _ in range(int(WAIT / 0.05)):  # the writer notices at its next attempt
            if not hub.bus.stats().up:
                break
            await asyncio.sleep(0.05)
        assert not hub.bus.stats().up and hub.bus.stats().pending == 3
        await no_message(sub)
        await asyncio.to_thread(own_redis.start)
        got = [await next_message(sub) for _ in range(3)]
        assert [m["n"] for m in got] == [1, 2, 3]
        await no_message(sub)
        assert hub.bus.stats().pending == 0 and hub.bus.stats().dropped == 0
    finally:
        await hub.stop()
        await client.aclose()
