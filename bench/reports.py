"""Reports over 30 days of a 10M-row history, on SQLite and PostgreSQL, beside a naive baseline.

    python -m bench.reports [--rows 10000000] [--days 365] [--db sqlite,postgresql] [--repeat 3]

Generates a contact center's history (voice calls: started, queued, offered,
answered or abandoned or deflected, ended, closed; SMS/chat conversations:
messages both ways, assignment, closing; tag markings) spread evenly over
``--days`` days, loads it fast (sqlite3 executemany with the history indexes
built after the load; asyncpg COPY for PostgreSQL), then times every report
(voice, text, fcr, tags, agents) over the last 30 days, grouped by day (the
median of ``--repeat`` runs after a warm-up run), and the naive baseline in
the same run: the 30 days' voice events loaded into
Python and folded there (what a report without SQL aggregation would do).
Target: every report <= 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from bench.pg_cluster import pg_cluster
from cti.db import create_engine, migrate
from cti.models import HistoryEvent
from cti.partitions import add_months, create_partition, month_start
from cti.reports.columns import REPORT_COLUMNS, report_values
from cti.reports.metrics import (
    ReportOptions,
    agents_report,
    fcr_report,
    text_report,
    voice_report,
)
from cti.reports.period import Period, parse_tz
from cti.reports.tags import tags_report

END = datetime(2026, 11, 1, tzinfo=UTC)
CUSTOMERS = 200_000
AGENTS = 50
QUEUES = ("sales", "support", "billing", "vip")
HISTORY_INDEXES = (
    ("ix_history_timeline", "customer_id, occurred_at, id"),
    ("ix_history_conversation", "conversation_id"),
    ("ix_history_report", "channel, occurred_at, kind, conversation_id, wait_s, talk_s, hold_s"),
    ("ix_history_kind_conversation", "kind, conversation_id"),
)
REPORTS = {
    "voice": voice_report,
    "text": text_report,
    "fcr": fcr_report,
    "tags": tags_report,
    "agents": agents_report,
}


def generate(rows: int, days: int, seed: int = 7) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """("conv", row) and ("event", row) tuples, in time order, until ``rows`` events."""
    rnd = random.Random(seed)
    start = END - timedelta(days=days)
    # about 6.75 events per conversation: pace the contacts so that the rows reach
    # END (the last rows fall just after it) and the 30 days before END are full.
    step = days * 86400 / (rows / 7.0)
    t = 0.0
    conv_id = 0
    event_id = 0
    while event_id < rows:
        conv_id += 1
        t += rnd.expovariate(1 / step)
        at = start + timedelta(seconds=t)
        customer = rnd.randrange(1, CUSTOMERS + 1)
        agent = rnd.randrange(1, AGENTS + 1)
        queue = rnd.choice(QUEUES)
        voice = rnd.random() < 0.7
        channel = "voice" if voice else rnd.choice(("sms", "chat"))
        tags = '["promo"]' if rnd.random() < 0.05 else "[]"
        events: list[tuple[str, float, dict[str, Any]]] = []
        if voice:
            wait = rnd.uniform(1, 120)
            events.append(("call_started", 0, {"caller": "+7900"}))
            events.append(("call_queued", 0, {"queue": queue, "position": 1}))
            fate = rnd.random()
            if fate < 0.8:
                talk, hold = rnd.uniform(30, 600), rnd.uniform(0, 60)
                events.append(("call_offered", wait - 2, {"queue": queue, "wait": wait - 2}))
                events.append(("call_answered", wait, {"queue": queue, "wait": wait, "ring": 2}))
                end = wait + talk + hold
                events.append(("call_ended", end, {"wait": wait, "talk": talk, "hold": hold}))
                events.append(("closed", end + rnd.uniform(0, 60), {}))
            elif fate < 0.95:
                events.append(("call_abandoned", wait, {"queue": queue, "wait": wait}))
                events.append(("call_ended", wait, {"wait": wait, "talk": 0, "hold": 0}))
            else:
                events.append(("call_deflected", wait, {"queue": queue}))
                events.append(("call_ended", wait, {"wait": wait, "talk": 0, "hold": 0}))
        else:
            events.append(("message_in", 0, {"text": "Когда заканчивается акция?"}))
            events.append(("assigned", 5, {"agent_id": agent}))
            offset = rnd.uniform(10, 900)
            for i in range(3):
                events.append(("message_out", offset + i * 60, {"text": "ok"}))
                events.append(("message_in", offset + i * 60 + 30, {"text": "Спасибо, отлично"}))
            events.append(("closed", offset + 400, {}))
        if tags != "[]":
            events.append(("marked", 1, {"tag": "promo", "sentiment": "positive"}))
        yield "conv", (conv_id, channel, "closed", queue, customer, agent, tags, at, at, None)
        for kind, offset, payload in events:
            event_id += 1
            occurred = at + timedelta(seconds=offset)
            yield "event", (event_id, customer, conv_id, kind, channel, occurred, payload)
            if event_id >= rows:
                break


def _sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


async def load_sqlite(path: Path, rows: int, days: int) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await migrate(engine)
    await engine.dispose()
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA foreign_keys=OFF")
    for name, _ in HISTORY_INDEXES:
        db.execute(f"DROP INDEX IF EXISTS {name}")
    now = _sqlite_time(END)
    db.executemany(
        "INSERT INTO customers (id, name, tags, notes, custom, provisional, created_at, "
        "updated_at) VALUES (?, '', '[]', '', '{}', 0, ?, ?)",
        ((i, now, now) for i in range(1, CUSTOMERS + 1)),
    )
    db.executemany(
        "INSERT INTO agents (id, login, name, password_hash, role, queues, skills, max_text, "
        "available, created_at) VALUES (?, ?, '', 'x', 'agent', '[]', '[]', 3, 1, ?)",
        ((i, f"agent{i}", now) for i in range(1, AGENTS + 1)),
    )
    convs: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []

    def flush() -> None:
        db.executemany(
            "INSERT INTO conversations (id, channel, status, queue, customer_id, contact, "
            "owner_id, tags, queued_at, created_at, closed_at) "
            "VALUES (?, ?, ?, ?, ?, '', ?, ?, ?, ?, ?)",
            convs,
        )
        db.executemany(
            "INSERT INTO history_events (id, customer_id, conversation_id, kind, channel, "
            f"occurred_at, payload, {', '.join(REPORT_COLUMNS)}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            events,
        )
        convs.clear()
        events.clear()

    for what, row in generate(rows, days):
        if what == "conv":
            convs.append((*row[:7], _sqlite_time(row[7]), _sqlite_time(row[8]), None))
        else:
            events.append(
                (
                    *row[:5],
                    _sqlite_time(row[5]),
                    json.dumps(row[6]),
                    *report_values(row[6]).values(),
                )
            )
            if len(events) >= 100_000:
                flush()
    flush()
    db.commit()
    for name, columns in HISTORY_INDEXES:
        db.execute(f"CREATE INDEX {name} ON history_events ({columns})")
    db.execute("ANALYZE")
    db.commit()
    db.close()


async def load_postgres(url: str, rows: int, days: int) -> None:
    import asyncpg  # type: ignore[import-untyped]

    engine = create_engine(url)
    await migrate(engine)
    # The server creates each month's partition ahead of time (cti.partitions); a
    # history that spans ``days`` has had one per month, so give the old months theirs.
    async with engine.begin() as db:

        def months(c: Any) -> None:
            m = month_start(END - timedelta(days=days))
            while m <= month_start(END + timedelta(days=31)):
                create_partition(c, m)
                m = add_months(m, 1)

        await db.run_sync(months)
    await engine.dispose()
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        for name, _ in HISTORY_INDEXES:
            await conn.execute(f"DROP INDEX IF EXISTS {name}")
        await conn.execute(
            "ALTER TABLE history_events DROP CONSTRAINT IF EXISTS history_events_customer_id_fkey"
        )
        await conn.execute(
            "ALTER TABLE history_events DROP CONSTRAINT IF EXISTS "
            "history_events_conversation_id_fkey"
        )
        await conn.copy_records_to_table(
            "customers",
            records=[(i, "", "[]", "", "{}", False, END, END) for i in range(1, CUSTOMERS + 1)],
            columns=[
                "id",
                "name",
                "tags",
                "notes",
                "custom",
                "provisional",
                "created_at",
                "updated_at",
            ],
        )
        await conn.copy_records_to_table(
            "agents",
            records=[
                (i, f"agent{i}", "", "x", "agent", "[]", "[]", 3, True, END)
                for i in range(1, AGENTS + 1)
            ],
            columns=[
                "id",
                "login",
                "name",
                "password_hash",
                "role",
                "queues",
                "skills",
                "max_text",
                "available",
                "created_at",
            ],
        )
        convs: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []

        async def flush() -> None:
            await conn.copy_records_to_table(
                "conversations",
                records=convs,
                columns=[
                    "id",
                    "channel",
                    "status",
                    "queue",
                    "customer_id",
                    "owner_id",
                    "tags",
                    "queued_at",
                    "created_at",
                    "closed_at",
                    "contact",
                ],
            )
            await conn.copy_records_to_table(
                "history_events",
                records=events,
                columns=[
                    "id",
                    "customer_id",
                    "conversation_id",
                    "kind",
                    "channel",
                    "occurred_at",
                    "payload",
                    *REPORT_COLUMNS,
                ],
            )
            convs.clear()
            events.clear()

        for what, row in generate(rows, days):
            if what == "conv":
                convs.append((*row, ""))
            else:
                events.append((*row[:6], json.dumps(row[6]), *report_values(row[6]).values()))
                if len(events) >= 200_000:
                    await flush()
        await flush()
        for name, columns in HISTORY_INDEXES:
            await conn.execute(f"CREATE INDEX {name} ON history_events ({columns})")
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('history_events', 'id'), "
            "(SELECT max(id) FROM history_events))"
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def naive_voice(engine: Any, period: Period) -> dict[str, float]:
    """The baseline: load the period's voice events and fold them in Python."""
    h = HistoryEvent.__table__
    calls: dict[int, dict[str, Any]] = {}
    async with engine.connect() as db:
        result = await db.stream(
            select(h.c.conversation_id, h.c.kind, h.c.payload).where(
                h.c.channel == "voice",
                h.c.occurred_at >= period.start,
                h.c.occurred_at < period.end,
            )
        )
        async for cid, kind, payload in result:
            call = calls.setdefault(cid, {})
            if kind == "call_answered":
                call["answered"] = payload.get("wait") or 0.0
            elif kind == "call_abandoned":
                call["abandoned"] = True
            elif kind == "call_ended":
                call["talk"] = payload.get("talk") or 0.0
    answered = [c for c in calls.values() if "answered" in c]
    return {
        "calls": len(calls),
        "answered": len(answered),
        "asa": sum(c["answered"] for c in answered) / max(1, len(answered)),
    }


async def time_reports(url: str, label: str, repeat: int) -> list[tuple[str, float, str]]:
    """Each report's median of ``repeat`` runs after one warm-up run (warm cache)."""
    engine = create_engine(url)
    period = Period(END - timedelta(days=30), END, parse_tz("Europe/Moscow"), "day")
    options = ReportOptions()
    out: list[tuple[str, float, str]] = []
    try:
        async with engine.connect() as db:
            total = (await db.execute(text("SELECT count(*) FROM history_events"))).scalar_one()
        print(f"{label}: {total:,} history rows", flush=True)
        for name, build in REPORTS.items():
            await build(engine, period, options)
            runs = []
            for _ in range(repeat):
                began = time.perf_counter()
                report = await build(engine, period, options)
                runs.append(time.perf_counter() - began)
            took = statistics.median(runs)
            first = next(iter(report.totals.items()), ("", ""))
            out.append((name, took, f"{len(report.rows)} rows, {first[0]}={first[1]}"))
            spread = " ".join(f"{r:.2f}" for r in runs)
            print(f"  {label:10} {name:7} {took:6.2f} s  [{spread}]  ({out[-1][2]})", flush=True)
        runs = []
        for _ in range(repeat):
            began = time.perf_counter()
            naive = await naive_voice(engine, period)
            runs.append(time.perf_counter() - began)
        took = statistics.median(runs)
        out.append(("naive voice (rows to Python)", took, f"{naive['calls']} calls"))
        spread = " ".join(f"{r:.2f}" for r in runs)
        print(
            f"  {label:10} naive   {took:6.2f} s  [{spread}]  "
            f"({naive['calls']:,} calls folded in Python)",
            flush=True,
        )
        for name, t, _ in out[:-1]:
            print(f"  {label:10} {name:7} {took / t:5.1f}x faster than the naive baseline")
    finally:
        await engine.dispose()
    return out


async def main_async(args: argparse.Namespace) -> int:
    backends = args.db.split(",")
    worst = 0.0
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory(prefix="cti-bench-reports-") as tmp:
            path = Path(args.sqlite_path or Path(tmp) / "reports.sqlite3")
            if not args.sqlite_exists:
                began = time.perf_counter()
                await load_sqlite(path, args.rows, args.days)
                print(
                    f"sqlite: loaded {args.rows:,} rows in {time.perf_counter() - began:.0f} s",
                    flush=True,
                )
            results = await time_reports(f"sqlite+aiosqlite:///{path}", "sqlite", args.repeat)
            worst = max(worst, *(t for n, t, _ in results if not n.startswith("naive")))
    if "postgresql" in backends:
        with pg_cluster(
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "maintenance_work_mem=512MB",
        ) as url:
            began = time.perf_counter()
            await load_postgres(url, args.rows, args.days)
            print(
                f"postgresql: loaded {args.rows:,} rows in {time.perf_counter() - began:.0f} s",
                flush=True,
            )
            results = await time_reports(url, "postgresql", args.repeat)
            worst = max(worst, *(t for n, t, _ in results if not n.startswith("naive")))
            if args.hold:
                print(f"postgresql: holding {url} for {args.hold:.0f} s", flush=True)
                await asyncio.sleep(args.hold)
    print(f"slowest report: {worst:.2f} s (target <= 2 s)")
    return 0 if worst <= 2.0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per report (median)")
    parser.add_argument(
        "--sqlite-path", help="SQLite file to load into and keep (reused as is when it exists)"
    )
    parser.add_argument(
        "--hold", type=float, default=0.0, help="keep the PostgreSQL cluster up N s afterwards"
    )
    args = parser.parse_args()
    args.sqlite_exists = bool(args.sqlite_path) and Path(args.sqlite_path).exists()
    raise SystemExit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
