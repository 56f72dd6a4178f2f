"""The softphone on loopback: two real pjsua2 UAs call each other directly, no PBX."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cti.softphone import CallFailed, NoActiveCall, SoftPhone
from cti.softphone.sip_text import parse_head, parse_name_addr, uri_port, uri_user
from tests.peers.phones import PhoneFactory
from tests.peers.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
T = 15.0  # generous: a loaded 2-core machine


async def _pair(factory: PhoneFactory, *, callee_name: str = "bob",
                caller_display: str | None = None) -> tuple[SoftPhone, SoftPhone]:
    a = await factory.customer(username="alice", display_name=caller_display)
    b = await factory.customer(username=callee_name)
    return a, b


async def _connect(a: SoftPhone, b: SoftPhone) -> None:
    await a.call(b.uri)
    await b.wait_for_incoming(T)
    await b.wait_state("ringing", T)
    await b.answer()
    await a.wait_state("connected", T)
    await b.wait_state("connected", T)


async def _refusal(phone: SoftPhone, uri: str) -> int:
    """SIP status of a refused call (refused before or after ``call`` returned)."""
    try:
        await phone.call(uri)
    except CallFailed as exc:
        return exc.status
    await phone.wait_state("disconnected", T)
    return phone.last_status[0]


async def test_call_ring_answer_dtmf_both_ways_and_hangup(
        customer_phone_factory: PhoneFactory) -> None:
    a, b = await _pair(customer_phone_factory)
    await a.call(b.uri)
    offer = await b.wait_for_incoming(T)
    assert b.state == "ringing"
    assert offer.caller_number == "alice"
    assert offer.called_number == "bob"
    assert offer.sip_call_id
    assert offer.header("call-id") == offer.sip_call_id
    await a.wait_state("calling", T)
    await b.answer()
    await a.wait_state("connected", T)
    await b.wait_state("connected", T)

    await a.send_dtmf("1234567890*#")
    assert await b.wait_dtmf(12, T) == "1234567890*#"
    await b.send_dtmf("9#A")
    assert await a.wait_dtmf(3, T) == "9#A"
    assert b.received_dtmf == "1234567890*#"

    await a.hangup()
    assert a.state == "disconnected"
    await b.wait_state("disconnected", T)


async def test_hold_unhold_and_callee_hangs_up(customer_phone_factory: PhoneFactory) -> None:
    a, b = await _pair(customer_phone_factory)
    await _connect(a, b)
    await a.hold()
    assert a.state == "held"
    await b.wait_state("held", T)
    await a.unhold()
    assert a.state == "connected"
    await b.wait_state("connected", T)
    await b.hold()
    await a.wait_state("held", T)
    await b.unhold()
    await a.wait_state("connected", T)
    await b.wait_state("connected", T)
    # the streams were rebuilt by the re-INVITEs: DTMF still arrives exactly once
    await a.send_dtmf("77")
    assert await b.wait_dtmf(2, T) == "77"
    await b.hangup()
    await a.wait_state("disconnected", T)


async def test_cyrillic_display_name_arrives_intact(customer_phone_factory: PhoneFactory) -> None:
    a, b = await _pair(customer_phone_factory, caller_display="Иван Петров")
    await a.call(b.uri, caller_id="+79161234567")
    offer = await b.wait_for_incoming(T)
    assert offer.caller_name == "Иван Петров"
    assert offer.caller_number == "+79161234567"
    await b.hangup()  # decline while ringing
    await a.wait_state("disconnected", T)
    assert a.last_status[0] == 603


async def test_caller_cancels_while_ringing(customer_phone_factory: PhoneFactory) -> None:
    a, b = await _pair(customer_phone_factory)
    await a.call(b.uri, caller_name='Quote " and \\ backslash')
    offer = await b.wait_for_incoming(T)
    assert offer.caller_name == 'Quote " and \\ backslash'
    await a.hangup()
    await b.wait_state("disconnected", T)
    assert b.last_status[0] == 487


async def test_second_call_to_busy_phone_gets_486(customer_phone_factory: PhoneFactory) -> None:
    a, b = await _pair(customer_phone_factory)
    c = await customer_phone_factory.customer(username="carol")
    await _connect(a, b)
    assert await _refusal(c, b.uri) == 486
    assert b.state == "connected"
    await b.hangup()
    await a.wait_state("disconnected", T)


async def test_auto_answer(customer_phone_factory: PhoneFactory) -> None:
    a = await customer_phone_factory.customer(username="alice")
    b = await customer_phone_factory.customer(username="bob", auto_answer=True)
    await a.call(b.uri)
    await a.wait_state("connected", T)
    await b.wait_state("connected", T)
    await a.hangup()
    await b.wait_state("disconnected", T)


async def test_call_to_silent_port_fails_typed(customer_phone_factory: PhoneFactory) -> None:
    a = await customer_phone_factory.customer(username="alice")
    dead = free_port(socket.SOCK_DGRAM)
    with pytest.raises(CallFailed) as info:
        await a.call(f"sip:nobody@127.0.0.1:{dead}", response_timeout=2.0)
    assert info.value.status == 408


async def test_commands_without_a_call_raise(customer_phone_factory: PhoneFactory) -> None:
    a = await customer_phone_factory.customer(username="alice")
    assert a.state == "idle"
    with pytest.raises(NoActiveCall):
        await a.answer()
    with pytest.raises(NoActiveCall):
        await a.hangup()
    with pytest.raises(NoActiveCall):
        await a.send_dtmf("1")
    with pytest.raises(ValueError):
        await a.call("tel:123")
    with pytest.raises(ValueError):
        await a.call("sip:x@127.0.0.1", caller_id="1\r\nVia: evil")


async def test_each_request_reaches_the_phone_owning_the_port(
        customer_phone_factory: PhoneFactory) -> None:
    """A Request-URI user no account has (a dialled number) still reaches the right phone."""
    a = await customer_phone_factory.customer(username="alice")
    b = await customer_phone_factory.customer(username="bob")
    c = await customer_phone_factory.customer(username="carol")
    await a.call(f"sip:+74951234567@127.0.0.1:{c.local_port}")
    offer = await c.wait_for_incoming(T)
    assert offer.called_number == "+74951234567"
    assert b.state == "idle"
    await c.hangup()
    await a.wait_state("disconnected", T)


def test_engine_shutdown_in_a_fresh_process_exits_cleanly() -> None:
    """Call, then close and shutdown_engine(); the interpreter must exit 0 promptly."""
    script = textwrap.dedent(f"""
        import asyncio
        from cti.softphone import SoftPhone, shutdown_engine
        from tests.peers.ports import free_port
        import socket

        async def main():
            a = await SoftPhone.create_unregistered(
                local_port=free_port(socket.SOCK_DGRAM), username="a")
            b = await SoftPhone.create_unregistered(
                local_port=free_port(socket.SOCK_DGRAM), username="b", auto_answer=True)
            await a.call(b.uri)
            await a.wait_state("connected", {T})
            await b.close()          # closing a phone mid-call hangs up
            await a.wait_state("disconnected", {T})
            await b.close()          # idempotent
            # leave a open: shutdown_engine must free it
            await shutdown_engine()
            print("clean")

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=90, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("clean")


# -- the pure SIP text reader -------------------------------------------------------

INVITE = (
    "INVITE sip:%2B74951234567@127.0.0.1:5099;transport=udp SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5060;rport;branch=z9hG4bK1\r\n"
    'f: "Иван \\"Ваня\\" Петров" <sip:%2B79161234567@127.0.0.1>;tag=1\r\n'
    "To: <sip:+74951234567@127.0.0.1:5099>\r\n"
    "i: abc@host\r\n"
    "X-Long: part one\r\n"
    "  part two\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)


def test_parse_head_reads_compact_folded_and_utf8_headers() -> None:
    head = parse_head(INVITE)
    assert head.method == "INVITE"
    assert uri_port(head.request_uri) == 5099
    assert uri_user(head.request_uri) == "+74951234567"
    assert head.header("Call-ID") == "abc@host"
    assert head.header("x-long") == "part one part two"
    sender = parse_name_addr(head.header("from") or "")
    assert sender.display_name == 'Иван "Ваня" Петров'
    assert sender.user == "+79161234567"
    assert parse_name_addr("Bob <sip:bob@h>").display_name == "Bob"
    assert parse_name_addr("sip:bob@h;tag=2").uri == "sip:bob@h"
    assert uri_port("sip:[::1]:5070") == 5070
    assert uri_port("sip:bob@h") is None


@pytest.mark.parametrize("bad", [
    "", "hello", "INVITE sip:x SIP/2.0\r\nno colon here\r\n\r\n",
    "INVITE sip:x SIP/2.0\r\n" + "X: y\r\n" * 201,
    "INVITE sip:x SIP/2.0\r\n" + "X: " + "y" * 70_000,
])
def test_parse_head_rejects_bad_text(bad: str) -> None:
    from cti.softphone.sip_text import SipTextError

    with pytest.raises(SipTextError):
        parse_head(bad)


def test_every_prefix_of_the_invite_parses_or_fails_cleanly() -> None:
    from cti.softphone.sip_text import SipTextError

    for i in range(len(INVITE) + 1):
        try:
            parse_head(INVITE[:i])
        except SipTextError:
            pass


def test_notification_line_is_one_safe_line() -> None:
    from cti.softphone.cli import MAX_NOTIFY_CHARS, notification_line

    assert notification_line("Иван Петров", "+79161234567") == (
        "Incoming call: Иван Петров <+79161234567>")
    assert notification_line("", "") == "Incoming call: unknown caller"
    line = notification_line("<b>x</b>\r\nINJECTED", "1\x1b[31m")
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert len(notification_line("x" * 1000, "")) <= len("Incoming call: ") + MAX_NOTIFY_CHARS
