"""pjsua2 agent phones against the lab Asterisk: register, agent-to-agent, out via the carrier."""

from __future__ import annotations

import pytest

from cti.lab import LabPbx
from cti.softphone import RegistrationError, SoftPhone
from tests.peers.phones import PhoneFactory

pytestmark = pytest.mark.integration

T = 20.0  # Asterisk on a loaded 2-core machine


async def _answered_pair(caller: SoftPhone, callee: SoftPhone, uri: str) -> None:
    await caller.call(uri)
    await callee.wait_for_incoming(T)
    await callee.answer()
    await callee.wait_state("connected", T)
    await caller.wait_state("connected", T)


async def test_agent_calls_agent_dtmf_hold_hangup(
        phone_factory: PhoneFactory, lab_pbx: LabPbx) -> None:
    agent1 = await phone_factory("agent1")
    agent2 = await phone_factory("agent2")
    assert agent1.registered and agent2.registered

    await agent1.call(f"sip:1002@{lab_pbx.host}:{lab_pbx.sip_port}")
    offer = await agent2.wait_for_incoming(T)
    assert agent2.state == "ringing"
    assert offer.caller_number == lab_pbx.agent_exten("agent1") == "1001"
    assert offer.caller_name == "Agent 1"
    assert offer.sip_call_id
    await agent1.wait_state("calling", T)
    await agent2.answer()
    await agent2.wait_state("connected", T)
    await agent1.wait_state("connected", T)

    # RFC 4733 through Asterisk (dtmf_mode=rfc4733 on both legs), both ways.
    await agent1.send_dtmf("147*")
    assert await agent2.wait_dtmf(4, T) == "147*"
    await agent2.send_dtmf("2580#")
    assert await agent1.wait_dtmf(5, T) == "2580#"

    await agent1.hold()
    assert agent1.state == "held"
    await agent1.unhold()
    assert agent1.state == "connected"
    await agent2.send_dtmf("9")
    assert await agent1.wait_dtmf(6, T) == "2580#9"

    await agent2.hangup()
    await agent1.wait_state("disconnected", T)
    assert agent2.state == "disconnected"


async def test_agent_calls_out_through_the_carrier_to_a_customer(
        phone_factory: PhoneFactory, lab_pbx: LabPbx) -> None:
    customer = await phone_factory.customer(lab_pbx.carrier_port)
    agent3 = await phone_factory("agent3")
    await _answered_pair(agent3, customer, f"sip:+79161234567@{lab_pbx.host}:{lab_pbx.sip_port}")
    assert customer.state == "connected"
    await customer.send_dtmf("31")
    assert await agent3.wait_dtmf(2, T) == "31"
    await agent3.hangup()
    await customer.wait_state("disconnected", T)


async def test_customer_hangs_up_the_agent_call(
        phone_factory: PhoneFactory, lab_pbx: LabPbx) -> None:
    customer = await phone_factory.customer(lab_pbx.carrier_port)
    agent4 = await phone_factory("agent4", auto_answer=True)
    await agent4.call(f"sip:84951234567@{lab_pbx.host}:{lab_pbx.sip_port}")
    offer = await customer.wait_for_incoming(T)
    assert offer.called_number == "84951234567"
    assert offer.caller_number == "1004"
    await customer.answer()
    await agent4.wait_state("connected", T)
    await customer.hangup()
    await agent4.wait_state("disconnected", T)


async def test_wrong_password_is_refused_with_the_sip_status(lab_pbx: LabPbx,
                                                             softphone_engine: None) -> None:
    with pytest.raises(RegistrationError) as info:
        await SoftPhone.create(username="agent1", password="not-the-password",
                               host=lab_pbx.host, port=lab_pbx.sip_port, register_timeout=T)
    assert info.value.status in (401, 403)
