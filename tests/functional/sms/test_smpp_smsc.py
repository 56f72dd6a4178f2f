"""The ESME against the real node-smpp test SMSC (tests/smsc/smsc.js)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sms_gateway.esme import SmppClient, SmppConfig
from sms_gateway.mo import IncomingSms
from sms_gateway.outbox import InMemoryOutbox, OutboundSms
from tests.peers.smsc import Smsc

pytestmark = pytest.mark.integration

CYRILLIC_200 = (
    "Здравствуйте! Ваш заказ номер 4521 принят и будет доставлен завтра с 10 до 14 часов. "
    "Если вам неудобно это время, ответьте на это сообщение, и оператор подберёт другое. Спасибо!"
    " Хорошего дня, ваш маг."
)


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Harness:
    def __init__(self, smsc: Smsc, **params: object) -> None:
        self.smsc = smsc
        self.outbox = InMemoryOutbox()
        self.statuses: list[tuple[str, str]] = []
        self.incoming: list[IncomingSms] = []
        defaults: dict[str, object] = {
            "reconnect_min": 0.05,
            "reconnect_max": 0.5,
            "response_timeout": 5.0,
            "enquire_link_interval": 5.0,
        }
        defaults.update(params)
        self.config = SmppConfig.from_url(smsc.url(), **defaults)
        self.client = SmppClient(
            self.config, self.outbox, on_status=self._on_status, on_incoming=self._on_incoming
        )

    async def _on_status(self, message: OutboundSms) -> None:
        self.statuses.append((message.key, message.status))

    async def _on_incoming(self, message: IncomingSms) -> None:
        self.incoming.append(message)

    async def status_of(self, key: str) -> str:
        message = await self.outbox.get(key)
        assert message is not None
        return message.status


@pytest.fixture
async def harness_factory(smsc: Smsc) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    started: list[Harness] = []

    async def make(**params: object) -> Harness:
        h = Harness(smsc, **params)
        await h.client.start()
        started.append(h)
        return h

    yield make
    for h in started:
        await h.client.stop()


async def test_cyrillic_200_chars_three_parts_reassembled_by_smsc(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    assert len(CYRILLIC_200) == 200
    h = await harness_factory()
    await h.client.send("k1", "+79001234567", CYRILLIC_200)
    await wait_until(lambda: _status_is(h, "k1", "submitted"), what="submitted")
    state = await smsc.state()
    submits = state["submits"]
    assert len(submits) == 3
    refs = {s["udh"]["ref"] for s in submits}
    assert len(refs) == 1
    assert sorted(s["udh"]["seq"] for s in submits) == [1, 2, 3]
    assert {s["udh"]["total"] for s in submits} == {3}
    assert all(s["data_coding"] == 8 and s["esm_class"] & 0x40 for s in submits)
    assert all(s["registered_delivery"] == 1 for s in submits)
    [ref] = refs
    for s in submits:  # node-smpp lists the elements without the UDHL octet
        assert s["udh_hex"] == f"0003{ref:02x}03{s['udh']['seq']:02x}"
    [message] = state["messages"].values()
    assert message["complete"] and message["text"] == CYRILLIC_200
    assert submits[0]["destination"] == "79001234567"


async def _status_is(h: Harness, key: str, status: str) -> bool:
    return await h.status_of(key) == status
