"""AtParser fed one byte at a time (and in one chunk): the same events either way."""

from __future__ import annotations

import pytest

from sms_gateway.modem.at import (
    AtEvent,
    AtParser,
    Final,
    Overflow,
    Prompt,
    Unexpected,
    Urc,
    command_prefix,
)


def run(data: bytes, command: str | None = None, *, prompt: bool = False,
        bytewise: bool = True, parser: AtParser | None = None) -> list[AtEvent]:
    parser = parser or AtParser()
    if command is not None:
        parser.begin(command, expects_prompt=prompt)
    events: list[AtEvent] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        parser.feed(chunk)
        events += parser.events()
    return events


@pytest.fixture(params=[True, False], ids=["bytewise", "chunk"])
def bytewise(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_ok_with_intermediate_line(bytewise: bool) -> None:
    events = run(b"\r\n+CSQ: 20,99\r\n\r\nOK\r\n", "AT+CSQ", bytewise=bytewise)
    assert events == [Final("AT+CSQ", True, "OK", ("+CSQ: 20,99",))]


def test_echo_is_dropped(bytewise: bool) -> None:
    events = run(b"AT+CSQ\r\r\n+CSQ: 20,99\r\n\r\nOK\r\n", "AT+CSQ", bytewise=bytewise)
    assert events == [Final("AT+CSQ", True, "OK", ("+CSQ: 20,99",))]


def test_urc_in_the_middle_of_a_response_is_routed_out(bytewise: bool) -> None:
    data = b'\r\n+CSQ: 20,99\r\n\r\n+CMTI: "SM",3\r\n\r\nRING\r\n\r\nOK\r\n'
    events = run(data, "AT+CSQ", bytewise=bytewise)
    assert events == [
        Urc("+CMTI", '"SM",3'),
        Urc("RING", ""),
        Final("AT+CSQ", True, "OK", ("+CSQ: 20,99",)),
    ]


def test_cmt_takes_the_next_line_as_its_pdu_even_mid_response(bytewise: bool) -> None:
    data = b"\r\n+CMGS: 4\r\n\r\n+CMT: ,24\r\n0791AABB\r\n\r\nOK\r\n"
    events = run(data, "AT+CMGS=20", bytewise=bytewise)
    assert events == [
        Urc("+CMT", ",24", "0791AABB"),
        Final("AT+CMGS=20", True, "OK", ("+CMGS: 4",)),
    ]


def test_cds_idle(bytewise: bool) -> None:
    assert run(b"\r\n+CDS: 25\r\n0006\r\n", bytewise=bytewise) == [Urc("+CDS", "25", "0006")]


def test_creg_is_a_response_to_creg_query_and_a_urc_otherwise(bytewise: bool) -> None:
    parser = AtParser()
    events = run(b"\r\n+CREG: 0,1\r\n\r\nOK\r\n", "AT+CREG?", bytewise=bytewise, parser=parser)
    assert events == [Final("AT+CREG?", True, "OK", ("+CREG: 0,1",))]
    assert run(b"\r\n+CREG: 5\r\n", bytewise=bytewise, parser=parser) == [Urc("+CREG", "5")]


def test_prompt_without_line_end_then_pdu_echo(bytewise: bool) -> None:
    parser = AtParser()
    events = run(b"AT+CMGS=25\r\r\n> ", "AT+CMGS=25", prompt=True, bytewise=bytewise,
                 parser=parser)
    assert events == [Prompt()]
    parser.add_echo("0011AB")
    events = run(b"0011AB\x1a\r\n+CMGS: 7\r\n\r\nOK\r\n", bytewise=bytewise, parser=parser)
    assert events == [Final("AT+CMGS=25", True, "OK", ("+CMGS: 7",))]


def test_greater_than_is_no_prompt_when_none_is_expected(bytewise: bool) -> None:
    events = run(b"\r\n>x\r\n\r\nOK\r\n", "AT+CSQ", bytewise=bytewise)
    assert events == [Final("AT+CSQ", True, "OK", (">x",))]


@pytest.mark.parametrize("result", ["ERROR", "+CMS ERROR: 500", "+CME ERROR: 16"])
def test_error_results(result: str, bytewise: bool) -> None:
    events = run(f"\r\n{result}\r\n".encode(), "AT+CMGS=20", bytewise=bytewise)
    assert events == [Final("AT+CMGS=20", False, result, ())]


def test_cmgr_pdu_line_is_intermediate(bytewise: bool) -> None:
    events = run(b"\r\n+CMGR: 0,,24\r\n0791ABCD\r\n\r\nOK\r\n", "AT+CMGR=1", bytewise=bytewise)
    assert events == [Final("AT+CMGR=1", True, "OK", ("+CMGR: 0,,24", "0791ABCD"))]


def test_idle_lines(bytewise: bool) -> None:
    events = run(b'\r\nOK\r\n\r\n+CLIP: "+7903",145,,,,0\r\n', bytewise=bytewise)
    assert events == [Unexpected("OK"), Urc("+CLIP", '"+7903",145,,,,0')]


def test_line_limit_discards_the_rest_of_the_line(bytewise: bool) -> None:
    parser = AtParser(max_line=16)
    events = run(b"\r\n" + b"A" * 40 + b"\r\n\r\nOK\r\n", "AT", bytewise=bytewise, parser=parser)
    assert isinstance(events[0], Overflow)
    assert events[1:] == [Final("AT", True, "OK", ())]


def test_answer_line_limit() -> None:
    parser = AtParser(max_lines=2)
    events = run(b"\r\n1\r\n2\r\n3\r\nOK\r\n", "AT+CMGL=4", parser=parser)
    assert isinstance(events[0], Overflow)
    assert events[1] == Final("AT+CMGL=4", True, "OK", ("1", "2"))


def test_one_command_at_a_time() -> None:
    parser = AtParser()
    parser.begin("AT")
    with pytest.raises(RuntimeError):
        parser.begin("AT+CSQ")


def test_command_prefix() -> None:
    assert command_prefix("AT+CREG?") == "+CREG"
    assert command_prefix('AT+CUSD=1,"*100#",15') == "+CUSD"
    assert command_prefix("ATE0") is None
