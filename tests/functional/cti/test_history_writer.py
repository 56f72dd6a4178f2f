"""The batching HistoryWriter on a real database (SQLite file and PostgreSQL).

Behind, it takes bigger batches and prepares the next batch while the
previous one is written: order, dedup and report columns must not change, and
a row that cannot be written is dropped alone while the writer goes on.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from cti.history import HistoryEntry, HistoryWriter
from cti.models import HistoryEvent
from cti.services import Services

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # microsecond 0: stored as .000000


async def test_backlog_batches_keep_add_order_and_dedup(services: Services, db_url: str) -> None:
    customer = await services.customers.new_anonymous("backlog")
    entries = []
    for i in range(1000):
        key = f"backlog:{i}" if i % 2 == 0 else None
        payload = {"n": i, "wait": i} if i % 3 == 0 else {"n": i, "text": "<b>x</b>"}
        at = T0 + timedelta(seconds=i)
        entry = HistoryEntry(
            customer.id, "call_offered", "voice", payload, occurred_at=at, dedup_key=key
        )
        entries.append(entry)
        if i % 100 == 0:
            entries.append(entry)  # the same batch: written once
    later = entries[:300:3]  # later batches: keys already written, rows without a key kept
    entries.extend(later)
    expected = list(range(1000)) + [e.payload["n"] for e in later if e.dedup_key is None]

    writer = HistoryWriter(services.engine, batch=50, backlog_batch=200, flush_interval=0.01)
    mark = writer.mark()
    writer.start()
    try:
        await writer.add_many(entries)  # never yields: the whole backlog is queued
        await writer.flush()
        assert writer.batches <= len(entries) // 200 + 1  # backlog batches, not batch=50
        assert writer.entries_since(mark) == entries
        assert writer.pending_for([customer.id]) == []
    finally:
        await writer.close()

    async with services.sessions() as session:
        rows = (
            await session.execute(
                select(HistoryEvent.payload, HistoryEvent.wait_s, HistoryEvent.occurred_at)
                .where(HistoryEvent.customer_id == customer.id)
                .order_by(HistoryEvent.id)
            )
        ).all()
    assert [r.payload["n"] for r in rows] == expected
    assert [r.wait_s for r in rows[:1000]] == [
        float(i) if i % 3 == 0 else None for i in range(1000)
    ]
    assert rows[0].occurred_at == T0 and rows[999].occurred_at == T0 + timedelta(seconds=999)
    if db_url.startswith("sqlite"):
        async with services.engine.connect() as conn:
            first = await conn.scalar(
                text("SELECT occurred_at FROM history_events WHERE customer_id = :c ORDER BY id"),
                {"c": customer.id},
            )
        assert first == "2026-03-01 12:00:00.000000"  # what SQLAlchemy's DATETIME stores


async def test_a_row_that_cannot_be_written_is_dropped_alone(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    customer = await services.customers.new_anonymous("bad rows")
    good = [HistoryEntry(customer.id, "message_in", "sms", {"n": i}) for i in range(6)]
    not_json = HistoryEntry(customer.id, "message_in", "sms", {"n": 99, "at": T0})
    no_customer = HistoryEntry(2_000_000_000, "message_in", "sms", {"n": 98})
    writer = HistoryWriter(services.engine, batch=50, flush_interval=0.01)
    writer.start()
    try:
        await writer.add_many([*good[:3], not_json, no_customer, *good[3:]])
        await writer.flush()
        await writer.add(good[0])  # the writer is still running
        await writer.flush()
    finally:
        await writer.close()
    async with services.sessions() as session:
        written = (
            await session.scalars(
                select(HistoryEvent.payload)
                .where(HistoryEvent.customer_id.in_([customer.id, 2_000_000_000]))
                .order_by(HistoryEvent.id)
            )
        ).all()
    assert [p["n"] for p in written] == [0, 1, 2, 3, 4, 5, 0]
    dropped = [r.getMessage() for r in caplog.records if "history event dropped" in r.getMessage()]
    assert len(dropped) == 2, dropped


async def test_flush_fails_instead_of_waiting_when_the_writer_fails(services: Services) -> None:
    """The Core path (kept to measure against) cannot encode this payload: its
    error stops the writer; flush() says so instead of waiting forever."""
    customer = await services.customers.new_anonymous("writer fails")
    writer = HistoryWriter(services.engine, flush_interval=0.01, raw=False)
    writer.start()
    await writer.add(HistoryEntry(customer.id, "message_in", "sms", {"at": T0}))
    with pytest.raises(RuntimeError, match="stopped"):
        await writer.flush()
    await writer.close()
