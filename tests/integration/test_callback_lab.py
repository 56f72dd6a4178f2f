"""Callbacks against the lab Asterisk: agent first, then the customer on the carrier.

agent1 is a pjsua2 phone registered with the lab PBX; the customer is a pjsua2
UA listening on the lab's carrier address (every outbound call lands there).
The CTI runs with its AMI link and the callback service; bookings are made
through ``CallbackService.book_callback`` (the port the IVR calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cti.app import create_app
from cti.auth import Role
from cti.callbacks import CALLBACKS, CallbackService, setup_callbacks
from cti.config import AmiServer, BootstrapAdmin, HostPort, Settings
from cti.customers import ContactInput
from cti.history import StoredEvent, timeline
from cti.keys import SERVICES
from cti.lab import LabPbx
from cti.links.ivr import IVR_SERVER
from cti.links.pbx import PBX_LINKS, setup_pbx_links
from cti.models import CallbackBookingRow
from cti.serve import build_app
from cti.services import Services
from ivr.ports import CallbackRequest
from pbx.actions import PbxError
from pbx.link import AmiLink, LinkSettings
from tests.integration.ivr_cti.support import agi_session, key_in, press_while_queued

pytestmark = pytest.mark.integration

T = 30.0
NUMBER = "+79161234567"
NAME = "Иван Петров"
SHOP_NUMBER = "+74950000000"
RETRY_DELAY = 3.0
FAST = LinkSettings(ping_interval=1.0, ping_timeout=3.0, backoff_min=0.2, backoff_max=1.0)


async def until(what: str, check: Callable[[], bool], within: float = T) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Lab:
    app: web.Application
    link: AmiLink
    callbacks: CallbackService
    services: Services
    agent1_id: int
    customer_id: int

    def member(self, interface: str, queue: str = "support") -> Any:
        q = self.link.queue(queue)
        return next((m for m in q.members if m.interface == interface), None) if q else None

    async def booking(self, booking_id: str) -> CallbackBookingRow:
        return await self.callbacks.get(int(booking_id))

    async def wait_status(self, booking_id: str, status: str, within: float = T) -> None:
        deadline = time.monotonic() + within
        while (row := await self.booking(booking_id)).status != status:
            if time.monotonic() > deadline:
                pytest.fail(f"booking {booking_id} is {row.status} ({row.last_result}), "
                            f"not {status}, after {within:g} s")
            await asyncio.sleep(0.2)

    async def history(self, kind: str) -> list[StoredEvent]:
        await self.services.history.flush()
        events, _ = await timeline(self.services.sessions, self.customer_id, limit=200)
        return [e for e in events if e.kind == kind]


@pytest.fixture
async def lab(tmp_path: Path, lab_pbx: LabPbx) -> AsyncIterator[Lab]:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}",
        data_dir=tmp_path,
        secret_key="test-secret",
        bootstrap_admin=BootstrapAdmin("admin", "admin-password"),
        history_flush_interval=0.01,
        callback_caller_id=f'"Shop" <{SHOP_NUMBER}>',
        ami=(AmiServer("lab", lab_pbx.host, lab_pbx.ami_port, lab_pbx.ami_user,
                       lab_pbx.ami_secret),),
    )
    app = create_app(settings)
    setup_pbx_links(app, FAST)
    setup_callbacks(app, attempts=2, retry_delay=RETRY_DELAY, agent_ring_timeout=15.0,
                    tick=0.5, follow_check=2.0, first_delay=0.0)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    link: AmiLink | None = None
    try:
        services = app[SERVICES]
        agent = await services.agents.create("agent1", "agent1-password", name="Agent One",
                                             role=Role.AGENT, endpoint="PJSIP/agent1",
                                             queues=["support"])
        customer = await services.customers.create(NAME, [ContactInput("phone", NUMBER)])
        link = app[PBX_LINKS]["lab"]
        await link.wait_up(T)
        # agent1 stays unavailable (paused) until the test makes it free
        await link.queue_pause("PJSIP/agent1", True, "support", "test setup")
        yield Lab(app, link, app[CALLBACKS], services, agent.id, customer.id)
    finally:
        if link is not None:
            with contextlib.suppress(PbxError):
                await link.queue_pause("PJSIP/agent1", False, "support")
        await client.close()


def pops(sub: Any) -> list[dict[str, Any]]:
    out = []
    while not sub.queue.empty():
        msg = json.loads(sub.queue.get_nowait())
        if msg.get("type") == "screen_pop":
            out.append(msg)
    return out


async def book(lab: Lab, call_id: str) -> str:
    booking = await lab.callbacks.book_callback(CallbackRequest(
        call_id, "8 916 123-45-67", "support", time.time() - 30, str(lab.customer_id), "en"))
    assert booking.number == NUMBER
    return booking.booking_id


async def make_free(lab: Lab) -> None:
    await lab.link.queue_pause("PJSIP/agent1", False, "support")
    await until("agent1 free in support", lambda: (m := lab.member("PJSIP/agent1")) is not None
                and m.device_state == "NOT_INUSE" and not m.paused and not m.in_call)


async def test_agent_rings_first_then_the_customer_and_both_connect(
    lab: Lab, lab_pbx: LabPbx, phone_factory: Any
) -> None:
    customer = await phone_factory.customer(lab_pbx.carrier_port)
    agent1 = await phone_factory("agent1")
    sub = lab.services.hub.subscribe(lab.agent1_id, None)
    booking_id = await book(lab, "cb-lab-1")
    await until("agent1 registered and paused", lambda: (m := lab.member("PJSIP/agent1"))
                is not None and m.device_state == "NOT_INUSE" and m.paused)
    await asyncio.sleep(1.5)  # several scheduler passes: a paused agent is not free
    assert (await lab.booking(booking_id)).status == "waiting"
    assert agent1.state == "idle"

    await make_free(lab)
    offer = await agent1.wait_for_incoming(T)
    assert customer.state == "idle"  # the agent first: the customer is not called yet
    assert "Callback" in offer.caller_name and offer.caller_number == NUMBER
    popped = pops(sub)
    assert popped and popped[-1]["interaction"]["kind"] == "callback"
    assert popped[-1]["customer"]["name"] == NAME
    row = await lab.booking(booking_id)
    assert (row.status, row.agent_interface) == ("calling", "PJSIP/agent1")

    await agent1.answer()
    incoming = await customer.wait_for_incoming(T)
    assert incoming.called_number == NUMBER
    # [callbacks] caller_id: the customer sees the contact center, not their own number
    assert (incoming.caller_number, incoming.caller_name) == (SHOP_NUMBER, "Shop")
    await customer.answer()
    await customer.wait_state("connected", T)
    await agent1.wait_state("connected", T)
    assert row.dial_call_id is not None
    call_ref = row.dial_call_id
    await until("both legs bridged in the PBX state", lambda: (s := lab.link.call(call_ref))
                is not None and s.state.value == "connected" and len(s.legs) == 2)
    await lab.wait_status(booking_id, "connected")

    await customer.hangup()
    await agent1.wait_state("disconnected", T)
    await lab.wait_status(booking_id, "done")
    attempts = await lab.history("callback_attempt")
    assert [(e.payload["result"], e.payload["counted"]) for e in attempts] == [("connected", True)]
    assert len(await lab.history("callback_connected")) == 1
    assert len(await lab.history("callback_booked")) == 1


async def test_customer_who_does_not_answer_is_retried_then_failed(
    lab: Lab, lab_pbx: LabPbx, phone_factory: Any
) -> None:
    customer = await phone_factory.customer(lab_pbx.carrier_port)
    agent1 = await phone_factory("agent1")
    await until("agent1 registered", lambda: (m := lab.member("PJSIP/agent1")) is not None
                and m.device_state == "NOT_INUSE")
    booking_id = await book(lab, "cb-lab-2")
    await make_free(lab)
    declined_at = []
    for attempt in (1, 2):
        await agent1.wait_for_incoming(T)
        assert customer.state in ("idle", "disconnected")
        await agent1.answer()
        await customer.wait_for_incoming(T)
        await customer.hangup()  # decline: the customer does not take the call
        declined_at.append(time.monotonic())
        await agent1.wait_state("disconnected", T)
        if attempt == 1:
            await lab.wait_status(booking_id, "waiting")
            row = await lab.booking(booking_id)
            assert row.attempts == 1 and row.last_result in ("no_answer", "busy")
    assert declined_at[1] - declined_at[0] >= RETRY_DELAY
    await lab.wait_status(booking_id, "failed")
    row = await lab.booking(booking_id)
    assert row.attempts == 2
    attempts = await lab.history("callback_attempt")
    assert sorted(e.payload["attempt"] for e in attempts if e.payload["counted"]) == [1, 2]
    assert len(await lab.history("callback_failed")) == 1
    assert not await lab.history("callback_connected")
    await asyncio.sleep(RETRY_DELAY + 1)  # failed is final: nobody is called again
    assert agent1.state in ("idle", "disconnected")


async def test_agent_who_does_not_answer_passes_the_callback_to_another_agent(
    lab: Lab, lab_pbx: LabPbx, phone_factory: Any
) -> None:
    # agent2 declines (agent1 is paused by the fixture); then agent1, free, takes it
    customer = await phone_factory.customer(lab_pbx.carrier_port)
    agent1 = await phone_factory("agent1")
    agent2 = await phone_factory("agent2")
    try:
        await lab.link.queue_pause("PJSIP/agent2", False, "support")
        await until("both agents registered", lambda: all(
            (m := lab.member(f"PJSIP/{a}")) is not None and m.device_state == "NOT_INUSE"
            for a in ("agent1", "agent2")))
        booking_id = await book(lab, "cb-lab-3")
        await agent2.wait_for_incoming(T)
        await make_free(lab)
        await agent2.hangup()  # agent2 declines: not an attempt against the customer
        await agent1.wait_for_incoming(T)
        assert customer.state == "idle"
        row = await lab.booking(booking_id)
        assert (row.status, row.agent_interface, row.attempts) == ("calling", "PJSIP/agent1", 0)
        await agent1.answer()
        await customer.wait_for_incoming(T)
        await customer.answer()
        await lab.wait_status(booking_id, "connected")
        await agent1.hangup()
        await lab.wait_status(booking_id, "done")
        results = [(e.payload["result"], e.payload["counted"])
                   for e in await lab.history("callback_attempt")]
        assert sorted(results) == [("agent_no_answer", False), ("connected", True)]
    finally:
        with contextlib.suppress(PbxError):
            await lab.link.queue_pause("PJSIP/agent2", False, "support")


async def test_a_restarted_service_follows_the_live_call_and_never_dials_twice(
    lab: Lab, lab_pbx: LabPbx, phone_factory: Any
) -> None:
    customer = await phone_factory.customer(lab_pbx.carrier_port)
    agent1 = await phone_factory("agent1")
    await until("agent1 registered", lambda: (m := lab.member("PJSIP/agent1")) is not None
                and m.device_state == "NOT_INUSE")
    booking_id = await book(lab, "cb-lab-4")
    await make_free(lab)
    await agent1.wait_for_incoming(T)
    await agent1.answer()
    await customer.wait_for_incoming(T)
    await lab.callbacks.stop()  # the server dies while the customer's phone rings
    calls = lab.services.calls
    calls.listeners.remove(lab.callbacks.on_change)
    assert (await lab.booking(booking_id)).status == "calling"
    links = lab.app[PBX_LINKS]
    again = CallbackService(lab.services, lambda: dict(links.links), attempts=2,
                            retry_delay=RETRY_DELAY, tick=0.5, follow_check=1.0,
                            first_delay=0.0)
    calls.listeners.append(again.on_change)
    await again.start()
    try:
        await customer.answer()
        await lab.wait_status(booking_id, "connected")
        await customer.hangup()
        await lab.wait_status(booking_id, "done")
        assert len(await lab.history("callback_connected")) == 1
        await asyncio.sleep(2.0)
        assert agent1.state in ("idle", "disconnected")  # nobody dialled a second time
    finally:
        await again.stop()
        calls.listeners.remove(again.on_change)


@pytest.fixture
async def served(tmp_path: Path, lab_pbx: LabPbx) -> AsyncIterator[tuple[web.Application, AmiLink]]:
    """The whole server (``cti serve``'s build_app): AMI link, FastAGI IVR, callbacks."""
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'served.sqlite3'}",
        data_dir=tmp_path / "data",
        secret_key="test-secret",
        bootstrap_admin=BootstrapAdmin("admin", "admin-password"),
        history_flush_interval=0.01,
        ami=(AmiServer("lab", lab_pbx.host, lab_pbx.ami_port, lab_pbx.ami_user,
                       lab_pbx.ami_secret),),
        agi_listen=HostPort(lab_pbx.agi_host, lab_pbx.agi_port),
    )
    app = build_app(settings)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    link: AmiLink | None = None
    try:
        link = app[PBX_LINKS]["lab"]
        await link.wait_up(T)
        await until("the IVR server", lambda: IVR_SERVER in app and bool(app[IVR_SERVER]))
        await link.queue_pause("PJSIP/agent1", True, "support", "test setup")
        yield app, link
    finally:
        if link is not None:
            with contextlib.suppress(PbxError):
                await link.queue_pause("PJSIP/agent1", False, "support")
        await client.close()


async def test_caller_presses_2_in_the_queue_then_agent_first_then_customer(
    served: tuple[web.Application, AmiLink], lab_pbx: LabPbx, phone_factory: Any,
) -> None:
    app, link = served
    services = app[SERVICES]
    callbacks = app[CALLBACKS]
    agi = app[IVR_SERVER][0]
    customer_row = await services.customers.create(NAME, [ContactInput("phone", NUMBER)])
    agent = await services.agents.create("agent1", "agent1-password", name="Agent One",
                                         endpoint="PJSIP/agent1", queues=["support"])
    sub = services.hub.subscribe(agent.id, None)
    customer = await phone_factory.customer(lab_pbx.carrier_port)
    agent1 = await phone_factory("agent1")
    await until("agent1 registered and paused", lambda: (m := _member(link, "PJSIP/agent1"))
                is not None and m.device_state == "NOT_INUSE" and m.paused)

    # The caller: a pjsua2 UA on the lab trunk (identified by 127.0.0.1) with the
    # customer's number, keying RFC 2833 itself: English (1), support (3); then it
    # waits in the queue (nobody free) and presses 2, and 1 to confirm its number.
    number = NUMBER.lstrip("+")
    caller = await phone_factory.customer(0, username="caller")
    await caller.call(f"sip:100@{lab_pbx.host}:{lab_pbx.sip_port}", caller_id=number,
                      caller_name="Ivan Petrov")
    await caller.wait_state("connected", T)
    await key_in(agi, caller, number, "language", "1", within=60)
    await key_in(agi, caller, number, "menu", "3", within=60)

    def queued() -> bool:
        q = link.queue("support")
        return any(w.caller_number == number for w in (q.waiting if q else ()))

    async def exiting() -> bool:
        return agi_session(agi, number, "queue-exit") is not None

    await press_while_queued(caller, "2", queued, exiting)
    await key_in(agi, caller, number, "callback_confirm", "1", script="queue-exit", within=60)
    await caller.wait_state("disconnected", T)  # the IVR booked, thanked and hung up
    booked = await callbacks.list_bookings()
    (row,) = booked
    assert (row.number, row.queue, row.status, row.customer_id) == (
        NUMBER, "support", "waiting", customer_row.id)
    assert row.conversation_id is not None  # linked to the voice call that booked
    await asyncio.sleep(1.0)
    assert agent1.state == "idle"  # agent1 is paused: not free yet

    await link.queue_pause("PJSIP/agent1", False, "support")
    offer = await agent1.wait_for_incoming(T)
    assert customer.state == "idle"  # agent first
    assert "Callback" in offer.caller_name
    popped = pops(sub)
    assert popped and popped[-1]["interaction"]["kind"] == "callback"
    assert popped[-1]["conversation"]["linked_to_id"] == row.conversation_id
    await agent1.answer()
    incoming = await customer.wait_for_incoming(T)
    assert incoming.called_number == NUMBER
    await customer.answer()
    await customer.wait_state("connected", T)
    await agent1.wait_state("connected", T)

    async def status_is(status: str) -> None:
        deadline = time.monotonic() + T
        while (await callbacks.get(row.id)).status != status:
            if time.monotonic() > deadline:
                pytest.fail(f"callback not {status} within {T:g} s")
            await asyncio.sleep(0.2)

    await status_is("connected")
    await agent1.hangup()
    await status_is("done")
    await services.history.flush()
    events, _ = await timeline(services.sessions, customer_row.id, limit=200)
    kinds = [e.kind for e in events]
    for kind in ("ivr_choice", "callback_booked", "callback_attempt", "callback_connected"):
        assert kind in kinds, (kind, kinds)


def _member(link: AmiLink, interface: str, queue: str = "support") -> Any:
    q = link.queue(queue)
    return next((m for m in q.members if m.interface == interface), None) if q else None
