"""cti's IVR ports over the real services (SQLite and PostgreSQL): identification by number,
account and order number, latest order, IVR history round trip, recent AHT,
deflection bookkeeping for a call whose voice conversation is known."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from cti.config import Settings
from cti.customers import ContactInput
from cti.ivr_ports import (
    CustomerDirectoryPort,
    IvrHistoryPort,
    LiveQueueStatistics,
    OrderServicePort,
    TextDeflection,
)
from cti.models import Conversation
from cti.services import Services
from ivr.ports import DeflectionRequest, IvrChoice, OrderState, PortError
from pbx.changes import CallEnded, CallStarted, Durations
from pbx.link import AmiLink

pytestmark = pytest.mark.integration

PHONE = "+79161234567"
ORDERS = [
    {"id": "4711", "state": "delivered", "placed_at": "2026-10-02T09:15:00+00:00"},
    {"id": "5120", "state": "shipped", "placed_at": "2026-11-18T17:40:00+00:00"},
    {"id": "4999", "state": "cancelled", "placed_at": "2026-09-01T10:00:00+00:00"},
]


@pytest.fixture
async def services(db_url: str, tmp_path: Path) -> AsyncIterator[Services]:
    settings = Settings(db_url=db_url, data_dir=tmp_path, secret_key="test-secret",
                        history_flush_interval=0.01)
    svc = Services(settings)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


def no_links() -> list[AmiLink]:
    return []


async def test_customer_directory_and_orders(services: Services) -> None:
    row = await services.customers.create("Иван Петров", [ContactInput("phone", PHONE)],
                                          external_id="100200300",
                                          custom={"orders": ORDERS, "language": "ru"})
    await services.customers.identify("phone", "+79035550000")  # provisional
    directory = CustomerDirectoryPort(services)
    found = await directory.find_by_phone("89161234567")  # national format, region RU
    assert found is not None and found.customer_id == str(row.id) and found.language == "ru"
    assert found.phone == PHONE
    assert await directory.find_by_phone("+79035550000") is None  # never confirmed
    assert await directory.find_by_phone("not a number") is None
    by_account = await directory.find_by_reference("100200300")
    by_order = await directory.find_by_reference("4999")
    assert by_account is not None and by_order is not None
    assert by_account.customer_id == by_order.customer_id == str(row.id)
    assert await directory.find_by_reference("47") is None  # a substring is no order
    assert await directory.find_by_reference("12a") is None
    assert await directory.find_by_reference("9" * 40) is None

    orders = OrderServicePort(services)
    latest = await orders.latest_order(str(row.id))
    assert latest is not None and (latest.order_id, latest.state) == ("5120", OrderState.SHIPPED)
    assert await orders.latest_order("999999") is None
    assert await orders.latest_order("x") is None


async def test_history_round_trip_and_recent_aht(services: Services) -> None:
    row = await services.customers.create("Anna", [ContactInput("phone", PHONE)])
    history = IvrHistoryPort(services, no_links)
    choices = [IvrChoice("1700.1", step, value, 1000.0 + i, str(row.id), PHONE)
               for i, (step, value) in enumerate([("language", "en"), ("menu", "support")])]
    for choice in choices:
        await history.record_choice(choice)
        await history.record_choice(choice)  # the same step twice is kept once
    await history.record_choice(IvrChoice("1700_1", "menu", "sales", 1005.0, str(row.id)))
    assert list(await history.choices_for_call("1700.1")) == choices

    stats = LiveQueueStatistics(services, no_links)
    assert await stats.recent_aht("support") is None
    for n, (queue, talk, hold) in enumerate([("support", 100.0, 20.0), ("support", 200.0, 0.0),
                                             ("sales", 999.0, 0.0), ("support", 0.0, 0.0)]):
        call_id = f"lab:{n}"
        await services.calls.handle(CallStarted("lab", call_id, "PJSIP/trunk-1", PHONE, "",
                                                "100", 2000.0 + n))
        await services.calls.handle(CallEnded("lab", call_id, 16, "Normal", "hangup", queue,
                                              "PJSIP/agent1",
                                              Durations(5.0, 1.0, talk, hold), 2100.0 + n))
    await services.history.flush()
    assert await stats.recent_aht("support") == pytest.approx(160.0)  # (120 + 200) / 2
    snapshot = await stats.queue_stats("support", "PJSIP/trunk-1")
    assert (snapshot.waiting, snapshot.agents_logged_in, snapshot.position) == (0, 0, None)


async def test_deflection_without_sms_gateway_fails_cleanly(services: Services) -> None:
    """No SMS gateway: PortError (the flow re-queues the caller), the opened chat
    conversation is closed, the call is not marked deflected, a retry starts afresh."""
    row = await services.customers.create("Anna", [ContactInput("phone", PHONE)])
    deflection = TextDeflection(services, no_links)
    request = DeflectionRequest("1700.9", "89161234567", "support", 1000.0, str(row.id), "en",
                                ())
    for _ in range(2):
        with pytest.raises(PortError, match="no_gateway"):
            await deflection.deflect_to_text(request)
    assert await services.conversations.queued("support") == []
    assert await services.calls.deflected_to("1700.9") is None
    await services.history.flush()
    async with services.sessions() as session:
        convs = list(await session.scalars(select(Conversation)))
    assert [(c.channel, c.status, c.contact) for c in convs] == [("chat", "closed", PHONE)] * 2
