"""SMS TPDUs of 3GPP TS 23.040 as modems exchange them in PDU mode (+CMGF=0). No I/O.

- `encode_submit()` builds the SMS-SUBMIT for +CMGS (SCA "00": the SIM's SMSC);
- `decode_pdu()` reads what +CMGR / +CMGL / +CMT / +CDS return (SCA first):
  SMS-DELIVER -> `Deliver`, SMS-STATUS-REPORT -> `StatusReport`.

Text goes through sms_gateway.encoding (GSM 03.38 alphabet, septet packing with
fill bits after a UDH, UCS-2, concatenation IEs).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from sms_gateway.encoding import (
    ConcatInfo,
    Gsm7DecodeError,
    UdhError,
    build_concat_udh,
    concat_info,
    gsm7_decode,
    gsm7_encode,
    pack_septets,
    split_udh,
    ucs2_decode,
    ucs2_encode,
    udh_fill_bits,
    unpack_septets,
)
from sms_gateway.modem.errors import TpduError

Alphabet = Literal["gsm7", "8bit", "ucs2"]

MAX_TPDU_OCTETS = 200
MAX_ADDRESS_DIGITS = 20


@dataclass(frozen=True, slots=True)
class Submit:
    """An SMS-SUBMIT ready for `AT+CMGS=<length>` then `<hex><Ctrl-Z>`."""

    hex: str
    length: int


@dataclass(frozen=True, slots=True)
class Deliver:
    smsc: str
    sender: str
    timestamp: datetime | None
    alphabet: Alphabet
    text: str
    data: bytes
    concat: ConcatInfo | None
    status_report_indicated: bool


@dataclass(frozen=True, slots=True)
class StatusReport:
    smsc: str
    reference: int
    recipient: str
    submitted_at: datetime | None
    discharged_at: datetime | None
    status: int

    @property
    def state(self) -> Literal["delivered", "pending", "failed"]:
        """TP-ST of 23.040 9.2.3.15: 0x00-0x1F completed, 0x20-0x3F still trying,
        0x40 and above permanent or temporary-given-up failures."""
        if self.status < 0x20:
            return "delivered"
        if self.status < 0x40:
            return "pending"
        return "failed"


# -- addresses -------------------------------------------------------------------


def _bcd_digits(data: bytes, digits: int) -> str:
    out: list[str] = []
    for octet in data:
        for nibble in (octet & 0x0F, octet >> 4):
            if len(out) < digits:
                out.append("0123456789*#abc"[nibble] if nibble < 15 else "")
    return "".join(out)


def encode_address(number: str) -> bytes:
    """TP-DA: digit count, type of address, swapped semi-octets."""
    international = number.startswith("+")
    digits = number[1:] if international else number
    valid = all(c in "0123456789*#" for c in digits)
    if not digits or len(digits) > MAX_ADDRESS_DIGITS or not valid:
        raise TpduError(f"invalid destination number {number!r}")
    toa = 0x91 if international else 0x81
    padded = digits + ("F" if len(digits) % 2 else "")
    nibbles = ["0123456789*#".index(c) if c != "F" else 15 for c in padded]
    body = bytes(nibbles[i] | (nibbles[i + 1] << 4) for i in range(0, len(nibbles), 2))
    return bytes([len(digits), toa]) + body


def _decode_address(pdu: bytes, pos: int) -> tuple[str, int]:
    digits = _byte(pdu, pos)
    toa = _byte(pdu, pos + 1)
    octets = (digits + 1) // 2
    body = _slice(pdu, pos + 2, octets)
    if (toa & 0x70) == 0x50:  # alphanumeric, GSM 7-bit packed in `digits` semi-octets
        text = gsm7_decode(unpack_septets(body, digits * 4 // 7))
        return text, pos + 2 + octets
    number = _bcd_digits(body, digits)
    if (toa & 0x70) == 0x10:
        number = "+" + number
    return number, pos + 2 + octets


def _decode_smsc(pdu: bytes) -> tuple[str, int]:
    length = _byte(pdu, 0)
    if length == 0:
        return "", 1
    toa = _byte(pdu, 1)
    number = _bcd_digits(_slice(pdu, 2, length - 1), (length - 1) * 2)
    return ("+" + number if (toa & 0x70) == 0x10 else number), 1 + length


# -- time stamps -----------------------------------------------------------------


def _swapped(octet: int) -> int:
    return (octet & 0x0F) * 10 + (octet >> 4)


def _decode_scts(data: bytes) -> datetime | None:
    tz = data[6]
    quarters = (tz & 0x07) * 10 + (tz >> 4)
    offset = timedelta(minutes=15 * quarters) * (-1 if tz & 0x08 else 1)
    try:
        return datetime(
            2000 + _swapped(data[0]), _swapped(data[1]), _swapped(data[2]),
            _swapped(data[3]), _swapped(data[4]), _swapped(data[5]),
            tzinfo=timezone(offset),
        )
    except ValueError:
        return None


# -- data coding scheme ------------------------------------------------------------


def alphabet_of(dcs: int) -> Alphabet:
    """Alphabet of a TP-DCS value (3GPP TS 23.038 section 4)."""
    group = dcs >> 4
    if group <= 0x7:  # general data coding (and automatic deletion) groups
        if dcs & 0x20:
            raise TpduError(f"compressed data coding {dcs:#04x} is not supported")
        alphabets: tuple[Alphabet, ...] = ("gsm7", "8bit", "ucs2", "gsm7")
        return alphabets[(dcs >> 2) & 0x03]
    if group in (0xC, 0xD):
        return "gsm7"
    if group == 0xE:
        return "ucs2"
    if group == 0xF:
        return "8bit" if dcs & 0x04 else "gsm7"
    return "8bit"


# -- SMS-SUBMIT ---------------------------------------------------------------------


def encode_submit(
    destination: str,
    text: str,
    *,
    alphabet: Literal["gsm7", "ucs2"],
    concat: ConcatInfo | None = None,
    ref16: bool = False,
    status_report: bool = True,
    validity_minutes: int = 24 * 60,
) -> Submit:
    """One SMS-SUBMIT part. `text` must already fit one part (see encoding.split_text)."""
    udh = (
        build_concat_udh(concat.reference, concat.total, concat.sequence, ref16=ref16)
        if concat is not None
        else b""
    )
    first = 0x01 | 0x10  # SMS-SUBMIT, relative validity period
    if status_report:
        first |= 0x20
    if udh:
        first |= 0x40
    if alphabet == "gsm7":
        septets = gsm7_encode(text)
        if septets is None:
            raise TpduError("text is not representable in the GSM 7-bit alphabet")
        fill = udh_fill_bits(len(udh)) if udh else 0
        udh_septets = (len(udh) * 8 + fill) // 7
        udl = udh_septets + len(septets)
        if udl > 160:
            raise TpduError(f"{udl} septets do not fit one SMS")
        user_data = udh + pack_septets(septets, fill)
        dcs = 0x00
    else:
        payload = ucs2_encode(text)
        user_data = udh + payload
        udl = len(user_data)
        if udl > 140:
            raise TpduError(f"{udl} octets do not fit one SMS")
        dcs = 0x08
    tpdu = (
        bytes([first, 0x00])
        + encode_address(destination)
        + bytes([0x00, dcs, _validity_octet(validity_minutes), udl])
        + user_data
    )
    return Submit(hex="00" + tpdu.hex().upper(), length=len(tpdu))


def _validity_octet(minutes: int) -> int:
    """Relative TP-VP (23.040 9.2.3.12.1), rounded up to the next representable value."""
    if minutes <= 720:
        return max(0, -(-minutes // 5) - 1)
    if minutes <= 1440:
        return 143 + -(-(minutes - 720) // 30)
    days = -(-minutes // 1440)
    if days <= 30:
        return 166 + days
    return min(255, 192 + -(-days // 7))


# -- decoding -----------------------------------------------------------------------


def _byte(pdu: bytes, pos: int) -> int:
    if pos >= len(pdu):
        raise TpduError(f"PDU truncated at octet {pos}")
    return pdu[pos]


def _slice(pdu: bytes, pos: int, length: int) -> bytes:
    if pos + length > len(pdu):
        raise TpduError(f"PDU truncated: needs {pos + length} octets, has {len(pdu)}")
    return pdu[pos : pos + length]


def _from_hex(text: str) -> bytes:
    if len(text) > 2 * (MAX_TPDU_OCTETS + 12):
        raise TpduError("PDU too long")
    try:
        return bytes.fromhex(text.strip())
    except ValueError as exc:
        raise TpduError(f"PDU is not hexadecimal: {exc}") from None


def decode_pdu(hex_pdu: str) -> Deliver | StatusReport:
    """Decode a PDU as +CMGR/+CMGL/+CMT/+CDS return it (with the SCA in front)."""
    pdu = _from_hex(hex_pdu)
    try:
        smsc, pos = _decode_smsc(pdu)
        first = _byte(pdu, pos)
        mti = first & 0x03
        if mti == 0x00:
            return _decode_deliver(pdu, pos, smsc)
        if mti == 0x02:
            return _decode_status_report(pdu, pos, smsc)
    except (Gsm7DecodeError, UdhError, ValueError) as exc:
        if isinstance(exc, TpduError):
            raise
        raise TpduError(f"malformed PDU: {exc}") from None
    raise TpduError(f"unsupported message type indicator {mti}")


def _decode_deliver(pdu: bytes, pos: int, smsc: str) -> Deliver:
    first = pdu[pos]
    sender, pos = _decode_address(pdu, pos + 1)
    dcs = _byte(pdu, pos + 1)
    scts = _decode_scts(_slice(pdu, pos + 2, 7))
    udl = _byte(pdu, pos + 9)
    rest = pdu[pos + 10 :]
    alphabet = alphabet_of(dcs)
    has_udh = bool(first & 0x40)
    concat: ConcatInfo | None = None
    if alphabet == "gsm7":
        if (udl * 7 + 7) // 8 > len(rest):
            raise TpduError(f"user data of {udl} septets overruns the PDU")
        skip = 0
        if has_udh:
            elements, _ = split_udh(rest)
            concat = concat_info(elements)
            udh_len = rest[0] + 1
            # the text starts on the first septet boundary after the UDH (fill bits)
            skip = (udh_len * 8 + udh_fill_bits(udh_len)) // 7
            if skip > udl:
                raise TpduError("UDH longer than the user data")
        septets = unpack_septets(rest, udl)[skip:]
        text = gsm7_decode(septets)
        data = septets
    else:
        if udl > len(rest):
            raise TpduError(f"user data of {udl} octets overruns the PDU")
        user_data = rest[:udl]
        if has_udh:
            elements, user_data = split_udh(user_data)
            concat = concat_info(elements)
        data = user_data
        text = ucs2_decode(user_data) if alphabet == "ucs2" else user_data.hex()
    return Deliver(
        smsc=smsc,
        sender=sender,
        timestamp=scts,
        alphabet=alphabet,
        text=text,
        data=data,
        concat=concat,
        status_report_indicated=bool(first & 0x20),
    )


def _decode_status_report(pdu: bytes, pos: int, smsc: str) -> StatusReport:
    reference = _byte(pdu, pos + 1)
    recipient, pos = _decode_address(pdu, pos + 2)
    submitted = _decode_scts(_slice(pdu, pos, 7))
    discharged = _decode_scts(_slice(pdu, pos + 7, 7))
    status = _byte(pdu, pos + 14)
    return StatusReport(smsc, reference, recipient, submitted, discharged, status)
