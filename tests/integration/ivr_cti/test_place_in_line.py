"""Deflected callers keep their place in line: the text conversations are served in
the callers' ORIGINAL queue entry order, whatever order they deflected in."""

from __future__ import annotations

import pytest

from tests.integration.ivr_cti.support import Server, until
from tests.peers.sipp import Dtmf, Pause, SippFactory

pytestmark = pytest.mark.integration

# Entry order A, B, C; deflection order B, C, A.
CALLERS = {"A": "+79161110001", "B": "+79161110002", "C": "+79161110003"}
# The first digit 2.5 s after the answer: inside the language prompts even when a
# loaded machine starts the AGI session late (at 1.5 s it could come before the
# first prompt, be dropped, and the call would go through both retries instead).
LANGUAGE_AND_MENU = [Pause(2.5), Dtmf("1"), Pause(2.5), Dtmf("3")]


async def test_deflected_callers_are_served_in_queue_entry_order(
    server: Server, sipp_caller: SippFactory
) -> None:
    services = server.services
    for label, number in CALLERS.items():
        await server.customer(f"Caller {label}", number)
    olga = await server.agent("olga", "PJSIP/agent1", max_text=5)
    await server.pause(olga, True)

    calls = []
    for label, number in CALLERS.items():
        calls.append(sipp_caller(number="100", caller_number=number, caller_name=f"Caller {label}",
                                 steps=LANGUAGE_AND_MENU, hangup_after=120.0))

        async def queued(number: str = number) -> bool:
            return server.waiting_channel(number) is not None

        await until(f"caller {label} in the queue", queued, within=90)

    for label in ("B", "C", "A"):
        number = CALLERS[label]

        async def deflected(number: str = number) -> bool:
            return await server.deflected(number) is not None

        await server.press_in_queue(number, "1", deflected)

    convs = {label: await server.deflected(number) for label, number in CALLERS.items()}
    ids = {label: conv.id for label, conv in convs.items() if conv is not None}
    assert len(ids) == 3, convs
    assert ids["B"] < ids["C"] < ids["A"]  # created in deflection order...

    await server.pause(olga, False)
    served = [(await olga.next_frame("screen_pop"))["conversation"] for _ in range(3)]
    assert [c["contact"] for c in served] == [CALLERS["A"], CALLERS["B"], CALLERS["C"]], served
    assert [c["channel"] for c in served] == ["chat"] * 3
    entered = [c["queued_at"] for c in served]
    assert entered == sorted(entered)  # ...served in entry order
    for call in calls:
        result = await call.wait_async()
        assert result.successful_calls == 1, result
    for conv_id in ids.values():
        assert (await services.conversations.get(conv_id)).owner_id is not None
