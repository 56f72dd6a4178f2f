"""Per-queue offers: the announce and queue-exit flows read CTI_OFFERS_<queue>.

A client plays Asterisk's side of FastAGI over loopback: it answers GET VARIABLE
from a table (the dialplan globals the PBX description renders) and every other
command with success, and records what the flow asked Asterisk to play.
"""

from __future__ import annotations

import asyncio

import pytest

from ivr.flows import default_routes
from ivr.reference_ports import MemoryPorts
from ivr.server import FastAgiServer, FastAgiSettings

from .test_fastagi_server import env_block

WITHIN = 15.0


async def run_flow(flow: str, variables: dict[str, str], extension: str = "s") -> list[str]:
    server = FastAgiServer(FastAgiSettings(host="127.0.0.1", port=0), default_routes(),
                           MemoryPorts().ports())
    await server.start()
    commands: list[str] = []
    try:
        reader, writer = await asyncio.open_connection(*server.address)
        block = env_block(flow).replace(b"\n\n", f"\nagi_extension: {extension}\n\n".encode())
        writer.write(block)
        async with asyncio.timeout(WITHIN):
            while line := await reader.readline():
                command = line.decode().strip()
                commands.append(command)
                if command.startswith("GET VARIABLE "):
                    name = command.removeprefix("GET VARIABLE ").strip('"')
                    value = variables.get(name)
                    reply = "200 result=0" if value is None else f"200 result=1 ({value})"
                elif command.startswith("CHANNEL STATUS"):
                    reply = "200 result=6"
                else:
                    reply = "200 result=0 endpos=8000"
                writer.write(f"{reply}\n".encode())
        writer.close()
    finally:
        await server.close()
    return commands


def played(commands: list[str]) -> list[str]:
    return [c for c in commands if c.startswith("STREAM FILE")]


async def test_announce_offers_only_the_queue_s_keys() -> None:
    commands = await run_flow("announce", {"CTI_QUEUE": "sales", "CTI_OFFERS_sales": "2"})
    offer = [c for c in played(commands) if "vm-press" in c or "digits/" in c]
    assert offer == ['STREAM FILE vm-press 2', 'STREAM FILE digits/2 2'], commands


async def test_announce_offers_both_when_the_queue_has_no_setting() -> None:
    commands = await run_flow("announce", {"CTI_QUEUE": "support"})
    offer = [c for c in played(commands) if "vm-press" in c or "digits/" in c]
    assert offer == ['STREAM FILE vm-press 12', 'STREAM FILE digits/1 12',
                     'STREAM FILE vm-press 12', 'STREAM FILE digits/2 12'], commands


async def test_announce_offers_nothing_for_an_empty_setting() -> None:
    commands = await run_flow("announce", {"CTI_QUEUE": "vip", "CTI_OFFERS_vip": ""})
    assert not [c for c in played(commands) if "vm-press" in c], commands


@pytest.mark.parametrize(("offers", "outcome"), [("2", "requeue"), ("12", None)])
async def test_queue_exit_requeues_a_key_the_queue_does_not_offer(
    offers: str, outcome: str | None
) -> None:
    commands = await run_flow("queue-exit", {"CTI_QUEUE": "sales", "CTI_OFFERS_sales": offers},
                              extension="1")
    requeued = "SET VARIABLE CTI_EXIT_OUTCOME requeue" in commands
    assert requeued is (outcome == "requeue"), commands
