"""Inbound SMS/chat, receipts and call deflection, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from cti.history import timeline
from cti.hub import Subscription
from cti.services import Services
from pbx.changes import CallQueued
from tests.functional.cti.conftest import make_agent

pytestmark = pytest.mark.integration


def messages(sub: Subscription) -> list[dict]:  # type: ignore[type-arg]
    out = []
    while not sub.queue.empty():
        out.append(json.loads(sub.queue.get_nowait()))
    return out


async def test_inbound_sms_is_assigned_and_threaded(services: Services) -> None:
    agent = await make_agent(services, "agent1", skills=["ru"])
    sub = services.hub.subscribe(agent, None)
    conv = await services.inbox.receive("sms", "8 916 555-44-33", "Здравствуйте <b>!</b>")
    assert conv.owner_id == agent and conv.status == "assigned" and conv.contact == "+79165554433"
    (pop,) = messages(sub)
    assert pop["type"] == "screen_pop" and pop["channel"] == "sms"
    texts = [h["payload"].get("text") for h in pop["history"] if h["kind"] == "message_in"]
    assert texts == ["Здравствуйте <b>!</b>"]
    again = await services.inbox.receive("sms", "+79165554433", "ещё вопрос")
    assert again.id == conv.id
    (msg,) = messages(sub)
    assert (msg["type"], msg["text"], msg["conversation_id"]) == ("message", "ещё вопрос", conv.id)
    for _ in range(2):
        await services.inbox.delivery_status(conv.id, "msg-1", "delivered")
    await services.history.flush()
    events, _ = await timeline(services.sessions, conv.customer_id)
    assert [e.kind for e in events] == ["delivery_status", "message_in", "assigned", "message_in"]


async def test_deflected_call_keeps_its_place(services: Services) -> None:
    call = "pbx1:1700000100.1"
    await services.calls.handle(
        CallQueued("pbx1", call, "support", 3, "+79161230000", "", 1_700_000_100.0)
    )
    earlier, _ = await services.customers.identify("phone", "+79161239999")
    later_conv, _ = await services.conversations.open("sms", earlier.id, queue="support")
    deflected = await services.inbox.deflect_call(call, "sms")
    again = await services.inbox.deflect_call(call, "sms")
    assert again["id"] == deflected["id"]
    voice = await services.conversations.by_ref(call)
    assert voice is not None and deflected["linked_to_id"] == voice.id
    queue = await services.conversations.queued("support")
    ids = [c.id for c in queue]
    assert ids.index(deflected["id"]) < ids.index(later_conv.id)
