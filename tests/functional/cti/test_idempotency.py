"""Reply idempotency: Idempotency-Key on POST /conversations/{id}/messages (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from cti.models import HistoryEvent
from tests.functional.cti.conftest import Api

pytestmark = pytest.mark.integration


class CountingSender:
    """A real OutboundSender that records every send; ``gate`` holds sends until set."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False

    async def send(self, channel: str, contact: str, text: str, conversation_id: int) -> str:
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise OSError("gateway down")
        self.sent.append((conversation_id, text))
        return "queued"


async def owned_sms(api: Api, login: str = "agent1") -> tuple[dict[str, str], int]:
    headers = api.auth(await api.agent(login))
    svc = api.services
    customer, _ = await svc.customers.identify("phone", "+79160000042")
    conv, _ = await svc.conversations.open("sms", customer.id, contact="+79160000042")
    resp = await api.client.post(f"/api/v1/conversations/{conv.id}/take", headers=headers)
    assert resp.status == 200, await resp.text()
    return headers, conv.id


def sender(api: Api) -> CountingSender:
    out = CountingSender()
    api.services.conversations.outbound = out
    return out


async def reply(api: Api, conv: int, headers: dict[str, str], text: str, key: str | None) -> Any:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return await api.client.post(
        f"/api/v1/conversations/{conv}/messages", json={"text": text}, headers={**headers, **extra}
    )


async def test_same_key_replays_without_sending_again(api: Api) -> None:
    out = sender(api)
    headers, conv = await owned_sms(api)
    first = await reply(api, conv, headers, "Ваш заказ готов", "order-42")
    assert first.status == 201, await first.text()
    body = await first.json()
    assert body["status"] == "queued" and isinstance(body["message_id"], int)
    again = await reply(api, conv, headers, "Ваш заказ готов", "order-42")
    assert again.status == 200 and await again.json() == body
    assert out.sent == [(conv, "Ваш заказ готов")]
    other_key = await reply(api, conv, headers, "Ваш заказ готов", "order-43")
    assert other_key.status == 201
    assert (await other_key.json())["message_id"] != body["message_id"]
    assert len(out.sent) == 2
    no_key = await reply(api, conv, headers, "без ключа", None)
    assert no_key.status == 201 and len(out.sent) == 3
    async with api.services.sessions() as session:
        rows = list(
            await session.scalars(
                select(HistoryEvent).where(HistoryEvent.dedup_key == f"reply:{conv}:order-42")
            )
        )
    assert [r.payload["status"] for r in rows] == ["queued"]


async def test_different_body_same_key_is_refused(api: Api) -> None:
    out = sender(api)
    headers, conv = await owned_sms(api)
    assert (await reply(api, conv, headers, "first", "k1")).status == 201
    reused = await reply(api, conv, headers, "second", "k1")
    assert reused.status == 422
    err = (await reused.json())["error"]
    assert err["code"] == "idempotency_key_reused"
    assert err["details"]["field"] == "Idempotency-Key"
    assert out.sent == [(conv, "first")]


@pytest.mark.parametrize("key", ["", "x" * 129, "ключ", "tab\there", "café"])
async def test_bad_keys_are_422(api: Api, key: str) -> None:
    out = sender(api)
    headers, conv = await owned_sms(api)
    resp = await reply(api, conv, headers, "hello", key)
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["details"]["field"] == "Idempotency-Key"
    assert out.sent == []
    longest = await reply(api, conv, headers, "hello", "~" * 128)
    assert longest.status == 201


async def test_two_concurrent_requests_send_once(api: Api) -> None:
    out = sender(api)
    headers, conv = await owned_sms(api)
    out.gate.clear()
    first = asyncio.create_task(reply(api, conv, headers, "one send only", "race"))
    second = asyncio.create_task(reply(api, conv, headers, "one send only", "race"))
    await asyncio.sleep(0.3)
    assert not first.done() and not second.done()
    out.gate.set()
    a, b = await asyncio.wait_for(asyncio.gather(first, second), timeout=30)
    assert sorted([a.status, b.status]) == [200, 201]
    assert await a.json() == await b.json()
    assert out.sent == [(conv, "one send only")]


async def test_failed_send_can_be_retried_with_the_same_key(api: Api) -> None:
    out = sender(api)
    headers, conv = await owned_sms(api)
    out.fail_next = True
    failed = await reply(api, conv, headers, "retry me", "retry-key")
    assert failed.status == 500
    assert out.sent == []
    ok = await reply(api, conv, headers, "retry me", "retry-key")
    assert ok.status == 201 and out.sent == [(conv, "retry me")]


async def test_another_agent_gets_403_not_the_replay(api: Api) -> None:
    out = sender(api)
    headers, conv = await owned_sms(api)
    assert (await reply(api, conv, headers, "mine", "k")).status == 201
    intruder = api.auth(await api.agent("agent2"))
    resp = await reply(api, conv, intruder, "mine", "k")
    assert resp.status == 403 and len(out.sent) == 1
