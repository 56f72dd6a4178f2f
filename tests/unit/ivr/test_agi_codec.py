"""AGI codec: every input fed one byte at a time, as TCP may deliver it."""

from __future__ import annotations

import pytest

from ivr.agi import (
    MAX_ENV_LINES,
    MAX_LINE_BYTES,
    AgiEvent,
    AgiParser,
    AgiProtocolError,
    CommandResult,
    EnvironmentReceived,
    HangupNotice,
    encode_command,
    parse_result_line,
    quote_argument,
)

ENV = (
    b"agi_network: yes\n"
    b"agi_network_script: inbound?lang=ru&x=1\n"
    b"agi_request: agi://127.0.0.1:4573/inbound?lang=ru&x=1\n"
    b"agi_channel: PJSIP/trunk-00000001\n"
    b"agi_language: en\n"
    b"agi_uniqueid: 1700000000.12\n"
    b"agi_callerid: 79161234567\n"
    b"agi_calleridname: \xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd\n"
    b"agi_extension: 100\n"
    b"agi_arg_1: first arg\n"
    b"agi_arg_2: \n"
    b"\n"
)


def feed_bytewise(data: bytes, parser: AgiParser | None = None) -> list[AgiEvent]:
    parser = parser or AgiParser()
    events: list[AgiEvent] = []
    for i in range(len(data)):
        parser.receive_data(data[i : i + 1])
        while (event := parser.next_event()) is not None:
            events.append(event)
    return events


def test_environment_bytewise_including_split_utf8() -> None:
    events = feed_bytewise(ENV)
    assert len(events) == 1
    assert isinstance(events[0], EnvironmentReceived)
    env = events[0].environment
    assert env.script == "inbound"
    assert dict(env.query) == {"lang": "ru", "x": "1"}
    assert env.channel == "PJSIP/trunk-00000001"
    assert env.uniqueid == "1700000000.12"
    assert env.caller_number == "79161234567"
    assert env.get("calleridname") == "Иван"
    assert env.arguments == ("first arg", "")
    assert env.extension == "100"


def test_unknown_callerid_is_empty() -> None:
    events = feed_bytewise(b"agi_callerid: unknown\nagi_network_script: queue-exit\n\n")
    assert isinstance(events[0], EnvironmentReceived)
    assert events[0].environment.caller_number == ""
    assert events[0].environment.script == "queue-exit"


def test_environment_then_results_hangup_and_usage() -> None:
    stream = ENV + (
        b"200 result=0 endpos=8000\n"
        b"200 result=49 endpos=1200\n"
        b"200 result=1234 (timeout)\n"
        b"200 result= (timeout)\n"
        b"200 result=1 (a (nested) value) \n"
        b"200 result=1 (digit) digit=1 endpos=42\n"
        b"510 Invalid or unknown command\n"
        b"520-Invalid command syntax.  Proper usage follows:\n"
        b" Usage: STREAM FILE <filename> <escape_digits> [sample offset]\n"
        b"\n"
        b"520 End of proper usage.\n"
        b"HANGUP\n"
        b"200 result=-1 endpos=3000\r\n"
        b"511 Command Not Permitted on a dead channel or intercept routine\n"
    )
    events = feed_bytewise(stream)
    assert isinstance(events[0], EnvironmentReceived)
    results = events[1:]
    first = results[0]
    assert isinstance(first, CommandResult)
    assert (first.code, first.value, first.data, dict(first.extra)) == (200, 0, None,
                                                                         {"endpos": "8000"})
    assert isinstance(results[1], CommandResult) and results[1].value == 49
    assert isinstance(results[2], CommandResult)
    assert (results[2].result, results[2].data) == ("1234", "timeout")
    assert isinstance(results[3], CommandResult)
    assert (results[3].result, results[3].data) == ("", "timeout")
    # trailing space after the data: not a key=value tail, stays as text
    assert isinstance(results[4], CommandResult) and results[4].result == "1"
    assert isinstance(results[5], CommandResult)
    assert results[5].data == "digit" and dict(results[5].extra) == {"digit": "1", "endpos": "42"}
    assert isinstance(results[6], CommandResult)
    assert (results[6].code, results[6].result) == (510, None)
    usage = results[7]
    assert isinstance(usage, CommandResult) and usage.code == 520
    assert usage.usage == (" Usage: STREAM FILE <filename> <escape_digits> [sample offset]", "")
    assert isinstance(results[8], HangupNotice)
    assert isinstance(results[9], CommandResult) and results[9].value == -1
    assert isinstance(results[10], CommandResult) and results[10].code == 511
    assert len(results) == 11


def test_data_with_parentheses_is_greedy() -> None:
    result = parse_result_line("200 result=1 (value (with) parens)")
    assert result.data == "value (with) parens"


def test_not_a_result_line() -> None:
    with pytest.raises(AgiProtocolError):
        feed_bytewise(ENV + b"hello there\n")


def test_result_value_not_integer() -> None:
    result = parse_result_line("200 result=12a")
    with pytest.raises(AgiProtocolError):
        _ = result.value


def test_line_too_long_without_newline() -> None:
    parser = AgiParser()
    with pytest.raises(AgiProtocolError):
        parser.receive_data(b"agi_x: " + b"a" * MAX_LINE_BYTES)


def test_environment_too_many_lines() -> None:
    data = b"".join(b"agi_k%d: v\n" % i for i in range(MAX_ENV_LINES + 1))
    with pytest.raises(AgiProtocolError):
        AgiParser().receive_data(data)


def test_environment_line_must_be_agi() -> None:
    with pytest.raises(AgiProtocolError):
        feed_bytewise(b"GET / HTTP/1.0\r\n")


def test_partial_environment_yields_nothing() -> None:
    parser = AgiParser()
    assert feed_bytewise(ENV[:-1], parser) == []
    assert parser.in_environment
    assert feed_bytewise(b"\n", parser) != []
    assert not parser.in_environment


def test_quote_argument() -> None:
    assert quote_argument("hello") == "hello"
    assert quote_argument("") == '""'
    assert quote_argument("two words") == '"two words"'
    assert quote_argument('say "hi"') == '"say \\"hi\\""'
    assert quote_argument("back\\slash") == '"back\\\\slash"'
    for bad in ("a\nb", "a\rb", "a\0b"):
        with pytest.raises(ValueError):
            quote_argument(bad)


def test_encode_command() -> None:
    assert encode_command("STREAM FILE", "hello-world", "") == b'STREAM FILE hello-world ""\n'
    assert encode_command("GET DATA", "beep", 5000, 4) == b"GET DATA beep 5000 4\n"
    assert encode_command("EXEC", "UserEvent", "Cti,Outcome: deflected") == (
        b'EXEC UserEvent "Cti,Outcome: deflected"\n'
    )
    assert encode_command("SET VARIABLE", "CHANNEL(language)", "ru") == (
        b"SET VARIABLE CHANNEL(language) ru\n"
    )
    with pytest.raises(ValueError):
        encode_command("stream file; rm", "x")
    with pytest.raises(ValueError):
        encode_command("VERBOSE", "x" * 3000)
    with pytest.raises(ValueError):
        encode_command("VERBOSE", "line\nHANGUP")
