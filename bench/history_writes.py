"""History write benchmark: the batching HistoryWriter against one ORM commit per event.

    .venv/bin/python -m bench.history_writes [--events N] [--baseline-events M]
                                              [--rounds R] [--batch B] [--core]
                                              [--base DIR] [--backlog-batch B]

For SQLite (WAL, synchronous=NORMAL as the server runs it, file in a temp dir)
and PostgreSQL 15 (a throwaway cluster from bench.pg_cluster, default
durability), in the same run:
  * batched: N events given to cti.history.HistoryWriter.add() as fast as the
    writer accepts them, then flush(); events/s from the first add to the end
    of the flush (every row committed);
  * baseline: M events, each in its own ORM session and transaction;
  * with --core, the writer's previous path (a Core insert executemany) too;
  * with --base DIR, the HistoryWriter of an older checkout (e.g.
    ``git archive <commit> | tar -x -C DIR``), loaded from DIR/cti/history.py
    into this process and run against the same database, alternating;
R rounds alternating the two (a loaded host is noisy): medians and the ratio
of the medians, CPU per event (all threads of this process) and how long
each batch held the write transaction (median / max).
Targets: >= 20,000/s SQLite, >= 10,000/s PostgreSQL.
The event mix is what the server writes: call events with a dedup key and a
small payload, SMS and chat messages with text; 1% of the call events arrive
twice (a PBX resync) and must be written once: the row count is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

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


def load_base(directory: str) -> type[HistoryWriter]:
    """The HistoryWriter of an older checkout, as a module of its own."""
    path = Path(directory) / "cti" / "history.py"
    spec = importlib.util.spec_from_file_location("base_history", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return cast(type[HistoryWriter], module.HistoryWriter)


class Timed:
    """Records how long each batch's _insert (its write transaction) took."""

    def __init__(self, writer_class: type[HistoryWriter]) -> None:
        self.holds: list[float] = []
        original = writer_class._insert
        holds = self.holds

        async def timed(writer: HistoryWriter, *args: Any) -> None:
            t0 = time.perf_counter()
            try:
                await original(writer, *args)
            finally:
                holds.append(time.perf_counter() - t0)

        writer_class._insert = timed  # type: ignore[method-assign,assignment]


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):10,.0f}"


async def bench_db(name: str, url: str, args: argparse.Namespace) -> tuple[float, float]:
    engine = create_engine(url)
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(
            insert(Customer), [{"id": i, "name": f"c{i}"} for i in range(1, CUSTOMERS + 1)]
        )
    sessions = sessionmaker(engine)
    # label -> (writer class, keyword arguments)
    setups: dict[str, tuple[type[HistoryWriter], dict[str, Any]]] = {
        "batched": (HistoryWriter, {"batch": args.batch, "backlog_batch": args.backlog_batch}),
    }
    if args.core:
        setups["core"] = (HistoryWriter, {"batch": args.batch, "raw": False})
    if args.base:
        setups["base"] = (load_base(args.base), {"batch": args.batch})
    timers = {cls: Timed(cls) for cls in {cls for cls, _ in setups.values()}}
    rates: dict[str, list[float]] = {label: [] for label in setups}
    cpu: dict[str, list[float]] = {label: [] for label in setups}
    holds: dict[str, list[float]] = {label: [] for label in setups}
    single: list[float] = []
    expected = 0
    batches = 0
    for r in range(args.rounds):
        # alternate the order round by round: the table grows as the run goes on
        order = list(setups) if r % 2 == 0 else list(reversed(setups))
        for label in order:
            writer_class, kwargs = setups[label]
            writer = writer_class(engine, **kwargs)
            writer.start()
            entries = make_entries(args.events, f"{label}{r}")
            timer = timers[writer_class]
            timer.holds.clear()
            c0 = time.process_time()
            t0 = time.perf_counter()
            for entry in entries:
                await writer.add(entry)
            await writer.flush()
            rates[label].append(len(entries) / (time.perf_counter() - t0))
            cpu[label].append((time.process_time() - c0) / len(entries) * 1e6)
            holds[label].extend(timer.holds)
            if label == "batched":
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
    b, s = statistics.median(rates["batched"]), statistics.median(single)
    print(
        f"{name:10s} one ORM commit per event median {s:8,.0f} events/s "
        f"(rounds {', '.join(f'{x:,.0f}' for x in single)}; {args.baseline_events} events each)",
        flush=True,
    )
    for label in setups:
        x = statistics.median(rates[label])
        hold = holds[label]
        print(
            f"{'':10s} {label:8s} median {_median(rates[label])} events/s "
            f"(rounds {', '.join(f'{v:,.0f}' for v in rates[label])}), "
            f"CPU {statistics.median(cpu[label]):.1f} us/event, "
            f"write transaction median {statistics.median(hold) * 1e3:.1f} ms "
            f"max {max(hold) * 1e3:.1f} ms ({len(hold)} batches); "
            f"x{x / s:.1f} vs one commit per event"
            + ("" if label == "batched" else f"; batched/{label} x{b / x:.2f}"),
            flush=True,
        )
    print(
        f"{'':10s} ({args.events} events + 1% duplicates per round, batch {args.batch}, "
        f"backlog batch {args.backlog_batch or 4 * args.batch}, {batches} batched batches)",
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
        "--backlog-batch",
        type=int,
        default=None,
        help="HistoryWriter(backlog_batch=...): rows per transaction when behind (4 x batch)",
    )
    parser.add_argument(
        "--base",
        metavar="DIR",
        help="also time the HistoryWriter of an older checkout in DIR, alternating",
    )
    parser.add_argument(
        "--core",
        action="store_true",
        help="also time the Core-insert writer (HistoryWriter(raw=False)), alternating",
    )
    raise SystemExit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
