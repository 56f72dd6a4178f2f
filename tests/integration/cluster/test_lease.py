"""Leases on a real Redis: one holder, increasing fencing tokens, loss and hand-over."""

from __future__ import annotations

import asyncio
import random

import pytest

from cti.cluster.bus import decode_entry
from cti.cluster.lease import LEASE_KEY, Lease
from cti.cluster.redis_client import connect_redis

pytestmark = pytest.mark.integration


async def test_one_holder_then_takeover_with_a_larger_token(redis_url: str) -> None:
    client = connect_redis(redis_url.rsplit("/", 1)[0] + "/13")
    await client.flushdb()
    log: list[str] = []

    def lease(node: str) -> Lease:
        async def acquire(token: int) -> None:
            log.append(f"{node}+{token}")

        async def lose() -> None:
            log.append(f"{node}-")

        return Lease(client, "pbx:t", node, on_acquire=acquire, on_lose=lose,
                     ttl=1.0, renew_every=0.2)

    a, b = lease("A"), lease("B")
    try:
        await a.tick()
        await b.tick()
        assert a.held and not b.held and b.holder == "A" and log == ["A+1"]
        await a.tick()  # renewal keeps it
        assert a.held
        await client.set(LEASE_KEY.format(duty="pbx:t"), "B:7")  # another node's value
        await a.tick()
        assert not a.held and log == ["A+1", "A-"]
        await client.delete(LEASE_KEY.format(duty="pbx:t"))
        await b.tick()
        assert b.held and b.token == 2, "a new holder gets a larger fencing token"
        await b.release()
        await a.tick()
        assert a.held and a.token == 3 and log[-2:] == ["B-", "A+3"]
        assert await client.pttl(LEASE_KEY.format(duty="pbx:t")) > 0, "the lease expires"
    finally:
        await client.aclose()


def test_decode_entry_refuses_foreign_or_broken_entries() -> None:
    good = b'{"id":"A:1","ts":1.5,"a":[3],"t":"screen_pop","b":{"x":1}}'
    event = decode_entry(b"12-0", {b"m": good})
    assert event is not None
    assert (event.seq, event.agent_ids, event.type) == (12, (3,), "screen_pop")
    assert decode_entry(b"12-0", {b"other": good}) is None
    assert decode_entry(b"12-0", {b"m": b"not json"}) is None
    assert decode_entry(b"12-0", {b"m": b'{"id":"A:1","ts":1,"a":[3],"t":"x","b":[]}'}) is None
    assert decode_entry(b"x-0", {b"m": good}) is None


async def test_a_cancelled_redis_command_stays_cancelled(redis_url: str) -> None:
    """Python 3.11's wait_for (redis-py's write path) could lose a cancellation that
    arrived as the write finished: the command then returned normally in a cancelled
    task and a lease loop never stopped. Cancel 300 commands at random points
    mid-flight: every one must end in CancelledError."""
    client = connect_redis(redis_url.rsplit("/", 1)[0] + "/13")
    script = client.register_script("return redis.call('GET', KEYS[1])")
    lost: list[str] = []

    async def commands() -> None:
        task = asyncio.current_task()
        assert task is not None
        while True:
            await client.get("k")
            await script(keys=["k"])
            if task.cancelling():
                lost.append("a command returned normally in a cancelled task")
                return

    try:
        for _ in range(300):
            task = asyncio.create_task(commands())
            await asyncio.sleep(random.random() * 0.003)
            task.cancel()
            done, _pending = await asyncio.wait({task}, timeout=5)
            assert done, "a cancelled task kept running for 5 s"
            if not task.cancelled():
                lost.append(repr(task.exception()) if task.exception() else "ended normally")
        assert not lost, f"{len(lost)} of 300 cancellations lost: {lost[:3]}"
        assert await client.ping()  # connections cut mid-command were replaced
    finally:
        await client.aclose()
