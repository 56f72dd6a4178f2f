"""SMS end to end: the node-smpp SMSC <-> cti (ESME + DB outbox) <-> an agent's API and socket.

Runs on SQLite and PostgreSQL (the ``db_url`` fixture), the cti app on a free
loopback port, the real test SMSC (tests/smsc/smsc.js).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from cti.app import create_app
from cti.config import BootstrapAdmin, Settings, SmppLink
from cti.keys import SERVICES
from cti.links.sms import sms_links
from cti.services import Services
from pbx.changes import CallQueued
from sms_gateway.esme import SmppConfig
from tests.peers.smsc import Smsc

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
ADMIN = ("admin", "admin-password")
PASSWORD = "agent-password"
CUSTOMER = "+79161234567"
MO_TEXT = "Здравствуйте! Мой заказ номер 4711 до сих пор не пришёл, " * 2 + "помогите."
REPLY = ("Добрый день! Ваш заказ передан в доставку, курьер позвонит завтра утром. " * 3)[:200]
MAX_PARTS = 3


def tuning(link: SmppLink) -> SmppConfig:
    return SmppConfig(
        host=link.host,
        port=link.port,
        system_id=link.system_id,
        password=link.password,
        name=link.name,
        source_addr="CTI",
        max_parts=MAX_PARTS,
        reconnect_min=0.2,
        reconnect_max=1.0,
        enquire_link_interval=5.0,
        response_timeout=60.0,
    )


@dataclass
class Desk:
    client: TestClient[Any, Any]
    services: Services
    token: str
    ws: aiohttp.ClientWebSocketResponse

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def event(self, kind: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = await self.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            data: dict[str, Any] = json.loads(msg.data)
            if data.get("type") == kind:
                return data

    async def reply(self, conversation_id: int, text: str) -> aiohttp.ClientResponse:
        return await self.client.post(
            f"/api/v1/conversations/{conversation_id}/messages",
            json={"text": text},
            headers=self.auth(),
        )

    async def history(self, customer_id: int) -> list[dict[str, Any]]:
        resp = await self.client.get(
            f"/api/v1/customers/{customer_id}/history",
            params={"limit": "200"},
            headers=self.auth(),
        )
        assert resp.status == 200, await resp.text()
        events: list[dict[str, Any]] = (await resp.json())["events"]
        return events

    async def link(self) -> dict[str, Any]:
        resp = await self.client.get("/api/v1/health")
        link: dict[str, Any] = (await resp.json())["links"]["smpp:smpp1"]
        return link


async def until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def desk(db_url: str, tmp_path: Path, smsc: Smsc) -> AsyncIterator[Desk]:
    settings = Settings(
        db_url=db_url,
        data_dir=tmp_path,
        secret_key="test-secret",
        bootstrap_admin=BootstrapAdmin(*ADMIN),
        history_flush_interval=0.01,
        smpp=(SmppLink("smpp1", "127.0.0.1", smsc.smpp_port, "cti", "secret"),),
    )
    app = create_app(settings)
    app.cleanup_ctx.append(sms_links(tuning))
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        resp = await client.post(
            "/api/v1/auth/token", json={"login": ADMIN[0], "password": ADMIN[1]}
        )
        admin = (await resp.json())["token"]
        resp = await client.post(
            "/api/v1/agents",
            json={"login": "olga", "password": PASSWORD, "name": "Ольга"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert resp.status == 201, await resp.text()
        resp = await client.post("/api/v1/auth/token", json={"login": "olga", "password": PASSWORD})
        token = (await resp.json())["token"]
        ws = await client.ws_connect("/api/v1/events", params={"token": token})
        d = Desk(client, app[SERVICES], token, ws)
        assert (await d.event("hello"))["type"] == "hello"

        async def bound() -> bool:
            return bool((await d.link())["up"])

        await until("the SMPP link to bind", bound)
        yield d
        await ws.close()
    finally:
        await client.close()


def submits_of(smsc: Smsc, text: str) -> list[dict[str, Any]]:
    """Every recorded submit_sm (all SMSC runs) that carries a part of ``text``."""
    return [s for s in smsc.recorded_submits() if s["text"] and s["text"] in text]


async def reassembled(smsc: Smsc, text: str) -> dict[str, Any] | None:
    for message in (await smsc.state())["messages"].values():
        if message.get("complete") and message.get("text") == text:
            return dict(message)
    return None


async def test_sms_in_reply_out_delivered(desk: Desk, smsc: Smsc) -> None:
    sent = await smsc.acall(
        "POST",
        "/mo",
        {"source": CUSTOMER, "destination": "CTI", "text": MO_TEXT, "order": [2, 1]},
    )
    assert sent["sent"] == 2  # two UCS-2 parts, delivered out of order
    pop = await desk.event("screen_pop")
    assert pop["channel"] == "sms"
    conv = pop["conversation"]
    assert conv["channel"] == "sms" and conv["contact"] == CUSTOMER
    assert conv["status"] == "assigned"
    inbound = [h["payload"]["text"] for h in pop["history"] if h["kind"] == "message_in"]
    assert inbound == [MO_TEXT]
    customer_id = pop["customer"]["id"]

    too_long = await desk.reply(conv["id"], "Ж" * (67 * MAX_PARTS + 1))
    assert too_long.status == 422
    error = (await too_long.json())["error"]
    assert error["details"]["max_parts"] == MAX_PARTS and error["details"]["parts_needed"] == 4

    resp = await desk.reply(conv["id"], REPLY)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["status"] == "queued"

    async def arrived() -> bool:
        return await reassembled(smsc, REPLY) is not None

    await until("the SMSC to reassemble the reply", arrived)
    message = await reassembled(smsc, REPLY)
    assert message is not None and message["total"] == 3
    parts = submits_of(smsc, REPLY)
    assert len(parts) == 3
    assert sorted(p["udh"]["seq"] for p in parts) == [1, 2, 3]
    assert {p["udh"]["total"] for p in parts} == {3} and len({p["udh"]["ref"] for p in parts}) == 1
    assert {p["data_coding"] for p in parts} == {8}
    assert {p["destination"] for p in parts} == {CUSTOMER.lstrip("+")}
    assert {p["registered_delivery"] for p in parts} == {1}

    for index, message_id in enumerate(sorted(message["message_ids"].values())):
        await smsc.acall(
            "POST", "/dlr", {"message_id": message_id, "stat": "DELIVRD", "tlv": index == 0}
        )
    status = await desk.event("delivery_status")
    assert status["conversation_id"] == conv["id"] and status["status"] == "delivered"

    async def recorded() -> bool:
        kinds = {e["kind"] for e in await desk.history(customer_id)}
        return {"message_in", "message_out", "delivery_status"} <= kinds

    await until("the history to show the whole exchange", recorded)
    events = await desk.history(customer_id)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_kind.setdefault(event["kind"], []).append(event["payload"])
    assert [p["text"] for p in by_kind["message_in"]] == [MO_TEXT]
    assert [p["text"] for p in by_kind["message_out"]] == [REPLY]
    ref = status["message_ref"]
    assert [p["status"] for p in by_kind["delivery_status"]] == ["delivered"]
    assert by_kind["delivery_status"][0]["message_ref"] == ref
    steps = sorted(p["status"] for p in by_kind["sms_status"] if p["message_ref"] == ref)
    assert steps == ["delivered", "queued", "submitted"]
    link = await desk.link()
    assert link["kind"] == "smpp" and link["state"] == "bound" and link["unknown_receipts"] == 0


async def test_smsc_restart_loses_nothing_and_duplicates_only_in_flight(
    desk: Desk, smsc: Smsc
) -> None:
    await smsc.acall("POST", "/mo", {"source": CUSTOMER, "destination": "CTI", "text": "Алло"})
    conv = (await desk.event("screen_pop"))["conversation"]
    customer_id = conv["customer_id"]
    in_flight = "Первый ответ: " + "ждём подтверждения " * 5  # 2 UCS-2 parts
    queued = "Второй ответ, отправлен пока SMSC лежит: " + "всё в порядке " * 4

    # The SMSC takes the parts of the first reply and never answers them ...
    await smsc.configure(resp_delay_ms=600_000)
    resp = await desk.reply(conv["id"], in_flight)
    assert resp.status == 201, await resp.text()

    async def taken() -> bool:
        return len(submits_of(smsc, in_flight)) == 2

    await until("the SMSC to receive the first reply", taken)
    # ... and dies; the second reply is queued while it is down.
    smsc.kill()

    async def down() -> bool:
        return not (await desk.link())["up"]

    await until("the link to notice the SMSC died", down)
    resp = await desk.reply(conv["id"], queued)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["status"] == "queued"
    smsc.start()

    async def both_arrived() -> bool:
        return (
            await reassembled(smsc, in_flight) is not None
            and await reassembled(smsc, queued) is not None
        )

    await until("both replies to reach the restarted SMSC", both_arrived)
    first = submits_of(smsc, in_flight)
    second = submits_of(smsc, queued)
    # Only the parts in flight without a response may be sent twice; nothing else.
    assert len(first) == 4, first
    assert len(second) == 2 and sorted(p["udh"]["seq"] for p in second) == [1, 2]
    link = await desk.link()
    assert link["resent_after_drop"] == 2 and link["up"]

    for text in (in_flight, queued):
        message = await reassembled(smsc, text)
        assert message is not None
        for message_id in message["message_ids"].values():
            await smsc.acall("POST", "/dlr", {"message_id": message_id, "stat": "DELIVRD"})

    async def delivered() -> bool:
        events = await desk.history(customer_id)
        return sum(1 for e in events if e["kind"] == "delivery_status") == 2

    await until("both replies to be delivered", delivered)
    events = await desk.history(customer_id)
    outs = sorted(e["payload"]["text"] for e in events if e["kind"] == "message_out")
    assert outs == sorted([in_flight, queued])
    finals = [e["payload"]["status"] for e in events if e["kind"] == "delivery_status"]
    assert finals == ["delivered", "delivered"]


async def test_sms_from_a_caller_waiting_in_queue_joins_the_call(desk: Desk, smsc: Smsc) -> None:
    call = "pbx1:1700000200.3"
    await desk.services.calls.handle(
        CallQueued("pbx1", call, "support", 1, CUSTOMER, "", 1_700_000_200.0)
    )
    voice = await desk.services.conversations.by_ref(call)
    assert voice is not None and voice.status == "queued"
    mo = {"source": CUSTOMER, "destination": "CTI", "text": "Я в очереди"}
    await smsc.acall("POST", "/mo", mo)
    pop = await desk.event("screen_pop")
    assert pop["channel"] == "sms"
    conv = pop["conversation"]
    assert conv["linked_to_id"] == voice.id and conv["status"] == "assigned"
    inbound = [h["payload"]["text"] for h in pop["history"] if h["kind"] == "message_in"]
    assert inbound == ["Я в очереди"]


async def test_sms_without_a_usable_sender_is_answered_and_dropped(desk: Desk, smsc: Smsc) -> None:
    await smsc.acall("POST", "/mo", {"source": "", "destination": "CTI", "text": "без номера"})
    await smsc.acall("POST", "/mo", {"source": CUSTOMER, "destination": "CTI", "text": "с номером"})
    pop = await desk.event("screen_pop")
    inbound = [h["payload"]["text"] for h in pop["history"] if h["kind"] == "message_in"]
    assert inbound == ["с номером"]

    async def answered() -> bool:
        return len((await smsc.state())["deliver_resps"]) == 2

    await until("the SMSC to get both deliver_sm_resp", answered)
    # Both accepted (ESME_ROK): a refusal would make the SMSC redeliver forever.
    assert (await smsc.state())["deliver_resps"] == [0, 0]
    assert (await desk.link())["up"]
