"""SMPP 3.4 PDU codec: framing with limits, typed bodies for the PDUs an ESME needs.

Pure: no I/O. ``PduFramer.feed()`` splits a byte stream into whole PDUs (it may be
fed one byte at a time); ``decode_pdu()`` / ``encode_pdu()`` convert one PDU.
Framing errors (command_length 0, under 16, over the maximum) are fatal for the
connection: after one, the stream cannot be resynchronised and must be reset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

HEADER = struct.Struct(">IIII")
HEADER_SIZE: Final = 16
DEFAULT_MAX_PDU: Final = 64 * 1024

BIND_RECEIVER: Final = 0x00000001
BIND_TRANSMITTER: Final = 0x00000002
SUBMIT_SM: Final = 0x00000004
DELIVER_SM: Final = 0x00000005
UNBIND: Final = 0x00000006
BIND_TRANSCEIVER: Final = 0x00000009
ENQUIRE_LINK: Final = 0x00000015
GENERIC_NACK: Final = 0x80000000
RESP: Final = 0x80000000

COMMAND_NAMES: Final[dict[int, str]] = {
    BIND_RECEIVER: "bind_receiver",
    BIND_TRANSMITTER: "bind_transmitter",
    SUBMIT_SM: "submit_sm",
    DELIVER_SM: "deliver_sm",
    UNBIND: "unbind",
    BIND_TRANSCEIVER: "bind_transceiver",
    ENQUIRE_LINK: "enquire_link",
    GENERIC_NACK: "generic_nack",
}
for _cid, _name in list(COMMAND_NAMES.items()):
    if _cid != GENERIC_NACK:
        COMMAND_NAMES[_cid | RESP] = _name + "_resp"

# command_status values used by the ESME
ESME_ROK: Final = 0x00000000
ESME_RINVMSGLEN: Final = 0x00000001
ESME_RINVCMDLEN: Final = 0x00000002
ESME_RINVCMDID: Final = 0x00000003
ESME_RINVBNDSTS: Final = 0x00000004
ESME_RALYBND: Final = 0x00000005
ESME_RSYSERR: Final = 0x00000008
ESME_RBINDFAIL: Final = 0x0000000D
ESME_RINVPASWD: Final = 0x0000000E
ESME_RINVSYSID: Final = 0x0000000F
ESME_RMSGQFUL: Final = 0x00000014
ESME_RINVDSTADR: Final = 0x0000000B
ESME_RTHROTTLED: Final = 0x00000058
ESME_RX_T_APPN: Final = 0x00000064

# TLV tags
TLV_SAR_MSG_REF_NUM: Final = 0x020C
TLV_SAR_TOTAL_SEGMENTS: Final = 0x020E
TLV_SAR_SEGMENT_SEQNUM: Final = 0x020F
TLV_MESSAGE_PAYLOAD: Final = 0x0424
TLV_MESSAGE_STATE: Final = 0x0427
TLV_RECEIPTED_MESSAGE_ID: Final = 0x001E
TLV_SC_INTERFACE_VERSION: Final = 0x0210

ESM_CLASS_UDHI: Final = 0x40
ESM_CLASS_TYPE_MASK: Final = 0x3C
ESM_CLASS_DELIVERY_RECEIPT: Final = 0x04

DATA_CODING_DEFAULT: Final = 0x00
DATA_CODING_UCS2: Final = 0x08

MAX_SYSTEM_ID: Final = 16
MAX_PASSWORD: Final = 9
MAX_SYSTEM_TYPE: Final = 13
MAX_ADDRESS_RANGE: Final = 41
MAX_SERVICE_TYPE: Final = 6
MAX_ADDR: Final = 21
MAX_TIME: Final = 17
MAX_MESSAGE_ID: Final = 65
MAX_SHORT_MESSAGE: Final = 254


class PduError(ValueError):
    """A PDU that does not parse or cannot be encoded."""


class FramingError(PduError):
    """The byte stream cannot be split into PDUs any more: reset the connection."""


@dataclass(frozen=True, slots=True)
class Bind:
    system_id: str
    password: str
    system_type: str = ""
    interface_version: int = 0x34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""


@dataclass(frozen=True, slots=True)
class BindResp:
    system_id: str
    tlvs: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class ShortMessage:
    """Body of submit_sm and deliver_sm (same layout)."""

    source_addr: str
    destination_addr: str
    short_message: bytes = b""
    esm_class: int = 0
    data_coding: int = 0
    registered_delivery: int = 0
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    replace_if_present_flag: int = 0
    sm_default_msg_id: int = 0
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def tlv(self, tag: int) -> bytes | None:
        for t, value in self.tlvs:
            if t == tag:
                return value
        return None


@dataclass(frozen=True, slots=True)
class MessageIdResp:
    """Body of submit_sm_resp and deliver_sm_resp."""

    message_id: str = ""


Body = Bind | BindResp | ShortMessage | MessageIdResp | None


@dataclass(frozen=True, slots=True)
class Pdu:
    command_id: int
    sequence: int
    status: int = ESME_ROK
    body: Body = field(default=None)

    @property
    def name(self) -> str:
        return COMMAND_NAMES.get(self.command_id, f"0x{self.command_id:08x}")

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESP)


# -- framing -------------------------------------------------------------------


class PduFramer:
    """Split a stream into whole PDUs; buffers at most one PDU of ``max_length``."""

    def __init__(self, max_length: int = DEFAULT_MAX_PDU) -> None:
        self._max = max_length
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames: list[bytes] = []
        while len(self._buf) >= 4:
            (length,) = struct.unpack_from(">I", self._buf)
            if length < HEADER_SIZE or length > self._max:
                raise FramingError(f"command_length {length} outside {HEADER_SIZE}..{self._max}")
            if len(self._buf) < length:
                break
            frames.append(bytes(self._buf[:length]))
            del self._buf[:length]
        return frames


# -- decoding ------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise PduError("PDU body truncated")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def cstring(self, max_len: int, name: str) -> str:
        end = self.data.find(b"\x00", self.pos, self.pos + max_len)
        if end < 0:
            raise PduError(f"{name} not NUL-terminated within {max_len} octets")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        return raw.decode("latin-1")

    def octets(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise PduError("PDU body truncated")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        return raw

    def tlvs(self) -> tuple[tuple[int, bytes], ...]:
        out: list[tuple[int, bytes]] = []
        while self.remaining() > 0:
            if self.remaining() < 4:
                raise PduError("truncated TLV header")
            tag, length = struct.unpack_from(">HH", self.data, self.pos)
            self.pos += 4
            out.append((tag, self.octets(length)))
        return tuple(out)


def _decode_short_message(r: _Reader) -> ShortMessage:
    service_type = r.cstring(MAX_SERVICE_TYPE, "service_type")
    src_ton, src_npi = r.u8(), r.u8()
    source = r.cstring(MAX_ADDR, "source_addr")
    dst_ton, dst_npi = r.u8(), r.u8()
    dest = r.cstring(MAX_ADDR, "destination_addr")
    esm_class, protocol_id, priority = r.u8(), r.u8(), r.u8()
    schedule = r.cstring(MAX_TIME, "schedule_delivery_time")
    validity = r.cstring(MAX_TIME, "validity_period")
    registered, replace, data_coding, default_id = r.u8(), r.u8(), r.u8(), r.u8()
    sm_length = r.u8()
    text = r.octets(sm_length)
    return ShortMessage(
        source_addr=source,
        destination_addr=dest,
        short_message=text,
        esm_class=esm_class,
        data_coding=data_coding,
        registered_delivery=registered,
        service_type=service_type,
        source_addr_ton=src_ton,
        source_addr_npi=src_npi,
        dest_addr_ton=dst_ton,
        dest_addr_npi=dst_npi,
        protocol_id=protocol_id,
        priority_flag=priority,
        schedule_delivery_time=schedule,
        validity_period=validity,
        replace_if_present_flag=replace,
        sm_default_msg_id=default_id,
        tlvs=r.tlvs(),
    )


def decode_pdu(frame: bytes) -> Pdu:
    """Decode one whole PDU (as returned by PduFramer). Unknown commands keep no body."""
    if len(frame) < HEADER_SIZE:
        raise PduError("PDU shorter than its header")
    length, command_id, status, sequence = HEADER.unpack_from(frame)
    if length != len(frame):
        raise PduError(f"command_length {length} != frame size {len(frame)}")
    r = _Reader(frame, HEADER_SIZE)
    body: Body = None
    base = command_id & ~RESP
    if command_id in (BIND_TRANSCEIVER, BIND_TRANSMITTER, BIND_RECEIVER):
        body = Bind(
            system_id=r.cstring(MAX_SYSTEM_ID, "system_id"),
            password=r.cstring(MAX_PASSWORD, "password"),
            system_type=r.cstring(MAX_SYSTEM_TYPE, "system_type"),
            interface_version=r.u8(),
            addr_ton=r.u8(),
            addr_npi=r.u8(),
            address_range=r.cstring(MAX_ADDRESS_RANGE, "address_range"),
        )
    elif command_id & RESP and base in (BIND_TRANSCEIVER, BIND_TRANSMITTER, BIND_RECEIVER):
        # Quirks: an error response may have no body or a broken one (ignored), and
        # some SMSCs send a system_id longer than the 16 octets SMPP 3.4 allows.
        if status != ESME_ROK or not r.remaining():
            body = BindResp("")
        else:
            body = BindResp(r.cstring(MAX_MESSAGE_ID, "system_id"), r.tlvs())
    elif command_id in (SUBMIT_SM, DELIVER_SM):
        body = _decode_short_message(r)
    elif command_id in (SUBMIT_SM | RESP, DELIVER_SM | RESP):
        ok = status == ESME_ROK and r.remaining()
        body = MessageIdResp(r.cstring(MAX_MESSAGE_ID, "message_id") if ok else "")
    return Pdu(command_id, sequence, status, body)


# -- encoding ------------------------------------------------------------------


def _cstring(value: str, max_len: int, name: str) -> bytes:
    raw = value.encode("latin-1", errors="strict")
    if len(raw) >= max_len or b"\x00" in raw:
        raise PduError(f"{name} longer than {max_len - 1} octets or contains NUL")
    return raw + b"\x00"


def _tlvs(tlvs: tuple[tuple[int, bytes], ...]) -> bytes:
    out = bytearray()
    for tag, value in tlvs:
        if len(value) > 0xFFFF:
            raise PduError(f"TLV {tag:#06x} longer than 65535 octets")
        out += struct.pack(">HH", tag, len(value)) + value
    return bytes(out)


def _encode_body(body: Body) -> bytes:
    if body is None:
        return b""
    if isinstance(body, Bind):
        return (
            _cstring(body.system_id, MAX_SYSTEM_ID, "system_id")
            + _cstring(body.password, MAX_PASSWORD, "password")
            + _cstring(body.system_type, MAX_SYSTEM_TYPE, "system_type")
            + bytes([body.interface_version, body.addr_ton, body.addr_npi])
            + _cstring(body.address_range, MAX_ADDRESS_RANGE, "address_range")
        )
    if isinstance(body, BindResp):
        return _cstring(body.system_id, MAX_SYSTEM_ID, "system_id") + _tlvs(body.tlvs)
    if isinstance(body, MessageIdResp):
        return _cstring(body.message_id, MAX_MESSAGE_ID, "message_id")
    if len(body.short_message) > MAX_SHORT_MESSAGE:
        raise PduError("short_message longer than 254 octets (use message_payload)")
    return (
        _cstring(body.service_type, MAX_SERVICE_TYPE, "service_type")
        + bytes([body.source_addr_ton, body.source_addr_npi])
        + _cstring(body.source_addr, MAX_ADDR, "source_addr")
        + bytes([body.dest_addr_ton, body.dest_addr_npi])
        + _cstring(body.destination_addr, MAX_ADDR, "destination_addr")
        + bytes([body.esm_class, body.protocol_id, body.priority_flag])
        + _cstring(body.schedule_delivery_time, MAX_TIME, "schedule_delivery_time")
        + _cstring(body.validity_period, MAX_TIME, "validity_period")
        + bytes(
            [
                body.registered_delivery,
                body.replace_if_present_flag,
                body.data_coding,
                body.sm_default_msg_id,
                len(body.short_message),
            ]
        )
        + body.short_message
        + _tlvs(body.tlvs)
    )


def encode_pdu(pdu: Pdu) -> bytes:
    body = _encode_body(pdu.body)
    return HEADER.pack(HEADER_SIZE + len(body), pdu.command_id, pdu.status, pdu.sequence) + body
