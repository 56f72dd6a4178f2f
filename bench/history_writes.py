"""History write benchmark: the batching HistoryWriter against one ORM commit per event.

    .venv/bin/python -m bench.history_writes [--events N] [--baseline-events M]

For SQLite (WAL, synchronous=NORMAL as the server runs it, file in a temp dir)
and PostgreSQL 15 (a throwaway cluster from bench.pg_cluster, default
durability), in the same run:
  * batched: N events given to cti.history.HistoryWriter.add() as fast as the
    writer accepts them, then flush(); events/s from the first add to the end
    of the flush (every row committed);
  * baseline: M events, each in its own ORM session and transaction;
and the ratio. Targets: >= 20,000/s SQLite, >= 10,000/s PostgreSQL.
The event mix is what the server writes: call events with a dedup key and a
small payload, SMS and chat messages with text.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

from bench.pg_cluster import pg_cluster
from cti.db import create_engine, migrate, sessionmaker
from cti.history import HistoryEntry, HistoryWriter
from cti.models import Customer, HistoryEvent, utcnow

CUSTOMERS = 1000
KINDS = (
    ("call_offered", "voice"),
    ("call_answered", "voice"),
    ("call_ended", "voice"),
    ("message_in", "sms"),
    ("message_out", "chat"),
)


def make_entries(n: int, tag: str) -> list[HistoryEntry]:
    rng = random.Random(7)
    start = utcnow() - timedelta(days=1)
    entries = []
    for i in range(n):
        kind, channel = KINDS[i % len(KINDS)]
        if channel == "voice":
            payload: dict[str, object] = {
                "queue": "support",
                "agent": f"agent{rng.randint(1, 500)}",
                "wait": round(rng.uniform(0, 60), 1),
                "call_id": f"pbx1:1700000000.{i}",
            }
            dedup: str | None = f"{tag}:pbx1:1700000000.{i}:{kind}"
        else:
            payload = {"text": "Здравствуйте, где мой заказ №" + str(i), "parts": 1}
            dedup = None
        entries.append(
            HistoryEntry(
                customer_id=rng.randint(1, CUSTOMERS),
                kind=kind,
                channel=channel,
                payload=payload,
                occurred_at=start + timedelta(milliseconds=i),
                dedup_key=dedup,
            )
        )
    return entries


async def bench_db(name: str, url: str, events: int, baseline_events: int) -> tuple[float, float]:
    engine = create_engine(url)
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(
            insert(Customer), [{"id": i, "name": f"c{i}"} for i in range(1, CUSTOMERS + 1)]
        )
    sessions = sessionmaker(engine)

    writer = HistoryWriter(engine)
    writer.start()
    entries = make_entries(events, "batched")
    t0 = time.perf_counter()
    for entry in entries:
        await writer.add(entry)
    await writer.flush()
    batched_s = time.perf_counter() - t0
    batches = writer.batches
    await writer.close()

    base_entries = make_entries(baseline_events, "single")
    t0 = time.perf_counter()
    for entry in base_entries:
        async with sessions() as session, session.begin():
            session.add(HistoryEvent(**entry.row()))
    single_s = time.perf_counter() - t0

    async with sessions() as session:
        total = await session.scalar(select(func.count()).select_from(HistoryEvent))
    await engine.dispose()
    if total != events + baseline_events:
        raise SystemExit(f"{name}: {total} rows, expected {events + baseline_events}")
    batched = events / batched_s
    single = baseline_events / single_s
    print(
        f"{name:10s} batched {batched:10,.0f} events/s ({events} events, {batches} batches, "
        f"{batched_s:.2f} s) | one ORM commit per event {single:8,.0f} events/s "
        f"({baseline_events} events) | ratio x{batched / single:.1f}"
    )
    return batched, single


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cti-bench-history-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'history.sqlite3'}"
        sqlite_rate, _ = await bench_db("sqlite", url, args.events, args.baseline_events)
    with pg_cluster() as pg_url:
        pg_rate, _ = await bench_db("postgresql", pg_url, args.events, args.baseline_events)
    print(
        f"targets: sqlite >= 20,000/s {'OK' if sqlite_rate >= 20_000 else 'MISSED'}; "
        f"postgresql >= 10,000/s {'OK' if pg_rate >= 10_000 else 'MISSED'}"
    )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--baseline-events", type=int, default=2_000)
    raise SystemExit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
