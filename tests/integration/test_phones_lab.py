"""pjsua2 agent phones against the lab Asterisk: register, agent-to-agent, out via the carrier."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from cti.lab import LabPbx
from cti.softphone import RegistrationError, SoftPhone
from tests.peers.phones import PhoneFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
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


async def _read_until(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> str:
    while True:
        raw = await stream.readline()
        if not raw:
            raise AssertionError(f"`cti phone` ended before printing {needle!r}: {seen}")
        line = raw.decode("utf-8", "replace").rstrip("\n")
        seen.append(line)
        if needle in line:
            return line


async def test_cti_phone_command_registers_notifies_and_auto_answers(
        phone_factory: PhoneFactory, lab_pbx: LabPbx) -> None:
    password = lab_pbx.agents["agent2"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cti.softphone.cli",
        "--server", f"{lab_pbx.host}:{lab_pbx.sip_port}", "--user", "agent2",
        "--auto-answer", "--no-notify-send", "--exit-after-calls", "1",
        cwd=ROOT, env={**os.environ, "CTI_PHONE_PASSWORD": password},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(60):
            await _read_until(proc.stdout, "Registered agent2", seen)
            agent1 = await phone_factory("agent1")
            await agent1.call(f"sip:1002@{lab_pbx.host}:{lab_pbx.sip_port}")
            await agent1.wait_state("connected", T)
            line = await _read_until(proc.stdout, "Incoming call:", seen)
            assert line == "Incoming call: Agent 1 <1001>"
            await _read_until(proc.stdout, "Call state: connected", seen)
            await agent1.send_dtmf("5")
            await agent1.hangup()
            await _read_until(proc.stdout, "Call state: disconnected", seen)
            rest, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        output = "\n".join(seen) + rest.decode() + err.decode()
        assert password not in output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cti_phone_command_reports_a_refused_registration(lab_pbx: LabPbx) -> None:
    secret = "wrong-" + lab_pbx.agents["agent3"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cti.softphone.cli",
        "--server", f"{lab_pbx.host}:{lab_pbx.sip_port}", "--user", "agent3",
        "--password", secret, "--no-notify-send",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 2
    text = out.decode() + err.decode()
    assert "registration refused" in text and ("401" in text or "403" in text)
    assert secret not in text
