"""Tolerant SMPP delivery-receipt parser and per-message status combination.

Receipt text (SMPP 3.4 appendix B) is only a convention; SMSCs vary. The parser
takes ``key:value`` pairs in any order and case, 10- (YYMMDDhhmm) or 12-digit
(YYMMDDhhmmss) dates, and lets the ``receipted_message_id`` / ``message_state``
TLVs win over the text. Message ids may be given in hex by submit_sm_resp and in
decimal by the receipt (or the other way round): ``id_forms`` lists the forms
under which one id may be looked up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from sms_gateway.pdu import TLV_MESSAGE_STATE, TLV_RECEIPTED_MESSAGE_ID, ShortMessage

PartState = Literal["enroute", "accepted", "delivered", "expired", "failed"]
FINAL_STATES: Final = frozenset({"delivered", "expired", "failed"})
MAX_RECEIPT_TEXT: Final = 1024

_STAT: Final[dict[str, PartState]] = {
    "DELIVRD": "delivered",
    "DELIVERED": "delivered",
    "EXPIRED": "expired",
    "DELETED": "failed",
    "UNDELIV": "failed",
    "UNDELIVERABLE": "failed",
    "ACCEPTD": "accepted",
    "ACCEPTED": "accepted",
    "UNKNOWN": "failed",
    "REJECTD": "failed",
    "REJECTED": "failed",
    "ENROUTE": "enroute",
}
_MESSAGE_STATE: Final[dict[int, PartState]] = {
    1: "enroute",
    2: "delivered",
    3: "expired",
    4: "failed",
    5: "failed",
    6: "accepted",
    7: "failed",
    8: "failed",
}
_PAIR = re.compile(
    r"(id|sub|dlvrd|submit date|done date|stat|err|text)\s*:\s*(.*?)"
    r"(?=\s+(?:id|sub|dlvrd|submit date|done date|stat|err|text)\s*:|$)",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    message_id: str
    state: PartState
    stat: str
    error: str = ""
    submit_date: datetime | None = None
    done_date: datetime | None = None


class ReceiptError(ValueError):
    """Not a delivery receipt we can attribute to a message."""


def _parse_date(value: str) -> datetime | None:
    digits = value.strip()
    try:
        if len(digits) == 10 and digits.isdigit():
            return datetime.strptime(digits, "%y%m%d%H%M")
        if len(digits) == 12 and digits.isdigit():
            return datetime.strptime(digits, "%y%m%d%H%M%S")
    except ValueError:
        return None
    return None


def parse_receipt_text(text: str) -> dict[str, str]:
    if len(text) > MAX_RECEIPT_TEXT:
        text = text[:MAX_RECEIPT_TEXT]
    return {m.group(1).lower(): m.group(2).strip() for m in _PAIR.finditer(text)}


def parse_receipt(sm: ShortMessage) -> DeliveryReceipt:
    """Receipt carried by a deliver_sm (esm_class receipt bit set)."""
    fields = parse_receipt_text(sm.short_message.decode("latin-1"))
    tlv_id = sm.tlv(TLV_RECEIPTED_MESSAGE_ID)
    message_id = (
        tlv_id.rstrip(b"\x00").decode("latin-1") if tlv_id else fields.get("id", "")
    ).strip()
    if not message_id:
        raise ReceiptError("receipt carries no message id")
    stat = fields.get("stat", "").upper()
    state: PartState | None = _STAT.get(stat)
    tlv_state = sm.tlv(TLV_MESSAGE_STATE)
    if tlv_state and len(tlv_state) == 1:
        state = _MESSAGE_STATE.get(tlv_state[0], state)
    if state is None:
        raise ReceiptError(f"receipt for {message_id} has no known state ({stat!r})")
    return DeliveryReceipt(
        message_id=message_id,
        state=state,
        stat=stat,
        error=fields.get("err", ""),
        submit_date=_parse_date(fields.get("submit date", "")),
        done_date=_parse_date(fields.get("done date", "")),
    )


def normalize_id(message_id: str) -> str:
    value = message_id.strip().lower()
    stripped = value.lstrip("0")
    return stripped or ("0" if value else "")


def id_forms(message_id: str) -> tuple[str, ...]:
    """The normalised id, then its other-base reading: decimal <-> hex."""
    base = normalize_id(message_id)
    forms = [base]
    if base and len(base) <= 32:
        if base.isdigit():
            forms.append(format(int(base), "x"))
        if all(c in "0123456789abcdef" for c in base):
            forms.append(str(int(base, 16)))
    return tuple(dict.fromkeys(forms))


FinalState = Literal["delivered", "expired", "failed"]


def combine_states(states: list[PartState | None]) -> FinalState | None:
    """One status for a message from its parts' latest receipts (None: no receipt yet).

    Any failed part fails the message at once; otherwise the message is final only
    when every part is: expired if any part expired, else delivered.
    """
    if any(s == "failed" for s in states):
        return "failed"
    if all(s in FINAL_STATES for s in states):
        return "expired" if any(s == "expired" for s in states) else "delivered"
    return None
