"""Bad input through ``cti serve``'s IVR: a caller hanging up mid-prompt, a caller
who presses nothing, an AGI connection from a host that is not an allowed Asterisk."""

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
    # 3 s: well inside the language step (five prompts, then a 2 s GET DATA, once
    # more after a miss), even when a loaded machine starts the AGI session late.
    caller = sipp_caller(number="100", caller_number=CALLER, caller_name="Short Caller",
                         hangup_after=3.0)

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


async def test_no_dtmf_retries_then_default_route(
    server: Server, sipp_caller: SippFactory
) -> None:
    """Nothing pressed: each menu is repeated (retries=1), then the default route:
    English, and the queue of the dialled number (200: sales)."""
    number = "+79161114455"
    customer_id = await server.customer("Silent Caller", number)
    caller = sipp_caller(number="200", caller_number=number, caller_name="Silent Caller",
                         hangup_after=120.0)

    async def queued() -> bool:
        return server.waiting_channel(number, "sales") is not None

    await until("the silent caller in the sales queue", queued, within=90)
    choices = [(e["payload"]["step"], e["payload"]["value"])
               for e in reversed(await server.history(customer_id)) if e["kind"] == "ivr_choice"]
    assert choices[:5] == [("start", "dialled:200"), ("language", "default:en"),
                           ("identify", "cli"), ("menu", "default"), ("queue", "sales")], choices
    channel = server.waiting_channel(number, "sales")
    assert channel is not None
    response = await server.ami.action({"Action": "Hangup", "Channel": channel})
    assert response.get("Response") == "Success", response
    await caller.wait_async()


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
