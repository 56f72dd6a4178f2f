"""Failover off a gateway no node holds, on a real Redis and database (in-process nodes).

Any node may move the rows of a gateway with no holder; it must not while a node
holds the duty's lease (that node's client has the rows) or while another node
is moving them (the failover lock), and two nodes at once move each row once. A
node taking the duty waits for the lock before its client loads the rows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cti.cluster.duties import Duties
from cti.cluster.redis_client import connect_redis
from cti.config import Settings
from cti.links.sms import FAILOVER_LOCK, STATE_KEY, SmsChannel
from cti.services import Services
from sms_gateway.esme import SmppConfig
from sms_gateway.modem.driver import ModemConfig
from sms_gateway.outbox import OutboundSms
from tests.peers.ports import free_port


@pytest.fixture
async def services(redis_url: str, tmp_path: Path) -> AsyncIterator[Services]:
    client = connect_redis(redis_url.rsplit("/", 1)[0] + "/11")
    await client.flushdb()
    services = Services(Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}",
                                 secret_key="test-secret"))
    await services.start()
    services.redis = client  # as cti.app does in cluster mode
    try:
        yield services
    finally:
        await services.stop()
        await client.flushdb()
        await client.aclose()


def node(services: Services, name: str, tmp_path: Path) -> SmsChannel:
    """A node's SMS channel that holds nothing (its duties are never started)."""
    smpp = SmppConfig(host="127.0.0.1", port=free_port(), system_id="cti", password="x",
                      name="op")
    modem = ModemConfig(name="gsm1", port=str(tmp_path / "absent" / "ttyGSM0"))
    channel = SmsChannel(services, [smpp], [modem], Duties(name, services.redis, clustered=True))
    channel.failover_after = 10.0
    return channel


async def test_unheld_gateway_moves_once_and_never_under_a_lease_or_the_lock(
    services: Services, tmp_path: Path,
) -> None:
    redis = services.redis
    x, y = node(services, "X", tmp_path), node(services, "Y", tmp_path)
    outbox = x._outbox
    message = OutboundSms(key="ivr-1", destination="+79161234567", text="Ваш код 4711",
                          gateway="gsm1", smsc_ids=(None,), part_states=(None,))
    await outbox.add(message)
    # op is up on some node Z: a target for both nodes
    await redis.set(STATE_KEY.format(name="op"), json.dumps({"node": "Z", "up": True}))
    for channel in (x, y):
        await channel.publish_states()
        assert await channel.failover_once(now=0.0) == 0  # no holder seen from now on

    await redis.set("cti:lease:modem:gsm1", "Z:7")  # a node took the modem meanwhile
    assert await x.failover_once(now=20.0) == 0
    await redis.delete("cti:lease:modem:gsm1")
    await redis.set(FAILOVER_LOCK.format(name="gsm1"), "another-node")
    assert await x.failover_once(now=30.0) == 0
    assert (await outbox.get("ivr-1")) == message

    await redis.delete(FAILOVER_LOCK.format(name="gsm1"))
    moved = await asyncio.gather(x.failover_once(now=40.0), y.failover_once(now=40.0))
    assert sorted(moved) == [0, 1]
    stored = await outbox.get("ivr-1")
    assert stored is not None and (stored.gateway, stored.status) == ("op", "queued")
    assert stored.destination == "79161234567"  # as the ESME stores numbers
    assert await redis.get(FAILOVER_LOCK.format(name="gsm1")) is None
    assert await x.failover_once(now=50.0) == 0  # nothing left on gsm1


async def test_a_node_taking_the_duty_waits_for_the_failover_lock(
    services: Services, tmp_path: Path,
) -> None:
    redis = services.redis
    taker = node(services, "X", tmp_path)
    await redis.set(FAILOVER_LOCK.format(name="op"), "mover")
    waiting = asyncio.create_task(taker.wait_failover_lock("op"))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # the mover still holds it
    await redis.delete(FAILOVER_LOCK.format(name="op"))
    async with asyncio.timeout(5):
        await waiting
