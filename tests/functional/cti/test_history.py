"""History store reads and writes on a real database (SQLite file and PostgreSQL).

The timeline is a keyset page over (occurred_at, id): ties on occurred_at,
merged families (several index scans merged), a ``before`` bound, and on
SQLite the inline reader that hands a locked file to the aiosqlite path
instead of stalling the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text

from cti.history import (
    HistoryEntry,
    HistoryWriter,
    ReadDeclined,
    StoredEvent,
    sqlite_reader,
    timeline,
)
from cti.models import HistoryEvent
from cti.services import Services
from tests.functional.cti.conftest import Api

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def all_pages(services: Services, customer_id: int, limit: int) -> list[StoredEvent]:
    seen: list[StoredEvent] = []
    cursor = None
    while True:
        page, cursor = await timeline(services.sessions, customer_id, limit=limit, cursor=cursor)
        seen.extend(page)
        if cursor is None:
            return seen


async def test_pages_walk_ties_and_merged_family_once_each(services: Services) -> None:
    a = await services.customers.new_anonymous("a")
    b = await services.customers.new_anonymous("b")
    c = await services.customers.new_anonymous("c")
    # 30 events share one instant (ties broken by id), the rest interleave
    # across the three customers that end up as one family.
    entries = [HistoryEntry(a.id, "note", "system", {"n": n}, occurred_at=T0) for n in range(30)]
    entries += [
        HistoryEntry(
            (a.id, b.id, c.id)[n % 3],
            "note",
            "chat",
            {"n": 100 + n},
            occurred_at=T0 + timedelta(seconds=n + 1),
        )
        for n in range(45)
    ]
    await services.history.add_many(entries)
    await services.history.flush()
    await services.customers.merge(b.id, a.id, None)
    await services.customers.merge(c.id, b.id, None)  # c -> b's survivor a
    await services.history.flush()

    for limit in (1, 7, 50, 200):
        events = await all_pages(services, a.id, limit)
        keys = [(e.occurred_at, e.id) for e in events]
        assert keys == sorted(keys, reverse=True), limit
        assert len(set(keys)) == len(keys) == 75 + 2  # + the two merge events
        assert {e.customer_id for e in events} == {a.id, b.id, c.id}
        tied = [e.payload["n"] for e in events if e.occurred_at == T0]
        assert tied == list(range(29, -1, -1))
    # The merged customers' own timelines stay their own.
    only_c = await all_pages(services, c.id, 10)
    assert {e.customer_id for e in only_c} == {c.id} and len(only_c) == 15


async def test_before_bound_and_bad_paging_input(api: Api) -> None:
    svc = api.services
    token = await api.agent("agent1")
    customer = await svc.customers.new_anonymous("x")
    await svc.history.add_many(
        HistoryEntry(customer.id, "note", "system", {"n": n}, occurred_at=T0 + timedelta(minutes=n))
        for n in range(10)
    )
    await svc.history.flush()
    url = f"/api/v1/customers/{customer.id}/history"
    headers = api.auth(token)

    resp = await api.client.get(
        url,
        params={"before": (T0 + timedelta(minutes=4)).isoformat(), "limit": "3"},
        headers=headers,
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert [e["payload"]["n"] for e in body["events"]] == [3, 2, 1]
    resp = await api.client.get(url, params={"cursor": body["next_cursor"]}, headers=headers)
    assert [e["payload"]["n"] for e in (await resp.json())["events"]] == [0]

    for bad in ("2026-03-01T12:04:00", "yesterday", "9" * 60):
        resp = await api.client.get(url, params={"before": bad}, headers=headers)
        assert resp.status == 422, bad
        assert (await resp.json())["error"]["details"]["field"] == "before"


async def test_duplicate_dedup_keys_are_written_once(services: Services) -> None:
    customer = await services.customers.new_anonymous("d")
    same = [
        HistoryEntry(customer.id, "call_offered", "voice", {"try": n}, dedup_key="pbx:1.1:offered")
        for n in range(3)
    ]
    await services.history.add_many(same)
    await services.history.flush()
    await services.history.add(same[0])  # a later batch (a PBX resync)
    await services.history.flush()
    async with services.sessions() as session:
        rows = await session.scalar(
            select(func.count()).where(HistoryEvent.dedup_key == "pbx:1.1:offered")
        )
    assert rows == 1


async def test_sqlite_read_of_a_locked_file_does_not_stall_the_loop(
    services: Services, db_url: str
) -> None:
    if not db_url.startswith("sqlite"):
        # PostgreSQL has no file lock to meet; the read is one statement there.
        events, _ = await timeline(services.sessions, 1)
        assert events == []
        return
    customer = await services.customers.new_anonymous("l")
    await services.history.add(HistoryEntry(customer.id, "note", "system", {"n": 1}))
    await services.history.flush()
    assert sqlite_reader(services.engine) is not None

    path = services.engine.sync_engine.url.database
    assert path
    # An exclusive lock on a WAL file needs every other connection closed.
    await services.engine.dispose()
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    ticks = 0
    try:
        reader = sqlite_reader(services.engine)
        assert reader is not None
        with reader.engine.connect() as conn:  # never waits for a lock on the loop
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 0
        with pytest.raises(ReadDeclined):
            reader.read(customer.id, 10, None)
        read = asyncio.create_task(timeline(services.sessions, customer.id))
        while ticks < 20:  # the loop runs while the read waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not read.done()
    finally:
        locker.execute("COMMIT")
        locker.close()
    events, _ = await read
    assert [e.payload for e in events] == [{"n": 1}]


async def test_sqlite_reader_closes_with_its_engine(services: Services, db_url: str) -> None:
    reader = sqlite_reader(services.engine)
    if not db_url.startswith("sqlite"):
        assert reader is None
        return
    assert reader is not None and sqlite_reader(services.engine) is reader
    await services.engine.dispose()
    again = sqlite_reader(services.engine)
    assert again is not None and again is not reader


async def test_raw_batch_rows_match_the_core_insert(services: Services) -> None:
    """The writer's driver-level batch stores exactly what the Core insert stores."""
    customer = await services.customers.new_anonymous("raw")
    at = datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC) + timedelta(microseconds=7)
    payload = {"text": "Привет <b>&</b>", "wait": 12, "talk": 3.5, "hold": True, "n": [1, None]}
    for raw in (True, False):
        writer = HistoryWriter(services.engine, flush_interval=0.01, raw=raw)
        writer.start()
        try:
            entry = HistoryEntry(customer.id, "call_ended", "voice", payload, occurred_at=at)
            await writer.add(replace(entry, dedup_key=f"same-{raw}"))
            await writer.add(replace(entry, dedup_key=f"same-{raw}"))  # once only
            await writer.add(
                replace(entry, occurred_at=at.astimezone(timezone(timedelta(hours=3))))
            )
            await writer.flush()
        finally:
            await writer.close()
    async with services.engine.connect() as conn:
        stored = (
            await conn.execute(
                text(
                    "SELECT CAST(occurred_at AS TEXT), CAST(payload AS TEXT), wait_s, talk_s,"
                    " hold_s, ring_s, kind, channel, conversation_id, dedup_key IS NULL"
                    " FROM history_events WHERE customer_id = :c ORDER BY id"
                ),
                {"c": customer.id},
            )
        ).all()
    assert len(stored) == 4
    assert stored[0] == stored[2] and stored[1] == stored[3]
    assert stored[0][:-1] == stored[1][:-1] and stored[0][2:6] == (12.0, 3.5, None, None)
    page, _ = await timeline(services.sessions, customer.id)
    assert {e.payload == payload and e.occurred_at == at for e in page} == {True}
