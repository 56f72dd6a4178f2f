"""A SIPp customer calls the support queue; a pjsua2 agent answers; the state follows."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from pbx import changes as ch
from pbx.link import AmiLink
from tests.integration.pbx.conftest import Recorder, wait_until

pytestmark = pytest.mark.integration

NAME = "Иван Петров"
NUMBER = "+79161234567"


async def test_queue_call_answered_by_agent(
    lab_link: tuple[AmiLink, Recorder], sipp_caller: Any, phone_factory: Any
) -> None:
    link, rec = lab_link
    agent = await phone_factory("agent1")
    await wait_until(
        lambda: any(m.interface == "PJSIP/agent1" and m.device_state == "NOT_INUSE"
                    for q in link.queues() if q.name == "support" for m in q.members),
        20, "agent1 NOT_INUSE in the support queue")
    caller = sipp_caller(number="100", caller_number=NUMBER, caller_name=NAME, hangup_after=12)
    started = await rec.wait_for(ch.CallStarted, lambda c: c.caller_number == NUMBER)
    assert started.caller_name == NAME  # Cyrillic survives the AMI link
    call_id = started.call_id
    assert call_id.startswith("lab:")
    queued = await rec.wait_for(ch.CallQueued, lambda c: c.call_id == call_id)
    assert queued.queue == "support" and queued.position == 1 and queued.caller_name == NAME
    offered = await rec.wait_for(ch.CallOffered, lambda c: c.call_id == call_id)
    assert offered.agent_interface == "PJSIP/agent1" and offered.queue == "support"
    snap = link.call(call_id)
    assert snap is not None and snap.state is ch.CallState.OFFERED
    support = link.queue("support")
    assert support is not None and [w.call_id for w in support.waiting] == [call_id]

    await agent.wait_for_incoming(20)
    await asyncio.sleep(1.0)
    answered_at = time.time()
    await agent.answer()
    answered = await rec.wait_for(ch.CallAnswered, lambda c: c.call_id == call_id)
    assert answered.agent_interface == "PJSIP/agent1" and answered.queue == "support"
    assert answered.ring >= 0.8
    assert answered.wait >= answered.ring
    await wait_until(lambda: (s := link.call(call_id)) is not None
                     and s.state is ch.CallState.CONNECTED, 10, "CONNECTED")
    support = link.queue("support")
    assert support is not None and support.waiting == ()
    await rec.wait_for(ch.QueueMemberChanged,
                       lambda c: c.interface == "PJSIP/agent1" and c.device_state == "INUSE")

    await agent.wait_state("connected", 10)
    await agent.hold()
    await rec.wait_for(ch.CallHeld, lambda c: c.call_id == call_id and c.held)
    snap = link.call(call_id)
    assert snap is not None and snap.state is ch.CallState.ON_HOLD
    await asyncio.sleep(1.0)
    await agent.unhold()
    await rec.wait_for(ch.CallHeld, lambda c: c.call_id == call_id and not c.held)

    ended = await rec.wait_for(ch.CallEnded, lambda c: c.call_id == call_id, within=40)
    talked = time.time() - answered_at
    assert ended.reason == "hangup" and ended.agent_interface == "PJSIP/agent1"
    assert ended.queue == "support"
    assert ended.durations.hold >= 0.8
    assert 0 < ended.durations.talk <= talked
    assert ended.durations.ring == pytest.approx(answered.ring)
    assert ended.durations.wait == pytest.approx(answered.wait)
    assert link.call(call_id) is None
    assert len(rec.of(ch.CallEnded, lambda c: c.call_id == call_id)) == 1
    result = await caller.wait_async(30)
    assert result.successful_calls == 1, result
