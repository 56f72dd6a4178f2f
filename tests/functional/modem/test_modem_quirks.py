"""Quirks of real modems, SIM PIN, +CMS ERROR handling and unplugging, on the PTY emulator."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from sms_gateway.modem.driver import GsmModem, SendFailed
from sms_gateway.modem.errors import CmsError
from sms_gateway.modem.events import HealthChanged, IncomingCall, SmsReceived
from tests.modem_emulator import ModemEmulator

from .conftest import EventLog, until

Online = tuple[ModemEmulator, GsmModem, EventLog]
LONG_RU = "Привет! Это длинное сообщение для проверки отправки по частям. " * 3


async def test_echo_that_ignores_ate0_and_urc_inside_a_response(emulator_factory: Any,
                                                                 modem_factory: Any) -> None:
    emulator = emulator_factory(force_echo=True)
    modem, log = await modem_factory(emulator)
    async with asyncio.timeout(20):
        await modem.wait_online()
    emulator.inject_urc_in_next_response('+CLIP: "+79990001122",145,,,,0')
    result = await modem.send("+79161234567", "echo check")
    assert result.references == (emulator.submits[0].reference,)
    assert emulator.submits[0].text == "echo check"
    call = await log.wait_for(IncomingCall)
    assert call.number == "+79990001122"
    emulator.deliver_sms("+79160000003", LONG_RU, order=[1, 2, 0])
    sms = await log.wait_for(SmsReceived)
    assert sms.text == LONG_RU


async def test_slow_prompt(emulator_factory: Any, modem_factory: Any) -> None:
    emulator = emulator_factory(prompt_delay=1.0)
    modem, _ = await modem_factory(emulator, prompt_timeout=10.0)
    await modem.wait_online()
    await modem.send("+79161234567", LONG_RU)
    assert "".join(p.text for p in emulator.submits) == LONG_RU


@pytest.mark.parametrize(("code", "meaning"), [(304, "invalid PDU mode parameter"),
                                               (330, "SMSC address unknown")])
async def test_permanent_cms_error_fails_the_message(online: Online, code: int,
                                                     meaning: str) -> None:
    emulator, modem, _ = online
    emulator.fail_next(f"+CMS ERROR: {code}", command="AT+CMGS")
    with pytest.raises(SendFailed) as failed:
        await modem.send("+79161234567", "will fail", message_id="m-bad")
    assert isinstance(failed.value.cause, CmsError)
    assert (failed.value.cause.code, failed.value.cause.meaning) == (code, meaning)
    assert not failed.value.cause.transient
    assert emulator.submits == []
    assert modem.health().outbox == 0
    await modem.send("+79161234567", "next one goes")  # the outbox moved on
    assert [s.text for s in emulator.submits] == ["next one goes"]


async def test_transient_cms_error_is_retried_and_sent_once(online: Online) -> None:
    emulator, modem, _ = online
    emulator.fail_next("+CMS ERROR: 500", command="AT+CMGS")
    emulator.fail_next("+CMS ERROR: 332", command="AT+CMGS")
    result = await modem.send("+79161234567", "retry me")
    assert [s.text for s in emulator.submits] == ["retry me"]
    assert result.references == (emulator.submits[0].reference,)


async def test_transient_errors_exhaust_attempts(online: Online) -> None:
    emulator, modem, _ = online
    for _ in range(3):
        emulator.fail_next("+CMS ERROR: 500", command="AT+CMGS")
    with pytest.raises(SendFailed) as failed:
        await modem.send("+79161234567", "never")
    assert isinstance(failed.value.cause, CmsError) and failed.value.cause.code == 500
    assert emulator.submits == []


async def test_modem_answering_error_to_an_optional_command(emulator: ModemEmulator,
                                                            modem_factory: Any) -> None:
    emulator.fail_next("ERROR", command="AT+CLIP")
    modem, _ = await modem_factory(emulator)
    async with asyncio.timeout(20):
        await modem.wait_online()
    assert modem.health().up


async def test_sim_pin_flow_never_logs_the_pin(emulator_factory: Any, modem_factory: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    emulator = emulator_factory(pin="4931")
    modem, _ = await modem_factory(emulator, pin="4931")
    async with asyncio.timeout(20):
        await modem.wait_online()
    assert modem.health().sim == "ready"
    assert "AT+CPIN=<redacted>" in emulator.commands
    assert "4931" not in caplog.text
    assert "4931" not in repr(modem.config)
    await modem.send("+79161234567", "after PIN")
    assert emulator.submits[0].text == "after PIN"


async def test_wrong_pin_is_tried_once(emulator_factory: Any, modem_factory: Any) -> None:
    emulator = emulator_factory(pin="4931")
    modem, log = await modem_factory(emulator, pin="0000")
    await log.wait_for(HealthChanged, lambda e: e.health.sim == "PIN refused")
    # the supervisor keeps retrying the port, but never burns a second PIN attempt
    await until(lambda: emulator.commands.count("AT+CPIN?") >= 3)
    assert emulator.commands.count("AT+CPIN=<redacted>") == 1
    assert not modem.health().up


async def test_missing_pin(emulator_factory: Any, modem_factory: Any) -> None:
    emulator = emulator_factory(pin="4931")
    _, log = await modem_factory(emulator)
    await log.wait_for(HealthChanged, lambda e: e.health.sim == "PIN required")
    assert "AT+CPIN=<redacted>" not in emulator.commands


async def test_health_signal_and_registration(online: Online) -> None:
    emulator, modem, log = online
    health = modem.health()
    assert (health.up, health.signal_rssi, health.signal_dbm) == (True, 20, -73)
    assert (health.registration, health.operator) == ("home", "EmuTel")
    mark = log.mark()
    emulator.set_registration(5)
    await log.wait_for(HealthChanged, lambda e: e.health.registration == "roaming",
                       since=mark)


async def test_unplug_mid_send_then_recovery_sends_each_part_once(online: Online) -> None:
    emulator, modem, log = online
    emulator.unplug_at_prompt_number(2)  # dies while the second of three parts is sent
    text = LONG_RU  # 3 UCS-2 parts
    mark = log.mark()
    sending = asyncio.ensure_future(modem.send("+79161234567", text, message_id="m-unplug"))
    await log.wait_for(HealthChanged, lambda e: not e.health.up, since=mark)
    assert not sending.done()
    assert modem.health().outbox == 1
    emulator.replug()
    result = await asyncio.wait_for(sending, 30)
    assert [s.concat[2] for s in emulator.submits if s.concat] == [1, 2, 3]
    assert "".join(s.text for s in emulator.submits) == text
    assert len(result.references) == 3
    assert modem.health().up


async def test_unplugged_while_idle_keeps_outbox_until_replug(online: Online) -> None:
    emulator, modem, log = online
    mark = log.mark()
    emulator.unplug()
    await log.wait_for(HealthChanged, lambda e: not e.health.up, since=mark)
    sending = asyncio.ensure_future(modem.send("+79161234567", "queued while unplugged"))
    await asyncio.sleep(0.5)
    assert not sending.done() and modem.health().outbox == 1
    emulator.replug()
    await asyncio.wait_for(sending, 30)
    assert [s.text for s in emulator.submits] == ["queued while unplugged"]


async def test_messages_stored_while_offline_are_read_after_reconnect(online: Online) -> None:
    emulator, _, log = online
    mark = log.mark()
    emulator.unplug()
    await log.wait_for(HealthChanged, lambda e: not e.health.up, since=mark)
    emulator.replug()  # power-cycled: +CNMI is off until the driver sets it again
    emulator.deliver_sms("+79160000004", "stored while we were away")
    sms = await log.wait_for(SmsReceived)
    assert sms.text == "stored while we were away"
    await until(lambda: not emulator.stored())


async def test_error_during_init_is_retried_by_reconnecting(emulator: ModemEmulator,
                                                            modem_factory: Any) -> None:
    emulator.fail_next("ERROR", command="AT+CMGF")
    modem, log = await modem_factory(emulator)
    async with asyncio.timeout(20):
        await modem.wait_online()
    down = log.of(HealthChanged)
    assert any(e.health.last_error and "AT+CMGF=0: ERROR" in e.health.last_error for e in down)
    assert emulator.commands.count("AT+CMGF=0") == 2


async def test_prompt_timeout_cancels_and_the_message_is_sent_once_later(
    emulator_factory: Any, modem_factory: Any
) -> None:
    emulator = emulator_factory(prompt_delay=30.0)  # the prompt never comes in time
    modem, log = await modem_factory(emulator, prompt_timeout=1.0)
    await modem.wait_online()
    mark = log.mark()
    sending = asyncio.ensure_future(modem.send("+79161234567", "slow modem", message_id="m-p"))
    # the driver gives up on the prompt (ESC), then resets the port and comes back
    await log.wait_for(HealthChanged, lambda e: not e.health.up, since=mark)
    emulator.prompt_delay = 0.0
    result = await asyncio.wait_for(sending, 30)
    assert [s.text for s in emulator.submits] == ["slow modem"]
    assert result.references == (emulator.submits[0].reference,)
