"""The AMI framing parser, fed recorded transcripts one byte at a time and in random chunks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pbx.framing import AmiFramingError, AmiMessage, AmiParser, FrameLimits, MissingHeader

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ami"
TRANSCRIPTS = sorted(FIXTURES.glob("*.txt"))


def _whole(data: bytes) -> list[AmiMessage]:
    return AmiParser().messages(data)


def test_there_are_transcripts() -> None:
    assert TRANSCRIPTS, f"no AMI transcripts in {FIXTURES}"


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.name)
def test_byte_at_a_time_equals_whole(path: Path) -> None:
    data = path.read_bytes()
    expected = _whole(data)
    assert len(expected) == data.count(b"\r\n\r\n")
    parser = AmiParser()
    got: list[AmiMessage] = []
    for i in range(len(data)):
        got.extend(parser.messages(data[i : i + 1]))
    assert got == expected
    assert parser.buffered == 0
    assert parser.banner is not None and parser.banner.startswith("Asterisk Call Manager/")


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.name)
@pytest.mark.parametrize("seed", range(5))
def test_random_chunkings_equal_whole(path: Path, seed: int) -> None:
    data = path.read_bytes()
    expected = _whole(data)
    rng = random.Random(seed)
    parser = AmiParser()
    got: list[AmiMessage] = []
    i = 0
    while i < len(data):
        n = rng.randint(1, 700)
        got.extend(parser.messages(data[i : i + n]))
        i += n
    assert got == expected


def test_utf8_split_across_reads_survives() -> None:
    name = "Иван Петров".encode()
    data = b"Asterisk Call Manager/5.0.1\r\nEvent: X\r\nCallerIDName: " + name + b"\r\n\r\n"
    cut = data.index(name) + 1  # inside the two bytes of "И"
    parser = AmiParser()
    assert parser.messages(data[:cut]) == []
    (msg,) = parser.messages(data[cut:])
    assert msg["calleridname"] == "Иван Петров"


def test_non_utf8_becomes_replacement_not_crash() -> None:
    parser = AmiParser(expect_banner=False)
    (msg,) = parser.messages(b"Event: X\r\nCallerIDName: \xcf\xf0\xe8\r\n\r\n")
    assert msg["CallerIDName"] == "\ufffd\ufffd\ufffd"


def test_missing_header_raises_clear_error() -> None:
    (msg,) = AmiParser(expect_banner=False).messages(b"Event: Hangup\r\nChannel: a\r\n\r\n")
    with pytest.raises(MissingHeader, match="Hangup has no 'Cause' header"):
        msg["Cause"]
    assert msg.get("Cause") is None
    assert "cause" not in msg and "channel" in msg


def test_repeated_headers_and_case_insensitivity() -> None:
    (msg,) = AmiParser(expect_banner=False).messages(
        b"Response: Success\r\nOutput: a\r\noutput: b\r\nValue: x: y\r\n\r\n"
    )
    assert msg["OUTPUT"] == "a"
    assert msg.get_all("Output") == ("a", "b")
    assert msg["value"] == "x: y"
    assert msg.response == "Success" and msg.event is None


def test_malformed_line_without_colon_is_kept_keyless() -> None:
    (msg,) = AmiParser(expect_banner=False).messages(b"Event: X\r\ngarbage line\r\n\r\n")
    assert msg.get_all("") == ("garbage line",)
    assert msg.event == "X"


def test_empty_blocks_are_skipped() -> None:
    parser = AmiParser(expect_banner=False)
    assert [m.event for m in parser.messages(b"\r\n\r\nEvent: A\r\n\r\n\r\n\r\nEvent: B\r\n\r\n")] \
        == ["A", "B"]


def test_not_an_ami_banner() -> None:
    parser = AmiParser()
    with pytest.raises(AmiFramingError, match="not an AMI server"):
        parser.messages(b"SSH-2.0-OpenSSH_9\r\n")
    with pytest.raises(AmiFramingError):  # dead after an error
        parser.messages(b"Event: X\r\n\r\n")


def test_banner_without_newline_is_bounded() -> None:
    with pytest.raises(AmiFramingError, match="banner"):
        AmiParser().messages(b"x" * 1000)


def test_one_megabyte_header_value_is_bounded_while_streaming() -> None:
    parser = AmiParser(expect_banner=False)
    parser.messages(b"Event: X\r\nCallerIDName: ")
    with pytest.raises(AmiFramingError, match="header line longer"):
        for _ in range(1024):
            parser.messages(b"A" * 1024)
    assert parser.buffered <= FrameLimits().max_line + 2048


def test_message_size_limit() -> None:
    limits = FrameLimits(max_line=100, max_message=1000, max_headers=10_000)
    parser = AmiParser(limits, expect_banner=False)
    with pytest.raises(AmiFramingError, match="message longer"):
        for i in range(200):
            parser.messages(f"H{i}: v\r\n".encode())


def test_header_count_limit() -> None:
    parser = AmiParser(FrameLimits(max_headers=5), expect_banner=False)
    with pytest.raises(AmiFramingError, match="more than 5 headers"):
        parser.messages(b"".join(b"H: v\r\n" for _ in range(6)) + b"\r\n")


def test_long_line_inside_complete_message_is_rejected() -> None:
    parser = AmiParser(FrameLimits(max_line=50), expect_banner=False)
    with pytest.raises(AmiFramingError, match="header line longer"):
        parser.messages(b"Event: X\r\nV: " + b"a" * 60 + b"\r\n\r\n")


def test_messages_are_immutable() -> None:
    (msg,) = AmiParser(expect_banner=False).messages(b"Event: X\r\n\r\n")
    with pytest.raises(TypeError):
        msg["Event"] = "Y"  # type: ignore[index]


def test_spacing_variants_and_colons_in_values() -> None:
    (msg,) = AmiParser(expect_banner=False).messages(
        b"Event: X\r\nA:1\r\nB:  two\r\nURI: sip:a@b:5060\r\nEmpty:\r\n\r\n")
    assert msg["A"] == "1" and msg["B"] == " two" and msg["URI"] == "sip:a@b:5060"
    assert msg["Empty"] == ""


def test_unused_unsolicited_events_are_dropped_on_their_name_and_counted() -> None:
    data = (
        b"Asterisk Call Manager/5.0.4\r\n"
        b"Event: Newchannel\r\nChannel: a\r\n\r\n"
        b"Event: PeerStatus\r\nPeer: PJSIP/agent1\r\n\r\n"
        b"Event: QueueMember\r\nActionID: 5\r\nQueue: q\r\n\r\n"  # answers an action: kept
        b"Event: Other\r\nactionid: 6\r\n\r\n"  # any case
        b"Response: Success\r\nActionID: 7\r\n\r\n"
        b"event: newchannel\r\nChannel: b\r\n\r\n"
    )
    for step in (len(data), 1):
        parser = AmiParser(keep_events={"Newchannel"})
        got: list[AmiMessage] = []
        for i in range(0, len(data), step):
            got += parser.messages(data[i : i + step])
        assert [(m.event, m.get("Channel")) for m in got] == [
            ("Newchannel", "a"), ("QueueMember", None), ("Other", None), (None, None),
            ("newchannel", "b"),
        ]
        assert (parser.events, parser.skipped) == (5, 1)


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.name)
def test_lazy_lookups_equal_the_parsed_headers(path: Path) -> None:
    for msg in _whole(path.read_bytes()):
        parsed = AmiMessage(msg.headers)
        for key, _ in msg.headers:
            for k in (key, key.lower(), key.upper()):
                assert msg.get(k) == parsed.get(k) == parsed.lowered[key.lower()]
        assert msg.get("NoSuchHeader") is None and "NoSuchHeader" not in msg
        assert msg == parsed and dict(msg.lowered) == dict(parsed.lowered)


def test_lazy_lookup_edge_cases() -> None:
    (msg,) = AmiParser(expect_banner=False).messages(
        b"Event: X\r\nCHANNEL: first\r\nChannel: second\r\nEmpty:\r\nTwo:  spaced\r\n"
        b"Url: http://h:1/a: b\r\nName: \xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd\r\n\r\n"
    )
    assert msg["channel"] == "first" and msg.get_all("Channel") == ("first", "second")
    assert msg["Empty"] == "" and msg["Two"] == " spaced"
    assert msg["URL"] == "http://h:1/a: b" and msg["Name"] == "Иван"
    with pytest.raises(MissingHeader):
        msg["Missing"]
    # bare LF line ends: parsed at once, same answers
    (bare,) = AmiParser(expect_banner=False).messages(b"Event: X\nChannel: a\r\nQ: 1\r\n\r\n")
    assert (bare["Channel"], bare["q"], len(bare)) == ("a", "1", 3)
