"""History partitions on PostgreSQL: one partition per month, kept ahead, dropped by retention.

Theory of operation: on PostgreSQL ``history_events`` is PARTITIONED BY RANGE
(occurred_at), one partition per calendar month in UTC
(``history_events_pYYYYMM``) plus a DEFAULT partition that catches anything
no month partition covers. Migration 0010 converts the table
(``convert_history``); ``ensure_partitions`` keeps the current month and the
next ``MONTHS_AHEAD`` months created. It runs at ``cti serve`` start and once a
day on every node: it takes a transaction-scoped advisory lock, so several
nodes may run it at once, and ``CREATE TABLE IF NOT EXISTS`` makes it
idempotent. A month whose rows already sit in the DEFAULT partition (events
imported from the past, a server stopped for months) gets its partition too:
the rows are moved out of DEFAULT first, since PostgreSQL refuses a new
partition whose range the DEFAULT partition already holds.

A unique index on a partitioned table must contain the partition key, so
``UNIQUE(dedup_key)`` cannot stay. Dedup stays exact (one row per key, whatever
its occurred_at) through ``history_dedup(dedup_key PRIMARY KEY)``: a BEFORE
INSERT row trigger claims the key there with ON CONFLICT DO NOTHING and skips
the row (returns NULL) when the key was already claimed. Two concurrent
inserts of one key serialize on that primary key; a rolled back claim frees
the key. Deleting a row releases its key (so the Idempotency-Key claim of a
failed reply can be retried); changing a row's key to a taken one fails with a
unique violation, as before. The batch writer (cti.history) claims a batch's
keys itself in ONE statement and sets ``cti.dedup_claimed`` for its
transaction, which the trigger's WHEN clause reads to skip the per-row claim;
every other inserter keeps the trigger path. Retention releases the keys of the partitions it
drops.

Retention (``cti db retention --keep-months N``): on PostgreSQL whole month
partitions older than N months are detached and dropped (no row-by-row
delete, no table bloat); rows that old in the DEFAULT partition are deleted.
On SQLite the rows are deleted in batches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from sqlalchemy import Connection, delete, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from cti.models import HistoryEvent

log = logging.getLogger(__name__)

TABLE = "history_events"
OLD_TABLE = "history_events_unpartitioned"
DEDUP_TABLE = "history_dedup"
DEFAULT_PARTITION = f"{TABLE}_default"
MONTHS_AHEAD = 3
MAINTENANCE_EVERY = 24 * 3600.0
RETRY_AFTER = 300.0
SQLITE_BATCH = 5000
# pg_advisory_xact_lock key of partition maintenance and retention ("ctiparts").
LOCK_KEY = 0x6374697061727473
_NAME = re.compile(rf"^{TABLE}_p(\d{{4}})(\d{{2}})$")

# Set (SET LOCAL ... 'on') by a writer that has claimed its rows' keys in
# history_dedup itself: the claim trigger then lets the rows through.
CLAIMED_SETTING = "cti.dedup_claimed"

DEDUP_DDL = (
    f"CREATE TABLE IF NOT EXISTS {DEDUP_TABLE} (dedup_key varchar(200) COLLATE \"C\" PRIMARY KEY)",
    f"""CREATE OR REPLACE FUNCTION {DEDUP_TABLE}_claim() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO {DEDUP_TABLE} (dedup_key) VALUES (NEW.dedup_key) ON CONFLICT DO NOTHING;
        IF FOUND THEN
            RETURN NEW;
        END IF;
        RETURN NULL;
    END $$""",
    f"""CREATE OR REPLACE FUNCTION {DEDUP_TABLE}_release() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM {DEDUP_TABLE} WHERE dedup_key = OLD.dedup_key;
        RETURN OLD;
    END $$""",
    f"""CREATE OR REPLACE FUNCTION {DEDUP_TABLE}_rekey() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.dedup_key IS NOT NULL THEN
            DELETE FROM {DEDUP_TABLE} WHERE dedup_key = OLD.dedup_key;
        END IF;
        IF NEW.dedup_key IS NOT NULL THEN
            INSERT INTO {DEDUP_TABLE} (dedup_key) VALUES (NEW.dedup_key);
        END IF;
        RETURN NEW;
    END $$""",
)
DEDUP_TRIGGERS = (
    # A batch writer that claimed its keys itself in one statement (cti.history)
    # sets cti.dedup_claimed for its transaction: the per-row claim is skipped.
    f"""CREATE TRIGGER {DEDUP_TABLE}_claim BEFORE INSERT ON {TABLE}
    FOR EACH ROW WHEN (NEW.dedup_key IS NOT NULL
        AND current_setting('{CLAIMED_SETTING}', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION {DEDUP_TABLE}_claim()""",
    f"""CREATE TRIGGER {DEDUP_TABLE}_release AFTER DELETE ON {TABLE}
    FOR EACH ROW WHEN (OLD.dedup_key IS NOT NULL) EXECUTE FUNCTION {DEDUP_TABLE}_release()""",
    f"""CREATE TRIGGER {DEDUP_TABLE}_rekey BEFORE UPDATE OF dedup_key ON {TABLE}
    FOR EACH ROW WHEN (OLD.dedup_key IS DISTINCT FROM NEW.dedup_key)
    EXECUTE FUNCTION {DEDUP_TABLE}_rekey()""",
)
DEDUP_DROP = (
    f"DROP TABLE IF EXISTS {DEDUP_TABLE}",
    f"DROP FUNCTION IF EXISTS {DEDUP_TABLE}_claim()",
    f"DROP FUNCTION IF EXISTS {DEDUP_TABLE}_release()",
    f"DROP FUNCTION IF EXISTS {DEDUP_TABLE}_rekey()",
)


class PartitionError(RuntimeError):
    """The history table has a shape the conversion cannot carry over."""


# -- months -----------------------------------------------------------------


def month_start(at: datetime) -> datetime:
    at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def add_months(month: datetime, n: int) -> datetime:
    index = month.year * 12 + month.month - 1 + n
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(month: datetime) -> str:
    return f"{TABLE}_p{month.year:04d}{month.month:02d}"


def partition_month(name: str) -> datetime | None:
    m = _NAME.match(name)
    return datetime(int(m[1]), int(m[2]), 1, tzinfo=UTC) if m else None


def _literal(at: datetime) -> str:
    return f"'{at.strftime('%Y-%m-%d %H:%M:%S')}+00'"


# -- catalog ----------------------------------------------------------------


def is_partitioned(conn: Connection) -> bool:
    kind = conn.scalar(
        text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:t)"), {"t": TABLE}
    )
    return bool(kind == "p")


def partitions(conn: Connection) -> list[str]:
    rows = conn.scalars(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:t) ORDER BY c.relname"
        ),
        {"t": TABLE},
    )
    return list(rows)


def partition_months(conn: Connection) -> list[datetime]:
    return sorted(m for m in map(partition_month, partitions(conn)) if m is not None)


# -- conversion (migration 0010) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shape:
    columns: list[str]  # insertable columns (not generated), in table order
    primary_key: list[str]
    indexes: list[str]  # CREATE INDEX statements of the plain indexes
    constraints: list[tuple[str, str]]  # (name, definition) of foreign keys and checks
    sequences: list[tuple[str, str]]  # (column, sequence) of serial columns


def _shape(conn: Connection, table: str) -> _Shape:
    oid = conn.scalar(text("SELECT to_regclass(:t)::oid"), {"t": table})
    if oid is None:
        raise PartitionError(f"table {table} does not exist")
    columns = list(
        conn.scalars(
            text(
                "SELECT attname FROM pg_attribute WHERE attrelid = :o AND attnum > 0 "
                "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum"
            ),
            {"o": oid},
        )
    )
    identity = conn.scalar(
        text("SELECT count(*) FROM pg_attribute WHERE attrelid = :o AND attidentity <> ''"),
        {"o": oid},
    )
    if identity:
        raise PartitionError(f"{table} has identity columns: convert them to serial first")
    referenced = list(
        conn.scalars(
            text("SELECT conname FROM pg_constraint WHERE confrelid = :o AND contype = 'f'"),
            {"o": oid},
        )
    )
    if referenced:
        raise PartitionError(f"foreign keys point at {table}: {', '.join(referenced)}")
    primary_key: list[str] = []
    constraints: list[tuple[str, str]] = []
    for name, kind, definition, key in conn.execute(
        text(
            "SELECT conname, contype::text, pg_get_constraintdef(oid), "
            "ARRAY(SELECT attname FROM unnest(conkey) WITH ORDINALITY k(n, i) "
            "JOIN pg_attribute a ON a.attrelid = conrelid AND a.attnum = k.n ORDER BY k.i) "
            "FROM pg_constraint WHERE conrelid = :o ORDER BY conname"
        ),
        {"o": oid},
    ):
        if kind == "p":
            primary_key = list(key)
        elif kind == "f":  # checks come along with LIKE ... INCLUDING CONSTRAINTS
            constraints.append((name, definition))
        elif kind == "u" and list(key) in (["dedup_key"], ["dedup_key", "occurred_at"]):
            continue  # replaced by history_dedup (partitioned) or restored (plain)
        elif kind in ("u", "x"):
            raise PartitionError(f"{table} constraint {name} ({definition}) cannot be carried")
    indexes: list[str] = []
    for name, unique, definition, cols in conn.execute(
        text(
            "SELECT i.relname, x.indisunique, pg_get_indexdef(x.indexrelid), "
            "ARRAY(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = x.indrelid "
            "AND a.attnum = ANY(x.indkey)) "
            "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = :o AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid AND c.conrelid = :o) "
            "ORDER BY i.relname"
        ),
        {"o": oid},
    ):
        if unique and "occurred_at" not in cols:
            raise PartitionError(f"unique index {name} lacks occurred_at (the partition key)")
        indexes.append(definition.replace(" ON ONLY ", " ON ", 1))
    sequences = [
        (col, seq)
        for col in columns
        if (
            seq := conn.scalar(
                text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table, "c": col}
            )
        )
        is not None
    ]
    return _Shape(columns, primary_key, indexes, constraints, sequences)


def _rebuild(conn: Connection, *, partitioned: bool, now: datetime, ahead: int) -> int:
    """Recreate history_events (partitioned or plain) with the same columns, keys,
    indexes and rows; returns the number of rows copied."""
    shape = _shape(conn, TABLE)
    conn.execute(text(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE"))
    for _, seq in shape.sequences:
        conn.execute(text(f"ALTER SEQUENCE {seq} OWNED BY NONE"))
    conn.execute(text(f"ALTER TABLE {TABLE} RENAME TO {OLD_TABLE}"))
    tail = " PARTITION BY RANGE (occurred_at)" if partitioned else ""
    conn.execute(
        text(
            f"CREATE TABLE {TABLE} (LIKE {OLD_TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
            f"INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS){tail}"
        )
    )
    if partitioned:
        first = conn.scalar(text(f"SELECT min(occurred_at) FROM {OLD_TABLE}"))
        start = month_start(first) if first is not None else month_start(now)
        month = min(start, month_start(now))
        while month <= add_months(month_start(now), ahead):
            create_partition(conn, month)
            month = add_months(month, 1)
        conn.execute(text(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {TABLE} DEFAULT"))
    cols = ", ".join(shape.columns)
    copied = conn.execute(
        text(f"INSERT INTO {TABLE} ({cols}) SELECT {cols} FROM {OLD_TABLE}")
    ).rowcount
    conn.execute(text(f"DROP TABLE {OLD_TABLE}"))  # its indexes and triggers with it
    for statement in DEDUP_DROP:
        conn.execute(text(statement))
    key = [c for c in shape.primary_key if c != "occurred_at" or not partitioned]
    if partitioned:
        key.append("occurred_at")
    if key:
        conn.execute(
            text(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY ({', '.join(key)})")
        )
    for definition in shape.indexes:
        conn.execute(text(definition))
    for name, definition in shape.constraints:
        conn.execute(text(f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} {definition}"))
    for col, seq in shape.sequences:
        conn.execute(text(f"ALTER SEQUENCE {seq} OWNED BY {TABLE}.{col}"))
    if partitioned:
        for statement in DEDUP_DDL:
            conn.execute(text(statement))
        conn.execute(
            text(
                f"INSERT INTO {DEDUP_TABLE} (dedup_key) SELECT dedup_key FROM {TABLE} "
                "WHERE dedup_key IS NOT NULL ON CONFLICT DO NOTHING"
            )
        )
        for statement in DEDUP_TRIGGERS:
            conn.execute(text(statement))
    else:
        conn.execute(
            text(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_dedup_key_key UNIQUE (dedup_key)")
        )
    conn.execute(text(f"ANALYZE {TABLE}"))
    return int(copied)


def convert_history(
    conn: Connection, *, now: datetime | None = None, ahead: int = MONTHS_AHEAD
) -> int:
    """Make history_events partitioned by month (PostgreSQL); no-op when it already is."""
    if conn.dialect.name != "postgresql" or is_partitioned(conn):
        return 0
    return _rebuild(conn, partitioned=True, now=now or datetime.now(UTC), ahead=ahead)


def unpartition_history(conn: Connection) -> int:
    """The reverse of convert_history (the migration's downgrade)."""
    if conn.dialect.name != "postgresql" or not is_partitioned(conn):
        return 0
    return _rebuild(conn, partitioned=False, now=datetime.now(UTC), ahead=0)


# -- maintenance ----------------------------------------------------------------


def create_partition(conn: Connection, month: datetime) -> None:
    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {partition_name(month)} PARTITION OF {TABLE} "
            f"FOR VALUES FROM ({_literal(month)}) TO ({_literal(add_months(month, 1))})"
        )
    )


def _months_in_default(conn: Connection) -> list[datetime]:
    if conn.scalar(text("SELECT to_regclass(:t)"), {"t": DEFAULT_PARTITION}) is None:
        return []
    rows = conn.scalars(
        text(
            "SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC') "
            f"FROM {DEFAULT_PARTITION}"
        )
    )
    return [r.replace(tzinfo=UTC) for r in rows]


def _move_out_of_default(conn: Connection, month: datetime) -> int:
    """Give ``month`` its partition when DEFAULT already holds rows of it."""
    name = partition_name(month)
    lo, hi = _literal(month), _literal(add_months(month, 1))
    conn.execute(
        text(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    )
    # Deleting from DEFAULT fires the release trigger: the keys are claimed again below,
    # in this same transaction, so a concurrent insert of one of them waits and skips.
    moved = conn.execute(
        text(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE occurred_at >= {lo} "
            f"AND occurred_at < {hi} RETURNING *) INSERT INTO {name} SELECT * FROM moved"
        )
    ).rowcount
    conn.execute(
        text(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})")
    )
    conn.execute(
        text(
            f"INSERT INTO {DEDUP_TABLE} (dedup_key) SELECT dedup_key FROM {name} "
            "WHERE dedup_key IS NOT NULL ON CONFLICT DO NOTHING"
        )
    )
    return int(moved)


def ensure_partitions_sync(conn: Connection, now: datetime, ahead: int = MONTHS_AHEAD) -> list[str]:
    """Create the missing month partitions (idempotent, safe on several nodes at once)."""
    if conn.dialect.name != "postgresql" or not is_partitioned(conn):
        return []
    current = month_start(now)
    wanted = {add_months(current, n) for n in range(-1, ahead + 1)}
    wanted |= set(_months_in_default(conn))
    if not wanted - set(partition_months(conn)):
        return []
    conn.execute(text("SET LOCAL lock_timeout = '10s'"))
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
    have = set(partition_months(conn))  # another node may have done it meanwhile
    in_default = set(_months_in_default(conn))
    created: list[str] = []
    for month in sorted(wanted - have):
        if month in in_default:
            moved = _move_out_of_default(conn, month)
            log.info(
                "partition %s created, %d rows moved from DEFAULT", partition_name(month), moved
            )
        else:
            create_partition(conn, month)
        created.append(partition_name(month))
    return created


async def ensure_partitions(
    engine: AsyncEngine, *, now: datetime | None = None, ahead: int = MONTHS_AHEAD
) -> list[str]:
    if engine.dialect.name != "postgresql":
        return []
    at = now or datetime.now(UTC)
    async with engine.begin() as conn:
        return await conn.run_sync(lambda c: ensure_partitions_sync(c, at, ahead))


# -- retention ------------------------------------------------------------------


@dataclass(slots=True)
class Retention:
    cutoff: datetime
    dry_run: bool
    dropped: list[str] = field(default_factory=list)  # partitions
    rows: int = 0  # rows removed (or that would be)

    def lines(self) -> list[str]:
        verb = "would drop" if self.dry_run else "dropped"
        out = [f"{verb} partition {name}" for name in self.dropped]
        out.append(
            f"{'would remove' if self.dry_run else 'removed'} {self.rows} history rows "
            f"older than {self.cutoff.date().isoformat()}"
        )
        return out


def cutoff_for(keep_months: int, now: datetime) -> datetime:
    if keep_months < 1:
        raise ValueError("keep-months must be at least 1")
    return add_months(month_start(now), -keep_months)


def _retention_pg(conn: Connection, result: Retention) -> None:
    if not is_partitioned(conn):
        raise PartitionError(f"{TABLE} is not partitioned: run the migrations first")
    conn.execute(text("SET LOCAL lock_timeout = '10s'"))
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
    cut = _literal(result.cutoff)
    for name in partitions(conn):
        month = partition_month(name)
        if month is None or add_months(month, 1) > result.cutoff:
            continue
        count = int(conn.scalar(text(f"SELECT count(*) FROM {name}")) or 0)
        result.dropped.append(name)
        result.rows += count
        if result.dry_run:
            continue
        conn.execute(
            text(f"DELETE FROM {DEDUP_TABLE} d USING {name} p WHERE d.dedup_key = p.dedup_key")
        )
        conn.execute(text(f"ALTER TABLE {TABLE} DETACH PARTITION {name}"))
        conn.execute(text(f"DROP TABLE {name}"))
    if conn.scalar(text("SELECT to_regclass(:t)"), {"t": DEFAULT_PARTITION}) is not None:
        if result.dry_run:
            old = conn.scalar(
                text(f"SELECT count(*) FROM {DEFAULT_PARTITION} WHERE occurred_at < {cut}")
            )
        else:
            old = conn.execute(
                text(f"DELETE FROM {DEFAULT_PARTITION} WHERE occurred_at < {cut}")
            ).rowcount
        result.rows += int(old or 0)


async def _retention_sqlite(engine: AsyncEngine, result: Retention, batch: int) -> None:
    old = HistoryEvent.occurred_at < result.cutoff
    if result.dry_run:
        async with engine.connect() as conn:
            result.rows = int(
                await conn.scalar(select(func.count()).select_from(HistoryEvent).where(old)) or 0
            )
        return
    while True:
        async with engine.begin() as conn:
            ids = select(HistoryEvent.id).where(old).limit(batch)
            done = (
                await conn.execute(delete(HistoryEvent).where(HistoryEvent.id.in_(ids)))
            ).rowcount
        result.rows += done
        if done < batch:
            return


async def apply_retention(
    engine: AsyncEngine,
    keep_months: int,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    batch: int = SQLITE_BATCH,
) -> Retention:
    """Remove history older than ``keep_months`` whole months before the current one."""
    result = Retention(cutoff_for(keep_months, now or datetime.now(UTC)), dry_run)
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: _retention_pg(c, result))
    else:
        await _retention_sqlite(engine, result, batch)
    return result


# -- server wiring ----------------------------------------------------------------


def partitions_ctx(
    engine_of: Callable[[], AsyncEngine], *, every: float = MAINTENANCE_EVERY
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def maintain(engine: AsyncEngine) -> float:
        """One check; returns the pause before the next."""
        try:
            created = await ensure_partitions(engine)
        except (DBAPIError, OSError) as exc:  # a lock timeout, the database away
            log.warning("history partition maintenance failed, retrying: %s", exc)
            return min(every, RETRY_AFTER)
        if created:
            log.info("history partitions created: %s", ", ".join(created))
        return every

    async def run_daily(engine: AsyncEngine, pause: float) -> None:
        while True:
            await asyncio.sleep(pause)
            pause = await maintain(engine)

    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        engine = engine_of()
        if engine.dialect.name != "postgresql":
            yield
            return
        pause = await maintain(engine)  # at start, before the server takes traffic
        task = asyncio.create_task(run_daily(engine, pause), name="history-partitions")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx


def setup_partitions(app: web.Application) -> None:
    """Keep the next months' history partitions created while the server runs."""
    from cti.keys import SERVICES

    app.cleanup_ctx.append(partitions_ctx(lambda: app[SERVICES].engine))


# -- `cti db retention` -------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file")
    sub = parser.add_subparsers(dest="action", required=True)
    sp = sub.add_parser(
        "retention",
        help="remove history older than N months",
        description="PostgreSQL: detach and drop the month partitions older than N months; "
        "SQLite: delete those rows in batches. The current month is never touched.",
    )
    sp.add_argument("--keep-months", type=int, required=True, metavar="N")
    sp.add_argument("--dry-run", action="store_true", help="print what would be removed")


async def _retention(args: argparse.Namespace) -> Retention:
    from cti.config import load_settings
    from cti.db import create_engine, migrate

    settings = load_settings(args.config)
    engine = create_engine(settings.database_url())
    try:
        await migrate(engine)
        return await apply_retention(engine, args.keep_months, dry_run=args.dry_run)
    finally:
        await engine.dispose()


def run(args: argparse.Namespace) -> int:
    from cti.config import ConfigError

    if args.keep_months < 1:
        print("cti db retention: --keep-months must be at least 1", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_retention(args))
    except ConfigError as exc:
        print(f"cti db: {exc}", file=sys.stderr)
        return 2
    except (PartitionError, DBAPIError, OSError) as exc:
        print(f"cti db: {exc}", file=sys.stderr)
        return 1
    for line in result.lines():
        print(line)
    return 0
