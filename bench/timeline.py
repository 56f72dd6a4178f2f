"""Customer timeline at scale: the latest 50 events of a customer among --rows history rows.

    .venv/bin/python -m bench.timeline [--rows 10000000] [--customers 1000000] [--queries 2000]
                                       [--only sqlite|postgresql] [--ping]

Calls ``cti.history.timeline`` (exactly what ``GET /api/v1/customers/{id}/history``
runs: merged family + keyset page, Core selects; on SQLite one hop to the
reader thread) for random customers on SQLite (WAL, temp file) and PostgreSQL
15 (throwaway cluster). Rows are
generated inside the database (SQLite recursive CTE, PostgreSQL
generate_series: no Python loop, the fastest way to make 10M rows), indexes
built after the load as a restore would: 90% of the rows spread uniformly over
all customers (~9 each), 10% on 100 heavy customers (~10k each at 10M).
Latency p50/p95/p99/max over a 90/10 mix of ordinary customers (each picked
once: cold, its index pages not touched before) and heavy ones (100 ids picked
again and again: hot), overall and per class.
Baselines, same run, same mix, rounds interleaved with the API path:
  * the previous implementation (ORM select of HistoryEvent objects through an
    AsyncSession, OR-expanded keyset, aiosqlite hops), as ``timeline_orm``;
  * page 100 of a heavy customer by OFFSET (what a naive API does) against
    the same page by the keyset cursor the API uses.
The query plan of the page query is printed for each database.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Select, and_, or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bench.pg_cluster import pg_cluster
from cti.db import create_engine, migrate, sessionmaker
from cti.history import (
    FAMILY_PAGE,
    StoredEvent,
    decode_cursor,
    encode_cursor,
    merged_family,
    page_query,
    sqlite_reader,
    timeline,
)
from cti.models import HistoryEvent

HEAVY = 100
PAGE = 50
DEEP_PAGE = 100
ROUNDS = 4


async def timeline_orm(
    sessions: async_sessionmaker[AsyncSession],
    customer_id: int,
    *,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[HistoryEvent], str | None]:
    """The previous cti.history.timeline, kept verbatim as the baseline."""
    async with sessions() as session:
        family = await merged_family(session, customer_id)
        query = select(HistoryEvent).where(HistoryEvent.customer_id.in_(family))
        if cursor:
            at, last_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    HistoryEvent.occurred_at < at,
                    and_(HistoryEvent.occurred_at == at, HistoryEvent.id < last_id),
                )
            )
        query = query.order_by(HistoryEvent.occurred_at.desc(), HistoryEvent.id.desc())
        rows = list(await session.scalars(query.limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


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


async def explain(name: str, engine: AsyncEngine) -> None:
    """Print the plan of the API's page query for a heavy customer, page 2."""
    async with engine.connect() as conn:
        newest = (
            await conn.execute(
                text(
                    "SELECT occurred_at, id FROM history_events WHERE customer_id = 1 "
                    "ORDER BY occurred_at DESC, id DESC LIMIT 1 OFFSET 49"
                )
            )
        ).first()
        assert newest is not None
        at = newest[0] if isinstance(newest[0], datetime) else datetime.fromisoformat(newest[0])
        after = (at.replace(tzinfo=UTC), int(newest[1]))
        query = page_query([1], PAGE + 1, after)
        if name == "postgresql":  # the one statement the API runs there
            query = FAMILY_PAGE[True].params(
                customer_id=1, limit=PAGE + 1, at=after[0], last_id=after[1]
            )
        sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
        prefix = "EXPLAIN QUERY PLAN " if name == "sqlite" else "EXPLAIN (ANALYZE, COSTS OFF) "
        plan = (await conn.exec_driver_sql(prefix + sql)).all()
    print(f"{name} plan of the API's page query (customer 1, page 2 by keyset cursor):")
    for row in plan:
        print("    " + str(row[-1]))


async def measure(
    name: str,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    customers: int,
    queries: int,
) -> float:
    rng = random.Random(3)
    heavy_n = queries // 10
    # Ordinary customers are drawn without replacement: each is queried once by
    # each implementation, on disjoint sets, so both see it cold.
    ordinary = rng.sample(range(HEAVY + 1, customers + 1), 2 * (queries - heavy_n) + 400)
    warm = ordinary[-400:]

    def picks(pool: list[int]) -> list[tuple[str, int]]:
        out = [("cold", c) for c in pool] + [("hot", rng.randint(1, HEAVY)) for _ in range(heavy_n)]
        rng.shuffle(out)
        return out

    half = queries - heavy_n
    sets = {"api": picks(ordinary[:half]), "orm": picks(ordinary[half : 2 * half])}
    impls: dict[str, Callable[[int], Awaitable[tuple[list[Any], str | None]]]] = {
        "api": lambda cid: timeline(sessions, cid, limit=PAGE),
        "orm": lambda cid: timeline_orm(sessions, cid, limit=PAGE),
    }
    for cid in warm[:200]:  # warm-up: pool, statement cache, reader thread
        await impls["api"](cid)
    for cid in warm[200:]:
        await impls["orm"](cid)
    lat: dict[str, list[tuple[str, float]]] = {"api": [], "orm": []}
    sizes: list[int] = []
    step = -(-queries // ROUNDS)
    for r in range(ROUNDS):
        order = ("api", "orm") if r % 2 == 0 else ("orm", "api")
        for impl in order:
            for cls, cid in sets[impl][r * step : (r + 1) * step]:
                t0 = time.perf_counter()
                events, _ = await impls[impl](cid)
                lat[impl].append((cls, (time.perf_counter() - t0) * 1000))
                if impl == "api":
                    sizes.append(len(events))
    label = {"api": "timeline (API)     ", "orm": "ORM baseline (old) "}
    for impl in ("api", "orm"):
        every = [ms for _, ms in lat[impl]]
        print(line(f"{name:10s} {label[impl]} all ", every), flush=True)
        for cls in ("cold", "hot"):
            print(line(f"{name:10s} {label[impl]} {cls}", [ms for c, ms in lat[impl] if c == cls]))
    api_all = [ms for _, ms in lat["api"]]
    orm_all = [ms for _, ms in lat["orm"]]
    print(
        f"{name:10s} old/new ratio: p50 x{pct(orm_all, 50) / pct(api_all, 50):.1f}  "
        f"p99 x{pct(orm_all, 99) / pct(api_all, 99):.1f}  "
        f"(avg {sum(sizes) / len(sizes):.1f} events/page)"
    )

    # Baseline: a deep page of a heavy customer, OFFSET vs keyset cursor.
    cursors: dict[int, str] = {}
    for cid in range(1, 21):
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
    reader = sqlite_reader(engine)

    def offset_query(cid: int) -> Select[Any]:
        return (
            select(*page_query([cid], PAGE, None).selected_columns)
            .where(HistoryEvent.customer_id == cid)
            .order_by(HistoryEvent.occurred_at.desc(), HistoryEvent.id.desc())
            .offset(PAGE * (DEEP_PAGE - 1))
            .limit(PAGE)
        )

    async def offset() -> None:
        # Same columns, same row objects, same connection path as the API's
        # read (inline on SQLite): only the SQL differs.
        query = offset_query(next(hit_o))
        if reader is not None:
            with reader.engine.connect() as sync_conn:
                [StoredEvent(*r) for r in sync_conn.execute(query)]
            return
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            [StoredEvent(*r) for r in await conn.execute(query)]

    if cursors:
        k: list[float] = []
        o: list[float] = []
        for _ in range(20):  # interleaved, 10 pages at a time
            k += await timed(keyset, 10)
            o += await timed(offset, 10)
        print(line(f"{name:10s} page {DEEP_PAGE} keyset (API)   ", k))
        print(
            line(f"{name:10s} page {DEEP_PAGE} OFFSET baseline", o)
            + f"  ratio p50 x{pct(o, 50) / pct(k, 50):.1f}"
        )
    await explain(name, engine)
    return pct(api_all, 99)


async def run_sqlite(args: argparse.Namespace) -> float:
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
        p99 = await measure("sqlite", engine, sessionmaker(engine), args.customers, args.queries)
        await engine.dispose()
    return p99


async def run_postgresql(args: argparse.Namespace) -> float:
    with pg_cluster("shared_buffers=512MB", "max_wal_size=8GB") as url:
        engine = create_engine(url)
        await migrate(engine)
        took = await fill_pg(engine, args.rows, args.customers)
        print(f"postgresql: {args.rows:,} rows loaded and indexed in {took:.0f} s", flush=True)
        p99 = await measure(
            "postgresql", engine, sessionmaker(engine), args.customers, args.queries
        )
        await engine.dispose()
    return p99


async def pool_ping(rounds: int = 6, reads: int = 300) -> None:
    """--ping: timeline latency with a ping on every checkout (pool_pre_ping, the
    former cti.db) against cti.db's ping-when-idle, alternating rounds, 40k rows
    over 200 customers on a throwaway PostgreSQL."""
    from datetime import timedelta

    from sqlalchemy import insert
    from sqlalchemy.ext.asyncio import create_async_engine

    from bench.pg_cluster import pg_cluster
    from cti.db import create_engine, migrate, sessionmaker
    from cti.history import HistoryEntry, HistoryWriter, timeline
    from cti.models import Customer, utcnow

    with pg_cluster() as url:
        eng = create_engine(url)
        await migrate(eng)
        async with eng.begin() as conn:
            await conn.execute(
                insert(Customer), [{"id": i, "name": f"c{i}"} for i in range(1, 201)]
            )
        writer = HistoryWriter(eng, batch=2000)
        writer.start()
        t = utcnow() - timedelta(days=1)
        await writer.add_many(
            HistoryEntry(
                1 + i % 200,
                "note",
                "sms",
                {"text": "x" * 40, "wait": 3},
                occurred_at=t + timedelta(seconds=i),
            )
            for i in range(40_000)
        )
        await writer.flush()
        await writer.close()
        await eng.dispose()
        settings = {"server_settings": {"plan_cache_mode": "force_custom_plan"}}
        engines = {
            "ping every checkout (before)": create_async_engine(
                url, pool_size=10, max_overflow=10, pool_pre_ping=True, connect_args=settings
            ),
            "ping when idle (cti.db)": create_engine(url),
        }
        lat: dict[str, list[float]] = {k: [] for k in engines}
        rng = random.Random(1)
        for _ in range(rounds):
            for name, engine in engines.items():
                sessions = sessionmaker(engine)
                for _ in range(reads):
                    t0 = time.perf_counter()
                    page, _ = await timeline(sessions, rng.randint(1, 200), limit=50)
                    lat[name].append((time.perf_counter() - t0) * 1000)
                    assert len(page) == 50
        for name, xs in lat.items():
            xs.sort()
            print(
                f"{name}: p50 {xs[len(xs) // 2]:.2f} ms p99 {xs[int(len(xs) * 0.99)]:.2f} ms"
                f" max {xs[-1]:.2f} ms (n={len(xs)})"
            )
        for engine in engines.values():
            await engine.dispose()


async def main_async(args: argparse.Namespace) -> int:
    if args.ping:
        await pool_ping()
        return 0
    results = {}
    if args.only in (None, "sqlite"):
        results["sqlite"] = await run_sqlite(args)
    if args.only in (None, "postgresql"):
        results["postgresql"] = await run_postgresql(args)
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
    parser.add_argument("--only", choices=("sqlite", "postgresql"), default=None)
    parser.add_argument("--ping", action="store_true", help="only the pool ping comparison")
    raise SystemExit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
