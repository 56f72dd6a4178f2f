"""Reassembly of mobile-originated (MO) multipart messages from deliver_sm parts.

Theory of operation: each part is keyed by (source, destination, reference,
total) taken from the concatenation UDH or the sar_* TLVs. Parts may arrive in
any order; duplicates of a sequence number are ignored, also when they arrive
after their message completed (an SMSC resends a deliver_sm whose response it
missed): a completed message's parts are remembered for the timeout, and a part
identical to one of them is dropped as the duplicate it is. When every part is
there, the payloads are joined in sequence order *before* decoding (a UCS-2
surrogate pair or a GSM escape may straddle two parts) and one message comes
out. ``expire(now)`` hands out the messages whose first part is older than the
timeout with what arrived, marked incomplete: nothing is dropped silently. The
clock is passed in, so the class is pure and testable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Protocol

from sms_gateway.encoding import (
    UdhError,
    concat_info,
    gsm7_decode,
    split_udh,
    ucs2_decode,
)
from sms_gateway.pdu import (
    DATA_CODING_UCS2,
    ESM_CLASS_UDHI,
    TLV_MESSAGE_PAYLOAD,
    TLV_SAR_MSG_REF_NUM,
    TLV_SAR_SEGMENT_SEQNUM,
    TLV_SAR_TOTAL_SEGMENTS,
    ShortMessage,
)

DEFAULT_MAX_PENDING: Final = 1000


@dataclass(frozen=True, slots=True)
class IncomingSms:
    source: str
    destination: str
    text: str
    parts_expected: int
    parts_received: int
    complete: bool
    reference: int | None = None  # the concatenation reference of a multipart message


@dataclass(frozen=True, slots=True)
class StoredPart:
    """One part of a multipart MO message waiting for its siblings (``MoPartStore``)."""

    source: str
    destination: str
    reference: int
    total: int
    sequence: int
    data_coding: int
    payload: bytes
    received_at: float  # POSIX seconds of the first part of the message


class MoPartStore(Protocol):
    """Durable parts: a part the ESME acknowledged (deliver_sm_resp OK) is the
    gateway's to keep, so it is saved before the response goes out and forgotten
    once its message was handed over; a restart reassembles what was saved."""

    async def save(self, link: str, part: StoredPart) -> None:
        """Idempotent per (link, source, destination, reference, total, sequence)."""
        ...

    async def forget(
        self, link: str, source: str, destination: str, reference: int, total: int
    ) -> None: ...

    async def pending(self, link: str) -> list[StoredPart]: ...


def multipart_info(sm: ShortMessage) -> tuple[int, int, int, bytes] | None:
    """(reference, total, sequence, payload) when ``sm`` is one part of several."""
    info, payload = _part_of(sm)
    if info is None or info[1] == 1:
        return None
    return (*info, payload)


@dataclass(slots=True)
class _Pending:
    first_seen: float
    total: int
    data_coding: int
    parts: dict[int, bytes] = field(default_factory=dict)


def decode_payload(payload: bytes, data_coding: int) -> str:
    coding = data_coding & 0x0F if data_coding & 0xF0 in (0x00, 0xF0) else data_coding
    if coding == DATA_CODING_UCS2:
        return ucs2_decode(payload)
    if coding in (0x00, 0x01):
        try:
            return gsm7_decode(payload)
        except ValueError:
            return payload.decode("latin-1")
    if coding == 0x03:
        return payload.decode("latin-1")
    return payload.decode("utf-8", errors="replace")


def _part_of(sm: ShortMessage) -> tuple[tuple[int, int, int] | None, bytes]:
    """((reference, total, sequence) or None, payload) of one deliver_sm."""
    payload = sm.tlv(TLV_MESSAGE_PAYLOAD) or sm.short_message
    if sm.esm_class & ESM_CLASS_UDHI and payload:
        try:
            elements, rest = split_udh(payload)
        except UdhError:
            return None, payload
        info = concat_info(elements)
        if info is not None:
            return (info.reference, info.total, info.sequence), rest
        return None, rest
    ref, total, seq = (
        sm.tlv(TLV_SAR_MSG_REF_NUM),
        sm.tlv(TLV_SAR_TOTAL_SEGMENTS),
        sm.tlv(TLV_SAR_SEGMENT_SEQNUM),
    )
    if ref and total and seq:
        t, s = total[0], seq[0]
        if 1 <= s <= t:
            return (int.from_bytes(ref, "big"), t, s), payload
    return None, payload


class MoReassembler:
    def __init__(self, timeout: float, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self._timeout = timeout
        self._max_pending = max_pending
        self._pending: dict[tuple[str, str, int, int], _Pending] = {}
        self._completed: dict[tuple[str, str, int, int], _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, sm: ShortMessage, now: float) -> list[IncomingSms]:
        """Messages made complete (or forced out by the pending limit) by this part."""
        info, payload = _part_of(sm)
        if info is None or info[1] == 1:
            text = decode_payload(payload, sm.data_coding)
            return [IncomingSms(sm.source_addr, sm.destination_addr, text, 1, 1, True)]
        ref, total, seq = info
        key = (sm.source_addr, sm.destination_addr, ref, total)
        out: list[IncomingSms] = []
        done = self._completed.get(key)
        if done is not None and done.parts.get(seq) == payload and key not in self._pending:
            return []
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= self._max_pending:
                oldest = min(self._pending, key=lambda k: self._pending[k].first_seen)
                out.append(self._emit(oldest))
            pending = self._pending[key] = _Pending(now, total, sm.data_coding)
        pending.parts.setdefault(seq, payload)
        if len(pending.parts) == total:
            out.append(self._emit(key))
        return out

    def seen(self, sm: ShortMessage) -> bool:
        """This part is already held, or belongs to a message completed recently."""
        info, payload = _part_of(sm)
        if info is None or info[1] == 1:
            return False
        ref, total, seq = info
        key = (sm.source_addr, sm.destination_addr, ref, total)
        pending = self._pending.get(key)
        if pending is not None:
            return seq in pending.parts
        done = self._completed.get(key)
        return done is not None and done.parts.get(seq) == payload

    def restore(self, part: StoredPart, first_seen: float) -> list[IncomingSms]:
        """Put back a part saved before a restart (``first_seen`` on this clock)."""
        key = (part.source, part.destination, part.reference, part.total)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(first_seen, part.total, part.data_coding)
        pending.first_seen = min(pending.first_seen, first_seen)
        pending.parts.setdefault(part.sequence, part.payload)
        return [self._emit(key)] if len(pending.parts) == part.total else []

    def expire(self, now: float) -> list[IncomingSms]:
        for k in [k for k, p in self._completed.items() if now - p.first_seen >= self._timeout]:
            del self._completed[k]
        due = [k for k, p in self._pending.items() if now - p.first_seen >= self._timeout]
        return [self._emit(k) for k in due]

    def _emit(self, key: tuple[str, str, int, int]) -> IncomingSms:
        pending = self._pending.pop(key)
        if len(pending.parts) == pending.total:
            if len(self._completed) >= self._max_pending:
                del self._completed[next(iter(self._completed))]
            self._completed[key] = pending
        joined = b"".join(pending.parts[s] for s in sorted(pending.parts))
        return IncomingSms(
            source=key[0],
            destination=key[1],
            text=decode_payload(joined, pending.data_coding),
            parts_expected=pending.total,
            parts_received=len(pending.parts),
            complete=len(pending.parts) == pending.total,
            reference=key[2],
        )
