"""The prefetched screen-pop card, the early pop and the agent map, on SQLite and PostgreSQL.

A call's card is read when its caller is known and the pop is made from
memory plus the history writer's entries since; a merge since then makes the
pop read the database again; a CallOffered pops before the call's earlier
changes are done in its lane; agents by endpoint come from memory and see an
agent created on this node at once and one created elsewhere after a miss.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

import cti.agents
from cti.customers import ContactInput
from cti.history import HistoryEntry
from cti.models import Agent, utcnow
from cti.services import Services
from pbx.changes import CallOffered, CallQueued, CallStarted, Change
from tests.functional.cti.frames import screen_pops

pytestmark = pytest.mark.integration

T0 = 1_800_000_000.0


def call(n: int, number: str, endpoint: str) -> tuple[CallStarted, CallQueued, CallOffered]:
    cid = f"pbx1:{T0:.0f}.{n}"
    return (
        CallStarted("pbx1", cid, f"PJSIP/trunk-{n:08x}", number, "Caller", "100", T0),
        CallQueued("pbx1", cid, "support", 1, number, "Caller", T0 + 1),
        CallOffered("pbx1", cid, "support", endpoint, number, "Caller", "100", 2.0, T0 + 3),
    )


async def card_ready(services: Services, call_id: str) -> None:
    card = services.calls._cards[call_id]
    async with asyncio.timeout(10):
        await card.ready.wait()
    assert card.snap is not None


async def test_pop_from_prefetched_card_with_history_since(services: Services) -> None:
    agent = await services.agents.create("pf1", "agent-password", endpoint="PJSIP/pf1")
    customer = await services.customers.create("Пётр", [ContactInput("phone", "+79165551001")])
    sub = services.hub.subscribe(agent.id, None)
    started, queued, offered = call(1, "89165551001", "PJSIP/pf1")
    await services.calls.handle(started)
    await card_ready(services, started.call_id)
    before = (services.screen_pop.from_memory, services.screen_pop.from_database)
    # After the card was read: one event written to the table, one still queued.
    at = datetime.now(UTC) - timedelta(minutes=1)
    await services.history.add(
        HistoryEntry(customer.id, "message_in", "sms", {"text": "written since"}, occurred_at=at)
    )
    await services.history.flush()
    await services.history.add(
        HistoryEntry(
            customer.id, "message_in", "sms", {"text": "still queued"},
            occurred_at=at + timedelta(seconds=1),
        )
    )
    await services.calls.handle(queued)
    await services.calls.handle(offered)

    (pop,) = screen_pops(sub)
    assert (services.screen_pop.from_memory, services.screen_pop.from_database) == (
        before[0] + 1,
        before[1],
    )
    conv = await services.conversations.by_ref(started.call_id)
    assert conv is not None
    assert pop["conversation"]["id"] == conv.id
    assert pop["customer"]["id"] == customer.id and pop["customer"]["name"] == "Пётр"
    texts = [e["payload"].get("text") for e in pop["history"]]
    assert "written since" in texts and "still queued" in texts
    kinds = [e["kind"] for e in pop["history"]]
    assert "call_started" in kinds and "call_queued" in kinds
    assert len(kinds) == len({(e["kind"], e["occurred_at"]) for e in pop["history"]})


async def test_merge_after_prefetch_pops_the_merged_card(services: Services) -> None:
    agent = await services.agents.create("pf2", "agent-password", endpoint="PJSIP/pf2")
    source = await services.customers.create("Old card", [ContactInput("phone", "+79165551002")])
    target = await services.customers.create("Survivor", [ContactInput("email", "s@example.com")])
    sub = services.hub.subscribe(agent.id, None)
    started, queued, offered = call(2, "+79165551002", "PJSIP/pf2")
    await services.calls.handle(started)
    await card_ready(services, started.call_id)
    await services.customers.merge(source.id, target.id, None)
    database = services.screen_pop.from_database
    await services.calls.handle(queued)
    await services.calls.handle(offered)

    (pop,) = screen_pops(sub)
    assert services.screen_pop.from_database == database + 1  # the snapshot was refused
    assert pop["customer"]["id"] == target.id and pop["customer"]["name"] == "Survivor"
    values = {i["value"] for i in pop["customer"]["identities"]}
    assert values == {"+79165551002", "s@example.com"}


async def test_offer_pops_before_the_lane_is_done(services: Services) -> None:
    agent = await services.agents.create("pf3", "agent-password", endpoint="PJSIP/pf3")
    customer = await services.customers.create("Early", [ContactInput("phone", "+79165551003")])
    sub = services.hub.subscribe(agent.id, None)
    started, queued, offered = call(3, "+79165551003", "PJSIP/pf3")
    release = asyncio.Event()

    async def slow_listener(change: Change) -> None:  # lane work after CallQueued
        if isinstance(change, CallQueued):
            await release.wait()

    services.calls.listeners.append(slow_listener)

    async def lane() -> None:
        for change in (queued, offered):
            await services.calls.handle(change)

    await services.calls.handle(started)
    lane_task = asyncio.create_task(lane())
    services.calls.early(offered)  # what the forwarder does as the change arrives
    async with asyncio.timeout(10):
        pop = json.loads(await sub.queue.get())
    assert pop["type"] == "screen_pop"
    assert not lane_task.done()  # the lane still waits in its CallQueued
    assert pop["customer"]["id"] == customer.id
    assert pop["interaction"]["call_id"] == offered.call_id
    release.set()
    await lane_task
    assert screen_pops(sub) == []  # the lane did not pop it a second time
    await services.history.flush()
    conv = await services.conversations.by_ref(offered.call_id)
    assert conv is not None and pop["conversation"]["id"] == conv.id


async def test_agent_map_sees_new_agents(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = services.agents
    assert await agents.by_endpoint("PJSIP/pf4") is None
    reads = agents.endpoint_reads
    assert await agents.by_endpoint("PJSIP/pf4") is None  # the miss is remembered
    assert agents.endpoint_reads == reads
    created = await agents.create("pf4", "agent-password", endpoint="PJSIP/pf4")
    found = await agents.by_endpoint("PJSIP/pf4")  # created here: known at once
    assert found is not None and found.id == created.id
    reads = agents.endpoint_reads
    assert (await agents.by_endpoint("PJSIP/pf4")) is not None
    assert agents.endpoint_reads == reads  # from memory

    # Created by another node sharing the database: found once the miss expires.
    assert await agents.by_endpoint("PJSIP/pf5") is None
    async with services.sessions() as session, session.begin():
        await session.execute(
            insert(Agent).values(
                login="pf5", name="", password_hash="x", role="agent", endpoint="PJSIP/pf5",
                queues=[], skills=[], max_text=3, available=True, created_at=utcnow(),
            )
        )
    monkeypatch.setattr(cti.agents, "MISS_TTL", 0.0)
    other = await agents.by_endpoint("PJSIP/pf5")
    assert other is not None and other.login == "pf5"
