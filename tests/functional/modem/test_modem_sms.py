"""GsmModem against the PTY AT modem emulator: SMS both ways, reports, calls, USSD."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sms_gateway.encoding import EmptyMessageError, MessageTooLongError
from sms_gateway.modem.driver import GsmModem
from sms_gateway.modem.errors import TpduError
from sms_gateway.modem.events import DeliveryReport, IncomingCall, SmsReceived
from tests.modem_emulator import ModemEmulator

from .conftest import EventLog, until

Online = tuple[ModemEmulator, GsmModem, EventLog]

CYRILLIC_200 = ("Здравствуйте! Ваш заказ №4521 передан в доставку, курьер позвонит "
                "за час до приезда. Спасибо, что выбрали нас. ") * 2
CYRILLIC_200 = CYRILLIC_200[:200]


async def test_send_multipart_ucs2_cyrillic(online: Online) -> None:
    emulator, modem, _ = online
    assert len(CYRILLIC_200) == 200
    result = await modem.send("+79161234567", CYRILLIC_200, message_id="m-1")
    assert len(result.references) == 3
    parts = emulator.submits
    assert [p.concat[2] if p.concat else None for p in parts] == [1, 2, 3]
    assert {p.concat[:2] if p.concat else None for p in parts} == {(parts[0].concat[0], 3)}  # type: ignore[index]
    assert all(p.ucs2 and p.status_report and p.destination == "+79161234567" for p in parts)
    assert "".join(p.text for p in parts) == CYRILLIC_200
    assert [p.reference for p in parts] == list(result.references)


async def test_send_multipart_gsm7_with_escapes(online: Online) -> None:
    emulator, modem, _ = online
    text = "Price {EUR} 10€ [ok] ~ " * 10  # escape pairs: 2 septets each, never split
    await modem.send("89161234567", text)
    parts = emulator.submits
    assert len(parts) > 1
    assert not any(p.ucs2 for p in parts)
    assert "".join(p.text for p in parts) == text
    assert parts[0].destination == "89161234567"


async def test_receive_multipart_ucs2_out_of_order_via_cmti(online: Online) -> None:
    emulator, _, log = online
    emulator.deliver_sms("+79160000001", CYRILLIC_200, order=[2, 0, 1])
    sms = await log.wait_for(SmsReceived)
    assert (sms.sender, sms.parts, sms.complete) == ("+79160000001", 3, True)
    assert sms.text == CYRILLIC_200
    await until(lambda: not emulator.stored())  # read with +CMGR, then deleted with +CMGD


async def test_receive_gsm7_multipart_via_cmt_with_ack(emulator_factory: Any,
                                                        modem_factory: Any) -> None:
    emulator = emulator_factory(csms=1)  # phase 2+: each +CMT must be acknowledged
    modem, log = await modem_factory(emulator, new_message_indication="cmt")
    await modem.wait_online()
    text = "Hello from the network side, this is a long GSM message. " * 9
    emulator.deliver_sms("+447700900123", text, order=[1, 0, 3, 2], ref16=True)
    sms = await log.wait_for(SmsReceived)
    assert (sms.text, sms.complete, sms.parts) == (text, True, 4)
    assert not emulator.stored()
    await until(lambda: emulator.acks == 4)


async def test_missing_part_delivered_incomplete_after_timeout(emulator: ModemEmulator,
                                                                modem_factory: Any) -> None:
    modem, log = await modem_factory(emulator, multipart_timeout=1.0)
    await modem.wait_online()
    emulator.deliver_sms("+79160000002", CYRILLIC_200, drop=frozenset({1}))
    sms = await log.wait_for(SmsReceived)
    assert not sms.complete
    assert sms.missing == (2,)
    assert sms.text.startswith(CYRILLIC_200[:67]) and sms.text.endswith(CYRILLIC_200[134:])


async def test_status_reports_combine_into_delivered(online: Online) -> None:
    emulator, modem, log = online
    result = await modem.send("+79161234567", CYRILLIC_200, message_id="m-dlr")
    for reference in result.references[:-1]:
        emulator.status_report(reference, "+79161234567", status=0)
    first = await log.wait_for(DeliveryReport)
    assert first.message_id == "m-dlr" and first.state == "delivered"
    assert first.message_state == "pending"
    emulator.status_report(result.references[-1], "+79161234567", status=0)
    last = await log.wait_for(DeliveryReport, lambda r: r.message_state != "pending")
    assert last.message_state == "delivered"


async def test_status_report_racing_the_cmgs_answer(emulator_factory: Any,
                                                    modem_factory: Any) -> None:
    emulator = emulator_factory(auto_status_report=0)
    modem, log = await modem_factory(emulator)
    await modem.wait_online()
    await modem.send("+79161234567", CYRILLIC_200, message_id="m-fast")
    report = await log.wait_for(DeliveryReport, lambda r: r.message_state == "delivered")
    assert report.message_id == "m-fast"
    assert all(r.message_id == "m-fast" for r in log.of(DeliveryReport))
    assert len(log.of(DeliveryReport)) == 3


async def test_status_report_for_an_unknown_reference(emulator: ModemEmulator,
                                                      modem_factory: Any) -> None:
    modem, log = await modem_factory(emulator, orphan_report_wait=0.5)
    await modem.wait_online()
    emulator.status_report(201, "+79161234567", status=0)
    report = await log.wait_for(DeliveryReport)
    assert (report.message_id, report.reference, report.state) == (None, 201, "delivered")


async def test_failed_status_report(online: Online) -> None:
    emulator, modem, log = online
    result = await modem.send("+79161234567", "short", message_id="m-fail")
    emulator.status_report(result.references[0], "+79161234567", status=0x41)
    report = await log.wait_for(DeliveryReport)
    assert (report.message_id, report.state, report.message_state) == ("m-fail", "failed",
                                                                        "failed")


async def test_incoming_call_event_with_number(online: Online) -> None:
    emulator, _, log = online
    emulator.ring("+79035550101", times=3)
    call = await log.wait_for(IncomingCall)
    assert call.number == "+79035550101"
    await asyncio.sleep(1.5)  # the repeated RINGs of the same call give no second event
    assert len(log.of(IncomingCall)) == 1


async def test_ussd_balance_in_ucs2(online: Online) -> None:
    _, modem, _ = online
    answer = await modem.ussd("*100#")
    assert (answer.status, answer.text) == (0, "Баланс: 123.45 руб.")


async def test_ussd_plain_gsm_answer(online: Online) -> None:
    emulator, modem, _ = online
    emulator.ussd_replies["*102#"] = ("Your number is +79161234567", 15)
    answer = await modem.ussd("*102#")
    assert answer.text == "Your number is +79161234567"


async def test_bad_input_is_refused_before_the_outbox(online: Online) -> None:
    emulator, modem, _ = online
    with pytest.raises(EmptyMessageError):
        await modem.send("+79161234567", "")
    with pytest.raises(TpduError):
        await modem.send("call me maybe", "hi")
    with pytest.raises(MessageTooLongError):
        await modem.send("+79161234567", "я" * (67 * 10 + 1))
    with pytest.raises(ValueError):
        await modem.ussd('*100#",1;ATD+1')
    assert modem.health().outbox == 0
    await modem.send("+79161234567", "я" * (67 * 10))  # exactly the configured 10 parts
    assert len(emulator.submits) == 10


async def test_status_reports_stored_on_a_modem_without_cds_routing(
    emulator_factory: Any, modem_factory: Any
) -> None:
    emulator = emulator_factory(supported_ds=frozenset({0, 2}))  # +CNMI ds=1 refused
    modem, log = await modem_factory(emulator)
    await modem.wait_online()
    result = await modem.send("+79161234567", "stored report", message_id="m-cdsi")
    emulator.status_report(result.references[0], "+79161234567", status=0)
    report = await log.wait_for(DeliveryReport)
    assert (report.message_id, report.message_state) == ("m-cdsi", "delivered")
    await until(lambda: not emulator.stored())  # read by +CMGR, deleted by +CMGD


async def test_incoming_call_with_withheld_number(online: Online) -> None:
    emulator, _, log = online
    emulator.ring(None)
    call = await log.wait_for(IncomingCall)
    assert call.number is None
