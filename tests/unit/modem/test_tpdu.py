"""TPDU codec: published vectors, and cross-checks with the emulator's independent codec."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sms_gateway.encoding import ConcatInfo
from sms_gateway.modem.errors import TpduError
from sms_gateway.modem.tpdu import (
    Deliver,
    StatusReport,
    alphabet_of,
    decode_pdu,
    encode_submit,
)
from tests.modem_emulator.pdu import build_deliver, build_status_report, concat_udh, parse_submit


def test_deliver_published_vector() -> None:
    # SMS-DELIVER "How are you?" from +31641600986 (the classic GSM 03.40 walkthrough)
    sms = decode_pdu("07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07")
    assert isinstance(sms, Deliver)
    assert (sms.smsc, sms.sender, sms.text, sms.alphabet) == ("+31624000000", "+31641600986",
                                                              "How are you?", "gsm7")
    assert sms.timestamp is not None
    assert sms.timestamp.replace(tzinfo=None) == datetime(2002, 8, 26, 19, 37, 41)


@pytest.mark.parametrize(("octet", "offset"), [("21", timedelta(hours=3)),
                                               ("0A", timedelta(hours=-5)),
                                               ("00", timedelta(0))])
def test_time_zone_in_quarters_with_sign_bit(octet: str, offset: timedelta) -> None:
    # 23.040 9.2.3.11: swapped semi-octets, quarters of an hour, bit 3 is the sign
    pdu = f"07911326040000F0040B911346610089F60000208062917314{octet}0CC8F71D14969741F977FD07"
    sms = decode_pdu(pdu)
    assert isinstance(sms, Deliver) and sms.timestamp is not None
    assert sms.timestamp.utcoffset() == offset


def test_submit_published_vector() -> None:
    # "hellohello" to +46708251358, 4 days validity, no status report
    submit = encode_submit("+46708251358", "hellohello", alphabet="gsm7", status_report=False,
                           validity_minutes=4 * 24 * 60)
    assert submit.hex == "0011000B916407281553F80000AA0AE8329BFD4697D9EC37"
    assert submit.length == 23


def test_the_emulator_codec_reads_the_published_submit_vector() -> None:
    parsed = parse_submit("0011000B916407281553F80000AA0AE8329BFD4697D9EC37", 1)
    assert (parsed.destination, parsed.text, parsed.status_report) == (
        "+46708251358", "hellohello", False)


@pytest.mark.parametrize("ref16", [False, True])
@pytest.mark.parametrize("text", ["a", "hello", "1234567", "12345678", "x{y}z€" * 10])
def test_gsm7_submit_with_udh_parsed_by_the_emulator(text: str, ref16: bool) -> None:
    submit = encode_submit("89161234567", text, alphabet="gsm7",
                           concat=ConcatInfo(300 if ref16 else 77, 3, 2), ref16=ref16)
    parsed = parse_submit(submit.hex, 1)
    assert (parsed.text, parsed.destination, parsed.ucs2) == (text, "89161234567", False)
    assert parsed.concat == (300 if ref16 else 77, 3, 2) and parsed.ref16 == ref16
    assert parsed.status_report


def test_ucs2_submit_parsed_by_the_emulator() -> None:
    submit = encode_submit("+79161234567", "Привет 👋", alphabet="ucs2")
    parsed = parse_submit(submit.hex, 9)
    assert (parsed.text, parsed.ucs2, parsed.concat) == ("Привет 👋", True, None)


@pytest.mark.parametrize("ref16", [False, True])
@pytest.mark.parametrize(("text", "ucs2"), [("Проверка связи", True), ("ping [x] {}", False),
                                            ("1234567", False)])
def test_deliver_built_by_the_emulator(text: str, ucs2: bool, ref16: bool) -> None:
    when = datetime(2026, 11, 23, 9, 30, 5, tzinfo=UTC)
    pdu = build_deliver("+79160000001", text, ucs2=ucs2, udh=concat_udh(513 if ref16 else 5,
                        2, 1, ref16), when=when)
    sms = decode_pdu(pdu)
    assert isinstance(sms, Deliver)
    assert (sms.sender, sms.text, sms.timestamp) == ("+79160000001", text, when)
    assert sms.concat == ConcatInfo(513 if ref16 else 5, 2, 1)


def test_alphanumeric_sender() -> None:
    sms = decode_pdu(build_deliver("MyBank", "code 1234", ucs2=False))
    assert isinstance(sms, Deliver) and sms.sender == "MyBank"


@pytest.mark.parametrize(("status", "state"), [(0, "delivered"), (0x21, "pending"),
                                               (0x41, "failed"), (0x60, "failed")])
def test_status_report(status: int, state: str) -> None:
    pdu, _ = build_status_report(42, "+79161234567", status)
    report = decode_pdu(pdu)
    assert isinstance(report, StatusReport)
    assert (report.reference, report.recipient, report.status, report.state) == (
        42, "+79161234567", status, state)


@pytest.mark.parametrize("bad", ["", "07", "0791ZZ", "07911326040000F0040B9113466100",
                                 "00" + "03" * 5])
def test_malformed_pdus_raise_tpdu_error(bad: str) -> None:
    with pytest.raises(TpduError):
        decode_pdu(bad)


def test_udl_overrunning_the_pdu() -> None:
    good = "07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07"
    with pytest.raises(TpduError):
        decode_pdu(good[:-6])


@pytest.mark.parametrize("number", ["", "+", "12ab", "+" + "1" * 21])
def test_bad_destination(number: str) -> None:
    with pytest.raises(TpduError):
        encode_submit(number, "x", alphabet="gsm7")


def test_too_long_for_one_part() -> None:
    with pytest.raises(TpduError):
        encode_submit("+1", "x" * 161, alphabet="gsm7")
    with pytest.raises(TpduError):
        encode_submit("+1", "я" * 71, alphabet="ucs2")


@pytest.mark.parametrize(("dcs", "alphabet"), [(0x00, "gsm7"), (0x04, "8bit"), (0x08, "ucs2"),
                                               (0x11, "gsm7"), (0x48, "ucs2"), (0xF0, "gsm7"),
                                               (0xF4, "8bit"), (0xE0, "ucs2"), (0xC0, "gsm7")])
def test_alphabet_of(dcs: int, alphabet: str) -> None:
    assert alphabet_of(dcs) == alphabet


def test_compressed_is_refused() -> None:
    with pytest.raises(TpduError):
        alphabet_of(0x20)
