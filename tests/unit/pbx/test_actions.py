"""AMI action builders: header injection refused, URL parsing, secret kept out of reprs."""

from __future__ import annotations

import pytest

from pbx import actions as act
from pbx.framing import AmiParser


def test_crlf_in_a_value_is_refused_before_sending() -> None:
    with pytest.raises(act.BadActionArgument, match="CR or LF"):
        act.originate_click_to_dial("PJSIP/agent1", "100", context="from-agents",
                                    correlation_id="c1",
                                    caller_id='"Evil"\r\nAction: Hangup <1>')
    with pytest.raises(act.BadActionArgument):
        act.queue_pause("PJSIP/agent1", True, reason="x\ny")
    with pytest.raises(act.BadActionArgument):
        act.user_event("Note", {"ActionID": "x"})
    with pytest.raises(act.BadActionArgument):
        act.play_dtmf("PJSIP/a-1", "55")
    with pytest.raises(act.BadActionArgument):
        act.originate_click_to_dial("PJSIP/agent1", "1; rm", context="c", correlation_id="c")
    with pytest.raises(act.BadActionArgument, match="longer than"):
        act.setvar("X", "a" * 5000)


def test_originate_carries_correlation_and_channel_id() -> None:
    a = act.originate_click_to_dial("PJSIP/agent1", "+79161234567", context="from-agents",
                                    correlation_id="abc", caller_id='"Клиент" <79161234567>',
                                    timeout=20)
    assert a["Channel"] == "PJSIP/agent1" and a["Exten"] == "+79161234567"
    assert a["ChannelId"] == "cti-abc" and a["Timeout"] == "20000" and a["Async"] == "true"
    assert a["Variable"] == ["CTI_CORRELATION_ID=abc"]
    assert a["CallerID"] == '"Клиент" <79161234567>'


def test_ami_url() -> None:
    ep = act.parse_ami_url("ami://cti:p%40ss@10.0.0.1:5039")
    assert (ep.host, ep.port, ep.username, ep.secret) == ("10.0.0.1", 5039, "cti", "p@ss")
    assert "p@ss" not in repr(ep) and "p@ss" not in str(ep)
    assert act.parse_ami_url("ami://u:s@h").port == 5038
    for bad in ("http://u:s@h", "ami://h:5038", "ami://u:s@h:notaport"):
        with pytest.raises(act.BadActionArgument):
            act.parse_ami_url(bad)


def test_check_response_raises_with_the_pbx_message() -> None:
    (err,) = AmiParser(expect_banner=False).messages(
        b"Response: Error\r\nActionID: 1\r\nMessage: No such channel\r\n\r\n")
    with pytest.raises(act.AmiActionError) as info:
        act.check_response("Hangup", err)
    assert info.value.pbx_message == "No such channel" and info.value.response is err
    (ok,) = AmiParser(expect_banner=False).messages(b"Response: Success\r\n\r\n")
    assert act.check_response("Ping", ok) is ok
