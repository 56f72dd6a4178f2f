"""Callbacks with several PBXes held by different nodes (real Redis and PostgreSQL).

One duty ``callbacks:<pbx>`` per PBX, held by the node that holds ``pbx:<pbx>``
(moving with it); each scheduler serves its PBX's bookings and the ones of no
known PBX; the claim is one conditional UPDATE, so two schedulers racing for
one booking (two nodes) dial it once, and a scheduler acting on a row it read
before another claimed, tried and put it back does not dial it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import pytest
from sqlalchemy import update

from cti.callbacks import CallbackService, holds_pbx_lease
from cti.cluster.duties import Duties
from cti.cluster.lease import Lease
from cti.cluster.redis_client import connect_redis
from cti.config import AmiServer, Settings
from cti.customers import ContactInput
from cti.models import CallbackBookingRow
from cti.services import Services
from ivr.ports import CallbackRequest
from pbx.link import AmiLink
from tests.integration.cluster.nodes import until
from tests.peers.databases import _createdb

pytestmark = pytest.mark.integration
_dbs = itertools.count(1)
PBXS = ("east", "west")


def no_links() -> Mapping[str, AmiLink]:
    return {}


async def _true(value: bool) -> bool:
    return value


async def test_each_pbx_callbacks_duty_follows_its_ami_lease(redis_url: str) -> None:
    """A holds east's AMI lease, B west's: A schedules east's callbacks, B west's; when
    east's lease moves to B, so does ``callbacks:east``."""
    url = redis_url.rsplit("/", 1)[0] + "/13"
    clients = {"A": connect_redis(url), "B": connect_redis(url)}
    await clients["A"].flushdb()
    runs: list[str] = []
    leases: dict[str, dict[str, Lease]] = {"A": {}, "B": {}}
    lease_tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
    duties = {node: Duties(node, clients[node], ttl=1.0, renew_every=0.1) for node in "AB"}

    async def nothing(*_: object) -> None:
        return None

    def start_lease(node: str, pbx: str) -> None:
        lease = Lease(clients[node], f"pbx:{pbx}", node, on_acquire=nothing, on_lose=nothing,
                      ttl=1.0, renew_every=0.1)
        leases[node][pbx] = lease
        lease_tasks[(node, pbx)] = asyncio.create_task(lease.run())

    def step(what: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            runs.append(what)

        return run

    async def holders() -> dict[str, list[str]]:
        return {pbx: [n for n in "AB" if duties[n].held(f"callbacks:{pbx}")] for pbx in PBXS}

    try:
        start_lease("A", "east")
        await until("A holding east's AMI lease", lambda: _true(leases["A"]["east"].held),
                    within=30)
        start_lease("B", "west")
        await until("B holding west's AMI lease", lambda: _true(leases["B"]["west"].held),
                    within=30)
        for node in "AB":
            for pbx in PBXS:
                await duties[node].add(f"callbacks:{pbx}", step(f"{node}+{pbx}"),
                                       step(f"{node}-{pbx}"),
                                       eligible=holds_pbx_lease(leases[node], pbx))

        async def split() -> bool:
            return (await holders() == {"east": ["A"], "west": ["B"]}
                    and duties["B"].holder("callbacks:east") == "A"
                    and duties["A"].holder("callbacks:west") == "B")

        await until("east's callbacks on A, west's on B, each naming the other", split,
                    within=30)
        assert duties["B"].state()["callbacks:east"]["detail"] == "not eligible on this node"

        # east's AMI link moves to B (graceful stop of A's lease, B takes it)
        task = lease_tasks.pop(("A", "east"))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await leases["A"].pop("east").release()
        start_lease("B", "east")

        async def moved() -> bool:
            return await holders() == {"east": ["B"], "west": ["B"]}

        await until("east's callbacks following its AMI link to B", moved, within=30)
        assert runs.count("A+east") == 1 and runs.count("A-east") == 1
        assert runs.count("B+east") == 1 and "A+west" not in runs
    finally:
        for node in "AB":
            await duties[node].close()
        for task in lease_tasks.values():
            task.cancel()
        await asyncio.gather(*lease_tasks.values(), return_exceptions=True)
        for node in "AB":
            for lease in leases[node].values():
                with contextlib.suppress(Exception):
                    await lease.release()
            await clients[node].aclose()


@pytest.fixture
async def services(postgres_url: str) -> AsyncIterator[Services]:
    port = int(postgres_url.rsplit(":", 1)[1].split("/")[0])
    name = f"cbnodes{os.getpid()}_{next(_dbs)}"
    _createdb(port, name)
    settings = Settings(
        db_url=postgres_url.rsplit("/", 1)[0] + "/" + name, secret_key="test-secret",
        ami=tuple(AmiServer(pbx, "127.0.0.1", 5038, "cti", "secret") for pbx in PBXS),
    )
    svc = Services(settings)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


def booking(call_id: str, number: str) -> CallbackRequest:
    return CallbackRequest(call_id, number, "support", time.time(), None, "en")


async def test_bookings_go_to_their_pbx_and_are_claimed_once(services: Services) -> None:
    front = CallbackService(services, no_links, first_delay=0.0)  # the IVR's node: no link
    east = front.scoped("east")
    west = front.scoped("west")
    customer = await services.customers.create("Анна", [ContactInput("phone", "+79160000100")])
    # The call that booked came in on west (its conversation is west's call id).
    await services.conversations.open("voice", customer.id, external_ref="west:1700000000.7")
    on_west = int((await front.book_callback(booking("1700000000.7", "+79160000100")))
                  .booking_id)
    # No conversation for these calls: their PBX is unknown; either scheduler may serve.
    unknown = [int((await front.book_callback(booking(f"1700000001.{i}", f"+7916000020{i}")))
                   .booking_id) for i in range(6)]
    assert (await front.get(on_west)).pbx == "west"
    assert {(await front.get(b)).pbx for b in unknown} == {None}

    due_east = {r.id for r in await east.due_bookings()}
    due_west = {r.id for r in await west.due_bookings()}
    assert due_east == set(unknown), "east never serves a booking of west"
    assert due_west == {on_west, *unknown}

    # Both nodes read the same rows and claim at once: each booking is dialled by one.
    rows_east = {r.id: r for r in await east.due_bookings()}
    rows_west = {r.id: r for r in await west.due_bookings()}
    won = await asyncio.gather(*(
        claim for b in unknown for claim in (
            east.claim(rows_east[b], "east", "PJSIP/agent1", f"east:cti-{b}"),
            west.claim(rows_west[b], "west", "PJSIP/agent2", f"west:cti-{b}"))))
    per_booking = [won[2 * i] + won[2 * i + 1] for i in range(len(unknown))]
    assert per_booking == [1] * len(unknown), won
    for i, b in enumerate(unknown):
        row = await front.get(b)
        assert (row.status, row.pbx) == ("calling", "east" if won[2 * i] else "west")
    # A claimed booking is bound to its PBX: after a failed attempt only that one serves it.
    first = unknown[0]
    winner = "east" if won[0] else "west"
    async with services.sessions() as session, session.begin():
        await session.execute(update(CallbackBookingRow).where(CallbackBookingRow.id == first)
                              .values(status="waiting", last_result="no_answer"))
    holder, other = (east, west) if winner == "east" else (west, east)
    assert first in {r.id for r in await holder.due_bookings()}
    assert first not in {r.id for r in await other.due_bookings()}

    # A stale read: west read the row, east claimed it, tried and put it back; west's
    # claim on what it read is refused although the booking is waiting again.
    stale = (await west.due_bookings())[0]
    assert stale.id == on_west
    fresh = (await west.due_bookings())[0]
    assert await west.claim(fresh, "west", "PJSIP/agent2", "west:cti-a")
    async with services.sessions() as session, session.begin():
        await session.execute(update(CallbackBookingRow).where(CallbackBookingRow.id == on_west)
                              .values(status="waiting", last_result="agent_no_answer",
                                      updated_at=fresh.updated_at.replace(year=2030)))
    assert not await west.claim(stale, "west", "PJSIP/agent2", "west:cti-b")
    again = (await west.due_bookings())[0]
    assert again.id == on_west and await west.claim(again, "west", "PJSIP/agent2",
                                                    "west:cti-c")
