"""The IVR flows against the real lab Asterisk: its dialplan calls our FastAGI
server, DTMF is injected with AMI PlayDTMF (Receive: true, as if the caller
pressed it), and AMI shows the call reaching the queue the IVR chose."""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest

from ivr.flows import RU_VOICE, make_announce, make_inbound
from tests.integration.ivr.support import (
    CALLER,
    CONFIG,
    WITHIN,
    IvrLab,
    call_in,
    key_in,
    press,
    recorded,
    session_at,
    steps,
    wait_until,
)

pytestmark = pytest.mark.integration


async def test_inbound_identifies_routes_and_queues_then_deflects(lab: IvrLab) -> None:
    memory = lab.memory
    await call_in(lab)
    session = await session_at(lab, "inbound", "language")
    channel = session.environment.channel
    call_id = session.environment.uniqueid
    assert session.environment.caller_number == CALLER

    await press(lab, channel, "2", recorded(memory, "language"))
    await session_at(lab, "inbound", "menu")
    assert ("identify", "cli") in steps(memory)
    await press(lab, channel, "3", recorded(memory, "menu"))

    joined = await lab.ami.wait_event(
        lambda e: e.get("Event") == "QueueCallerJoin" and e.get("Channel") == channel
    )
    assert joined["Queue"] == "support"
    assert steps(memory) == [
        ("start", "dialled:100"), ("language", RU_VOICE), ("identify", "cli"),
        ("menu", "support"), ("queue", "support"), ("announce", "position:3:wait:180"),
    ]
    assert all(c.call_id == call_id for c in memory.history.choices)
    assert all(c.customer_id == "cust-1" for c in memory.history.choices[2:])

    # In the queue: 1 = continue by SMS / web chat.
    await press(lab, channel, "1", lambda: bool(memory.deflection.requests))
    outcome = await lab.ami.wait_event(
        lambda e: e.get("Event") == "UserEvent" and e.get("UserEvent") == "CtiQueueOutcome"
    )
    assert outcome["Outcome"] == "deflected"
    assert outcome["Queue"] == "support"
    assert outcome["CallId"] == call_id
    await lab.ami.wait_event(lambda e: e.get("Event") == "Hangup" and e.get("Channel") == channel)
    request = memory.deflection.requests[0]
    assert (request.call_id, request.caller_number, request.queue, request.customer_id) == (
        call_id, CALLER, "support", "cust-1")
    assert request.language == RU_VOICE
    assert ("menu", "support") in [(c.step, c.value) for c in request.choices]
    assert request.queue_entry_time <= time.time()
    assert request.queue_entry_time == int(request.queue_entry_time)  # the dialplan's ${EPOCH}
    await memory.history.wait_for("queue_exit", WITHIN)
    assert ("queue_exit", "deflected:conv-1") in steps(memory)
    await wait_until(lambda: lab.server.active_sessions == 0, "sessions to end")


async def test_caller_hangs_up_mid_prompt(lab: IvrLab) -> None:
    await call_in(lab)
    session = await session_at(lab, "inbound", "language")
    hangups_before = lab.server.counters.hangups
    response = await lab.ami.action({"Action": "Hangup", "Channel": session.environment.channel})
    assert response.get("Response") == "Success", response
    choice = await lab.memory.history.wait_for("hangup", WITHIN)
    assert choice.value == "language"
    assert choice.call_id == session.environment.uniqueid
    await wait_until(lambda: lab.server.active_sessions == 0, "the session to end")
    assert lab.server.counters.hangups == hangups_before + 1
    assert lab.server.counters.flow_errors == 0


async def test_unknown_caller_keys_reference_self_service_then_callback(lab: IvrLab) -> None:
    memory = lab.memory
    stranger = "74950001122"
    await call_in(lab, number="200", caller=stranger)
    session = await session_at(lab, "inbound", "language")
    channel = session.environment.channel
    await press(lab, channel, "9", lambda: session.invalid_inputs == 1)  # not a language
    await press(lab, channel, "1", recorded(memory, "language"))
    await wait_until(lambda: session.step == "identify", "identify")
    await key_in(lab, session, "4242#")
    await session_at(lab, "inbound", "menu")
    await press(lab, channel, "1", recorded(memory, "self_service"))
    await session_at(lab, "inbound", "menu")
    await press(lab, channel, "2", lambda: ("menu", "sales") in steps(memory))
    joined = await lab.ami.wait_event(
        lambda e: e.get("Event") == "QueueCallerJoin" and e.get("Channel") == channel
    )
    assert joined["Queue"] == "sales"
    assert steps(memory) == [
        ("start", "dialled:200"), ("language", "en"), ("identify", "reference"),
        ("menu", "order_status"), ("self_service", "order_status:1234:shipped"),
        ("menu", "sales"), ("queue", "sales"), ("announce", "position:1:wait:unknown"),
    ]

    # In the queue: 2 = call me back; confirm the caller's own number with 1.
    await press(lab, channel, "2", lambda: any(s.environment.script == "queue-exit"
                                               for s in lab.server.sessions()))
    await session_at(lab, "queue-exit", "callback_confirm")
    await press(lab, channel, "1", lambda: bool(memory.callbacks.requests))
    outcome = await lab.ami.wait_event(
        lambda e: e.get("Event") == "UserEvent" and e.get("UserEvent") == "CtiQueueOutcome"
    )
    assert (outcome["Outcome"], outcome["Queue"], outcome["Detail"]) == ("callback", "sales",
                                                                          "cb-1")
    request = memory.callbacks.requests[0]
    assert (request.number, request.queue, request.customer_id) == (stranger, "sales", "cust-1")
    await lab.ami.wait_event(lambda e: e.get("Event") == "Hangup" and e.get("Channel") == channel)
    await wait_until(lambda: lab.server.active_sessions == 0, "sessions to end")
    assert ("callback_number", "confirmed") in steps(memory)
    assert ("queue_exit", "callback:cb-1") in steps(memory)


async def test_no_input_takes_the_default_language_and_route(
    lab: IvrLab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ivr")
    short = dataclasses.replace(
        CONFIG, language_prompts=("beep", f"{RU_VOICE}/digits/2"), menu_prompts=("vm-press",),
        digit_timeout=1.0, invalid_prompt="beep",
    )
    lab.server.routes["inbound"] = make_inbound(short)
    memory = lab.memory
    await call_in(lab)
    session = await session_at(lab, "inbound", "language")
    channel = session.environment.channel
    # Nothing pressed: one retry at each menu, then the defaults.
    joined = await lab.ami.wait_event(
        lambda e: e.get("Event") == "QueueCallerJoin" and e.get("Channel") == channel, within=60
    )
    assert joined["Queue"] == "support"  # the queue of the dialled number (100)
    assert ("language", "default:en") in steps(memory)
    assert ("menu", "default") in steps(memory)
    assert ("queue", "support") in steps(memory)
    assert session.invalid_inputs == 4
    # every prompt exists (a missing sound shows up as a result=-1 warning)
    assert not [r for r in caplog.records if "result=-1" in r.getMessage()]
    response = await lab.ami.action({"Action": "Hangup", "Channel": channel})
    assert response.get("Response") == "Success", response


async def test_periodic_announcement_keeps_the_place_in_line(lab: IvrLab) -> None:
    short = dataclasses.replace(
        CONFIG, language_prompts=("beep",), menu_prompts=("beep",), announce_every=3,
        offer_prompts=("beep",),
    )
    lab.server.routes["inbound"] = make_inbound(short)
    lab.server.routes["announce"] = make_announce(short)
    memory = lab.memory
    await call_in(lab)
    session = await session_at(lab, "inbound", "language")
    channel = session.environment.channel
    await press(lab, channel, "1", recorded(memory, "language"))
    await session_at(lab, "inbound", "menu")
    await press(lab, channel, "3", recorded(memory, "menu"))

    def joins() -> list[dict[str, str]]:
        return [e for e in lab.ami.events
                if e.get("Event") == "QueueCallerJoin" and e.get("Channel") == channel]

    await wait_until(lambda: len(joins()) >= 2, "the caller to re-join after the announcement")
    assert [e["Queue"] for e in joins()[:2]] == ["support", "support"]
    assert joins()[1]["Position"] == "1"
    announced = [v for s, v in steps(memory) if s == "announce"]
    # on entry: behind the 2 callers the statistics report; then Asterisk's QUEUEPOSITION
    assert announced[:2] == ["position:3:wait:180", "position:1:wait:60"], steps(memory)
    response = await lab.ami.action({"Action": "Hangup", "Channel": channel})
    assert response.get("Response") == "Success", response


async def test_failed_deflection_puts_the_caller_back_in_the_queue(lab: IvrLab) -> None:
    short = dataclasses.replace(CONFIG, language_prompts=("beep",), menu_prompts=("beep",))
    lab.server.routes["inbound"] = make_inbound(short)
    memory = lab.memory
    memory.deflection.fail = True
    await call_in(lab)
    session = await session_at(lab, "inbound", "language")
    channel = session.environment.channel
    await press(lab, channel, "1", recorded(memory, "language"))
    await session_at(lab, "inbound", "menu")
    await press(lab, channel, "2", recorded(memory, "menu"))

    def joins() -> list[dict[str, str]]:
        return [e for e in lab.ami.events
                if e.get("Event") == "QueueCallerJoin" and e.get("Channel") == channel]

    await wait_until(lambda: len(joins()) == 1, "the caller to join the queue")
    await press(lab, channel, "1", lambda: ("queue_exit", "deflect_failed") in steps(memory))
    await wait_until(lambda: len(joins()) == 2, "the caller to be back in the queue")
    assert [e["Queue"] for e in joins()] == ["sales", "sales"]
    assert not [e for e in lab.ami.events if e.get("UserEvent") == "CtiQueueOutcome"]
    response = await lab.ami.action({"Action": "Hangup", "Channel": channel})
    assert response.get("Response") == "Success", response
