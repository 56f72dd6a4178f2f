"""AmiLink against a scripted loopback AMI: input a real Asterisk never sends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from pbx import changes as ch
from pbx.actions import PbxUnavailable, UnknownOutcome
from pbx.framing import AmiMessage
from pbx.link import AmiLink, LinkSettings
from tests.functional.pbx.ami_server import ScriptedAmi, frame
from tests.integration.pbx.conftest import Recorder, wait_until
from tests.peers.ports import free_port

FAST = LinkSettings(connect_timeout=2.0, login_timeout=1.0, action_timeout=2.0,
                    ping_interval=0.5, ping_timeout=1.0, backoff_min=0.1, backoff_max=0.5,
                    auth_retry=0.5)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedAmi]:
    srv = ScriptedAmi()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def newchannel(uniqueid: str, name: bytes = b"x") -> bytes:
    return (b"Event: Newchannel\r\nChannel: PJSIP/t-" + uniqueid.encode() + b"\r\nUniqueid: "
            + uniqueid.encode() + b"\r\nLinkedid: " + uniqueid.encode()
            + b"\r\nCallerIDNum: 100\r\nCallerIDName: " + name + b"\r\nExten: 1\r\n\r\n")


async def test_one_megabyte_header_resets_the_connection_and_reconnects(
    server: ScriptedAmi,
) -> None:
    server.after_login = (b"Event: UserEvent\r\nUserEvent: big\r\nBlob: " + b"A" * (1 << 20)
                          + b"\r\n\r\n")
    link = AmiLink("p", server.url, FAST)
    rec = Recorder(link)
    try:
        await link.start()
        await wait_until(lambda: "header line longer" in link.health().detail, 10, "reset")
        # the first session never came up; the second one did
        await wait_until(lambda: link.health().up and link.health().connects == 1, 10,
                         "the link back up")
        assert server.connections == 2
        assert rec.of(ch.UserEventReceived) == []
    finally:
        await link.stop()
        await rec.close()


async def test_malformed_unknown_and_non_utf8_events_do_not_break_the_link(
    server: ScriptedAmi,
) -> None:
    server.after_login = (
        newchannel("1.1", "Привет".encode("cp1251"))
        + b"Event: Hangup\r\nChannel: PJSIP/t-1.1\r\nUniqueid: 1.1\r\n\r\n"  # no Linkedid
        + b"Event: QueueCallerJoin\r\nChannel: c\r\nUniqueid: 1.1\r\nLinkedid: 1.1\r\n"
          b"Queue: q\r\nPosition: first\r\n\r\n"  # not a number
        + b"Event: SomethingNew\r\nFoo: bar\r\n\r\n"
        + b"garbage without colon\r\nmore garbage\r\n\r\n"
        + newchannel("2.2", "Иван".encode())
    )
    link = AmiLink("p", server.url, FAST)
    rec = Recorder(link)
    try:
        await link.start()
        await link.wait_up(10)
        second = await rec.wait_for(ch.CallStarted, lambda c: c.call_id == "p:2.2", within=10)
        assert second.caller_name == "Иван"
        (first,) = rec.of(ch.CallStarted, lambda c: c.call_id == "p:1.1")
        assert first.caller_name == "\ufffd" * 6
        assert link.health().bad_events == 2 and link.health().up
        assert server.connections == 1
        assert {c.call_id for c in link.calls()} == {"p:1.1", "p:2.2"}
    finally:
        await link.stop()
        await rec.close()


async def test_an_ami_that_never_answers_keeps_the_link_down_and_retrying(
    server: ScriptedAmi,
) -> None:
    server.silent = True
    link = AmiLink("p", server.url, FAST)
    try:
        await link.start()
        await wait_until(lambda: server.connections >= 3, 15, "three connection attempts")
        health = link.health()
        assert not health.up and health.connects == 0
        assert "Login" in health.detail and "outcome unknown" in health.detail
        with pytest.raises(PbxUnavailable):
            await link.hangup("PJSIP/x-1")
    finally:
        await link.stop()


async def test_nothing_listening_health_down_then_up_when_the_pbx_appears() -> None:
    port = free_port()
    link = AmiLink("p", f"ami://cti:s3cret@127.0.0.1:{port}", FAST)
    try:
        await link.start()
        await wait_until(lambda: "ConnectionRefused" in link.health().detail
                         or "Connect call failed" in link.health().detail, 10, "refused")
        assert not link.health().up
        late = ScriptedAmi()
        await late.start(port)
        try:
            await link.wait_up(15)
            assert link.health().up
        finally:
            await late.stop()
    finally:
        await link.stop()


async def test_ping_without_pong_closes_the_half_open_link(server: ScriptedAmi) -> None:
    pongs = {"on": True}

    def ping(msg: AmiMessage) -> bytes | None:
        if pongs["on"]:
            return frame(("Response", "Success"), ("ActionID", msg["ActionID"]), ("Ping", "Pong"))
        return None

    server.responders["ping"] = ping
    link = AmiLink("p", server.url, FAST)
    rec = Recorder(link)
    try:
        await link.start()
        await link.wait_up(10)
        pongs["on"] = False
        down = await rec.wait_for(ch.PbxLinkChanged, lambda c: not c.up, within=10)
        assert "no Pong" in down.detail
        pongs["on"] = True
        await wait_until(lambda: link.health().up and link.health().connects == 2, 10, "up")
    finally:
        await link.stop()
        await rec.close()


async def test_action_in_flight_when_the_link_drops_is_never_resent(server: ScriptedAmi) -> None:
    loop = asyncio.get_running_loop()

    def swallow(msg: AmiMessage) -> bytes | None:
        loop.call_later(0.2, server.drop_all)
        return None

    server.responders["originate"] = swallow
    link = AmiLink("p", server.url, FAST)
    try:
        await link.start()
        await link.wait_up(10)
        with pytest.raises(UnknownOutcome) as info:
            await link.originate("PJSIP/agent1", "79161234567", correlation_id="c0ffee")
        assert info.value.channel_id == "cti-c0ffee"
        await wait_until(lambda: link.health().up and link.health().connects == 2, 10, "up")
        await asyncio.sleep(1.0)  # panoramisk would re-send right after the new login
        (sent,) = server.named("Originate")
        assert sent["ChannelId"] == "cti-c0ffee"
        assert sent.get_all("Variable") == ("CTI_CORRELATION_ID=c0ffee",)
    finally:
        await link.stop()


async def test_secret_never_logged_on_refused_login(
    server: ScriptedAmi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    link = AmiLink("p", server.url.replace(server.secret, "wrong-Secr3t"), FAST)
    try:
        await link.start()
        await wait_until(lambda: "refused" in link.health().detail, 10, "refused login")
        assert "Authentication failed" in link.health().detail
        assert "wrong-Secr3t" not in caplog.text and "wrong-Secr3t" not in repr(link)
        assert "refused" in caplog.text
    finally:
        await link.stop()


async def test_slow_answer_gives_unknown_outcome_and_the_late_response_is_dropped(
    server: ScriptedAmi,
) -> None:
    loop = asyncio.get_running_loop()

    def slow(msg: AmiMessage) -> bytes | None:
        late = frame(("Response", "Success"), ("ActionID", msg["ActionID"]),
                     ("Variable", "X"), ("Value", "late"))
        writer = server.writers[-1]
        loop.call_later(FAST.action_timeout + 0.5, writer.write, late)
        return None

    server.responders["getvar"] = slow
    link = AmiLink("p", server.url, FAST)
    try:
        await link.start()
        await link.wait_up(10)
        with pytest.raises(UnknownOutcome, match="no answer in time"):
            await link.getvar("X")
        await asyncio.sleep(1.0)  # the late answer arrives and is ignored
        assert link.health().up and link.health().connects == 1
        assert len(server.named("Getvar")) == 1
    finally:
        await link.stop()


async def test_events_received_counts_every_event_read_even_those_dropped_unparsed(
    server: ScriptedAmi,
) -> None:
    noise = b"Event: PeerStatus\r\nPeer: PJSIP/agent1\r\nPeerStatus: Reachable\r\n\r\n"

    def user_event(msg: AmiMessage) -> bytes:
        # the response, then 3 events the server has no use for and one it needs
        return (frame(("Response", "Success"), ("ActionID", msg["ActionID"]))
                + noise * 3 + newchannel("3.3"))

    server.responders["userevent"] = user_event
    link = AmiLink("p", server.url, FAST)
    rec = Recorder(link)
    try:
        await link.start()
        await link.wait_up(10)
        before = link.events_received
        await link.user_event("probe")
        await rec.wait_for(ch.CallStarted, lambda c: c.call_id == "p:3.3", within=10)
        assert link.events_received == before + 4
        assert link.health().bad_events == 0
    finally:
        await link.stop()
        await rec.close()
