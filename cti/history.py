"""The history store: one table for every channel, written in batches.

Theory of operation: producers call ``add()`` (never waits unless the bounded
queue is full) and go on; one writer task takes the first pending entry,
gathers whatever else arrives within ``flush_interval`` up to ``batch`` rows
(no wait when a full batch is already queued; when behind, up to
``backlog_batch`` rows at once), builds the rows' driver parameters while the
previous batch is being written (two stages, one FIFO: order is kept),
and inserts them in ONE transaction as prepared SQL with plain values (each
row carries its report columns, so no column default is left to SQLAlchemy):
SQLite an executemany ``ON CONFLICT (dedup_key) DO NOTHING``; PostgreSQL ONE
``INSERT ... SELECT FROM unnest(<one array per column>)`` and, when the table
is partitioned (cti.partitions), the batch's dedup keys claimed first in ONE
statement, so a change delivered twice (a PBX resync) is recorded once either
way. ``raw=False`` keeps the former Core ``insert()`` executemany (measured
against in bench.history_writes --core). If the
database fails, the batch is kept and retried after a pause: nothing is lost.
A batch that violates a constraint is retried row by row so one bad row
cannot sink the others. ``flush()`` waits until everything added before the
call is written; ``close()`` flushes and stops the writer. Entries not yet
written are visible through ``pending_for()``, so a screen-pop never waits
for the writer.

Reads (``timeline()``) are Core selects of the page's columns into slotted
``StoredEvent``s (no ORM identity map), newest first, paged by a keyset
cursor ``(occurred_at, id) < (:at, :id)`` that the (customer_id, occurred_at,
id) index answers with a backward range scan and no sort, one per customer of
the merged family, merged by an outer ORDER BY/LIMIT. PostgreSQL gets family
and page in one statement (recursive CTE + LATERAL); a SQLite file is read
inline on the loop thread (see ``SqliteInlineReader``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    Select,
    Table,
    bindparam,
    event,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from cti.errors import InvalidInput
from cti.models import Customer, HistoryEvent, utcnow
from cti.partitions import CLAIMED_SETTING, DEDUP_TABLE
from cti.reports.columns import REPORT_COLUMNS, report_row, report_values

log = logging.getLogger(__name__)

MAX_PAGE = 200
RECENT = 20_000
HISTORY = cast(Table, HistoryEvent.__table__)
CUSTOMERS = cast(Table, Customer.__table__)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    customer_id: int
    kind: str
    channel: str
    payload: dict[str, Any] = field(default_factory=dict)
    conversation_id: int | None = None
    occurred_at: datetime = field(default_factory=utcnow)
    dedup_key: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "conversation_id": self.conversation_id,
            "kind": self.kind,
            "channel": self.channel,
            "occurred_at": self.occurred_at,
            "payload": self.payload,
            "dedup_key": self.dedup_key,
            # Given here, the model's per-row context-sensitive defaults for these
            # columns are not run: SQLAlchemy's per-row default handling cost
            # ~27% of the writer's CPU (measured: +7-12% events per CPU-second).
            **report_values(self.payload),
        }


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One written history row, as the timeline reads it."""

    id: int
    customer_id: int
    conversation_id: int | None
    kind: str
    channel: str
    occurred_at: datetime
    payload: dict[str, Any]


def event_json(ev: StoredEvent | HistoryEvent) -> dict[str, Any]:
    return {
        "id": ev.id,
        "customer_id": ev.customer_id,
        "conversation_id": ev.conversation_id,
        "kind": ev.kind,
        "channel": ev.channel,
        "occurred_at": ev.occurred_at.isoformat(),
        "payload": ev.payload,
    }


def entry_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "id": None,
        "customer_id": entry.customer_id,
        "conversation_id": entry.conversation_id,
        "kind": entry.kind,
        "channel": entry.channel,
        "occurred_at": entry.occurred_at.isoformat(),
        "payload": entry.payload,
        "pending": True,
    }


class HistoryWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch: int = 500,
        backlog_batch: int | None = None,
        flush_interval: float = 0.05,
        max_pending: int = 100_000,
        retry_pause: float = 1.0,
        raw: bool = True,
    ) -> None:
        self._engine = engine
        self._batch = batch
        # Behind (more than a batch waiting), up to this many rows go in one
        # transaction: SQLite's cost per row falls with the batch (index pages
        # dirtied once per batch, not once per row), at the price of holding the
        # write lock longer (measured in bench.history_writes).
        self._backlog_batch = max(batch, backlog_batch if backlog_batch is not None else 4 * batch)
        self._interval = flush_interval
        self._retry_pause = retry_pause
        self._queue: asyncio.Queue[HistoryEntry] = asyncio.Queue(max_pending)
        self._inflight: deque[HistoryEntry] = deque()
        # batches taken and prepared by _gather, written by _drain (in order)
        self._ready: asyncio.Queue[tuple[list[HistoryEntry], list[HistoryEntry], list[Any]]] = (
            asyncio.Queue(1)
        )
        self._added = 0
        self._written = 0
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False  # the writer task failed
        self.batches = 0
        self._statement = insert_statement(engine.dialect.name)
        self._dialect = engine.dialect.name
        # raw: the batch goes to the driver as prepared SQL with plain values
        # (see SQLITE_INSERT / pg_insert); False: the Core insert (kept to
        # measure against, bench.history_writes --core).
        self._raw = raw
        self._claims: bool | None = None  # PostgreSQL: history_dedup exists (partitioned)
        # The last RECENT entries written, in add order, and how many were done
        # in all: entries_since() serves a prefetched screen-pop card the events
        # added after it read the table (cti.screenpop).
        self._recent: deque[HistoryEntry] = deque(maxlen=RECENT)
        self._done = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="history-writer")

    async def add(self, entry: HistoryEntry) -> None:
        await self._queue.put(entry)
        self._added += 1

    async def add_many(self, entries: Iterable[HistoryEntry]) -> None:
        for entry in entries:
            await self.add(entry)

    def pending_for(self, customer_ids: Iterable[int]) -> list[HistoryEntry]:
        wanted = set(customer_ids)
        queued: Iterable[HistoryEntry] = self._queue._queue  # type: ignore[attr-defined]
        return [e for e in (*self._inflight, *queued) if e.customer_id in wanted]

    def mark(self) -> int:
        """A position in the add order: take it BEFORE reading the table."""
        return self._done

    def entries_since(self, mark: int) -> list[HistoryEntry] | None:
        """Every entry written or pending after ``mark`` (None: no longer kept)."""
        behind = self._done - mark
        if behind < 0 or behind > len(self._recent):
            return None
        written = list(itertools.islice(reversed(self._recent), behind))[::-1]
        queued: Iterable[HistoryEntry] = self._queue._queue  # type: ignore[attr-defined]
        return [*written, *self._inflight, *queued]

    async def flush(self) -> None:
        target = self._added
        if self._task is None or self._task.done():
            raise RuntimeError("the history writer is not running")
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target or self._stopped)
        if self._written < target:
            raise RuntimeError("the history writer stopped")

    async def close(self) -> None:
        if self._task is None:
            return
        if not self._task.done():
            try:
                async with asyncio.timeout(30):
                    await self.flush()
            except (RuntimeError, TimeoutError):
                lost = self._queue.qsize() + len(self._inflight)
                log.error("history writer stopped with %d events not written", lost)
        self._task.cancel()
        # a writer that failed was logged by _run: close() still completes
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._task = None

    async def _run(self) -> None:
        # Two stages: _gather takes a batch and builds its driver parameters
        # while _drain writes the previous one (the driver call runs in
        # aiosqlite's thread, which releases the GIL inside SQLite, or in
        # PostgreSQL's own process): Python work and database work overlap.
        # At most one prepared batch waits; order is kept (one FIFO).
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._gather(), name="history-gather")
                tasks.create_task(self._drain(), name="history-drain")
        except Exception:
            # flush() must not wait forever for a writer that is gone
            log.exception("history writer failed")
            self._stopped = True
            async with self._progress:
                self._progress.notify_all()
            raise

    async def _gather(self) -> None:
        queue = self._queue
        while True:
            first = await queue.get()
            batch = [first]
            self._inflight.append(first)
            # Sleep instead of awaiting get(): an entry must always be either in
            # the queue or in _inflight, where pending_for() can see it. Under a
            # backlog a full batch is already waiting: write it at once.
            if queue.qsize() < self._batch - 1:
                await asyncio.sleep(self._interval)
            waiting = queue.qsize()
            size = self._batch if waiting < self._batch else self._backlog_batch
            more = [queue.get_nowait() for _ in range(min(size - 1, waiting))]
            self._inflight.extend(more)
            batch.extend(more)
            await self._ready.put((batch, *self._prepare(batch)))

    async def _drain(self) -> None:
        while True:
            batch, rows, params = await self._ready.get()
            if rows:
                await self._write_with_retry(rows, params)
            count = len(batch)
            self._recent.extend(batch)
            self._done += count
            inflight = self._inflight
            for _ in range(count):
                inflight.popleft()
            async with self._progress:
                self._written += count
                self._progress.notify_all()

    def _prepare(self, rows: list[HistoryEntry]) -> tuple[list[HistoryEntry], list[Any]]:
        """The rows to write and each one's driver parameters (Core path: its dict).

        A row that cannot be encoded (a payload value JSON cannot hold) is
        logged and left out alone.
        """
        build = (
            HistoryEntry.row
            if not self._raw
            else sqlite_params
            if self._dialect == "sqlite"
            else pg_params
        )
        try:
            return rows, [build(r) for r in rows]
        except (TypeError, ValueError, AttributeError, RecursionError):
            pass
        kept: list[HistoryEntry] = []
        params: list[Any] = []
        for row in rows:
            try:
                params.append(build(row))
            except (TypeError, ValueError, AttributeError, RecursionError) as exc:
                log.error(
                    "history event dropped (%s for customer %s): %s",
                    row.kind,
                    row.customer_id,
                    exc,
                )
            else:
                kept.append(row)
        return kept, params

    async def _write_with_retry(self, rows: Sequence[HistoryEntry], params: list[Any]) -> None:
        while True:
            try:
                await self._insert(rows, params)
                self.batches += 1
                return
            except IntegrityError:
                await self._insert_one_by_one(rows, params)
                return
            except (DBAPIError, OSError) as exc:
                log.warning("history batch of %d failed, retrying: %s", len(rows), exc)
                await asyncio.sleep(self._retry_pause)

    async def _insert_one_by_one(self, rows: Sequence[HistoryEntry], params: list[Any]) -> None:
        for row, row_params in zip(rows, params, strict=True):
            try:
                await self._insert([row], [row_params])
            except IntegrityError as exc:
                log.error(
                    "history event dropped (%s for customer %s): %s",
                    row.kind,
                    row.customer_id,
                    exc.orig,
                )

    async def _insert(self, rows: Sequence[HistoryEntry], params: list[Any]) -> None:
        async with self._engine.begin() as conn:
            if not self._raw:
                await conn.execute(self._statement, params)
            elif self._dialect == "sqlite":
                await conn.exec_driver_sql(SQLITE_INSERT, params)
            else:
                if self._claims is None:
                    found = await conn.exec_driver_sql(
                        f"SELECT to_regclass('{DEDUP_TABLE}') IS NOT NULL"
                    )
                    self._claims = bool(found.scalar())
                await pg_insert(conn, rows, claim=self._claims, params=params)


# The batch INSERTs as the driver runs them. Values are what SQLAlchemy's
# column types would bind (same text for SQLite datetimes and JSON, so reads,
# keyset comparisons and reports cannot tell the paths apart); report columns
# come from HistoryEntry.row() (report_values), so no Python-side default is
# skipped. Profiled on SQLite: SQLAlchemy's per-row parameter processing
# (type processors, default handling, dict->tuple) was most of the writer's CPU.
_ROW_COLUMNS = (
    "customer_id",
    "conversation_id",
    "kind",
    "channel",
    "occurred_at",
    "payload",
    "dedup_key",
    *REPORT_COLUMNS,
)
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's SQLite DATETIME storage format
SQLITE_INSERT = (
    f"INSERT INTO history_events ({', '.join(_ROW_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _ROW_COLUMNS)}) ON CONFLICT (dedup_key) DO NOTHING"
)


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return at.astimezone(UTC)


def sqlite_time(at: datetime) -> str:
    """``at`` in UTC as SQLAlchemy's SQLite DATETIME stores it (_SQLITE_TIME).

    isoformat() is ~4x cheaper than strftime(); it leaves out a zero
    microsecond part, which the storage format always has.
    """
    if at.tzinfo is not UTC:
        at = _utc(at)
    text = at.isoformat(" ")
    return text[:26] if at.microsecond else text[:19] + ".000000"


def _one_shot_json() -> Any:
    """``json.dumps`` with its default settings, without building an encoder per
    call (json.dumps(obj) makes a new C encoder for each object)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.dumps
    defaults = json.JSONEncoder()
    encoder = make(
        None,  # no markers: circular references are not checked (json.dumps checks them)
        defaults.default,
        json.encoder.encode_basestring_ascii,
        None,
        defaults.key_separator,
        defaults.item_separator,
        defaults.sort_keys,
        defaults.skipkeys,
        defaults.allow_nan,
    )
    plain = json.dumps

    def dumps(obj: Any) -> str:
        if type(obj) is not dict:
            return plain(obj)
        return "".join(encoder(obj, 0))

    return dumps


_json = _one_shot_json()


def sqlite_params(entry: HistoryEntry) -> tuple[Any, ...]:
    payload = entry.payload
    return (
        entry.customer_id,
        entry.conversation_id,
        entry.kind,
        entry.channel,
        sqlite_time(entry.occurred_at),
        _json(payload),
        entry.dedup_key,
        *report_row(payload),
    )


def pg_params(entry: HistoryEntry) -> tuple[Any, ...]:
    payload = entry.payload
    at = entry.occurred_at
    return (
        entry.customer_id,
        entry.conversation_id,
        entry.kind,
        entry.channel,
        at if at.tzinfo is UTC else _utc(at),
        _json(payload),
        entry.dedup_key,
        *report_row(payload),
    )


_PG_TYPES = (
    "bigint",
    "bigint",
    "text",
    "text",
    "timestamptz",
    "text",
    "text",
    *("float8" for _ in REPORT_COLUMNS),
)
# ONE statement for the whole batch: each column is an array parameter and
# unnest() turns them back into rows (asyncpg's executemany sends one
# Bind/Execute per row). No conflict target: the plain table's UNIQUE
# (dedup_key) or, partitioned, the claim trigger (when not claimed below).
PG_INSERT = (
    f"INSERT INTO history_events ({', '.join(_ROW_COLUMNS)}) "
    f"SELECT {', '.join('payload::json' if c == 'payload' else c for c in _ROW_COLUMNS)} "
    f"FROM unnest({', '.join(f'${i}::{t}[]' for i, t in enumerate(_PG_TYPES, 1))}) "
    f"AS t({', '.join(_ROW_COLUMNS)}) ON CONFLICT DO NOTHING"
)
# Partitioned table: the batch's keys claimed in ONE statement; the rows whose
# key was taken (earlier, or by an earlier row of this batch) are left out.
PG_CLAIM = (
    f"INSERT INTO {DEDUP_TABLE} (dedup_key) SELECT unnest($1::text[]) "
    "ON CONFLICT DO NOTHING RETURNING dedup_key"
)
PG_CLAIMED = f"SELECT set_config('{CLAIMED_SETTING}', 'on', true)"


async def pg_insert(
    conn: AsyncConnection,
    rows: Sequence[HistoryEntry],
    *,
    claim: bool,
    params: Sequence[tuple[Any, ...]] | None = None,
) -> None:
    """One batch into PostgreSQL, inside the caller's transaction.

    ``params``: each row's ``pg_params()`` when the caller built them already.
    """
    if params is None:
        params = [pg_params(r) for r in rows]
    if claim:
        keys = [r.dedup_key for r in rows if r.dedup_key is not None]
        if keys:
            await conn.exec_driver_sql(PG_CLAIMED)
            claimed = set((await conn.exec_driver_sql(PG_CLAIM, (keys,))).scalars())
            kept = []
            for r, values in zip(rows, params, strict=True):
                if r.dedup_key is None:
                    kept.append(values)
                elif r.dedup_key in claimed:
                    claimed.discard(r.dedup_key)  # a second row with it in this batch: left out
                    kept.append(values)
            params = kept
    if not params:
        return
    # rows -> one list per column (the unnest() arrays)
    await conn.exec_driver_sql(
        PG_INSERT, tuple(list(column) for column in zip(*params, strict=True))
    )


def insert_statement(dialect: str) -> Any:
    """The batch INSERT: Core (column defaults apply), duplicates skipped."""
    if dialect == "postgresql":
        # No conflict target: any unique index (or a partitioned table's dedup
        # index/trigger) that rejects the row makes it a no-op.
        return postgresql.insert(HISTORY).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(HISTORY).on_conflict_do_nothing(index_elements=["dedup_key"])
    raise RuntimeError(f"unsupported database {dialect}")


def encode_cursor(ev: StoredEvent | HistoryEvent) -> str:
    raw = f"{ev.occurred_at.isoformat()}|{ev.id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at_text, id_text = raw.split("|")
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise ValueError("naive")
        return at, int(id_text)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput("the cursor is not valid", field="cursor") from None


async def merged_family(session: AsyncSession, customer_id: int) -> list[int]:
    """The customer and every customer merged into it (transitively)."""
    family = [customer_id]
    frontier = [customer_id]
    while frontier and len(family) < MAX_FAMILY:
        rows = await session.scalars(
            select(Customer.id).where(Customer.merged_into_id.in_(frontier))
        )
        frontier = [r for r in rows if r not in family]
        family.extend(frontier)
    return family


MAX_FAMILY = 1000
# Up to this many customers in a merged family, each gets its own index range
# scan (LIMITed) and a UNION ALL merges them; beyond it, one IN scan and a sort.
MAX_ARMS = 32
_COLUMNS = (
    HISTORY.c.id,
    HISTORY.c.customer_id,
    HISTORY.c.conversation_id,
    HISTORY.c.kind,
    HISTORY.c.channel,
    HISTORY.c.occurred_at,
    HISTORY.c.payload,
)
_NEWEST_FIRST = (HISTORY.c.occurred_at.desc(), HISTORY.c.id.desc())

Keyset = tuple[datetime, int]


def _keyset(query: Select[Any], after: Keyset | None) -> Select[Any]:
    if after is None:
        return query
    at = bindparam("at", after[0], type_=HISTORY.c.occurred_at.type)
    last_id = bindparam("last_id", after[1], type_=HISTORY.c.id.type)
    return query.where(tuple_(HISTORY.c.occurred_at, HISTORY.c.id) < tuple_(at, last_id))


def _newest(select_from: Select[Any], after: Keyset | None, limit: int) -> Select[Any]:
    return _keyset(select_from, after).order_by(*_NEWEST_FIRST).limit(limit)


def page_query(family: Sequence[int], limit: int, after: Keyset | None) -> Select[Any]:
    """Newest ``limit`` rows of the family older than ``after`` (occurred_at, id)."""
    if len(family) == 1:
        return _newest(select(*_COLUMNS).where(HISTORY.c.customer_id == family[0]), after, limit)
    if len(family) > MAX_ARMS:
        return _newest(select(*_COLUMNS).where(HISTORY.c.customer_id.in_(family)), after, limit)
    arms = [
        _newest(select(*_COLUMNS).where(HISTORY.c.customer_id == cid), after, limit).subquery()
        for cid in family
    ]
    merged = union_all(*(select(*arm.c) for arm in arms)).subquery()
    return select(*merged.c).order_by(merged.c.occurred_at.desc(), merged.c.id.desc()).limit(limit)


def _single_page(keyset: bool) -> Select[Any]:
    """One customer's page with every value a bind: built once, compiled once."""
    query = select(*_COLUMNS).where(HISTORY.c.customer_id == bindparam("customer_id"))
    if keyset:
        query = _keyset_binds(query)
    return query.order_by(*_NEWEST_FIRST).limit(bindparam("limit", type_=Integer()))


def _keyset_binds(query: Select[Any]) -> Select[Any]:
    at = bindparam("at", type_=HISTORY.c.occurred_at.type)
    last_id = bindparam("last_id", type_=HISTORY.c.id.type)
    return query.where(tuple_(HISTORY.c.occurred_at, HISTORY.c.id) < tuple_(at, last_id))


def _family_page(keyset: bool) -> Select[Any]:
    """PostgreSQL: family and page in ONE statement (one round trip).

    The customer's own page is a range scan on ``customer_id = :customer_id``:
    planned per execution (plan_cache_mode=force_custom_plan, cti.db), it
    sees the value's statistics, so a customer with 10k events gets backward
    index scans with LIMIT, not a bitmap scan of all its rows and a sort (the
    generic plan of a prepared statement does that). Customers merged into it
    come from a recursive CTE (UNION: a cycle ends it), each with a LATERAL
    LIMITed range scan; the outer ORDER BY/LIMIT merges those few rows.
    """
    root = bindparam("customer_id", type_=HISTORY.c.customer_id.type)
    limit = bindparam("limit", type_=Integer())
    seed = select(CUSTOMERS.c.id.label("member")).where(
        CUSTOMERS.c.merged_into_id == root, CUSTOMERS.c.id != root
    )
    family = seed.cte("family", recursive=True)
    family = family.union(
        select(CUSTOMERS.c.id).where(
            CUSTOMERS.c.merged_into_id == family.c.member, CUSTOMERS.c.id != root
        )
    )
    own_query = select(*_COLUMNS).where(HISTORY.c.customer_id == root)
    arm_query = select(*_COLUMNS).where(HISTORY.c.customer_id == family.c.member)
    if keyset:
        own_query = _keyset_binds(own_query)
        arm_query = _keyset_binds(arm_query)
    own = own_query.order_by(*_NEWEST_FIRST).limit(limit).subquery("own")
    arm = arm_query.order_by(*_NEWEST_FIRST).limit(limit).lateral("arm")
    page = union_all(select(*own.c), select(*arm.c).select_from(family.join(arm, true()))).subquery(
        "page"
    )
    return select(*page.c).order_by(page.c.occurred_at.desc(), page.c.id.desc()).limit(limit)


_PAGE = {False: _single_page(False), True: _single_page(True)}
FAMILY_PAGE = {False: _family_page(False), True: _family_page(True)}
_CHILDREN = select(CUSTOMERS.c.id).where(CUSTOMERS.c.merged_into_id == bindparam("parent"))


def _params(customer_id: int, limit: int, after: Keyset | None) -> dict[str, Any]:
    params: dict[str, Any] = {"customer_id": customer_id, "limit": limit}
    if after is not None:
        params["at"], params["last_id"] = after
    return params


def family_ids(conn: Connection, customer_id: int) -> list[int]:
    """Synchronous :func:`merged_family` on one connection (the inline readers)."""
    family = [customer_id]
    frontier = [customer_id]
    while frontier and len(family) < MAX_FAMILY:
        if len(frontier) == 1:
            rows = conn.execute(_CHILDREN, {"parent": frontier[0]}).scalars()
        else:
            rows = conn.execute(
                select(CUSTOMERS.c.id).where(CUSTOMERS.c.merged_into_id.in_(frontier))
            ).scalars()
        frontier = [r for r in rows if r not in family]
        family.extend(frontier)
    return family


def _page_rows(
    conn: Connection, family: list[int], limit: int, after: Keyset | None
) -> list[StoredEvent]:
    if len(family) == 1:
        result = conn.execute(_PAGE[after is not None], _params(family[0], limit, after))
    else:
        result = conn.execute(page_query(family, limit, after))
    return [StoredEvent(*row) for row in result]


def read_page(
    conn: Connection, customer_id: int, limit: int, after: Keyset | None
) -> list[StoredEvent]:
    """The merged family, then its page: two statements on one connection."""
    return _page_rows(conn, family_ids(conn, customer_id), limit, after)


class ReadDeclined(Exception):
    """The inline SQLite read would block the loop: do it off the loop instead."""


class SqliteInlineReader:
    """Timeline reads of one SQLite file, done on the event loop thread.

    Theory of operation: a timeline page is two indexed lookups (the merged
    family, then <= MAX_ARMS range scans of <= 201 rows): ~0.1 ms of SQLite
    work, less than ONE thread hop, and aiosqlite takes ~6 hops per read
    (cursor, execute, fetch, per statement, plus the rollback at checkin).
    On a loaded host each hop waits for the scheduler (measured here: one
    hop p99 5 ms at load 11 on 2 cores). So the read runs inline, on its own
    read-only connection: in WAL mode readers never wait for the writer. It
    never waits for a lock either (busy_timeout 0): a rare SQLITE_BUSY (a
    checkpoint resetting the WAL) or a family larger than MAX_ARMS is handed
    to the aiosqlite path instead, which may wait without stalling the loop.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        url = engine.sync_engine.url.set(drivername="sqlite")
        self._engine: Engine = create_sync_engine(
            url,
            pool_size=1,
            max_overflow=0,
            connect_args={"timeout": 0, "check_same_thread": False},
        )
        event.listen(self._engine, "connect", _reader_pragmas)

    def read(self, customer_id: int, limit: int, after: Keyset | None) -> list[StoredEvent]:
        try:
            with self._engine.connect() as conn:
                family = family_ids(conn, customer_id)
                if len(family) > MAX_ARMS:
                    raise ReadDeclined
                return _page_rows(conn, family, limit, after)
        except OperationalError as exc:
            if "locked" in str(exc.orig) or "busy" in str(exc.orig):
                raise ReadDeclined from exc
            raise

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()


def _reader_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


_readers: dict[int, tuple[Engine, SqliteInlineReader]] = {}


def sqlite_reader(engine: AsyncEngine) -> SqliteInlineReader | None:
    """The inline reader of this engine's SQLite file (None: not a SQLite file).

    Made on first use, closed when the engine is disposed.
    """
    sync_engine = engine.sync_engine
    if sync_engine.dialect.name != "sqlite" or sync_engine.url.database in (None, "", ":memory:"):
        return None
    found = _readers.get(id(sync_engine))
    if found is not None and found[0] is sync_engine:
        return found[1]
    reader = SqliteInlineReader(engine)
    _readers[id(sync_engine)] = (sync_engine, reader)
    if not event.contains(sync_engine, "engine_disposed", _close_reader):
        event.listen(sync_engine, "engine_disposed", _close_reader)
    return reader


def _close_reader(sync_engine: Engine) -> None:
    found = _readers.pop(id(sync_engine), None)
    if found is not None:
        found[1].close()


async def read_timeline(
    engine: AsyncEngine, customer_id: int, limit: int, after: Keyset | None
) -> list[StoredEvent]:
    reader = sqlite_reader(engine)
    if reader is not None:
        try:
            return reader.read(customer_id, limit, after)
        except ReadDeclined:
            pass
    async with engine.connect() as conn:
        # Reads only: no BEGIN/ROLLBACK round trips around the statement(s).
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        if engine.dialect.name == "postgresql":
            result = await conn.execute(
                FAMILY_PAGE[after is not None], _params(customer_id, limit, after)
            )
            return [StoredEvent(*row) for row in result]
        return await conn.run_sync(read_page, customer_id, limit, after)


async def timeline(
    sessions: async_sessionmaker[AsyncSession],
    customer_id: int,
    *,
    limit: int = 50,
    cursor: str | None = None,
    before: datetime | None = None,
) -> tuple[list[StoredEvent], str | None]:
    """Newest first; returns the page and the cursor of the next page (or None).

    ``cursor`` (from a previous page) or ``before`` (an aware instant: events
    that occurred strictly before it) starts the page further back.
    """
    limit = max(1, min(limit, MAX_PAGE))
    after: Keyset | None = None
    if cursor:
        after = decode_cursor(cursor)
    elif before is not None:
        if before.tzinfo is None:
            raise InvalidInput("before needs a time zone", field="before")
        after = (before, 0)  # ids are positive: (t, 0) is before every row at t
    engine = sessions.kw.get("bind")
    if isinstance(engine, AsyncEngine):
        rows = await read_timeline(engine, customer_id, limit + 1, after)
    else:
        async with sessions() as session:
            conn = await session.connection()
            rows = await conn.run_sync(read_page, customer_id, limit + 1, after)
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def parse_instant(raw: str, name: str) -> datetime:
    """An ISO-8601 instant with a time zone (a page's ``before`` bound)."""
    try:
        if len(raw) > 40:
            raise ValueError("too long")
        at = datetime.fromisoformat(raw)
        if at.tzinfo is None:
            raise ValueError("naive")
    except ValueError:
        raise InvalidInput(
            f"{name} must be an ISO-8601 time with a time zone", field=name
        ) from None
    return at
