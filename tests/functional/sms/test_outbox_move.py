"""Gateway failover's compare-and-set on the database outbox (SQLite and PostgreSQL).

Two nodes may decide at once that a gateway is down (its holder, and a node that
sees no holder): ``DatabaseOutbox.move`` must move each message once, and never a
message with a part the SMSC acknowledged, or one no longer queued on that gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cti.db import create_engine, migrate, sessionmaker
from cti.sms_outbox import DatabaseOutbox, OutboxDataError
from sms_gateway.outbox import OutboundSms


@pytest.fixture
async def engines(db_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    first = create_engine(db_url)
    await migrate(first)
    second = create_engine(db_url)  # the other node: its own connections
    try:
        yield first, second
    finally:
        await first.dispose()
        await second.dispose()


def queued(key: str, gateway: str = "op", parts: int = 2) -> OutboundSms:
    return OutboundSms(key=key, destination="79161234567", text="Привет " * parts,
                       source="CTI", gateway=gateway, smsc_ids=(None,) * parts,
                       part_states=(None,) * parts)


def fitted(message: OutboundSms, gateway: str, parts: int) -> OutboundSms:
    return replace(message, gateway=gateway, destination="+" + message.destination,
                   smsc_ids=(None,) * parts, part_states=(None,) * parts)


async def test_two_nodes_moving_at_once_move_each_message_once(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    node_a = DatabaseOutbox(sessionmaker(engines[0]))
    node_b = DatabaseOutbox(sessionmaker(engines[1]))
    keys = [f"c1-{i:032x}" for i in range(12)]
    for key in keys:
        await node_a.add(queued(key))
    results = await asyncio.gather(*(
        outbox.move(fitted(queued(key), target, 3), "op")
        for key in keys for outbox, target in ((node_a, "gsm1"), (node_b, "smpp2"))
    ))
    for index, key in enumerate(keys):
        a_won, b_won = results[2 * index], results[2 * index + 1]
        assert a_won != b_won, (key, a_won, b_won)  # exactly one of the two moved it
        stored = await node_b.get(key)
        assert stored is not None and stored.status == "queued"
        assert stored.gateway == ("gsm1" if a_won else "smpp2")
        assert stored.parts == 3 and stored.destination == "+79161234567"
    assert await node_a.unfinished("op") == []


async def test_only_a_message_still_queued_there_with_no_acknowledged_part_moves(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    outbox = DatabaseOutbox(sessionmaker(engines[0]))
    for key in ("acked", "submitted", "elsewhere", "free"):
        await outbox.add(queued(key, gateway="gsm2" if key == "elsewhere" else "op"))
    part_sent = (await outbox.get("acked") or queued("x")).with_part_submitted(0, "4f2a")
    await outbox.update(part_sent)  # part 1 reached the SMSC: the message must stay
    await outbox.update(replace(queued("submitted"), status="submitted"))

    for key in ("acked", "submitted", "elsewhere"):
        assert not await outbox.move(fitted(queued(key), "gsm1", 2), "op"), key
    assert await outbox.get("acked") == part_sent
    assert await outbox.move(fitted(queued("free"), "gsm1", 2), "op")
    assert not await outbox.move(fitted(queued("free"), "smpp2", 2), "op")  # moved already
    assert [m.key for m in await outbox.unfinished("op")] == ["acked"]
    assert [m.key for m in await outbox.unfinished("gsm1")] == ["free"]
    with pytest.raises(OutboxDataError):
        await outbox.move(part_sent, "op")
