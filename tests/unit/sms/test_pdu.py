"""SMPP PDU codec: round trips, byte-at-a-time framing, limits."""

from __future__ import annotations

import pytest

from sms_gateway import pdu as P


def _feed_bytewise(framer: P.PduFramer, data: bytes) -> list[bytes]:
    frames: list[bytes] = []
    for i in range(len(data)):
        frames.extend(framer.feed(data[i : i + 1]))
    return frames


SUBMIT = P.Pdu(
    P.SUBMIT_SM,
    7,
    body=P.ShortMessage(
        source_addr="CTI",
        source_addr_ton=5,
        destination_addr="79001234567",
        dest_addr_ton=1,
        dest_addr_npi=1,
        short_message=bytes.fromhex("0500032a0301") + "Привет".encode("utf-16-be"),
        esm_class=P.ESM_CLASS_UDHI,
        data_coding=P.DATA_CODING_UCS2,
        registered_delivery=1,
        tlvs=((P.TLV_SAR_MSG_REF_NUM, b"\x00\x2a"),),
    ),
)


@pytest.mark.parametrize(
    "pdu",
    [
        SUBMIT,
        P.Pdu(P.BIND_TRANSCEIVER, 1, body=P.Bind("cti", "secret", "CTI")),
        P.Pdu(P.BIND_TRANSCEIVER | P.RESP, 1, body=P.BindResp("SMSC")),
        P.Pdu(P.SUBMIT_SM | P.RESP, 7, body=P.MessageIdResp("1A2B")),
        P.Pdu(P.DELIVER_SM | P.RESP, 9, body=P.MessageIdResp("")),
        P.Pdu(P.ENQUIRE_LINK, 3),
        P.Pdu(P.ENQUIRE_LINK | P.RESP, 3),
        P.Pdu(P.UNBIND, 4),
        P.Pdu(P.GENERIC_NACK, 5, P.ESME_RINVCMDID),
    ],
    ids=lambda p: p.name,
)
def test_round_trip_bytewise(pdu: P.Pdu) -> None:
    wire = P.encode_pdu(pdu)
    framer = P.PduFramer()
    frames = _feed_bytewise(framer, wire + wire)
    assert frames == [wire, wire]
    assert P.decode_pdu(frames[0]) == pdu


def test_known_enquire_link_bytes() -> None:
    assert P.encode_pdu(P.Pdu(P.ENQUIRE_LINK, 1)).hex() == "00000010000000150000000000000001"


def test_error_responses_without_body() -> None:
    frame = bytes.fromhex("00000010800000040000005800000009")
    pdu = P.decode_pdu(frame)
    assert pdu.status == P.ESME_RTHROTTLED and pdu.body == P.MessageIdResp("")
    bind = P.decode_pdu(bytes.fromhex("00000010800000090000000d00000001"))
    assert bind.status == P.ESME_RBINDFAIL and bind.body == P.BindResp("")


@pytest.mark.parametrize("length", [0, 1, 15, 64 * 1024 + 1, 10 * 1024 * 1024, 0xFFFFFFFF])
def test_framing_limits(length: int) -> None:
    framer = P.PduFramer()
    with pytest.raises(P.FramingError):
        _feed_bytewise(framer, length.to_bytes(4, "big") + b"\x00" * 12)


def test_framer_buffers_partial_pdu() -> None:
    framer = P.PduFramer()
    wire = P.encode_pdu(SUBMIT)
    assert framer.feed(wire[:20]) == []
    assert framer.feed(wire[20:]) == [wire]


@pytest.mark.parametrize(
    "hexdata",
    [
        "0000001100000005000000000000000700",  # truncated deliver_sm
        "0000001400000004000000000000000741414141",  # no NUL in service_type
    ],
)
def test_bad_bodies(hexdata: str) -> None:
    with pytest.raises(P.PduError):
        P.decode_pdu(bytes.fromhex(hexdata))


def test_truncated_tlv_and_short_message_length() -> None:
    wire = bytearray(P.encode_pdu(SUBMIT))
    with pytest.raises(P.PduError):
        P.decode_pdu(bytes(wire[:-1]))  # command_length no longer matches
    cut = bytes(wire[:-3])
    cut = len(cut).to_bytes(4, "big") + cut[4:]
    with pytest.raises(P.PduError):
        P.decode_pdu(cut)


def test_unknown_command_keeps_header() -> None:
    pdu = P.decode_pdu(bytes.fromhex("0000001400000103000000000000000201020304"))
    assert pdu.body is None and pdu.command_id == 0x103 and not pdu.is_response


def test_encode_limits() -> None:
    with pytest.raises(P.PduError):
        P.encode_pdu(P.Pdu(P.BIND_TRANSCEIVER, 1, body=P.Bind("x" * 16, "pw")))
    with pytest.raises(P.PduError):
        P.encode_pdu(P.Pdu(P.BIND_TRANSCEIVER, 1, body=P.Bind("cti", "0123456789")))
    with pytest.raises(P.PduError):
        P.encode_pdu(P.Pdu(P.SUBMIT_SM, 1, body=P.ShortMessage("a", "b", short_message=b"x" * 255)))


def test_tlv_lookup() -> None:
    assert SUBMIT.body is not None and isinstance(SUBMIT.body, P.ShortMessage)
    assert SUBMIT.body.tlv(P.TLV_SAR_MSG_REF_NUM) == b"\x00\x2a"
    assert SUBMIT.body.tlv(P.TLV_MESSAGE_PAYLOAD) is None


def test_error_responses_with_broken_bodies_are_tolerated() -> None:
    frame = bytes.fromhex("00000013800000040000004500000009414243")  # no NUL
    assert P.decode_pdu(frame).body == P.MessageIdResp("")
    long_id = b"S" * 30 + b"\x00"
    bind = P.decode_pdu(
        (16 + len(long_id)).to_bytes(4, "big") + bytes.fromhex("800000090000000000000001") + long_id
    )
    assert bind.body == P.BindResp("S" * 30)


class _SequenceSource:
    """smpplib's PDU objects ask their client for sequence numbers; nothing else."""

    def next_sequence(self) -> int:
        return 1


def test_cross_check_with_smpplib_codec() -> None:
    import smpplib.smpp

    from sms_gateway.receipts import parse_receipt

    theirs = smpplib.smpp.parse_pdu(P.encode_pdu(SUBMIT), client=_SequenceSource())
    assert SUBMIT.body is not None and isinstance(SUBMIT.body, P.ShortMessage)
    assert theirs.command == "submit_sm" and theirs.sequence == 7
    assert theirs.destination_addr == b"79001234567"
    assert theirs.short_message == SUBMIT.body.short_message
    assert (theirs.esm_class, theirs.data_coding, theirs.sar_msg_ref_num) == (0x40, 8, 42)

    bind = smpplib.smpp.make_pdu(
        "bind_transceiver", client=_SequenceSource(), system_id="cti", password="pw"
    )
    assert P.decode_pdu(bind.generate()).body == P.Bind("cti", "pw")
    receipt = smpplib.smpp.make_pdu(
        "deliver_sm",
        client=_SequenceSource(),
        source_addr="7900",
        destination_addr="CTI",
        short_message=b"id:1f stat:UNDELIV err:001",
        esm_class=4,
        receipted_message_id="1F",
        message_state=5,
    )
    ours = P.decode_pdu(receipt.generate())
    assert isinstance(ours.body, P.ShortMessage)
    parsed = parse_receipt(ours.body)
    assert (parsed.message_id, parsed.state, parsed.error) == ("1F", "failed", "001")
