"""Call control over AMI against the lab PBX, with pjsua2 agents and customers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from pbx import changes as ch
from pbx.actions import AmiActionError, DuplicateAction, PbxError
from pbx.link import AmiLink
from tests.integration.pbx.conftest import Recorder, wait_until

pytestmark = pytest.mark.integration


def _member(link: AmiLink, queue: str, interface: str) -> Any:
    q = link.queue(queue)
    assert q is not None
    return next((m for m in q.members if m.interface == interface), None)


async def _ready(link: AmiLink, interface: str) -> None:
    await wait_until(lambda: (m := _member(link, "support", interface)) is not None
                     and m.device_state == "NOT_INUSE", 20, f"{interface} NOT_INUSE")


async def test_pause_unpause_add_remove(lab_link: tuple[AmiLink, Recorder]) -> None:
    link, rec = lab_link
    try:
        await link.queue_pause("PJSIP/agent2", True, "support", "обед")
        paused = await rec.wait_for(ch.QueueMemberChanged, lambda c: c.paused
                                    and c.interface == "PJSIP/agent2" and c.queue == "support")
        assert paused.pause_reason == "обед"
        m = _member(link, "support", "PJSIP/agent2")
        assert m.paused and m.pause_reason == "обед"
        await link.queue_pause("PJSIP/agent2", False, "support")
        back = await rec.wait_for(ch.QueueMemberChanged, lambda c: not c.paused
                                  and c.interface == "PJSIP/agent2" and c.queue == "support")
        assert back.pause_reason == ""
        await link.queue_add("sales", "PJSIP/agent1", member_name="agent1")
        await rec.wait_for(ch.QueueMemberChanged, lambda c: c.queue == "sales"
                           and c.interface == "PJSIP/agent1" and not c.removed)
        assert _member(link, "sales", "PJSIP/agent1") is not None
        await link.queue_remove("sales", "PJSIP/agent1")
        await rec.wait_for(ch.QueueMemberChanged, lambda c: c.queue == "sales"
                           and c.interface == "PJSIP/agent1" and c.removed)
        assert _member(link, "sales", "PJSIP/agent1") is None
        with pytest.raises(AmiActionError) as info:
            await link.queue_remove("sales", "PJSIP/agent1")
        assert "Not there" in info.value.pbx_message
    finally:
        with contextlib.suppress(PbxError):
            await link.queue_pause("PJSIP/agent2", False, "support")
        with contextlib.suppress(PbxError):
            await link.queue_remove("sales", "PJSIP/agent1")


async def test_ami_errors_are_typed_with_the_pbx_message(
    lab_link: tuple[AmiLink, Recorder],
) -> None:
    link, _ = lab_link
    with pytest.raises(AmiActionError) as info:
        await link.hangup("PJSIP/nobody-00000000")
    assert info.value.pbx_message == "No such channel" and info.value.action == "Hangup"
    await link.setvar("CTI_TEST", "значение")  # a global variable
    assert await link.getvar("CTI_TEST") == "значение"
    await link.user_event("CtiPing", {"Note": "привет"})


async def test_click_to_dial_agent_first_then_customer(
    lab_pbx: Any, lab_link: tuple[AmiLink, Recorder], phone_factory: Any
) -> None:
    link, rec = lab_link
    agent = await phone_factory("agent1")
    customer = await phone_factory.customer(lab_pbx.carrier_port)
    await _ready(link, "PJSIP/agent1")
    placing = asyncio.create_task(link.originate(
        "PJSIP/agent1", "79161234567", caller_id='"Клиент" <79161234567>',
        correlation_id="ctd1"))
    await agent.wait_for_incoming(20)
    await agent.answer()
    result = await asyncio.wait_for(placing, 30)
    assert result.call_id == "lab:cti-ctd1" and result.channel.startswith("PJSIP/agent1-")
    await customer.wait_for_incoming(20)
    await customer.answer()
    answered = await rec.wait_for(ch.CallAnswered, lambda c: c.call_id == result.call_id)
    assert answered.agent_interface == "PJSIP/agent1" and answered.queue is None
    snap = link.call(result.call_id)
    assert snap is not None and snap.state is ch.CallState.CONNECTED
    assert sorted(leg.split("-")[0] for leg in snap.legs) == ["PJSIP/agent1", "PJSIP/carrier"]
    assert await link.getvar("CTI_CORRELATION_ID", result.channel) == "ctd1"
    with pytest.raises(DuplicateAction):
        await link.originate("PJSIP/agent1", "79161234567", correlation_id="ctd1")
    await link.hangup(result.channel)
    ended = await rec.wait_for(ch.CallEnded, lambda c: c.call_id == result.call_id)
    assert ended.agent_interface == "PJSIP/agent1" and ended.durations.talk > 0


async def test_blind_then_attended_transfer_between_agents(
    lab_pbx: Any, lab_link: tuple[AmiLink, Recorder], sipp_caller: Any, phone_factory: Any
) -> None:
    link, rec = lab_link
    agent1 = await phone_factory("agent1")
    agent2 = await phone_factory("agent2")
    await _ready(link, "PJSIP/agent1")
    await _ready(link, "PJSIP/agent2")
    sipp_caller(number="100", caller_number="+79160000001", hangup_after=90)
    started = await rec.wait_for(ch.CallStarted, lambda c: c.caller_number == "+79160000001")
    call_id = started.call_id
    await agent1.wait_for_incoming(20)
    await agent1.answer()
    first = await rec.wait_for(ch.CallAnswered, lambda c: c.call_id == call_id)
    assert first.agent_interface == "PJSIP/agent1"

    # blind: the CTI redirects the customer to agent2's extension. BRIDGE_FEATURES
    # enables the DTMF transfer features (which Atxfer drives) in the next bridge.
    await link.setvar("BRIDGE_FEATURES", "tT", started.channel)
    await link.redirect(started.channel, lab_pbx.agent_exten("agent2"), "from-agents")
    blind = await rec.wait_for(ch.CallTransferred, lambda c: c.call_id == call_id)
    assert blind.kind == "blind" and blind.agent_interface == "PJSIP/agent1"
    await agent2.wait_for_incoming(20)
    await agent2.answer()
    second = await rec.wait_for(ch.CallAnswered, lambda c: c.call_id == call_id
                                and c.agent_interface == "PJSIP/agent2")
    assert second.queue is None
    await wait_until(lambda: agent1.state in ("idle", "disconnected"), 10, "agent1 released")

    # attended: agent2 consults agent1, then hangs up to complete the transfer
    snap = link.call(call_id)
    assert snap is not None and snap.agent_interface == "PJSIP/agent2"
    agent2_leg = next(leg for leg in snap.legs if leg.startswith("PJSIP/agent2-"))
    await link.atxfer(agent2_leg, lab_pbx.agent_exten("agent1"))
    await agent1.wait_for_incoming(20)
    await agent1.answer()
    await agent1.wait_state("connected", 10)
    await agent2.hangup()
    attended = await rec.wait_for(ch.CallTransferred, lambda c: c.call_id == call_id
                                  and c.kind == "attended")
    assert attended.agent_interface == "PJSIP/agent2"
    await rec.wait_for(ch.CallAnswered, lambda c: c.call_id == call_id
                       and c.agent_interface == "PJSIP/agent1" and c.at >= attended.at)
    await wait_until(lambda: (s := link.call(call_id)) is not None
                     and s.state is ch.CallState.CONNECTED
                     and s.agent_interface == "PJSIP/agent1", 10, "connected to agent1")
    await link.hangup(started.channel)
    ended = await rec.wait_for(ch.CallEnded, lambda c: c.call_id == call_id)
    assert ended.agent_interface == "PJSIP/agent1" and ended.queue == "support"
    assert ended.durations.talk > 0
    assert len(rec.of(ch.CallEnded, lambda c: c.call_id == call_id)) == 1


async def test_attended_transfer_cancelled(
    lab_pbx: Any, lab_link: tuple[AmiLink, Recorder], sipp_caller: Any, phone_factory: Any
) -> None:
    link, rec = lab_link
    agent1 = await phone_factory("agent1")
    agent2 = await phone_factory("agent2")
    await _ready(link, "PJSIP/agent1")
    await _ready(link, "PJSIP/agent2")
    sipp_caller(number="100", caller_number="+79160000002", hangup_after=90)
    started = await rec.wait_for(ch.CallStarted, lambda c: c.caller_number == "+79160000002")
    call_id = started.call_id
    await rec.wait_for(ch.CallQueued, lambda c: c.call_id == call_id)
    await link.setvar("BRIDGE_FEATURES", "tT", started.channel)
    await agent1.wait_for_incoming(20)
    await agent1.answer()
    await rec.wait_for(ch.CallAnswered, lambda c: c.call_id == call_id)
    await agent1.wait_state("connected", 10)
    snap = link.call(call_id)
    assert snap is not None
    agent1_leg = next(leg for leg in snap.legs if leg.startswith("PJSIP/agent1-"))
    await link.atxfer(agent1_leg, lab_pbx.agent_exten("agent2"))
    await agent2.wait_for_incoming(20)
    await link.cancel_atxfer(agent1_leg)
    await wait_until(lambda: agent2.state in ("idle", "disconnected"), 15, "agent2 released")
    snap = link.call(call_id)
    assert snap is not None and snap.state is ch.CallState.CONNECTED
    assert snap.agent_interface == "PJSIP/agent1"
    assert rec.of(ch.CallTransferred, lambda c: c.call_id == call_id) == []
    await link.hangup(started.channel)
    ended = await rec.wait_for(ch.CallEnded, lambda c: c.call_id == call_id)
    assert ended.agent_interface == "PJSIP/agent1"
