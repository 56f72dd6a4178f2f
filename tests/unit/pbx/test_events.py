"""Typed AMI events: required headers, numbers, unknown events."""

from __future__ import annotations

import pytest

from pbx import events as ev
from pbx.framing import AmiMessage, AmiParser


def _msg(text: str) -> AmiMessage:
    (m,) = AmiParser(expect_banner=False).messages(text.replace("\n", "\r\n").encode() + b"\r\n")
    return m


def test_hangup_decodes() -> None:
    e = ev.decode_event(_msg(
        "Event: Hangup\nChannel: PJSIP/a-00000001\nUniqueid: 1.1\nLinkedid: 1.0\n"
        "ChannelState: 6\nChannelStateDesc: Up\nCause: 16\nCause-txt: Normal Clearing\n"))
    assert e == ev.Hangup(channel="PJSIP/a-00000001", uniqueid="1.1", linkedid="1.0", state=6,
                          state_desc="Up", cause=16, cause_txt="Normal Clearing")


def test_missing_required_header_is_an_error() -> None:
    with pytest.raises(ev.EventError, match="Hangup lacks required header 'Linkedid'"):
        ev.decode_event(_msg("Event: Hangup\nChannel: a\nUniqueid: 1\n"))


def test_bad_number_is_an_error() -> None:
    with pytest.raises(ev.EventError, match="Position='first' is not a number"):
        ev.decode_event(_msg(
            "Event: QueueCallerJoin\nChannel: a\nUniqueid: 1\nLinkedid: 1\nQueue: q\n"
            "Position: first\n"))


def test_unknown_events_and_responses_are_ignored() -> None:
    assert ev.decode_event(_msg("Event: VarSet\nVariable: x\n")) is None
    assert ev.decode_event(_msg("Response: Success\n")) is None


def test_user_event_keeps_all_headers() -> None:
    e = ev.decode_event(_msg("Event: UserEvent\nUserEvent: Note\nText: привет\nText: 2\n"))
    assert isinstance(e, ev.UserEvent) and e.user_event == "Note"
    assert ("Text", "привет") in e.headers and ("Text", "2") in e.headers


def test_core_status_response() -> None:
    s = ev.decode_as(ev.CoreStatus, _msg(
        "Response: Success\nCoreStartupDate: 2026-11-23\nCoreStartupTime: 09:00:01\n"
        "CoreReloadDate: 2026-11-23\nCoreReloadTime: 09:00:01\nCoreCurrentCalls: 2\n"))
    assert s.started == "2026-11-23 09:00:01" and s.current_calls == 2


def test_every_registered_event_names_known_headers() -> None:
    for name, cls in ev.EVENT_TYPES.items():
        assert cls.NAME.lower() == name
        assert all(key == header.lower() for _, key, header, _, _ in cls.SPEC)


def test_event_time_uses_timestamp_header() -> None:
    assert ev.event_time(_msg("Event: X\nTimestamp: 12.5\n"), 1.0) == 12.5
    assert ev.event_time(_msg("Event: X\nTimestamp: bad\n"), 1.0) == 1.0
    assert ev.event_time(_msg("Event: X\n"), 3.0) == 3.0
