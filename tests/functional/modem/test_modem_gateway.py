"""ModemGateway (the durable outbox in front of GsmModem) against the PTY modem emulator.

The emulator returns each part's status report right after its +CMGS answer,
as a fast network does: the report of the last part and the driver's "every
part accepted" reach the gateway together, and both write the message's row.
With a store that takes time per read and write (a database on a loaded host),
whichever order the two writes land in, the row must end "delivered" with the
parts' SMSC ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sms_gateway.modem.driver import GsmModem, ModemConfig
from sms_gateway.modem.gateway import ModemGateway
from sms_gateway.outbox import InMemoryOutbox, OutboundSms
from tests.modem_emulator import ModemEmulator

from .conftest import FAST, until

TEXT = "Добрый день! Заказ 4711 передан курьеру, он позвонит завтра до 12:00. Спасибо!" * 2


class SlowOutbox(InMemoryOutbox):
    """The in-memory outbox with a pause before each read and each write lands."""

    def __init__(self, read_delay: float, write_delay: float) -> None:
        super().__init__()
        self.read_delay = read_delay
        self.write_delay = write_delay

    async def get(self, key: str) -> OutboundSms | None:
        await asyncio.sleep(self.read_delay)
        return await super().get(key)

    async def update(self, message: OutboundSms) -> None:
        await asyncio.sleep(self.write_delay)
        await super().update(message)


@pytest.mark.parametrize(("read_delay", "write_delay"),
                         [(0.0, 0.0), (0.05, 0.0), (0.0, 0.05), (0.05, 0.05)])
async def test_the_last_report_and_the_submit_both_land(
    emulator_factory: Callable[..., ModemEmulator], read_delay: float, write_delay: float,
) -> None:
    emulator = emulator_factory(auto_status_report=0)  # TP-ST 0: delivered
    outbox = SlowOutbox(read_delay, write_delay)
    statuses: list[str] = []

    async def on_status(message: OutboundSms) -> None:
        statuses.append(message.status)

    modem = GsmModem(ModemConfig(name="gsm1", port=str(emulator.link), **FAST))  # type: ignore[arg-type]
    gateway = ModemGateway(modem, outbox, on_status=on_status)
    await gateway.start()
    try:
        async with asyncio.timeout(20):
            await modem.wait_online()
        sent = await gateway.send("m-1", "+79161234567", TEXT)
        assert sent.parts == 3 and sent.status == "queued"

        await until(lambda: len(emulator.submits) == 3)
        async with asyncio.timeout(20):  # both writers done: each calls on_status after its write
            while not {"submitted", "delivered"} <= set(statuses):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        stored = await InMemoryOutbox.get(outbox, "m-1")
        assert stored is not None
        assert stored.status == "delivered", (stored, statuses)
        assert list(stored.smsc_ids) == [f"gsm1:{s.reference}" for s in emulator.submits]
        assert stored.part_states == ("delivered",) * 3, stored
    finally:
        await gateway.stop()
