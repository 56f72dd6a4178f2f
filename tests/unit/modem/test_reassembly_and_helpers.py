from __future__ import annotations

import pytest

from sms_gateway.modem.driver import _error_from, _fields, decode_ussd
from sms_gateway.modem.errors import CmeError, CmsError, PlainError
from sms_gateway.modem.reassembly import Reassembler


def add(r: Reassembler, seq: int, now: float = 0.0, *, sender: str = "+7", ref: int = 1,
        total: int = 3) -> list[str]:
    return [a.text for a in r.add(sender=sender, reference=ref, total=total, sequence=seq,
                                  text=f"<{seq}>", received_at=None, now=now)]


def test_any_order_and_duplicates() -> None:
    r = Reassembler()
    assert add(r, 3) == []
    assert add(r, 1) == []
    assert add(r, 3) == []
    assert add(r, 2) == ["<1><2><3>"]
    assert len(r) == 0


def test_same_reference_from_two_senders_stays_apart() -> None:
    r = Reassembler()
    add(r, 1, sender="+1")
    add(r, 2, sender="+2")
    assert len(r) == 2


def test_timeout_delivers_what_arrived_marked_incomplete() -> None:
    r = Reassembler(timeout=10)
    add(r, 1, now=0)
    add(r, 3, now=5)
    assert r.expire(9.9) == []
    [partial] = r.expire(10)
    assert (partial.text, partial.missing, partial.complete) == ("<1><3>", (2,), False)


def test_pending_limit_flushes_the_oldest() -> None:
    r = Reassembler(max_pending=2)
    add(r, 1, ref=1)
    add(r, 1, ref=2)
    out = r.add(sender="+7", reference=3, total=2, sequence=1, text="x", received_at=None,
                now=0)
    assert [(a.text, a.complete) for a in out] == [("<1>", False)]
    assert len(r) == 2


def test_error_mapping() -> None:
    cms = _error_from("AT+CMGS=20", "+CMS ERROR: 500")
    assert isinstance(cms, CmsError) and cms.code == 500 and cms.transient
    assert cms.meaning == "unknown error"
    cme = _error_from("AT+CPIN=<redacted>", "+CME ERROR: 16")
    assert isinstance(cme, CmeError) and cme.meaning == "incorrect password"
    assert not cme.transient
    text = _error_from("AT+CPIN?", "+CME ERROR: SIM not inserted")
    assert isinstance(text, CmeError) and text.code is None
    assert isinstance(_error_from("AT", "ERROR"), PlainError)


def test_fields() -> None:
    assert _fields('0,"a,b",15') == ["0", "a,b", "15"]
    assert _fields('"SM",3') == ["SM", "3"]


@pytest.mark.parametrize(("text", "dcs", "expected"), [
    ("04110430043B", 72, "Бал"),
    ("Balance 5", 15, "Balance 5"),
    ("0041", None, "0041"),
])
def test_decode_ussd(text: str, dcs: int | None, expected: str) -> None:
    assert decode_ussd(text, dcs) == expected
