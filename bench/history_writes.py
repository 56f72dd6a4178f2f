"""History write benchmark: the batching HistoryWriter against one ORM commit per event.

    .venv/bin/python -m bench.history_writes [--events N] [--baseline-events M]
                                              [--rounds R] [--batch B] [--core]

For SQLite (WAL, synchronous=NORMAL as the server runs it, file in a temp dir)
and PostgreSQL 15 (a throwaway cluster from bench.pg_cluster, default
durability), in the same run:
  * batched: N events given to cti.history.HistoryWriter.add() as fast as the
    writer accepts them, then flush(); events/s from the first add to the end
    of the flush (every row committed);
  * baseline: M events, each in its own ORM session and transaction;
  * with --core, the writer's previous path (a Core insert executemany) too;
R rounds alternating the two (a loaded host is noisy): medians and the ratio
of the medians. Targets: >= 20,000/s SQLite, >= 10,000/s PostgreSQL.
The event mix is what the server writes: call events with a dedup key and a
small payload, SMS and chat messages with text; 1% of the call events arrive
twice (a PBX resync) and must be written once: the row count is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
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
HISTORY_BATCH = 500  # cti.config.Settings.history_batch, what the server runs
KINDS = (
    ("call_offered", "voice"),
    ("call_answered", "voice"),
    ("call_ended", "voice"),
    ("message_in", "sms"),
    ("message_out", "chat"),
)


def make_entries(n: int, tag: str) -> list[HistoryEntry]:
    """n distinct events, then 1% of the call events again (same dedup key)."""
    entries = distinct_entries(n, tag)
    voice = [e for e in entries if e.dedup_key is not None]
    return entries + voice[:: max(1, len(voice) * 100 // max(1, n))][: n // 100]


def distinct_entries(n: int, tag: str) -> list[HistoryEntry]:
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


async def bench_db(name: str, url: str, args: argparse.Namespace) -> tuple[float, float]:
    engine = create_engine(url)
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(
            insert(Customer), [{"id": i, "name": f"c{i}"} for i in range(1, CUSTOMERS + 1)]
        )
    sessions = sessionmaker(engine)
    batched: list[float] = []
    core: list[float] = []
    single: list[float] = []
    expected = 0
    batches = 0
    for r in range(args.rounds):
        for raw, rates in ((True, batched), (False, core)):
            if not raw and not args.core:
                continue
            writer = HistoryWriter(engine, batch=args.batch, raw=raw)
            writer.start()
            entries = make_entries(args.events, f"batched{r}{raw}")
            t0 = time.perf_counter()
            for entry in entries:
                await writer.add(entry)
            await writer.flush()
            rates.append(len(entries) / (time.perf_counter() - t0))
            batches += writer.batches
            await writer.close()
            expected += args.events

        base_entries = distinct_entries(args.baseline_events, f"single{r}")
        t0 = time.perf_counter()
        for entry in base_entries:
            async with sessions() as session, session.begin():
                session.add(HistoryEvent(**entry.row()))
        single.append(len(base_entries) / (time.perf_counter() - t0))
        expected += args.baseline_events

    async with sessions() as session:
        total = await session.scalar(select(func.count()).select_from(HistoryEvent))
    await engine.dispose()
    if total != expected:
        raise SystemExit(f"{name}: {total} rows, expected {expected} (duplicates written?)")
    b, s = statistics.median(batched), statistics.median(single)
    rounds_b = ", ".join(f"{x:,.0f}" for x in batched)
    print(
        f"{name:10s} batched median {b:10,.0f} events/s (rounds {rounds_b};"
        f" {args.events} events + 1% duplicates each, batch {args.batch}, {batches} batches)\n"
        f"{'':10s} one ORM commit per event median {s:8,.0f} events/s "
        f"(rounds {', '.join(f'{x:,.0f}' for x in single)}; {args.baseline_events} events each)"
        f"\n{'':10s} ratio x{b / s:.1f}",
        flush=True,
    )
    if core:
        c = statistics.median(core)
        print(
            f"{'':10s} Core-insert writer (the previous path) median {c:10,.0f} events/s "
            f"(rounds {', '.join(f'{x:,.0f}' for x in core)}); raw/Core x{b / c:.2f}",
            flush=True,
        )
    return b, s


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cti-bench-history-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'history.sqlite3'}"
        sqlite_rate, _ = await bench_db("sqlite", url, args)
    with pg_cluster() as pg_url:
        pg_rate, _ = await bench_db("postgresql", pg_url, args)
    print(
        f"targets: sqlite >= 20,000/s {'OK' if sqlite_rate >= 20_000 else 'MISSED'}; "
        f"postgresql >= 10,000/s {'OK' if pg_rate >= 10_000 else 'MISSED'}"
    )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--baseline-events", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=HISTORY_BATCH)
    parser.add_argument(
        "--core",
        action="store_true",
        help="also time the Core-insert writer (HistoryWriter(raw=False)), alternating",
    )
    raise SystemExit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
