"""The network side of the emulator's PDUs (3GPP TS 23.040), written apart from the driver's
codec so that one cannot hide the other's bugs: septets are packed through one big integer
here, addresses and time stamps are built independently. Only the GSM 03.38 character table
is shared (sms_gateway.encoding.gsm7_encode / gsm7_decode)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sms_gateway.encoding import gsm7_decode, gsm7_encode


class PduDecodeError(ValueError):
    pass


def pack7(septets: bytes, fill_bits: int = 0) -> bytes:
    acc = 0
    for i, value in enumerate(septets):
        acc |= value << (fill_bits + 7 * i)
    nbits = fill_bits + 7 * len(septets)
    return acc.to_bytes((nbits + 7) // 8, "little") if nbits else b""


def unpack7(data: bytes, count: int, fill_bits: int = 0) -> bytes:
    acc = int.from_bytes(data, "little")
    return bytes((acc >> (fill_bits + 7 * i)) & 0x7F for i in range(count))


def semi_octets(digits: str) -> bytes:
    if len(digits) % 2:
        digits += "F"
    return bytes.fromhex("".join(digits[i + 1] + digits[i] for i in range(0, len(digits), 2)))


def address(number: str) -> bytes:
    if number.startswith("+"):
        digits, toa = number[1:], 0x91
    elif number.isdigit():
        digits, toa = number, 0x81
    else:  # alphanumeric sender id
        septets = gsm7_encode(number)
        assert septets is not None
        packed = pack7(septets)
        return bytes([len(packed) * 2, 0xD0]) + packed
    return bytes([len(digits), toa]) + semi_octets(digits)


def read_address(pdu: bytes, pos: int) -> tuple[str, int]:
    ndigits, toa = pdu[pos], pdu[pos + 1]
    nbytes = (ndigits + 1) // 2
    raw = pdu[pos + 2 : pos + 2 + nbytes].hex().upper()
    digits = "".join(raw[i + 1] + raw[i] for i in range(0, len(raw), 2))[:ndigits]
    return ("+" if toa == 0x91 else "") + digits, pos + 2 + nbytes


def timestamp(when: datetime) -> bytes:
    when = when.astimezone(UTC)
    fields = f"{when.year % 100:02d}{when.month:02d}{when.day:02d}{when.hour:02d}" \
             f"{when.minute:02d}{when.second:02d}00"
    return semi_octets(fields)


SMSC = "+79168999100"


def _sca() -> bytes:
    body = bytes([0x91]) + semi_octets(SMSC[1:])
    return bytes([len(body)]) + body


def concat_udh(ref: int, total: int, seq: int, ref16: bool) -> bytes:
    if ref16:
        return bytes([6, 0x08, 4, ref >> 8, ref & 0xFF, total, seq])
    return bytes([5, 0x00, 3, ref, total, seq])


def build_deliver(
    sender: str,
    text: str,
    *,
    ucs2: bool,
    udh: bytes = b"",
    when: datetime | None = None,
) -> str:
    """Hex SMS-DELIVER with the SCA in front, as +CMGR / +CMT show it."""
    first = 0x04 | (0x40 if udh else 0)
    if ucs2:
        ud = udh + text.encode("utf-16-be")
        udl = len(ud)
        dcs = 0x08
    else:
        septets = gsm7_encode(text)
        if septets is None:
            raise ValueError(f"not GSM-7: {text!r}")
        fill = (7 - (len(udh) * 8) % 7) % 7 if udh else 0
        # UDH bytes, then the text septets aligned on a septet boundary
        packed = pack7(septets, fill)
        ud = udh + packed
        udl = (len(udh) * 8 + fill) // 7 + len(septets)
        dcs = 0x00
    tpdu = (
        bytes([first])
        + address(sender)
        + bytes([0x00, dcs])
        + timestamp(when or datetime.now(UTC))
        + bytes([udl])
        + ud
    )
    return (_sca() + tpdu).hex().upper()


def build_status_report(reference: int, recipient: str, status: int) -> tuple[str, int]:
    """Hex SMS-STATUS-REPORT with the SCA, and its TPDU length (for +CDS: <length>)."""
    now = timestamp(datetime.now(UTC))
    tpdu = bytes([0x06, reference & 0xFF]) + address(recipient) + now + now + bytes([status])
    return (_sca() + tpdu).hex().upper(), len(tpdu)


@dataclass(frozen=True, slots=True)
class ReceivedSubmit:
    """One SMS-SUBMIT the emulator received through +CMGS, decoded."""

    reference: int
    destination: str
    text: str
    ucs2: bool
    status_report: bool
    concat: tuple[int, int, int] | None  # (reference, total, sequence)
    ref16: bool
    raw: str


def parse_submit(hex_pdu: str, reference: int) -> ReceivedSubmit:
    try:
        pdu = bytes.fromhex(hex_pdu)
        sca_len = pdu[0]
        pos = 1 + sca_len
        first = pdu[pos]
        if first & 0x03 != 0x01:
            raise PduDecodeError("not an SMS-SUBMIT")
        destination, pos = read_address(pdu, pos + 2)
        dcs = pdu[pos + 1]
        vpf = (first >> 3) & 0x03
        pos += 2 + {0: 0, 2: 1, 1: 7, 3: 7}[vpf]
        udl = pdu[pos]
        ud = pdu[pos + 1 :]
    except (IndexError, ValueError) as exc:
        raise PduDecodeError(str(exc)) from None
    concat: tuple[int, int, int] | None = None
    ref16 = False
    udh_len = 0
    if first & 0x40:
        udh_len = ud[0] + 1
        header = ud[1:udh_len]
        i = 0
        while i + 1 < len(header):
            iei, ln = header[i], header[i + 1]
            data = header[i + 2 : i + 2 + ln]
            if iei == 0x00 and ln == 3:
                concat = (data[0], data[1], data[2])
            elif iei == 0x08 and ln == 4:
                concat, ref16 = ((data[0] << 8) | data[1], data[2], data[3]), True
            i += 2 + ln
    ucs2 = (dcs & 0x0C) == 0x08
    if ucs2:
        if len(ud) != udl:
            raise PduDecodeError(f"UDL {udl} but {len(ud)} octets of user data")
        text = ud[udh_len:].decode("utf-16-be")
    else:
        if len(ud) != (udl * 7 + 7) // 8:
            raise PduDecodeError(f"UDL {udl} septets but {len(ud)} octets of user data")
        skip = (udh_len * 8 + 6) // 7
        text = gsm7_decode(unpack7(ud, udl)[skip:])
    return ReceivedSubmit(
        reference=reference,
        destination=destination,
        text=text,
        ucs2=ucs2,
        status_report=bool(first & 0x20),
        concat=concat,
        ref16=ref16,
        raw=hex_pdu,
    )
