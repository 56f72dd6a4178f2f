"""Callback bookings on a real database (SQLite file and PostgreSQL): cti.callbacks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select, update

from cti.app import create_app
from cti.callbacks import (
    CALLBACKS,
    CallbackService,
    agent_is_free,
    callback_caller_id,
    earlier_caller_waits,
    may_free_a_turn,
    setup_callbacks,
)
from cti.config import Settings
from cti.customers import ContactInput
from cti.history import timeline
from cti.keys import SERVICES
from cti.models import CallbackBookingRow
from cti.services import Services
from ivr.ports import CallbackRequest, PortError
from pbx.changes import CallEnded, CallStarted, QueueMemberChanged
from pbx.link import AmiLink
from pbx.state import MemberSnapshot, QueueSnapshot, WaitingCaller
from tests.functional.cti.conftest import ADMIN, PASSWORD, make_agent

pytestmark = pytest.mark.integration

NO_LINKS: Mapping[str, AmiLink] = {}


def no_links() -> Mapping[str, AmiLink]:
    return NO_LINKS


def request(call_id: str, number: str = "8 916 123-45-67", entry: float = 1_700_000_000.0,
            customer_id: str | None = None, queue: str = "support") -> CallbackRequest:
    return CallbackRequest(call_id, number, queue, entry, customer_id, "en")


async def count(services: Services) -> int:
    async with services.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(CallbackBookingRow))
                   or 0)


async def test_booking_is_idempotent_per_call(services: Services) -> None:
    known = await services.customers.create("Иван Петров", [ContactInput("phone", "+79161234567")])
    cb = CallbackService(services, no_links)
    first = await cb.book_callback(request("1700000000.11", customer_id=str(known.id)))
    again = await cb.book_callback(request("1700000000.11", number="+7 999 000 0000"))
    assert again == first
    assert first.number == "+79161234567"
    assert await count(services) == 1
    row = await cb.get(int(first.booking_id))
    assert (row.status, row.attempts, row.customer_id, row.queue) == (
        "waiting", 0, known.id, "support")
    assert row.queue_entry_time.timestamp() == 1_700_000_000.0
    await services.history.flush()
    events, _ = await timeline(services.sessions, known.id, limit=50)
    booked = [e for e in events if e.kind == "callback_booked"]
    assert len(booked) == 1 and booked[0].payload["booking_id"] == row.id


async def test_unknown_caller_gets_a_customer_by_number(services: Services) -> None:
    cb = CallbackService(services, no_links)
    booking = await cb.book_callback(request("c-unknown", number="89035550011",
                                             customer_id="999999"))
    row = await cb.get(int(booking.booking_id))
    customer = await services.customers.lookup("phone", "+79035550011")
    assert customer is not None and row.customer_id == customer.id


async def test_invalid_number_or_queue_is_refused_with_a_reason(services: Services) -> None:
    cb = CallbackService(services, no_links)
    for number in ("12", "abc", "", "+7916123456789012345678901234567890", "8916\n1234567"):
        with pytest.raises(PortError, match="number"):
            await cb.book_callback(request("c-bad", number=number))
    assert await count(services) == 0
    with pytest.raises(PortError, match="queue"):
        await cb.book_callback(request("c-q", queue="support; Hangup"))


async def test_bookings_are_listed_in_queue_entry_order(services: Services) -> None:
    cb = CallbackService(services, no_links)
    ids = {}
    for call_id, entry in (("late", 300.0), ("first", 100.0), ("middle", 200.0)):
        booking = await cb.book_callback(
            request(call_id, number=f"+7916000000{int(entry) // 100}", entry=1.7e9 + entry))
        ids[call_id] = int(booking.booking_id)
    rows = await cb.list_bookings("waiting")
    assert [r.id for r in rows] == [ids["first"], ids["middle"], ids["late"]]
    cancelled = await cb.cancel(ids["middle"])
    assert cancelled.status == "cancelled"
    assert [r.id for r in await cb.list_bookings("waiting")] == [ids["first"], ids["late"]]


def member(interface: str, state: str = "NOT_INUSE", paused: bool = False,
           in_call: bool = False) -> MemberSnapshot:
    return MemberSnapshot(interface, interface, state, paused, "", in_call, 0)


def queue(waiting_since: tuple[float, ...], *members: MemberSnapshot) -> QueueSnapshot:
    waiting = tuple(WaitingCaller(f"lab:{i}", f"PJSIP/carrier-{i}", i + 1, "+7916", "", at, 0.0)
                    for i, at in enumerate(waiting_since))
    return QueueSnapshot("lab", "support", waiting, 0.0, members, 0, 0)


def test_turn_rules_on_live_queue_state() -> None:
    assert agent_is_free(member("PJSIP/agent1"))
    assert not agent_is_free(member("PJSIP/agent1", paused=True))
    assert not agent_is_free(member("PJSIP/agent1", in_call=True))
    assert not agent_is_free(member("PJSIP/agent1", state="UNAVAILABLE"))  # not logged in
    assert not agent_is_free(member("PJSIP/agent1", state="INUSE"))
    # a voice caller who came before the booking is served first; one who came later is not
    assert earlier_caller_waits(queue((100.0,), member("PJSIP/agent1")), 150.0)
    assert not earlier_caller_waits(queue((200.0,), member("PJSIP/agent1")), 150.0)
    assert not earlier_caller_waits(queue(()), 150.0)
    assert callback_caller_id('Evil" <1>\r\nAction: Hangup', "+79161234567") == (
        '"Callback Evil 1Action: Hangup" <+79161234567>')
    assert callback_caller_id("", "+79161234567") == '"Callback +79161234567" <+79161234567>'


async def test_restart_reloads_waiting_and_rechecks_calling(settings: Settings) -> None:
    svc = Services(settings)
    await svc.start()
    try:
        cb = CallbackService(svc, no_links)
        waiting = int((await cb.book_callback(request("r-1", number="+79160000001",
                                                      entry=1.7e9))).booking_id)
        calling = int((await cb.book_callback(request("r-2", number="+79160000002",
                                                      entry=1.7e9 + 5))).booking_id)
        async with svc.sessions() as session, session.begin():
            await session.execute(
                update(CallbackBookingRow).where(CallbackBookingRow.id == calling)
                .values(status="calling", pbx="lab", agent_interface="PJSIP/agent1",
                        dial_call_id="lab:cti-gone"))
    finally:
        await svc.stop()
    # a new process on the same database: nothing in memory survives
    svc = Services(settings)
    await svc.start()
    try:
        cb = CallbackService(svc, no_links)
        await cb.run_once()  # the PBX of the call is not linked: the call cannot be running
        rows = await cb.list_bookings()
        assert [(r.id, r.status) for r in rows] == [(waiting, "waiting"), (calling, "waiting")]
        assert rows[1].last_result == "interrupted" and rows[1].attempts == 0
        # dialled again after the retry delay, not at once (the phone may just have rung)
        assert rows[1].next_attempt_at.timestamp() > time.time() + cb.retry_delay - 60
    finally:
        await svc.stop()


@pytest.fixture
async def client(
    settings: Settings,
) -> AsyncIterator[tuple[TestClient[Any, Any], web.Application]]:
    app = create_app(settings)
    setup_callbacks(app)
    c: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await c.start_server()
    try:
        yield c, app
    finally:
        await c.close()


async def _token(c: TestClient[Any, Any], login: str, password: str) -> dict[str, str]:
    resp = await c.post("/api/v1/auth/token", json={"login": login, "password": password})
    assert resp.status == 200, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['token']}"}


async def test_rest_list_and_cancel(
    client: tuple[TestClient[Any, Any], web.Application],
) -> None:
    http, app = client
    services = app[SERVICES]
    await make_agent(services, "agent1")
    cb = app[CALLBACKS]
    booking = await cb.book_callback(request("rest-1", entry=time.time()))
    admin = await _token(http, *ADMIN)
    agent = await _token(http, "agent1", PASSWORD)
    resp = await http.get("/api/v1/callbacks", headers=agent)
    assert resp.status == 403
    resp = await http.get("/api/v1/callbacks?status=waiting", headers=admin)
    assert resp.status == 200, await resp.text()
    items = (await resp.json())["items"]
    assert [(i["id"], i["status"], i["number"]) for i in items] == [
        (int(booking.booking_id), "waiting", "+79161234567")]
    resp = await http.get("/api/v1/callbacks?status=bogus", headers=admin)
    assert resp.status == 422
    resp = await http.delete(f"/api/v1/callbacks/{booking.booking_id}", headers=agent)
    assert resp.status == 403
    resp = await http.delete(f"/api/v1/callbacks/{booking.booking_id}", headers=admin)
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    resp = await http.delete(f"/api/v1/callbacks/{booking.booking_id}", headers=admin)
    assert resp.status == 409
    resp = await http.delete("/api/v1/callbacks/424242", headers=admin)
    assert resp.status == 404


def member_change(device_state: str, *, paused: bool = False, in_call: bool = False,
                  removed: bool = False) -> QueueMemberChanged:
    return QueueMemberChanged("lab", "support", "PJSIP/agent1", paused, "", device_state,
                              in_call, 0, 0.0, removed)


def test_only_changes_that_may_free_a_turn_count() -> None:
    assert may_free_a_turn(member_change("NOT_INUSE"))
    assert not may_free_a_turn(member_change("INUSE", in_call=True))
    assert not may_free_a_turn(member_change("NOT_INUSE", paused=True))
    assert not may_free_a_turn(member_change("NOT_INUSE", removed=True))
    assert not may_free_a_turn(CallStarted("lab", "c1", "PJSIP/x-1", "1", "", "100", 0.0))
    assert may_free_a_turn(CallEnded("lab", "c1", 16, "Normal", "hangup", "support", None))


async def test_scheduler_passes_only_when_a_due_booking_may_go(settings: Settings) -> None:
    """The tick is O(1): a full pass (queue snapshots, claims) only when a booking is due
    and something that may free its turn happened since the last pass."""
    svc = Services(settings)
    await svc.start()
    try:
        cb = CallbackService(svc, no_links, first_delay=0.0, follow_check=3600.0)
        assert not await cb.tick_once()  # nothing booked: no pass
        await cb.on_change(member_change("NOT_INUSE"))
        assert not await cb.tick_once() and cb.passes == 0
        await cb.book_callback(request("tick-1", entry=time.time()))
        assert await cb.tick_once()  # the booking became due
        for _ in range(3):
            await cb.on_change(member_change("INUSE", in_call=True))  # churn of busy agents
            assert not await cb.tick_once()
        assert cb.passes == 1
        await cb.on_change(member_change("NOT_INUSE"))  # an agent is free: serve it
        assert await cb.tick_once() and cb.passes == 2
        assert not await cb.tick_once()
    finally:
        await svc.stop()
