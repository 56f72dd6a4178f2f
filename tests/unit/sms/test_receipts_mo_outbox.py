"""Delivery receipts, MO reassembly, outbox and SMPP URL config (pure parts)."""

from __future__ import annotations

import random
from datetime import datetime

import pytest

from sms_gateway import pdu as P
from sms_gateway.encoding import build_concat_udh
from sms_gateway.esme import (
    InvalidDestinationError,
    SmppConfig,
    SmppConfigError,
    validate_destination,
)
from sms_gateway.mo import MoReassembler
from sms_gateway.outbox import InMemoryOutbox, OutboundSms
from sms_gateway.receipts import (
    ReceiptError,
    combine_states,
    id_forms,
    normalize_id,
    parse_receipt,
)


def _receipt(text: str, tlvs: tuple[tuple[int, bytes], ...] = ()) -> P.ShortMessage:
    return P.ShortMessage("7900", "CTI", text.encode(), esm_class=4, tlvs=tlvs)


def test_receipt_10_digit_dates() -> None:
    r = parse_receipt(
        _receipt(
            "id:1A2B3C sub:001 dlvrd:001 submit date:2611230930 done date:2611230931 "
            "stat:DELIVRD err:000 text:Hello there"
        )
    )
    assert r.message_id == "1A2B3C" and r.state == "delivered" and r.error == "000"
    assert r.submit_date == datetime(2026, 11, 23, 9, 30)
    assert r.done_date == datetime(2026, 11, 23, 9, 31)


def test_receipt_12_digit_dates_odd_case_and_order() -> None:
    r = parse_receipt(
        _receipt("STAT:undeliv Id:000123 done date:261123093145 submit date:261123093001 err:34")
    )
    assert r.message_id == "000123" and r.state == "failed" and r.error == "34"
    assert r.done_date == datetime(2026, 11, 23, 9, 31, 45)


def test_receipt_tlvs_win() -> None:
    r = parse_receipt(
        _receipt(
            "id:999 stat:ENROUTE",
            ((P.TLV_RECEIPTED_MESSAGE_ID, b"ABC\x00"), (P.TLV_MESSAGE_STATE, b"\x03")),
        )
    )
    assert (r.message_id, r.state) == ("ABC", "expired")


def test_receipt_errors() -> None:
    with pytest.raises(ReceiptError):
        parse_receipt(_receipt("stat:DELIVRD"))
    with pytest.raises(ReceiptError):
        parse_receipt(_receipt("id:12 stat:WHATEVER"))
    r = parse_receipt(_receipt("id:12 stat:DELIVRD submit date:99999 done date:2613999999"))
    assert r.submit_date is None and r.done_date is None


def test_id_forms() -> None:
    assert normalize_id("00AbC") == "abc"
    assert normalize_id("000") == "0"
    assert id_forms("255") == ("255", "ff", "597")
    assert id_forms("ff") == ("ff", "255")
    assert id_forms("message-1") == ("message-1",)


def test_combine_states() -> None:
    assert combine_states(["delivered", None]) is None
    assert combine_states(["delivered", "delivered"]) == "delivered"
    assert combine_states(["enroute", "failed"]) == "failed"
    assert combine_states(["expired", "delivered"]) == "expired"
    assert combine_states(["accepted", "delivered"]) is None


def _mo_parts(text: str, ref: int) -> list[P.ShortMessage]:
    data = text.encode("utf-16-be")
    chunks = [data[i : i + 134] for i in range(0, len(data), 134)]
    return [
        P.ShortMessage(
            "79005550000",
            "CTI",
            build_concat_udh(ref, len(chunks), i + 1) + chunk,
            esm_class=P.ESM_CLASS_UDHI,
            data_coding=P.DATA_CODING_UCS2,
        )
        for i, chunk in enumerate(chunks)
    ]


def test_mo_any_order_and_split_surrogate() -> None:
    text = "я" * 66 + "😀" + "ю" * 100  # the emoji straddles parts 1 and 2
    rng = random.Random(5)
    for _ in range(20):
        parts = _mo_parts(text, 9)
        rng.shuffle(parts)
        reasm = MoReassembler(timeout=10)
        out = []
        for part in parts + parts[:1]:  # a duplicate part is ignored
            out.extend(reasm.add(part, now=0.0))
        assert len(out) == 1 and out[0].text == text and out[0].complete
        assert len(reasm) == 0


def test_mo_timeout_delivers_incomplete() -> None:
    parts = _mo_parts("ж" * 150, 3)
    reasm = MoReassembler(timeout=5)
    assert reasm.add(parts[2], now=0.0) == []
    assert reasm.expire(now=4.9) == []
    [msg] = reasm.expire(now=5.0)
    assert not msg.complete and (msg.parts_received, msg.parts_expected) == (1, 3)
    assert msg.text == "ж" * 16


def test_mo_pending_limit_forces_oldest_out() -> None:
    reasm = MoReassembler(timeout=60, max_pending=2)
    out = []
    for ref in range(3):
        out.extend(reasm.add(_mo_parts("ж" * 100, ref)[0], now=float(ref)))
    assert len(out) == 1 and not out[0].complete and len(reasm) == 2


def test_mo_single_and_sar_and_gsm() -> None:
    reasm = MoReassembler(timeout=60)
    [single] = reasm.add(P.ShortMessage("1", "2", b"Hello \x1be"), now=0)
    assert single.text == "Hello €" and single.complete
    sar = [
        P.ShortMessage(
            "1",
            "2",
            text,
            tlvs=(
                (P.TLV_SAR_MSG_REF_NUM, b"\x01\x00"),
                (P.TLV_SAR_TOTAL_SEGMENTS, b"\x02"),
                (P.TLV_SAR_SEGMENT_SEQNUM, bytes([seq])),
            ),
        )
        for seq, text in ((2, b"world"), (1, b"hello "))
    ]
    assert reasm.add(sar[0], now=0) == []
    [joined] = reasm.add(sar[1], now=0)
    assert joined.text == "hello world"


async def test_outbox_idempotency_and_lookup() -> None:
    box = InMemoryOutbox()
    msg = OutboundSms("k", "7900", "hi", smsc_ids=(None, None), part_states=(None, None))
    stored, created = await box.add(msg)
    assert created
    again, created2 = await box.add(OutboundSms("k", "other", "changed"))
    assert not created2 and again == stored
    await box.update(stored.with_part_submitted(1, "00FF"))
    found = await box.find_by_smsc_id("ff")
    assert found is not None and found[1] == 1
    assert await box.find_by_smsc_id("fe") is None
    assert [m.key for m in await box.unfinished("")] == ["k"]
    assert await box.unfinished("other") == []
    with pytest.raises(KeyError):
        await box.update(OutboundSms("missing", "1", "x"))


def test_config_from_url_hides_password() -> None:
    cfg = SmppConfig.from_url(
        "smpp://cti%40x:p%40ss@10.0.0.1:2776?source_addr=SHOP&window=5&tps=30"
        "&use_message_payload=yes"
    )
    assert (cfg.system_id, cfg.password, cfg.host, cfg.port) == ("cti@x", "p@ss", "10.0.0.1", 2776)
    assert (cfg.source_addr, cfg.window, cfg.tps, cfg.use_message_payload) == (
        "SHOP",
        5,
        30.0,
        True,
    )
    assert "p@ss" not in repr(cfg)
    assert SmppConfig.from_url("smpp://a:b@h").port == 2775
    for bad in (
        "http://a:b@h:1",
        "smpp://h:1",
        "smpp://a:b@h?bogus=1",
        "smpp://a:b@h?window=x",
        "smpp://a:b@h?window=0",
    ):
        with pytest.raises(SmppConfigError):
            SmppConfig.from_url(bad)


def test_validate_destination() -> None:
    assert validate_destination("+79001234567") == "79001234567"
    for bad in ("", "+", "12", "7900-123", "1" * 21, "abc"):
        with pytest.raises(InvalidDestinationError):
            validate_destination(bad)


def test_mo_reused_reference_with_new_content_is_a_new_message() -> None:
    reasm = MoReassembler(timeout=60)
    first = [m for p in _mo_parts("ж" * 100, 7) for m in reasm.add(p, now=0)]
    second = [m for p in _mo_parts("щ" * 100, 7) for m in reasm.add(p, now=1)]
    assert [m.text for m in first + second] == ["ж" * 100, "щ" * 100]


def test_in_memory_outbox_is_an_outbox_store() -> None:
    from sms_gateway.outbox import OutboxStore

    store: OutboxStore = InMemoryOutbox()
    assert store is not None
