"""History partitioned by month on a real PostgreSQL: migration, dedup, maintenance, retention."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, insert, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cti.cli import main as cti_main
from cti.db import alembic_config, create_engine, migrate, sessionmaker
from cti.history import HistoryEntry, HistoryWriter
from cti.models import Customer, HistoryEvent
from cti.partitions import (
    DEFAULT_PARTITION,
    add_months,
    apply_retention,
    ensure_partitions,
    month_start,
    partition_name,
    partitions_ctx,
)
from tests.peers.databases import _createdb

pytestmark = pytest.mark.integration
_names = itertools.count(1)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
# Rows of the old (plain) table: Jan, Mar and Nov 2026 (Feb has no rows: it gets a partition).
OLD_ROWS = [
    (datetime(2026, 1, 5, tzinfo=UTC), "k-jan"),
    (datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC), None),
    (datetime(2026, 3, 1, tzinfo=UTC), "k-mar"),
    (datetime(2026, 11, 20, tzinfo=UTC), "k-nov"),
]


def month(year: int, number: int) -> datetime:
    return datetime(year, number, 1, tzinfo=UTC)


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    port = int(postgres_url.rsplit(":", 1)[1].split("/")[0])
    name = f"parts{os.getpid()}_{next(_names)}"
    _createdb(port, name)
    return postgres_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(pg_url)
    try:
        yield eng
    finally:
        await eng.dispose()


async def alembic(engine: AsyncEngine, action: str, revision: str) -> None:
    def run(conn: Connection) -> None:
        getattr(command, action)(alembic_config(conn), revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def rows(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql))).all())


async def scalar(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(text(sql))


async def add_customer(engine: AsyncEngine) -> int:
    async with sessionmaker(engine)() as session, session.begin():
        customer = Customer(name="Partition Test")
        session.add(customer)
    return customer.id


async def insert_raw(engine: AsyncEngine, customer: int, at: datetime, key: str | None) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO history_events (customer_id, kind, channel, occurred_at, payload, "
                "dedup_key) VALUES (:c, 'note', 'sms', :at, '{}', :k)"
            ),
            {"c": customer, "at": at, "k": key},
        )


async def count_key(engine: AsyncEngine, key: str) -> int:
    return int(
        await scalar(engine, f"SELECT count(*) FROM history_events WHERE dedup_key = '{key}'")
    )


async def partition_names(engine: AsyncEngine) -> set[str]:
    found = await rows(
        engine,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'history_events'::regclass",
    )
    return {r[0] for r in found}


async def relkind(engine: AsyncEngine) -> str:
    return str(
        await scalar(engine, "SELECT relkind::text FROM pg_class WHERE relname = 'history_events'")
    )


async def test_migration_partitions_existing_rows_and_keeps_dedup_exact(
    engine: AsyncEngine,
) -> None:
    await alembic(engine, "upgrade", "0009_sla")
    customer = await add_customer(engine)
    for at, key in OLD_ROWS:
        await insert_raw(engine, customer, at, key)
    listing = "SELECT id, occurred_at, dedup_key FROM history_events ORDER BY id"
    before = await rows(engine, listing)

    await alembic(engine, "upgrade", "head")

    assert await relkind(engine) == "p"
    names = await partition_names(engine)
    assert {partition_name(month(2026, m)) for m in (1, 2, 3, 11)} <= names
    assert partition_name(add_months(month_start(datetime.now(UTC)), 3)) in names
    assert DEFAULT_PARTITION in names
    assert await rows(engine, listing) == before
    assert await scalar(engine, f"SELECT count(*) FROM {partition_name(month(2026, 1))}") == 2
    assert await scalar(engine, "SELECT count(*) FROM history_dedup") == 3
    # Every index and foreign key came along; the primary key holds the partition key.
    indexes = {
        r[0]
        for r in await rows(
            engine, "SELECT indexname FROM pg_indexes WHERE tablename = 'history_events'"
        )
    }
    assert {"ix_history_timeline", "ix_history_conversation", "history_events_pkey"} <= indexes
    pkey = await scalar(
        engine,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'history_events'::regclass AND contype = 'p'",
    )
    assert pkey == "PRIMARY KEY (id, occurred_at)"
    with pytest.raises(IntegrityError):
        await insert_raw(engine, customer + 1000, NOW, None)  # customers FK

    # Same key, another month: still one row. A new row continues the id sequence.
    await insert_raw(engine, customer, month(2026, 2), "k-jan")
    await insert_raw(engine, customer, NOW, "k-new")
    assert await count_key(engine, "k-jan") == 1
    new_id = await scalar(engine, "SELECT id FROM history_events WHERE dedup_key = 'k-new'")
    assert new_id > max(r[0] for r in before)
    # Deleting a row frees its key (a failed Idempotency-Key claim may be retried).
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM history_events WHERE dedup_key = 'k-new'"))
    await insert_raw(engine, customer, NOW, "k-new")
    assert await count_key(engine, "k-new") == 1
    # Re-keying a row onto a taken key fails as the unique constraint did.
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE history_events SET dedup_key = 'k-mar' WHERE dedup_key = 'k-nov'")
            )

    # Downgrade restores the plain table with UNIQUE(dedup_key); upgrading again is clean.
    await alembic(engine, "downgrade", "0009_sla")
    assert await relkind(engine) == "r"
    assert await scalar(engine, "SELECT to_regclass('history_dedup')") is None
    with pytest.raises(IntegrityError):
        await insert_raw(engine, customer, NOW, "k-mar")
    await migrate(engine)
    assert await relkind(engine) == "p"
    assert await scalar(engine, "SELECT count(*) FROM history_events") == len(before) + 1


async def test_writer_dedup_maintenance_and_retention(engine: AsyncEngine) -> None:
    await migrate(engine)
    await ensure_partitions(engine, now=month(2026, 7))  # Jun..Oct 2026
    customer = await add_customer(engine)
    # 12 keys over Aug-Nov 2026, each written twice in one batch, then replayed a year later.
    entries = [
        HistoryEntry(
            customer,
            "note",
            "sms",
            {"n": i},
            occurred_at=NOW - timedelta(days=31 * m),
            dedup_key=f"w-{m}-{i % 3}",
        )
        for m in range(4)
        for i in range(6)
    ]
    replays = [
        HistoryEntry(
            customer, "note", "sms", occurred_at=NOW + timedelta(days=400), dedup_key=e.dedup_key
        )
        for e in entries
    ]
    writer = HistoryWriter(engine, batch=50, flush_interval=0.01)
    writer.start()
    try:
        await writer.add_many(entries)
        await writer.flush()
        await writer.add_many(replays)
        await writer.add(HistoryEntry(customer, "note", "sms", occurred_at=NOW))  # no key
        await writer.flush()
    finally:
        await writer.close()
    assert await scalar(engine, "SELECT count(*) FROM history_events") == 4 * 3 + 1
    assert await scalar(engine, "SELECT count(DISTINCT dedup_key) FROM history_events") == 12
    assert await scalar(engine, f"SELECT count(*) FROM {DEFAULT_PARTITION}") == 0

    # A row beyond the created months lands in DEFAULT; maintenance that reaches its
    # month moves it into a new partition, and its key stays claimed.
    await insert_raw(engine, customer, datetime(2028, 6, 15, tzinfo=UTC), "far-key")
    assert await scalar(engine, f"SELECT count(*) FROM {DEFAULT_PARTITION}") == 1
    later = NOW + timedelta(days=60)
    created = await ensure_partitions(engine, now=later)
    assert partition_name(month(2027, 4)) in created
    assert partition_name(month(2028, 6)) in created
    assert await ensure_partitions(engine, now=later) == []  # idempotent
    assert await scalar(engine, f"SELECT count(*) FROM {DEFAULT_PARTITION}") == 0
    assert await scalar(engine, f"SELECT count(*) FROM {partition_name(month(2028, 6))}") == 1
    await insert_raw(engine, customer, NOW, "far-key")
    assert await count_key(engine, "far-key") == 1

    # Retention keeping the 2 months before November 2026: the Jul and Aug partitions go.
    total = await scalar(engine, "SELECT count(*) FROM history_events")
    gone = {partition_name(month(2026, 7)), partition_name(month(2026, 8))}
    old_rows = await scalar(
        engine, "SELECT count(*) FROM history_events WHERE occurred_at < '2026-09-01+00'"
    )
    assert old_rows == 3
    dry = await apply_retention(engine, 2, dry_run=True, now=NOW)
    assert dry.rows == old_rows and set(dry.dropped) >= gone
    assert await scalar(engine, "SELECT count(*) FROM history_events") == total
    assert gone <= await partition_names(engine)
    done = await apply_retention(engine, 2, now=NOW)
    assert done.dropped == dry.dropped and done.rows == old_rows
    names = await partition_names(engine)
    assert not names & gone
    assert partition_name(month(2026, 9)) in names
    assert await scalar(engine, "SELECT count(*) FROM history_events") == total - old_rows
    # The dropped rows' keys are released; the kept rows' keys are not.
    assert (
        await scalar(
            engine,
            "SELECT count(*) FROM history_dedup d WHERE NOT EXISTS "
            "(SELECT 1 FROM history_events h WHERE h.dedup_key = d.dedup_key)",
        )
        == 0
    )
    assert await scalar(engine, "SELECT count(*) FROM history_dedup") == 12 - 3 + 1


async def test_batch_claims_keys_in_one_statement(engine: AsyncEngine) -> None:
    """The writer's batch path: keys claimed up front, the trigger told to skip."""
    await migrate(engine)
    await ensure_partitions(engine, now=NOW)
    customer = await add_customer(engine)
    await insert_raw(engine, customer, NOW - timedelta(days=40), "taken")  # trigger path
    batch = [
        HistoryEntry(customer, "note", "sms", {"n": 1}, occurred_at=NOW, dedup_key="twice"),
        HistoryEntry(customer, "note", "sms", {"n": 2}, occurred_at=NOW, dedup_key="taken"),
        HistoryEntry(customer, "note", "sms", {"n": 3}, occurred_at=NOW),
        HistoryEntry(customer, "note", "sms", {"n": 4}, occurred_at=NOW, dedup_key="twice"),
        HistoryEntry(customer, "note", "sms", {"n": 5, "wait": 7}, occurred_at=NOW),
        # customer 0 does not exist: the batch fails, its claims roll back, row by row follows
        HistoryEntry(0, "note", "sms", {"n": 6}, occurred_at=NOW, dedup_key="orphan"),
    ]
    writer = HistoryWriter(engine, batch=50, flush_interval=0.01)
    writer.start()
    try:
        await writer.add_many(batch)
        await writer.flush()
    finally:
        await writer.close()
    found = await rows(
        engine,
        "SELECT payload->>'n', dedup_key, wait_s FROM history_events "
        "WHERE occurred_at = '2026-11-23 12:00+00' ORDER BY id",
    )
    assert [tuple(r) for r in found] == [("1", "twice", None), ("3", None, None), ("5", None, 7.0)]
    assert await count_key(engine, "taken") == 1
    # The failed row's key was not left claimed; every kept key is.
    keys = await rows(engine, "SELECT dedup_key FROM history_dedup ORDER BY 1")
    assert [r[0] for r in keys] == ["taken", "twice"]
    # The skip setting was for the writer's transaction only: plain inserts on
    # the pool's connections still claim (and dedup) through the trigger.
    for _ in range(3):
        await insert_raw(engine, customer, NOW, "twice")
        await insert_raw(engine, customer, NOW, "fresh")
    assert await count_key(engine, "twice") == 1 and await count_key(engine, "fresh") == 1
    # The Core path (per-row trigger) still agrees with the batch path.
    core = HistoryWriter(engine, flush_interval=0.01, raw=False)
    core.start()
    try:
        await core.add_many(batch[:4])
        await core.flush()
    finally:
        await core.close()
    assert await count_key(engine, "twice") == 1 and await count_key(engine, "taken") == 1
    assert await scalar(engine, "SELECT count(*) FROM history_events WHERE dedup_key IS NULL") == 3


async def test_idle_pooled_connection_killed_by_the_server_is_replaced(pg_url: str) -> None:
    """No ping per checkout (cti.db): an idle connection is pinged, a dead one replaced."""
    engine = create_engine(pg_url, ping_after_idle=0.0)
    other = create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        async with other.connect() as conn:
            assert await conn.scalar(text(f"SELECT pg_terminate_backend({pid})")) is True
        async with engine.connect() as conn:  # the dead one failed its ping
            assert await conn.scalar(text("SELECT pg_backend_pid()")) != pid
        assert engine.sync_engine.pool.checkedout() == 0
    finally:
        await engine.dispose()
        await other.dispose()


async def test_server_context_creates_the_coming_months(engine: AsyncEngine) -> None:
    await migrate(engine)
    coming = partition_name(add_months(month_start(datetime.now(UTC)), 3))
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP TABLE {coming}"))
    assert coming not in await partition_names(engine)
    gen = partitions_ctx(lambda: engine)(None)  # type: ignore[arg-type]
    await gen.__anext__()
    assert coming in await partition_names(engine)
    with pytest.raises(StopAsyncIteration):
        await gen.__anext__()


def test_cli_retention_on_postgresql_and_sqlite(
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CTI_DB_URL", pg_url)
    assert cti_main(["db", "retention", "--keep-months", "1", "--dry-run"]) == 0
    assert "would remove 0 history rows older than" in capsys.readouterr().out

    sqlite_url = f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}"

    async def fill() -> None:
        eng = create_engine(sqlite_url)
        await migrate(eng)
        customer = await add_customer(eng)
        async with eng.begin() as conn:
            for at in (month(2020, 1), month(2020, 2), month(2999, 1)):
                await conn.execute(
                    insert(HistoryEvent).values(
                        customer_id=customer,
                        kind="note",
                        channel="sms",
                        payload={},
                        occurred_at=at,
                    )
                )
        await eng.dispose()

    asyncio.run(fill())
    monkeypatch.setenv("CTI_DB_URL", sqlite_url)
    assert cti_main(["db", "retention", "--keep-months", "3", "--dry-run"]) == 0
    assert "would remove 2 history rows" in capsys.readouterr().out
    assert cti_main(["db", "retention", "--keep-months", "3"]) == 0
    assert "removed 2 history rows" in capsys.readouterr().out
    assert cti_main(["db", "retention", "--keep-months", "3"]) == 0
    assert "removed 0 history rows" in capsys.readouterr().out
    assert cti_main(["db", "retention", "--keep-months", "0"]) == 2
