"""A waiting caller moves to web chat / SMS through ``cti serve``'s IVR, end to end:
pjsua2 caller on the lab trunk (RFC 2833 DTMF) -> lab dialplan -> our FastAGI server
-> cti ports -> SMS on the test SMSC -> the caller writes -> an agent who becomes free
gets the chat with the voice leg and the IVR choices; the call counts as deflected."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from cti.lab import LabPbx
from tests.integration.ivr_cti.support import (
    TIMEOUT,
    Server,
    key_in,
    press_while_queued,
    until,
)
from tests.peers.phones import PhoneFactory

pytestmark = pytest.mark.integration

CALLER = "+79161234567"
REPLY = "Я лучше напишу: <b>заказ 5120</b> где?"
CHAT_TEXT = "And from the chat page: is order 5120 on its way?"


async def test_caller_deflects_to_chat_and_keeps_context(
    server: Server, lab_pbx: LabPbx, customer_phone_factory: PhoneFactory
) -> None:
    services = server.services
    customer_id = await server.customer("Иван Петров", CALLER)
    olga = await server.agent("olga", "PJSIP/agent1")
    await server.pause(olga, True)  # nobody free: the text conversation has to wait

    # The caller is a pjsua2 UA on the lab trunk (identified by its address,
    # 127.0.0.1) presenting the customer's number; every key is its own RFC 2833.
    caller = await customer_phone_factory.customer(0, username="caller")
    await caller.call(f"sip:100@{lab_pbx.host}:{lab_pbx.sip_port}", caller_id=CALLER,
                      caller_name="Ivan Petrov")
    await caller.wait_state("connected", TIMEOUT)
    await key_in(server.agi, caller, CALLER, "language", "1")  # English
    await key_in(server.agi, caller, CALLER, "menu", "3")  # support

    async def sms_sent() -> bool:
        return bool(await server.sms_links_to(CALLER))

    # Nobody is free: in the queue the caller presses 1 (SMS / web chat).
    await press_while_queued(caller, "1", lambda: server.waiting_channel(CALLER) is not None,
                             sms_sent)
    link = (await server.sms_links_to(CALLER))[0]
    assert link.startswith(services.settings.base_url() + "/c/"), link
    await caller.wait_state("disconnected", TIMEOUT)  # the IVR thanked the caller, hung up

    conv = await server.deflected(CALLER)
    assert conv is not None, "no queued chat conversation for the caller"
    assert conv.customer_id == customer_id and conv.status == "queued"
    voice = await services.conversations.get(conv.linked_to_id or 0)
    assert voice.channel == "voice" and voice.external_ref and voice.external_ref.startswith("lab:")

    # The caller answers the SMS instead of opening the link: it lands in the same
    # conversation (not in a new SMS one).
    await server.smsc.acall("POST", "/mo", {"source": CALLER, "destination": "CTI",
                                            "text": REPLY})

    async def reply_landed() -> bool:
        events = await server.history(customer_id)
        return any(e["kind"] == "message_in" and e["conversation_id"] == conv.id
                   for e in events)

    await until("the SMS reply in the deflected conversation", reply_landed)
    assert (await server.deflected(CALLER)) is not None

    # Then opens the link and writes in the web chat.
    path = urlsplit(link).path
    token = path.rsplit("/", 1)[1]
    page = await server.client.get(path)
    assert page.status == 200 and "text/html" in page.headers["Content-Type"]
    state = await server.client.get(f"/api/v1/chat/{token}")
    assert state.status == 200, await state.text()
    summary = (await state.json())["conversation"]
    assert summary["conversation_id"] == conv.id and summary["state"] == "waiting", summary
    chat = await server.client.ws_connect(f"/api/v1/chat/{token}/ws")
    try:
        await chat.receive_json(timeout=TIMEOUT)  # the snapshot
        await chat.send_json({"type": "message", "text": CHAT_TEXT})

        async def chat_landed() -> bool:
            events = await server.history(customer_id)
            return any(e["kind"] == "message_in" and e["payload"].get("text") == CHAT_TEXT
                       and e["conversation_id"] == conv.id for e in events)

        await until("the chat message in the deflected conversation", chat_landed)
    finally:
        await chat.close()

    await server.pause(olga, False)
    pop = await olga.next_frame("screen_pop")
    assert pop["channel"] == "chat"
    assert pop["conversation"]["id"] == conv.id
    kinds = [e["kind"] for e in pop["history"]]
    for kind in ("call_started", "call_queued", "ivr_choice", "call_deflected", "deflected",
                 "message_in"):
        assert kind in kinds, (kind, kinds)
    steps = {(e["payload"]["step"], e["payload"]["value"]) for e in pop["history"]
             if e["kind"] == "ivr_choice"}
    assert ("identify", "cli") in steps and ("menu", "support") in steps, steps
    assert ("queue_exit", "pressed:1") in steps, steps
    assert any(s == "queue_exit" and v == f"deflected:{conv.id}" for s, v in steps), steps
    text = [e["payload"]["text"] for e in pop["history"] if e["kind"] == "message_in"]
    assert sorted(text) == sorted([REPLY, CHAT_TEXT])  # stored as data, HTML and all

    async def call_ended() -> bool:
        return any(e["kind"] == "call_ended" for e in await server.history(customer_id))

    await until("the call's end in the history", call_ended)
    events = await server.history(customer_id)
    ended = [e for e in events if e["kind"] == "call_ended"]
    assert ended[0]["payload"]["outcome"] == "deflected"
    assert ended[0]["payload"]["deflected_to"] == conv.id
    assert not [e for e in events if e["kind"] == "call_abandoned"]
    assert (await services.conversations.get(voice.id)).status == "closed"
    # The supervisors' voice report (cti/reports) counts it deflected, not abandoned.
    resp = await server.client.get("/api/v1/reports/voice",
                                   headers={"Authorization": f"Bearer {server.admin}"})
    assert resp.status == 200, await resp.text()
    totals = (await resp.json())["totals"]
    assert (totals["calls"], totals["deflected"], totals["abandoned"]) == (1, 1, 0), totals
    assert server.agi.counters.flow_errors == 0
