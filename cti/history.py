"""The history store: one table for every channel, written in batches.

Theory of operation: producers call ``add()`` (never waits unless the bounded
queue is full) and go on; one writer task takes the first pending entry,
gathers whatever else arrives within ``flush_interval`` up to ``batch`` rows
(no wait when a full batch is already queued),
and inserts them in ONE transaction with ``ON CONFLICT (dedup_key) DO
NOTHING`` so a change delivered twice (a PBX resync) is recorded once. If the
database fails, the batch is kept and retried after a pause: nothing is lost.
A batch that violates a constraint is retried row by row so one bad row
cannot sink the others. ``flush()`` waits until everything added before the
call is written; ``close()`` flushes and stops the writer. Entries not yet
written are visible through ``pending_for()``, so a screen-pop never waits
for the writer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cti.errors import InvalidInput
from cti.models import Customer, HistoryEvent, utcnow

log = logging.getLogger(__name__)

MAX_PAGE = 200


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
        }


def event_json(ev: HistoryEvent) -> dict[str, Any]:
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
        flush_interval: float = 0.05,
        max_pending: int = 100_000,
        retry_pause: float = 1.0,
    ) -> None:
        self._engine = engine
        self._batch = batch
        self._interval = flush_interval
        self._retry_pause = retry_pause
        self._queue: asyncio.Queue[HistoryEntry] = asyncio.Queue(max_pending)
        self._inflight: deque[HistoryEntry] = deque()
        self._added = 0
        self._written = 0
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0

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

    async def flush(self) -> None:
        target = self._added
        if self._task is None or self._task.done():
            raise RuntimeError("the history writer is not running")
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target)

    async def close(self) -> None:
        if self._task is None:
            return
        if not self._task.done():
            try:
                await asyncio.wait_for(self.flush(), timeout=30)
            except (RuntimeError, TimeoutError):
                lost = self._queue.qsize() + len(self._inflight)
                log.error("history writer stopped with %d events not written", lost)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            self._inflight.append(first)
            # Sleep instead of awaiting get(): an entry must always be either in
            # the queue or in _inflight, where pending_for() can see it. Under a
            # backlog a full batch is already waiting: write it at once.
            if self._queue.qsize() < self._batch - 1:
                await asyncio.sleep(self._interval)
            while len(self._inflight) < self._batch:
                try:
                    self._inflight.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            await self._write_with_retry(list(self._inflight))
            count = len(self._inflight)
            self._inflight.clear()
            async with self._progress:
                self._written += count
                self._progress.notify_all()

    async def _write_with_retry(self, rows: Sequence[HistoryEntry]) -> None:
        while True:
            try:
                await self._insert(rows)
                self.batches += 1
                return
            except IntegrityError:
                await self._insert_one_by_one(rows)
                return
            except (DBAPIError, OSError) as exc:
                log.warning("history batch of %d failed, retrying: %s", len(rows), exc)
                await asyncio.sleep(self._retry_pause)

    async def _insert_one_by_one(self, rows: Sequence[HistoryEntry]) -> None:
        for row in rows:
            try:
                await self._insert([row])
            except IntegrityError as exc:
                log.error(
                    "history event dropped (%s for customer %s): %s",
                    row.kind,
                    row.customer_id,
                    exc.orig,
                )

    async def _insert(self, rows: Sequence[HistoryEntry]) -> None:
        dialect = self._engine.dialect.name
        stmt: Any
        if dialect == "postgresql":
            stmt = postgresql.insert(HistoryEvent).on_conflict_do_nothing(
                index_elements=["dedup_key"]
            )
        elif dialect == "sqlite":
            stmt = sqlite.insert(HistoryEvent).on_conflict_do_nothing(index_elements=["dedup_key"])
        else:
            raise RuntimeError(f"unsupported database {dialect}")
        async with self._engine.begin() as conn:
            await conn.execute(stmt, [r.row() for r in rows])


def encode_cursor(ev: HistoryEvent) -> str:
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
    while frontier and len(family) < 1000:
        rows = await session.scalars(
            select(Customer.id).where(Customer.merged_into_id.in_(frontier))
        )
        frontier = [r for r in rows if r not in family]
        family.extend(frontier)
    return family


async def timeline(
    sessions: async_sessionmaker[AsyncSession],
    customer_id: int,
    *,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[HistoryEvent], str | None]:
    """Newest first; returns the page and the cursor of the next page (or None)."""
    limit = max(1, min(limit, MAX_PAGE))
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
