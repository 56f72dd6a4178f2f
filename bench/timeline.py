"""Customer timeline at scale: the latest 50 events of a customer among --rows history rows.

    .venv/bin/python -m bench.timeline [--rows 10000000] [--customers 1000000] [--queries 2000]

Calls ``cti.history.timeline`` (exactly what ``GET /api/v1/customers/{id}/history``
runs: merged family + keyset page, through the ORM) for random customers on
SQLite (WAL, temp file) and PostgreSQL 15 (throwaway cluster). Rows are
generated inside the database (SQLite recursive CTE, PostgreSQL
generate_series: no Python loop, the fastest way to make 10M rows), indexes
built after the load as a restore would: 90% of the rows spread uniformly over
all customers (~9 each), 10% on 100 heavy customers (~10k each at 10M).
Latency p50/p95/p99/max over a 90/10 mix of ordinary and heavy customers.
Baseline, same run: page 100 of a heavy customer by OFFSET (what a naive API
does) against the same page by the keyset cursor the API uses.
Target: p99 <= 5 ms on both databases.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bench.pg_cluster import pg_cluster
from cti.db import create_engine, migrate, sessionmaker
from cti.history import encode_cursor, timeline
from cti.models import HistoryEvent

HEAVY = 100
PAGE = 50
DEEP_PAGE = 100

INDEXES = (
    ("ix_history_timeline", "history_events (customer_id, occurred_at, id)"),
    ("ix_history_conversation", "history_events (conversation_id)"),
)

SQLITE_FILL = """
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :rows)
INSERT INTO history_events (customer_id, kind, channel, occurred_at, payload)
SELECT CASE WHEN x % 10 = 0 THEN (abs(random()) % :heavy) + 1
            ELSE (abs(random()) % :customers) + 1 END,
       CASE x % 4 WHEN 0 THEN 'call_offered' WHEN 1 THEN 'call_ended'
                  WHEN 2 THEN 'message_in' ELSE 'message_out' END,
       CASE WHEN x % 4 < 2 THEN 'voice' ELSE 'sms' END,
       strftime('%Y-%m-%d %H:%M:%S', 1700000000 + x * 3, 'unixepoch') || '.000000',
       '{"text": "сообщение ' || x || '", "queue": "support"}'
FROM n
"""

PG_FILL = """
INSERT INTO history_events (customer_id, kind, channel, occurred_at, payload)
SELECT CASE WHEN x % 10 = 0 THEN (floor(random() * $1) + 1)::bigint
            ELSE (floor(random() * $2) + 1)::bigint END,
       (ARRAY['call_offered', 'call_ended', 'message_in', 'message_out'])[x % 4 + 1],
       CASE WHEN x % 4 < 2 THEN 'voice' ELSE 'sms' END,
       to_timestamp(1700000000 + x * 3),
       json_build_object('text', 'сообщение ' || x, 'queue', 'support')
FROM generate_series(1, $3) AS x
"""


def fill_sqlite(path: Path, rows: int, customers: int) -> float:
    t0 = time.perf_counter()
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-400000")
    for name, _ in INDEXES:
        db.execute(f"DROP INDEX IF EXISTS {name}")
    db.execute(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
        "INSERT INTO customers (id, name, tags, notes, custom, provisional, created_at, "
        "updated_at) SELECT x, 'c' || x, '[]', '', '{}', 0, '2025-01-01 00:00:00.000000', "
        "'2025-01-01 00:00:00.000000' FROM n",
        (customers,),
    )
    db.execute(
        SQLITE_FILL.replace(":rows", str(rows))
        .replace(":heavy", str(HEAVY))
        .replace(":customers", str(customers))
    )
    db.commit()
    for name, spec in INDEXES:
        db.execute(f"CREATE INDEX {name} ON {spec}")
    db.execute("ANALYZE")
    db.commit()
    db.close()
    return time.perf_counter() - t0


async def fill_pg(engine: AsyncEngine, rows: int, customers: int) -> float:
    t0 = time.perf_counter()
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        pg = raw.driver_connection
        assert pg is not None
        await pg.execute("SET maintenance_work_mem = '512MB'")
        for name, _ in INDEXES:
            await pg.execute(f"DROP INDEX IF EXISTS {name}")
        # Foreign keys are checked per row by triggers: drop them for the load and
        # add them back after (one validating scan), as pg_restore does.
        fks = await pg.fetch(
            "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
            "WHERE conrelid = 'history_events'::regclass AND contype = 'f'"
        )
        for fk in fks:
            await pg.execute(f'ALTER TABLE history_events DROP CONSTRAINT "{fk["conname"]}"')
        await pg.execute(
            "INSERT INTO customers (id, name, tags, notes, custom, provisional, created_at, "
            "updated_at) SELECT x, 'c' || x, '[]', '', '{}', false, now(), now() "
            "FROM generate_series(1, $1) AS x",
            customers,
        )
        await pg.execute(PG_FILL, HEAVY, customers, rows)
        for name, spec in INDEXES:
            await pg.execute(f"CREATE INDEX {name} ON {spec}")
        for fk in fks:
            await pg.execute(
                f'ALTER TABLE history_events ADD CONSTRAINT "{fk["conname"]}" {fk["def"]}'
            )
        await pg.execute("VACUUM ANALYZE history_events")
        await pg.execute("ANALYZE customers")
    return time.perf_counter() - t0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def timed(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def line(name: str, ms: list[float]) -> str:
    return (
        f"{name}: n={len(ms)} p50 {pct(ms, 50):7.2f} ms  p95 {pct(ms, 95):7.2f} ms  "
        f"p99 {pct(ms, 99):7.2f} ms  max {max(ms):7.2f} ms"
    )


async def measure(
    name: str, sessions: async_sessionmaker[AsyncSession], customers: int, queries: int
) -> float:
    rng = random.Random(3)
    picks = [
        rng.randint(1, HEAVY) if rng.random() < 0.1 else rng.randint(1, customers)
        for _ in range(queries)
    ]
    it = iter(picks * 2)
    seen: list[int] = []

    async def one() -> None:
        events, _ = await timeline(sessions, next(it), limit=PAGE)
        seen.append(len(events))

    await timed(one, min(200, queries))  # warm-up: pool, statement cache, OS cache
    seen.clear()
    lat = await timed(one, queries)
    print(
        line(f"{name:10s} timeline latest {PAGE}", lat)
        + f"  (avg {sum(seen) / len(seen):.1f} events/page)",
        flush=True,
    )

    # Baseline: a deep page of a heavy customer, OFFSET vs keyset cursor.
    heavy_ids = list(range(1, HEAVY + 1))
    cursors: dict[int, str] = {}
    for cid in heavy_ids[:20]:
        async with sessions() as session:
            rows = (
                (
                    await session.execute(
                        text(
                            "SELECT id FROM history_events WHERE customer_id = :c "
                            "ORDER BY occurred_at DESC, id DESC LIMIT 1 OFFSET :o"
                        ),
                        {"c": cid, "o": PAGE * (DEEP_PAGE - 1) - 1},
                    )
                )
                .scalars()
                .all()
            )
            if rows:
                ev = await session.get(HistoryEvent, rows[0])
                assert ev is not None
                cursors[cid] = encode_cursor(ev)
    hit = iter(list(cursors) * 50)

    async def keyset() -> None:
        cid = next(hit)
        await timeline(sessions, cid, limit=PAGE, cursor=cursors[cid])

    hit_o = iter(list(cursors) * 50)

    async def offset() -> None:
        async with sessions() as session:
            await session.scalars(
                HistoryEvent.__table__.select()
                .where(HistoryEvent.customer_id == next(hit_o))
                .order_by(HistoryEvent.occurred_at.desc(), HistoryEvent.id.desc())
                .offset(PAGE * (DEEP_PAGE - 1))
                .limit(PAGE)
            )

    if cursors:
        k = await timed(keyset, 200)
        o = await timed(offset, 200)
        print(line(f"{name:10s} page {DEEP_PAGE} keyset (API)   ", k))
        print(
            line(f"{name:10s} page {DEEP_PAGE} OFFSET baseline", o)
            + f"  ratio p50 x{pct(o, 50) / pct(k, 50):.1f}"
        )
    return pct(lat, 99)


async def main_async(args: argparse.Namespace) -> int:
    results = {}
    with tempfile.TemporaryDirectory(prefix="cti-bench-timeline-") as tmp:
        path = Path(tmp) / "timeline.sqlite3"
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        await migrate(engine)
        await engine.dispose()
        took = await asyncio.to_thread(fill_sqlite, path, args.rows, args.customers)
        print(
            f"sqlite: {args.rows:,} rows for {args.customers:,} customers loaded and indexed "
            f"in {took:.0f} s ({path.stat().st_size / 1e9:.2f} GB)",
            flush=True,
        )
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        results["sqlite"] = await measure(
            "sqlite", sessionmaker(engine), args.customers, args.queries
        )
        await engine.dispose()
    with pg_cluster("shared_buffers=512MB", "max_wal_size=8GB") as url:
        engine = create_engine(url)
        await migrate(engine)
        took = await fill_pg(engine, args.rows, args.customers)
        print(f"postgresql: {args.rows:,} rows loaded and indexed in {took:.0f} s", flush=True)
        results["postgresql"] = await measure(
            "postgresql", sessionmaker(engine), args.customers, args.queries
        )
        await engine.dispose()
    print(
        "target p99 <= 5 ms: "
        + ", ".join(f"{k} {'OK' if v <= 5 else 'MISSED'} ({v:.2f} ms)" for k, v in results.items())
    )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    raise SystemExit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
