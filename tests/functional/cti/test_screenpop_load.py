"""Many calls at once through CallHandler, on SQLite and PostgreSQL (db_url is parametrized).

Each call's changes arrive in order (as in its forwarder lane) while the calls
run concurrently, like the background load of bench.screenpop: every agent
gets the pop of its own caller, and every conversation ends with its queue,
owner and status written, whatever the interleaving of the writes.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import update

from cti.calls import _Updates
from cti.customers import ContactInput
from cti.models import Conversation
from cti.services import Services
from pbx.changes import (
    CallAnswered,
    CallEnded,
    CallOffered,
    CallQueued,
    CallStarted,
    Change,
    Durations,
)
from tests.functional.cti.frames import screen_pops

pytestmark = pytest.mark.integration

CALLS = 12


def call_changes(n: int, number: str, t: float) -> list[Change]:
    call = f"pbx1:{t:.0f}.{n}"
    agent = f"PJSIP/load{n}"
    return [
        CallStarted("pbx1", call, f"PJSIP/trunk-{n:08x}", number, f"Caller {n}", "100", t),
        CallQueued("pbx1", call, f"q{n % 3}", 1, number, f"Caller {n}", t + 1),
        CallOffered("pbx1", call, f"q{n % 3}", agent, number, f"Caller {n}", "100", 2.0, t + 3),
        CallAnswered("pbx1", call, f"q{n % 3}", agent, 2.0, 1.0, t + 4),
        CallEnded(
            "pbx1", call, 16, "Normal Clearing", "hangup", f"q{n % 3}", agent,
            Durations(wait=2.0, ring=1.0, talk=5.0, hold=0.0), t + 9,
        ),
    ]


async def test_concurrent_calls_each_pop_their_caller_and_close(services: Services) -> None:
    t = 1_800_000_000.0
    agents, subs, customers, numbers = [], [], [], []
    for n in range(CALLS):
        agent = await services.agents.create(
            f"load{n}", "agent-password", endpoint=f"PJSIP/load{n}"
        )
        number = f"+7916555{n:04d}"
        customer = await services.customers.create(f"Caller {n}", [ContactInput("phone", number)])
        agents.append(agent)
        subs.append(services.hub.subscribe(agent.id, None))
        customers.append(customer)
        numbers.append(number)

    async def lane(changes: list[Change]) -> None:
        for change in changes:
            await services.calls.handle(change)

    await asyncio.gather(*(lane(call_changes(n, numbers[n], t)) for n in range(CALLS)))

    for n in range(CALLS):
        (pop,) = screen_pops(subs[n])
        assert pop["customer"]["id"] == customers[n].id
        assert pop["interaction"]["caller"] == numbers[n]
        conv = await services.conversations.by_ref(f"pbx1:{t:.0f}.{n}")
        assert conv is not None
        assert (conv.queue, conv.owner_id, conv.status) == (f"q{n % 3}", agents[n].id, "wrapup")
        assert conv.customer_id == customers[n].id


async def test_grouped_updates_a_bad_one_fails_alone(services: Services) -> None:
    customer = await services.customers.create("Group", [ContactInput("phone", "+79165550999")])
    convs = [
        (await services.conversations.open("voice", customer.id, external_ref=f"g{i}"))[0]
        for i in range(3)
    ]
    updates = _Updates(services.sessions)
    good = [
        updates.submit(update(Conversation).where(Conversation.id == c.id).values(queue="gq"))
        for c in convs[:2]
    ]
    bad = updates.submit(  # no such customer: a foreign key violation, on both databases
        update(Conversation).where(Conversation.id == convs[2].id).values(customer_id=10**12)
    )
    await asyncio.gather(*good)
    with pytest.raises(Exception, match=r"(?i)foreign key"):
        await bad
    assert updates.batches == 1 and updates.statements == 3  # one transaction was tried
    for c in convs[:2]:
        row = await services.conversations.by_ref(c.external_ref or "")
        assert row is not None and row.queue == "gq"
    row = await services.conversations.by_ref("g2")
    assert row is not None and row.customer_id == customer.id
