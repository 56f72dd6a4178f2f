"""SMS text encoding: GSM 03.38 default alphabet, UCS-2, splitting and concatenation UDH.

Pure functions, no I/O. Used by the SMPP ESME and by the GSM modem driver.

Vocabulary:
- a *septet* is one 7-bit GSM code; "unpacked" septets are one per byte (as SMPP
  carries them with data_coding 0), "packed" septets are 8 per 7 bytes (as the
  air interface and modem PDUs carry them);
- a *unit* is what the 140-octet limit counts: septets for GSM-7, UTF-16 code
  units for UCS-2;
- the escape pair (0x1B, code) of the extension table counts two septets and is
  never split across parts; a UTF-16 surrogate pair is never split either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Coding = Literal["gsm7", "ucs2"]

ESCAPE: Final = 0x1B

# GSM 03.38 default alphabet, index = septet value (0x1B is the escape to the
# extension table and decodes to nothing on its own).
_BASIC: Final = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(_BASIC) == 128

_EXTENSION: Final[dict[int, str]] = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

_ENCODE_BASIC: Final[dict[str, int]] = {ch: i for i, ch in enumerate(_BASIC) if i != ESCAPE}
_ENCODE_EXT: Final[dict[str, int]] = {ch: code for code, ch in _EXTENSION.items()}

GSM7_SINGLE: Final = 160
GSM7_MULTI: Final = 153
UCS2_SINGLE: Final = 70
UCS2_MULTI: Final = 67
# Hard ceiling on parts whatever the caller asks: the 8-bit concatenation
# counter cannot express more than 255.
MAX_PARTS_LIMIT: Final = 255


class SmsEncodingError(ValueError):
    """Base class of the typed errors of this module."""


class EmptyMessageError(SmsEncodingError):
    """The text is empty: there is nothing to send."""

    def __init__(self) -> None:
        super().__init__("message text is empty")


class MessageTooLongError(SmsEncodingError):
    """The text needs more parts than allowed (the API answers 422 with the limit)."""

    def __init__(self, *, parts_needed: int, max_parts: int, coding: Coding) -> None:
        super().__init__(
            f"message needs {parts_needed} {coding} parts, at most {max_parts} allowed"
        )
        self.parts_needed = parts_needed
        self.max_parts = max_parts
        self.coding: Coding = coding


class Gsm7DecodeError(SmsEncodingError):
    """A septet value outside 0..127."""


# -- GSM-7 -------------------------------------------------------------------


def _char_septets(ch: str) -> tuple[int, ...] | None:
    code = _ENCODE_BASIC.get(ch)
    if code is not None:
        return (code,)
    ext = _ENCODE_EXT.get(ch)
    if ext is not None:
        return (ESCAPE, ext)
    return None


def gsm7_encode(text: str) -> bytes | None:
    """Unpacked septets (escape pairs included), or None if ``text`` is not representable."""
    out = bytearray()
    for ch in text:
        septets = _char_septets(ch)
        if septets is None:
            return None
        out.extend(septets)
    return bytes(out)


def gsm7_decode(septets: bytes) -> str:
    """Decode unpacked septets. An escape before an unknown code yields the basic character
    (3GPP 23.038 6.2.1.1); a dangling escape at the end is dropped."""
    out: list[str] = []
    escaped = False
    for value in septets:
        if value > 0x7F:
            raise Gsm7DecodeError(f"septet value {value:#x} out of range")
        if escaped:
            escaped = False
            ext = _EXTENSION.get(value)
            if ext is not None:
                out.append(ext)
            elif value == ESCAPE:
                out.append(" ")
            else:
                out.append(_BASIC[value])
        elif value == ESCAPE:
            escaped = True
        else:
            out.append(_BASIC[value])
    return "".join(out)


def gsm7_length(text: str) -> int | None:
    """Septet count of ``text`` (escape pairs count two), or None if not GSM-7."""
    total = 0
    for ch in text:
        septets = _char_septets(ch)
        if septets is None:
            return None
        total += len(septets)
    return total


def pack_septets(septets: bytes, fill_bits: int = 0) -> bytes:
    """Pack septets LSB first, after ``fill_bits`` zero bits (0..6, for UDH alignment)."""
    if not 0 <= fill_bits <= 6:
        raise ValueError("fill_bits must be 0..6")
    total_bits = fill_bits + 7 * len(septets)
    out = bytearray((total_bits + 7) // 8)
    bit = fill_bits
    for value in septets:
        if value > 0x7F:
            raise ValueError(f"septet value {value:#x} out of range")
        byte, shift = divmod(bit, 8)
        out[byte] |= (value << shift) & 0xFF
        if shift > 1:
            out[byte + 1] |= value >> (8 - shift)
        bit += 7
    return bytes(out)


def unpack_septets(data: bytes, count: int, fill_bits: int = 0) -> bytes:
    """Read ``count`` septets starting after ``fill_bits`` bits of ``data``."""
    if not 0 <= fill_bits <= 6:
        raise ValueError("fill_bits must be 0..6")
    if count < 0 or fill_bits + 7 * count > 8 * len(data):
        raise ValueError(f"{count} septets do not fit in {len(data)} octets")
    out = bytearray(count)
    bit = fill_bits
    for i in range(count):
        byte, shift = divmod(bit, 8)
        value = data[byte] >> shift
        if shift > 1:
            value |= data[byte + 1] << (8 - shift)
        out[i] = value & 0x7F
        bit += 7
    return bytes(out)


def udh_fill_bits(udh_length: int) -> int:
    """Fill bits that align the first septet after a UDH of ``udh_length`` octets
    (UDHL octet included) on a septet boundary."""
    return (7 - (udh_length * 8) % 7) % 7


# -- UCS-2 -------------------------------------------------------------------


def ucs2_encode(text: str) -> bytes:
    """UTF-16-BE (UCS-2 on the wire; characters beyond the BMP become surrogate pairs)."""
    return text.encode("utf-16-be")


def ucs2_decode(data: bytes) -> str:
    """Tolerant UTF-16-BE decoding: a broken pair or an odd byte becomes U+FFFD."""
    return data.decode("utf-16-be", errors="replace")


def _utf16_units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


# -- choosing, counting, splitting ---------------------------------------------


def choose_coding(text: str) -> Coding:
    return "gsm7" if gsm7_length(text) is not None else "ucs2"


def encode_text(text: str, coding: Coding) -> bytes:
    """Payload of one part: unpacked septets for GSM-7, UTF-16-BE for UCS-2."""
    if coding == "gsm7":
        septets = gsm7_encode(text)
        if septets is None:
            raise SmsEncodingError("text is not representable in the GSM 7-bit alphabet")
        return septets
    return ucs2_encode(text)


def _units(ch: str, coding: Coding) -> int:
    if coding == "ucs2":
        return _utf16_units(ch)
    septets = _char_septets(ch)
    if septets is None:
        raise SmsEncodingError(f"character {ch!r} is not in the GSM 7-bit alphabet")
    return len(septets)


def _split_units(text: str, coding: Coding, per_part: int) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for ch in text:
        n = _units(ch, coding)
        if used + n > per_part:
            parts.append("".join(current))
            current, used = [], 0
        current.append(ch)
        used += n
    if current:
        parts.append("".join(current))
    return parts


def text_units(text: str, coding: Coding) -> int:
    return sum(_units(ch, coding) for ch in text)


def split_text(text: str, *, max_parts: int, coding: Coding | None = None) -> list[str]:
    """Split ``text`` into the texts of its parts (one part if it fits a single SMS).

    Raises EmptyMessageError for "" and MessageTooLongError beyond ``max_parts``.
    """
    if not 1 <= max_parts <= MAX_PARTS_LIMIT:
        raise ValueError(f"max_parts must be 1..{MAX_PARTS_LIMIT}")
    if not text:
        raise EmptyMessageError()
    chosen: Coding = coding or choose_coding(text)
    single, multi = (GSM7_SINGLE, GSM7_MULTI) if chosen == "gsm7" else (UCS2_SINGLE, UCS2_MULTI)
    if text_units(text, chosen) <= single:
        return [text]
    parts = _split_units(text, chosen, multi)
    if len(parts) > max_parts:
        raise MessageTooLongError(parts_needed=len(parts), max_parts=max_parts, coding=chosen)
    return parts


@dataclass(frozen=True, slots=True)
class SegmentCount:
    """What the agent desk shows under the text box."""

    coding: Coding
    parts: int
    units: int
    units_per_part: int
    remaining_in_part: int


def count_segments(text: str) -> SegmentCount:
    coding = choose_coding(text)
    single, multi = (GSM7_SINGLE, GSM7_MULTI) if coding == "gsm7" else (UCS2_SINGLE, UCS2_MULTI)
    units = text_units(text, coding)
    if units <= single:
        return SegmentCount(coding, 1 if units else 0, units, single, single - units)
    parts = _split_units(text, coding, multi)
    last_units = text_units(parts[-1], coding)
    return SegmentCount(coding, len(parts), units, multi, multi - last_units)


# -- concatenation UDH ----------------------------------------------------------

IEI_CONCAT_8: Final = 0x00
IEI_CONCAT_16: Final = 0x08


@dataclass(frozen=True, slots=True)
class ConcatInfo:
    reference: int
    total: int
    sequence: int


@dataclass(frozen=True, slots=True)
class InformationElement:
    iei: int
    data: bytes


def build_concat_udh(reference: int, total: int, sequence: int, *, ref16: bool = False) -> bytes:
    """UDH (UDHL octet included) carrying one concatenation element."""
    if not 1 <= total <= 255 or not 1 <= sequence <= total:
        raise ValueError("concatenation needs 1 <= sequence <= total <= 255")
    if ref16:
        if not 0 <= reference <= 0xFFFF:
            raise ValueError("16-bit reference out of range")
        return bytes([6, IEI_CONCAT_16, 4, reference >> 8, reference & 0xFF, total, sequence])
    if not 0 <= reference <= 0xFF:
        raise ValueError("8-bit reference out of range")
    return bytes([5, IEI_CONCAT_8, 3, reference, total, sequence])


class UdhError(SmsEncodingError):
    """A user data header that does not parse."""


def split_udh(user_data: bytes) -> tuple[list[InformationElement], bytes]:
    """Split user data that starts with a UDH into (elements, rest)."""
    if not user_data:
        raise UdhError("empty user data")
    udhl = user_data[0]
    if udhl + 1 > len(user_data):
        raise UdhError(f"UDH length {udhl} beyond user data of {len(user_data)} octets")
    header = user_data[1 : udhl + 1]
    elements: list[InformationElement] = []
    pos = 0
    while pos < len(header):
        if pos + 2 > len(header):
            raise UdhError("truncated information element header")
        iei, length = header[pos], header[pos + 1]
        if pos + 2 + length > len(header):
            raise UdhError(f"information element {iei:#x} overruns the UDH")
        elements.append(InformationElement(iei, bytes(header[pos + 2 : pos + 2 + length])))
        pos += 2 + length
    return elements, bytes(user_data[udhl + 1 :])


def concat_info(elements: list[InformationElement]) -> ConcatInfo | None:
    """The concatenation element among ``elements`` (last valid one wins), if any."""
    found: ConcatInfo | None = None
    for ie in elements:
        if ie.iei == IEI_CONCAT_8 and len(ie.data) == 3:
            ref, total, seq = ie.data
        elif ie.iei == IEI_CONCAT_16 and len(ie.data) == 4:
            ref, total, seq = (ie.data[0] << 8) | ie.data[1], ie.data[2], ie.data[3]
        else:
            continue
        if total >= 1 and 1 <= seq <= total:
            found = ConcatInfo(ref, total, seq)
    return found
