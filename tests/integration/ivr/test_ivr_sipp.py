"""A real SIP caller (SIPp on the lab trunk, RFC 2833 DTMF from pcaps) through
the lab dialplan into the FastAGI ``inbound`` flow and on to the chosen queue."""

from __future__ import annotations

import pytest

from ivr.flows import RU_VOICE
from ivr.ports import Customer
from tests.integration.ivr.support import (
    WITHIN,
    IvrLab,
    steps,
    wait_until,
)
from tests.peers.sipp import Dtmf, Pause, SippFactory

pytestmark = pytest.mark.integration

SIP_CALLER = "+79161234567"


async def test_sip_caller_chooses_language_and_skill_and_reaches_the_queue(
    lab: IvrLab, sipp_caller: SippFactory
) -> None:
    memory = lab.memory
    memory.customers.by_phone[SIP_CALLER] = Customer("cust-sip", "Иван Петров", SIP_CALLER)
    # 2 (Russian) while the language prompts play, 3 (support) during the menu prompts.
    # 2.5 s after the answer, not 1.5 s: a loaded machine may start the AGI session
    # late, and a digit before the first prompt is dropped.
    caller = sipp_caller(number="100", caller_number=SIP_CALLER, caller_name="Иван Петров",
                         steps=[Pause(2.5), Dtmf("2"), Pause(2.5), Dtmf("3")],
                         hangup_after=60.0)
    joined = await lab.ami.wait_event(
        lambda e: e.get("Event") == "QueueCallerJoin" and e.get("Queue") == "support"
        and e.get("CallerIDNum") == SIP_CALLER, within=60,
    )
    channel = joined["Channel"]
    assert channel.startswith("PJSIP/trunk-")
    assert steps(memory)[1:6] == [
        ("language", RU_VOICE), ("identify", "cli"), ("menu", "support"),
        ("queue", "support"), ("announce", "position:3:wait:180"),
    ], steps(memory)
    assert {c.customer_id for c in memory.history.choices[2:]} == {"cust-sip"}
    response = await lab.ami.action({"Action": "Hangup", "Channel": channel})
    assert response.get("Response") == "Success", response
    result = await caller.wait_async()
    assert result.successful_calls == 1, result


async def test_sip_caller_hangs_up_mid_prompt(lab: IvrLab, sipp_caller: SippFactory) -> None:
    hangups_before = lab.server.counters.hangups
    # 3 s: well inside the language step (five prompts, then a 2 s GET DATA, once
    # more after a miss), even when a loaded machine starts the AGI session late.
    caller = sipp_caller(number="200", caller_number="+74950000001", caller_name="Caller",
                         hangup_after=3.0)
    choice = await lab.memory.history.wait_for("hangup", WITHIN)
    assert choice.value == "language"
    assert choice.caller_number == "+74950000001"
    await wait_until(lambda: lab.server.active_sessions == 0, "the session to end")
    assert lab.server.counters.hangups == hangups_before + 1
    assert lab.server.counters.flow_errors == 0
    assert steps(lab.memory) == [("start", "dialled:200"), ("hangup", "language")]
    await caller.wait_async()
