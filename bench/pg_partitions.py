"""History partitioned by month vs one plain table, same data, same run (PostgreSQL 15).

    python -m bench.pg_partitions [--rows 20000000] [--months 24] [--customers 200000]
                                  [--samples 2000] [--repeat 3] [--write-events 50000]

One throwaway cluster (bench.pg_cluster, default durability), two databases
migrated to head: ``partitioned`` as the server runs it (migration 0010) and
``plain``, the same schema with 0010's downgrade applied (one table,
UNIQUE(dedup_key), every index identical). Then, in the same run:

  * writes: ``--write-events`` events of bench.history_writes' mix (call events
    carry a dedup key) through cti.history.HistoryWriter into each empty
    database, alternated ``--repeat`` times: events/s, median, and the cost of
    the partitioned table + history_dedup trigger against the plain table;
  * load: ``--rows`` history rows (calls of 6 events: started, queued, offered,
    answered, ended, closed, one conversation each) spread evenly over
    ``--months`` months up to now, generated in SQL (generate_series), indexes
    built after the load; the generated rows have no dedup key;
  * timeline: cti.history.timeline() (first page, 50 rows) for ``--samples``
    random customers, the same ones on both: p50 / p99;
  * reports over the last 30 days: cti.reports voice_report and a plain
    aggregate (count and average wait by kind), median of ``--repeat`` after a
    warm-up, and the EXPLAIN of the aggregate: which tables it reads (partition
    pruning).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.history_writes import make_entries
from bench.pg_cluster import pg_cluster
from cti.db import create_engine, migrate, sessionmaker
from cti.history import HistoryWriter, timeline
from cti.models import Customer
from cti.partitions import add_months, create_partition, month_start, unpartition_history
from cti.reports.columns import REPORT_COLUMNS
from cti.reports.metrics import ReportOptions, voice_report
from cti.reports.period import Period

LABELS = ("plain", "partitioned")
CHUNK = 250_000  # conversations per INSERT statement (1.5M rows)
# (step, kind, seconds after the call started); wait = 1 + g % 120, talk = 30 + (g * 13) % 570
CALL = (
    (1, "call_started", "0"),
    (2, "call_queued", "0"),
    (3, "call_offered", "w - 2"),
    (4, "call_answered", "w"),
    (5, "call_ended", "w + t"),
    (6, "closed", "w + t + 30"),
)
AGGREGATE = (
    "SELECT kind, count(*), avg(({wait})) FROM history_events "
    "WHERE occurred_at >= :start AND occurred_at < :end AND conversation_id IS NOT NULL "
    "GROUP BY kind"
)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def autocommit(engine: AsyncEngine, sql: str) -> None:
    async with engine.connect() as conn:
        await (await conn.execution_options(isolation_level="AUTOCOMMIT")).execute(text(sql))


async def write_rate(engine: AsyncEngine, events: int, tag: str) -> float:
    entries = make_entries(events, tag)
    writer = HistoryWriter(engine)
    writer.start()
    began = time.perf_counter()
    try:
        for entry in entries:
            await writer.add(entry)
        await writer.flush()
    finally:
        await writer.close()
    return events / (time.perf_counter() - began)


async def seed_customers(engine: AsyncEngine, count: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO customers (name, tags, notes, custom, provisional, created_at, "
                "updated_at) SELECT 'Customer ' || g, '[]', '', '{}', false, now(), now() "
                "FROM generate_series(1, :n) g"
            ),
            {"n": count},
        )


async def history_columns(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.scalars(
            text(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'history_events'"
            )
        )
        return list(rows)


async def load(
    engine: AsyncEngine, label: str, rows: int, start: datetime, end: datetime, customers: int
) -> float:
    """Generate the history in SQL; returns the seconds the load and index build took."""
    began = time.perf_counter()
    calls = rows // len(CALL)
    span = (end - start).total_seconds()
    params = {"start": start, "step": span / calls, "customers": customers}
    report_cols = [c for c in REPORT_COLUMNS if c in await history_columns(engine)]
    async with engine.connect() as conn:
        indexes = list(
            await conn.scalars(
                text(
                    "SELECT pg_get_indexdef(x.indexrelid) FROM pg_index x "
                    "WHERE x.indrelid = 'history_events'::regclass AND NOT EXISTS "
                    "(SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"
                )
            )
        )
    async with engine.begin() as conn:
        for definition in indexes:
            name = definition.split(" INDEX ", 1)[1].split(" ON ", 1)[0]
            await conn.execute(text(f"DROP INDEX {name}"))
    for lo in range(1, calls + 1, CHUNK):
        hi = min(calls, lo + CHUNK - 1)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO conversations (id, channel, status, queue, customer_id, "
                    "contact, tags, queued_at, created_at, closed_at) "
                    "SELECT g, 'voice', 'closed', 'support', "
                    "1 + (g * 7919) % CAST(:customers AS bigint), "
                    "'+7900' || g, '[]', at, at, at "
                    "FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) g, "
                    "LATERAL (SELECT CAST(:start AS timestamptz) "
                    "+ make_interval(secs => g * CAST(:step AS float8))) t(at)"
                ),
                {**params, "lo": lo, "hi": hi},
            )
            extra = "".join(f", {c}" for c in report_cols)
            values = "".join(
                f", CASE WHEN jsonb_typeof(p -> '{REPORT_COLUMNS[c]}') = 'number' "
                f"THEN (p ->> '{REPORT_COLUMNS[c]}')::float8 END"
                for c in report_cols
            )
            steps = ", ".join(f"({n}, '{kind}', {offset})" for n, kind, offset in CALL)
            await conn.execute(
                text(
                    "INSERT INTO history_events (customer_id, conversation_id, kind, channel, "
                    f"occurred_at, payload, dedup_key{extra}) "
                    f"SELECT cust, g, kind, 'voice', at, p::json, NULL{values} FROM ("
                    "SELECT g, 1 + (g * 7919) % CAST(:customers AS bigint) AS cust, e.kind, "
                    "CAST(:start AS timestamptz) "
                    "+ make_interval(secs => g * CAST(:step AS float8) + e.off) AS at, "
                    "CASE e.kind WHEN 'call_answered' THEN jsonb_build_object("
                    "'queue', 'support', 'wait', w, 'ring', 2) "
                    "WHEN 'call_ended' THEN jsonb_build_object('wait', w, 'talk', t, 'hold', 0) "
                    "ELSE jsonb_build_object('queue', 'support') END AS p "
                    "FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) g, "
                    "LATERAL (SELECT 1 + g % 120 AS w, 30 + (g * 13) % 570 AS t) d, "
                    f"LATERAL (VALUES {steps}) e(n, kind, off) ORDER BY g, e.n) s"
                ),
                {**params, "lo": lo, "hi": hi},
            )
        print(f"  {label}: {min(hi * len(CALL), rows):,} rows", flush=True)
    async with engine.begin() as conn:
        await conn.execute(
            text("SELECT setval('conversations_id_seq', (SELECT max(id) FROM conversations))")
        )
    for definition in indexes:
        await autocommit(engine, definition.replace(" ON ONLY ", " ON ", 1))
    await autocommit(engine, "VACUUM ANALYZE history_events")
    await autocommit(engine, "VACUUM ANALYZE conversations")
    return time.perf_counter() - began


async def time_timeline(engine: AsyncEngine, customers: list[int]) -> list[float]:
    sessions = sessionmaker(engine)
    for customer in customers[:50]:  # warm-up
        await timeline(sessions, customer)
    took = []
    for customer in customers:
        began = time.perf_counter()
        page, _ = await timeline(sessions, customer)
        took.append((time.perf_counter() - began) * 1000)
        assert page, f"customer {customer} has no history"
    return took


async def time_reports(
    engine: AsyncEngine, period: Period, repeat: int
) -> tuple[float, float, int, list[str]]:
    wait = "wait_s" if "wait_s" in await history_columns(engine) else "(payload->>'wait')::float8"
    sql = text(AGGREGATE.format(wait=wait))
    params = {"start": period.start, "end": period.end}
    options = ReportOptions()
    await voice_report(engine, period, options)
    voice = []
    for _ in range(repeat):
        began = time.perf_counter()
        await voice_report(engine, period, options)
        voice.append(time.perf_counter() - began)
    aggregate = []
    async with engine.connect() as conn:
        await conn.execute(sql, params)
        for _ in range(repeat):
            began = time.perf_counter()
            rows = (await conn.execute(sql, params)).all()
            aggregate.append(time.perf_counter() - began)
        plan = [
            r[0] for r in await conn.execute(text("EXPLAIN " + str(sql)), params) if " on " in r[0]
        ]
    counted = sum(int(r[1]) for r in rows)
    return statistics.median(voice), statistics.median(aggregate), counted, plan


async def main_async(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    start = add_months(month_start(now), -args.months + 1)
    with pg_cluster("shared_buffers=512MB", "max_wal_size=8GB", "work_mem=64MB") as base_url:
        admin = create_engine(base_url)
        for label in LABELS:
            await autocommit(admin, f"CREATE DATABASE {label}")
        await admin.dispose()
        engines = {
            label: create_engine(base_url.rsplit("/", 1)[0] + "/" + label) for label in LABELS
        }
        try:
            for label, engine in engines.items():
                await migrate(engine)
                async with engine.begin() as conn:
                    if label == "plain":
                        await conn.run_sync(unpartition_history)
                    else:

                        def months(c: Connection) -> None:
                            m = start
                            while m <= month_start(now):
                                create_partition(c, m)
                                m = add_months(m, 1)

                        await conn.run_sync(months)
                async with sessionmaker(engine)() as session, session.begin():
                    session.add_all(Customer(name=f"writer {i}") for i in range(1000))

            if args.write_events > 0:
                print(f"writes: {args.write_events:,} events through HistoryWriter, x{args.repeat}")
                rates: dict[str, list[float]] = {label: [] for label in LABELS}
                for run in range(args.repeat):
                    for label, engine in engines.items():
                        rates[label].append(await write_rate(engine, args.write_events, f"r{run}"))
                for label in LABELS:
                    spread = " ".join(f"{r:,.0f}" for r in rates[label])
                    print(
                        f"  {label:12} {statistics.median(rates[label]):9,.0f} events/s  [{spread}]"
                    )
                w_plain = statistics.median(rates["plain"])
                w_part = statistics.median(rates["partitioned"])
                print(f"  partitioned/plain = {w_part / w_plain:.2f}")
            for label, engine in engines.items():
                dedup = ", history_dedup" if label == "partitioned" else ""
                async with engine.begin() as conn:
                    await conn.execute(
                        text(f"TRUNCATE history_events, customers{dedup} RESTART IDENTITY CASCADE")
                    )

            print(
                f"load: {args.rows:,} rows over {args.months} months, {args.customers:,} customers"
            )
            for label, engine in engines.items():
                await seed_customers(engine, args.customers)
                took = await load(engine, label, args.rows, start, now, args.customers)
                print(f"  {label:12} loaded and indexed in {took:,.0f} s", flush=True)
            rnd = random.Random(11)
            sample = [rnd.randrange(1, args.customers + 1) for _ in range(args.samples)]
            end = now.replace(minute=0, second=0, microsecond=0)
            period = Period(end - timedelta(days=30), end, ZoneInfo("UTC"), "day")
            results: dict[str, dict[str, Any]] = {}
            for label, engine in engines.items():
                ms = await time_timeline(engine, sample)
                voice, aggregate, counted, plan = await time_reports(engine, period, args.repeat)
                results[label] = {
                    "p50": pct(ms, 50),
                    "p99": pct(ms, 99),
                    "voice": voice,
                    "aggregate": aggregate,
                    "counted": counted,
                    "plan": plan,
                }
            print(f"timeline (first page, {args.samples} customers) and 30-day reports:")
            for label, r in results.items():
                print(
                    f"  {label:12} timeline p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  "
                    f"voice report {r['voice']:6.2f} s  aggregate {r['aggregate']:6.2f} s "
                    f"({r['counted']:,} rows)"
                )
            p, q = results["partitioned"], results["plain"]
            print(
                f"  partitioned/plain: timeline p99 {p['p99'] / q['p99']:.2f}  "
                f"voice report {p['voice'] / q['voice']:.2f}  "
                f"aggregate {p['aggregate'] / q['aggregate']:.2f}"
            )
            for label, r in results.items():
                print(f"EXPLAIN of the 30-day aggregate ({label}):")
                for line in r["plan"]:
                    print("   ", line.strip())
        finally:
            for engine in engines.values():
                await engine.dispose()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write-events", type=int, default=50_000)
    raise SystemExit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
