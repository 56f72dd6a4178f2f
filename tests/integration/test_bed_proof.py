"""Proof of the test bed (issue 2, point 8).

A SIPp customer with caller ID +79161234567 "Иван Петров" calls the trunk
(number 100); the call enters queue support; agent1's phone rings and answers;
AMI, read with panoramisk, shows QueueCallerJoin, AgentCalled, AgentConnect
and Hangup for that call, with the Cyrillic caller name intact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from panoramisk import Manager
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from cti.lab import LabPbx
from tests.peers.phones import PhoneFactory
from tests.peers.sipp import SippFactory

CALLER_NUMBER = "+79161234567"
CALLER_NAME = "Иван Петров"
MAX_PENDING = 1024 * 1024


class WholeMessageAMIProtocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's protocol fed only whole AMI messages.

    Quirk worked around: panoramisk 1.4 decodes every TCP chunk on its own
    with errors='ignore', so a UTF-8 letter split across two reads vanishes.
    Here bytes are held back until the message separator (or the banner's
    end of line) has arrived, so every decode sees complete characters.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._pending = bytearray()
        self._banner_done = False

    def data_received(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) > MAX_PENDING:
            raise RuntimeError("AMI peer sent more than 1 MiB without a message end")
        if not self._banner_done:
            eol = self._pending.find(b"\r\n")
            if eol < 0:
                return
            self._banner_done = True
            banner = bytes(self._pending[: eol + 2])
            del self._pending[: eol + 2]
            super().data_received(banner)
        end = self._pending.rfind(b"\r\n\r\n")
        if end < 0:
            return
        complete = bytes(self._pending[: end + 4])
        del self._pending[: end + 4]
        super().data_received(complete)


def test_whole_message_protocol_keeps_cyrillic_split_anywhere() -> None:
    """Feed a real-shaped event one byte at a time: the name survives."""
    received: list[Message] = []

    class Factory:
        def dispatch(self, message: Message) -> None:
            received.append(message)

    protocol = WholeMessageAMIProtocol()
    protocol.connection_made(_NullTransport())
    protocol.factory = Factory()
    protocol.encoding = "utf8"
    raw = (
        "Asterisk Call Manager/5.0.2\r\n"
        f"Event: QueueCallerJoin\r\nCallerIDName: {CALLER_NAME}\r\nQueue: support\r\n\r\n"
    ).encode()
    for i in range(len(raw)):
        protocol.data_received(raw[i : i + 1])
    assert [m["CallerIDName"] for m in received] == [CALLER_NAME]


class _NullTransport(asyncio.Transport):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass


class AmiEvents:
    """Every AMI event seen by one panoramisk Manager, with waiting helpers."""

    def __init__(self) -> None:
        self.events: list[Message] = []
        self._changed = asyncio.Event()

    def on_event(self, _manager: Manager, event: Message) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[Message], bool], what: str, within: float = 30.0
    ) -> Message:
        try:
            return await asyncio.wait_for(self._first(predicate), within)
        except TimeoutError:
            raise AssertionError(
                f"no AMI event {what} within {within:.0f} s; seen:\n{describe(self.events)}"
            ) from None

    async def _first(self, predicate: Callable[[Message], bool]) -> Message:
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            self._changed.clear()
            await self._changed.wait()

    def named(self, name: str) -> list[Message]:
        return [e for e in self.events if e.get("Event") == name]


async def connect_ami(pbx: LabPbx, sink: AmiEvents) -> Manager:
    manager = Manager(
        loop=asyncio.get_running_loop(), host=pbx.host, port=pbx.ami_port,
        username=pbx.ami_user, secret=pbx.ami_secret, encoding="utf8",
        protocol_factory=WholeMessageAMIProtocol, ping_delay=60, reconnect_timeout=60,
    )
    manager.register_event("*", sink.on_event)
    await manager.connect()
    await sink.wait_for(lambda e: e.get("Event") == "FullyBooted", "AMI FullyBooted", 15)
    return manager


def describe(events: list[Message]) -> str:
    return "\n".join(f"{e.get('Event')} {e.get('Channel')} {e.get('CallerIDName')}"
                     for e in events)



@pytest.mark.integration
async def test_caller_reaches_agent1_through_queue_support(
    lab_pbx: LabPbx, sipp_caller: SippFactory, phone_factory: PhoneFactory
) -> None:
    sink = AmiEvents()
    manager = await connect_ami(lab_pbx, sink)
    try:
        phone = await phone_factory("agent1")
        caller = sipp_caller(number="100", caller_number=CALLER_NUMBER, caller_name=CALLER_NAME,
                             hangup_after=None, timeout=90)
        offered = await phone.wait_for_incoming(30)
        join = await sink.wait_for(
            lambda e: e.get("Event") == "QueueCallerJoin"
            and e.get("CallerIDNum") == CALLER_NUMBER, "QueueCallerJoin")
        uid = join["Uniqueid"]
        called = await sink.wait_for(
            lambda e: e.get("Event") == "AgentCalled" and e.get("Uniqueid") == uid, "AgentCalled")
        await phone.answer()
        await phone.wait_state("connected", 15)
        connect = await sink.wait_for(
            lambda e: e.get("Event") == "AgentConnect" and e.get("Uniqueid") == uid,
            "AgentConnect")
        await phone.hangup()
        await phone.wait_state("disconnected", 15)
        hangup = await sink.wait_for(
            lambda e: e.get("Event") == "Hangup" and e.get("Uniqueid") == uid, "Hangup")
        result = await caller.wait_async(30)
    finally:
        manager.close()
    assert offered.caller_number == CALLER_NUMBER
    assert offered.caller_name == CALLER_NAME
    assert join["Queue"] == "support"
    assert called["Queue"] == "support" and called["MemberName"] == "agent1"
    assert called["Interface"] == "PJSIP/agent1"
    assert called["DestConnectedLineName"] == CALLER_NAME
    assert connect["Queue"] == "support" and connect["MemberName"] == "agent1"
    for event in (join, called, connect, hangup):
        assert event["CallerIDName"] == CALLER_NAME, event
        assert event["CallerIDNum"] == CALLER_NUMBER, event
    # The caller got the PBX's BYE (the agent hung up) and SIPp counts a good call.
    assert result.ok, result
