"""Bad input through ``cti serve``'s IVR: a caller hanging up mid-prompt, an AGI
connection from a host that is not an allowed Asterisk."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.ivr_cti.support import Server, until
from tests.peers.sipp import SippFactory

pytestmark = pytest.mark.integration

CALLER = "+79161112233"


async def test_hangup_mid_prompt_is_recorded_where(
    server: Server, sipp_caller: SippFactory
) -> None:
    customer_id = await server.customer("Short Caller", CALLER)
    caller = sipp_caller(number="100", caller_number=CALLER, caller_name="Short Caller",
                         hangup_after=1.0)

    async def hangup_recorded() -> bool:
        return any(e["kind"] == "ivr_choice" and e["payload"]["step"] == "hangup"
                   for e in await server.history(customer_id))

    await until("the hangup in the history", hangup_recorded)
    events = await server.history(customer_id)
    hangup = [e for e in events if e["kind"] == "ivr_choice" and e["payload"]["step"] == "hangup"]
    assert [e["payload"]["value"] for e in hangup] == ["language"]
    assert hangup[0]["conversation_id"] is not None  # on the call's voice conversation
    await caller.wait_async()

    async def idle() -> bool:
        return server.agi.active_sessions == 0

    await until("the AGI session to end", idle)
    assert server.agi.counters.flow_errors == 0


async def test_agi_from_a_host_not_allowed_is_refused(server: Server) -> None:
    before = (await server.health())["ivr"]["rejected_host"]
    host, port = server.agi.address
    reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0))
    try:
        writer.write(b"agi_network: yes\nagi_network_script: inbound\n\n")
        await writer.drain()
        # Closed before a byte is read: EOF, or a reset since our bytes went unread.
        try:
            said = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            said = b""
        assert said == b""
    finally:
        writer.close()
    ivr = (await server.health())["ivr"]
    assert ivr["rejected_host"] == before + 1 and ivr["accepted"] == 0, ivr
