"""Timeline SQL shape and cursor codec, without a database."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from cti.errors import InvalidInput
from cti.history import (
    FAMILY_PAGE,
    MAX_ARMS,
    StoredEvent,
    decode_cursor,
    encode_cursor,
    insert_statement,
    page_query,
    parse_instant,
)

AT = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
SQLITE = sqlite.dialect()
POSTGRESQL = postgresql.dialect()  # type: ignore[no-untyped-call]


def sql(query: object, dialect: object) -> str:
    return " ".join(str(query.compile(dialect=dialect)).split())  # type: ignore[attr-defined]


def test_cursor_round_trip_and_forgeries() -> None:
    ev = StoredEvent(42, 1, None, "note", "system", AT, {})
    assert decode_cursor(encode_cursor(ev)) == (AT, 42)
    naive = base64.urlsafe_b64encode(b"2026-03-01T12:00:00|5").decode().rstrip("=")
    for bad in ("!!", naive, "", base64.urlsafe_b64encode(b"x|y").decode()):
        with pytest.raises(InvalidInput):
            decode_cursor(bad)


def test_before_must_be_an_aware_instant() -> None:
    assert parse_instant("2026-03-01T12:00:00+03:00", "before").utcoffset() is not None
    for bad in ("2026-03-01T12:00:00", "soon", "1" * 41, "<script>"):
        with pytest.raises(InvalidInput):
            parse_instant(bad, "before")


@pytest.mark.parametrize("dialect", [SQLITE, POSTGRESQL])
def test_one_customer_page_is_a_row_value_range_in_index_order(dialect: object) -> None:
    text = sql(page_query([7], 51, (AT, 9)), dialect)
    assert "(history_events.occurred_at, history_events.id) <" in text
    assert "ORDER BY history_events.occurred_at DESC, history_events.id DESC" in text
    assert "UNION" not in text and " OR " not in text


def test_family_page_merges_one_limited_scan_per_member() -> None:
    text = sql(page_query([1, 2, 3], 51, None), SQLITE)
    assert text.count("UNION ALL") == 2 and text.count("LIMIT") == 4
    big = sql(page_query(list(range(1, MAX_ARMS + 2)), 51, None), SQLITE)
    assert "UNION" not in big and " IN (" in big


def test_postgresql_reads_family_and_page_in_one_statement() -> None:
    text = sql(FAMILY_PAGE[True], POSTGRESQL)
    assert text.startswith("WITH RECURSIVE family")
    assert "JOIN LATERAL" in text and "(history_events.occurred_at, history_events.id) <" in text


def test_postgresql_dedup_has_no_conflict_target() -> None:
    pg = sql(insert_statement("postgresql"), POSTGRESQL)
    assert pg.endswith("ON CONFLICT DO NOTHING")
    lite = sql(insert_statement("sqlite"), SQLITE)
    assert lite.endswith("ON CONFLICT (dedup_key) DO NOTHING")
    with pytest.raises(RuntimeError):
        insert_statement("mysql")
