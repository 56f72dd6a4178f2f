"""Services on a real database: SQLite file and PostgreSQL (db_url is parametrized)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from cti.auth import Principal, Role
from cti.config import Settings
from cti.customers import ContactInput
from cti.errors import AlreadyTaken, AtCapacity, Conflict, Forbidden, NotFound
from cti.history import HistoryEntry, timeline
from cti.hub import Subscription
from cti.models import HistoryEvent
from cti.services import Services
from pbx.changes import (
    CallAnswered,
    CallEnded,
    CallOffered,
    CallQueued,
    CallStarted,
    Durations,
)
from tests.functional.cti.conftest import make_agent

pytestmark = pytest.mark.integration


def messages(sub: Subscription) -> list[dict]:  # type: ignore[type-arg]
    out = []
    while not sub.queue.empty():
        out.append(json.loads(sub.queue.get_nowait()))
    return out


async def test_identify_unknown_then_known(services: Services) -> None:
    c1, created = await services.customers.identify("phone", "8 (916) 000-11-22")
    assert created and c1.provisional
    c2, created2 = await services.customers.identify("phone", "+7 916 000 1122")
    assert (c2.id, created2) == (c1.id, False)
    bad, _ = await services.customers.identify("phone", "12")
    (ident,) = await services.customers.identities(bad.id)
    assert (ident.value, ident.valid) == ("12", False)


async def test_concurrent_first_contacts_make_one_customer(services: Services) -> None:
    results = await asyncio.gather(
        *(services.customers.identify("phone", "+79035550000") for _ in range(5))
    )
    assert len({c.id for c, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_card_created_while_the_same_number_calls_is_a_conflict_not_a_crash(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /customers races the provisional customer of an incoming call: the
    call's identify() lands between the card's check and its commit. The card
    gets the same 409 as when the number was known before (it was a 500)."""
    customers = services.customers
    check = customers._refuse_taken
    called: list[Any] = []

    async def check_then_the_call_comes(session: Any, idents: Any) -> None:
        await check(session, idents)
        if not called:
            called.append(await customers.identify("phone", "+79035551234"))

    monkeypatch.setattr(customers, "_refuse_taken", check_then_the_call_comes)
    with pytest.raises(Conflict) as refused:
        await customers.create("Card", [ContactInput("phone", "8 903 555-12-34")])
    (found, created), = called
    assert created and refused.value.details["customer_id"] == found.id

async def test_link_merges_provisional_and_undo_restores(services: Services) -> None:
    known = await services.customers.create(
        "Иван Петров", [ContactInput("phone", "8 916 123-45-67")]
    )
    prov, _ = await services.customers.identify("phone", "+79990001122")
    await services.history.add(HistoryEntry(prov.id, "sms_in", "sms", {"text": "привет"}))
    await services.history.flush()

    await services.customers.link(known.id, "phone", "8 999 000-11-22", actor_id=None)
    found = await services.customers.lookup("phone", "+7 999 000 11 22")
    assert found is not None and found.id == known.id
    await services.history.flush()
    events, _ = await timeline(services.sessions, known.id)
    assert "sms_in" in [e.kind for e in events]
    card = await services.customers.card(known)
    assert {i["value"] for i in card["identities"]} == {"+79161234567", "+79990001122"}

    async with services.sessions() as session:
        from cti.models import CustomerMerge

        merge_id = await session.scalar(select(CustomerMerge.id))
    assert merge_id is not None
    await services.customers.undo_merge(merge_id, actor_id=None)
    again = await services.customers.lookup("phone", "+79990001122")
    assert again is not None and again.id == prov.id
    events, _ = await timeline(services.sessions, known.id)
    assert "sms_in" not in [e.kind for e in events]
    with pytest.raises(Conflict):
        await services.customers.undo_merge(merge_id, actor_id=None)
    with pytest.raises(Conflict):
        await services.customers.link(prov.id, "phone", "+79161234567", actor_id=None)
    with pytest.raises(NotFound):
        await services.customers.get(10**9)


async def test_take_race_exactly_one_wins(services: Services) -> None:
    a = await make_agent(services, "alice")
    b = await make_agent(services, "bob")
    customer, _ = await services.customers.identify("phone", "+79161112233")
    for _ in range(5):
        conv, _ = await services.conversations.open("sms", customer.id, contact="+79161112233")
        results = await asyncio.gather(
            services.conversations.take(conv.id, a),
            services.conversations.take(conv.id, b),
            return_exceptions=True,
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, AlreadyTaken)]
        assert len(winners) == 1 and len(losers) == 1, results
        owner = "alice" if winners[0].owner_id == a else "bob"
        assert losers[0].details["owner"] == owner and owner in losers[0].message
        await services.conversations.close(
            conv.id, Principal(winners[0].owner_id, Role.AGENT), None
        )


async def test_capacity_transfer_close(services: Services) -> None:
    a = await make_agent(services, "alice", max_text=1)
    b = await make_agent(services, "bob")
    customer, _ = await services.customers.identify("phone", "+79161112244")
    c1, _ = await services.conversations.open("chat", customer.id)
    c2, _ = await services.conversations.open("chat", customer.id)
    await services.conversations.take(c1.id, a)
    with pytest.raises(AtCapacity):
        await services.conversations.take(c2.id, a)
    with pytest.raises(Forbidden):
        await services.conversations.close(c1.id, Principal(b, Role.AGENT), None)
    moved = await services.conversations.transfer(c1.id, Principal(a, Role.AGENT), to_agent="bob")
    assert moved.owner_id == b
    back = await services.conversations.transfer(c1.id, Principal(b, Role.AGENT), to_queue="vip")
    assert (back.owner_id, back.status, back.queue) == (None, "queued", "vip")
    await services.conversations.take(c1.id, b)
    closed = await services.conversations.close(c1.id, Principal(b, Role.AGENT), None)
    assert closed.status == "closed"
    await services.history.flush()
    events, _ = await timeline(services.sessions, customer.id)
    kinds = [e.kind for e in events]
    assert kinds[:5] == ["closed", "assigned", "transferred", "transferred", "assigned"]


async def test_text_assignment_goes_to_least_loaded_with_skill(services: Services) -> None:
    busy = await make_agent(services, "busy", skills=["ru"])
    free = await make_agent(services, "free", skills=["ru"])
    await make_agent(services, "english", skills=["en"])
    customer, _ = await services.customers.identify("phone", "+79161112255")
    first, _ = await services.conversations.open("sms", customer.id)
    await services.conversations.take(first.id, busy)
    sub = services.hub.subscribe(free, None)
    conv, _ = await services.conversations.open("sms", customer.id, skill="ru")
    chosen = await services.conversations.assign_text(conv.id)
    assert chosen is not None and chosen.id == free
    (pop,) = messages(sub)
    assert pop["type"] == "screen_pop" and pop["channel"] == "sms"
    assert pop["conversation"]["id"] == conv.id and pop["customer"]["id"] == customer.id


async def test_history_is_batched_and_deduplicated(services: Services) -> None:
    customer, _ = await services.customers.identify("phone", "+79161112266")
    start = datetime.now(UTC)
    before = services.history.batches
    for n in range(600):
        await services.history.add(
            HistoryEntry(
                customer.id,
                "note",
                "system",
                {"n": n},
                occurred_at=start + timedelta(milliseconds=n),
            )
        )
    for _ in range(3):
        await services.history.add(
            HistoryEntry(
                customer.id,
                "once",
                "system",
                dedup_key="k1",
                occurred_at=start + timedelta(seconds=1),
            )
        )
    await services.history.flush()
    assert services.history.batches - before <= 20
    async with services.sessions() as session:
        n_rows = await session.scalar(
            select(func.count())
            .select_from(HistoryEvent)
            .where(HistoryEvent.customer_id == customer.id)
        )
    assert n_rows == 601
    seen: list[int] = []
    cursor = None
    while True:
        page, cursor = await timeline(services.sessions, customer.id, limit=70, cursor=cursor)
        seen.extend(e.payload.get("n", -1) for e in page)
        if cursor is None:
            break
    assert seen[0] == -1 and seen[1:] == list(range(599, -1, -1))


async def test_call_flow_pops_card_and_records_once(services: Services) -> None:
    agent = await services.agents.create("agent1", "agent-password", endpoint="PJSIP/agent1")
    other = await services.agents.create("agent2", "agent-password", endpoint="PJSIP/agent2")
    customer = await services.customers.create(
        "Иван Петров", [ContactInput("phone", "8 916 123-45-67")]
    )
    await services.history.add(HistoryEntry(customer.id, "sms_in", "sms", {"text": "жду звонка"}))
    await services.history.flush()
    sub = services.hub.subscribe(agent.id, None)
    sub2 = services.hub.subscribe(other.id, None)
    t = 1_800_000_000.0
    call = "pbx1:1800000000.1"
    changes = [
        CallStarted("pbx1", call, "PJSIP/trunk-00000001", "+79161234567", "Ivan", "100", t),
        CallQueued("pbx1", call, "support", 1, "+79161234567", "Ivan", t + 1),
        CallOffered(
            "pbx1", call, "support", "PJSIP/agent1", "+79161234567", "Ivan", "100", 2.0, t + 3
        ),
    ]
    for change in changes:
        await services.calls.handle(change)
    (pop,) = messages(sub)
    assert messages(sub2) == []
    assert pop["type"] == "screen_pop" and pop["channel"] == "voice"
    assert pop["customer"]["id"] == customer.id and pop["customer"]["name"] == "Иван Петров"
    assert pop["interaction"]["caller"] == "+79161234567"
    assert pop["interaction"]["queue"] == "support" and pop["interaction"]["wait"] == 2.0
    assert pop["conversation"]["external_ref"] == call
    kinds = [h["kind"] for h in pop["history"]]
    assert "sms_in" in kinds and "call_queued" in kinds

    rest = [
        CallAnswered("pbx1", call, "support", "PJSIP/agent1", 2.0, 1.5, t + 4.5),
        CallEnded(
            "pbx1",
            call,
            16,
            "Normal Clearing",
            "hangup",
            "support",
            "PJSIP/agent1",
            Durations(wait=2.0, ring=1.5, talk=30.0, hold=0.0),
            t + 34.5,
        ),
    ]
    for change in rest:
        await services.calls.handle(change)
    for change in changes + rest:  # a resync delivers everything again
        await services.calls.handle(change)
    await services.history.flush()
    events, _ = await timeline(services.sessions, customer.id)
    voice = [e.kind for e in events if e.channel == "voice"]
    assert voice == ["call_ended", "call_answered", "call_offered", "call_queued", "call_started"]
    ended = events[0].payload
    assert (ended["wait"], ended["ring"], ended["talk"], ended["hold"]) == (2.0, 1.5, 30.0, 0.0)
    conv = await services.conversations.by_ref(call)
    assert conv is not None and conv.owner_id == agent.id and conv.status == "wrapup"


async def test_two_nodes_starting_together_on_a_fresh_database(settings: Settings) -> None:
    """Both migrate (PostgreSQL: one waits on the other's lock) and try to create the
    bootstrap admin: both start, and there is exactly one admin."""
    nodes = [Services(settings), Services(settings)]
    try:
        await asyncio.gather(*(node.start() for node in nodes))
        assert await nodes[0].agents.count_admins() == 1
        assert await nodes[1].agents.count_admins() == 1
    finally:
        for node in nodes:
            await node.stop()
