"""Screen-pop: the customer card, the latest history and the interaction, to one agent.

The history comes from the database plus the entries still waiting in the
history writer, so the pop never waits for a batch to be written.

Theory of operation (prefetched card): a call's card can be read before it is
offered (cti.calls prefetches it when the caller becomes known):
``snapshot()`` takes the writer's ``mark()``, then reads the canonical
customer, its merged family, the card and the latest stored history. At pop
time ``from_snapshot()`` adds every history entry the writer took after the
mark (written since, in flight or queued) for the family: no database round
trip, and nothing the pop would have read from the table is missing. The
snapshot is refused (the caller rebuilds from the database) when it is older
than ``max_age``, when the writer no longer keeps the entries since its mark,
or when a merge or merge undo touching the family went through the writer
since (the card and the family changed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from cti.conversations import conversation_json
from cti.customers import CustomerService, card_json
from cti.errors import NotFound
from cti.history import (
    HistoryEntry,
    HistoryWriter,
    StoredEvent,
    entry_json,
    event_json,
    family_ids,
    merged_family,
    read_page,
    sqlite_reader,
    timeline,
)
from cti.hub import EventHub
from cti.models import Agent, Conversation, Customer, Identity

T = TypeVar("T")

POP_HISTORY = 20
CARD_EVENTS = frozenset({"customer_merged", "customer_merge_undone"})


@dataclass(frozen=True, slots=True)
class CardSnapshot:
    """A customer's card and stored history as read at ``taken`` (monotonic)."""

    customer_id: int
    family: frozenset[int]
    card: dict[str, Any]
    stored: list[dict[str, Any]]
    mark: int
    taken: float


def _merged_history(
    stored: list[dict[str, Any]], extra: list[HistoryEntry]
) -> list[dict[str, Any]]:
    written = {(e["kind"], e["conversation_id"], e["occurred_at"]) for e in stored}
    pending = []
    for e in extra:
        key = (e.kind, e.conversation_id, e.occurred_at.isoformat())
        if key not in written:
            written.add(key)
            pending.append(entry_json(e))
    merged = sorted(pending + stored, key=lambda e: str(e["occurred_at"]), reverse=True)
    return merged[:POP_HISTORY]


class InlineReads:
    """Run a synchronous read: on a SQLite file inline on the loop, else on a connection.

    The inline path is cti.history's SqliteInlineReader (read-only connection,
    WAL: never waits for a writer, no pool connection, no thread hop): under
    load the pool's connections sit in SQLite's busy handler behind the write
    lock, and a read queued behind them waited seconds. A busy/locked answer
    (a WAL checkpoint) goes the ordinary way.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        engine = sessions.kw.get("bind")
        self._engine = engine if isinstance(engine, AsyncEngine) else None
        self._sessions = sessions

    async def run(self, read: Callable[[Connection], T]) -> T:
        if self._engine is not None:
            inline = sqlite_reader(self._engine)
            if inline is not None:
                try:
                    with inline.engine.connect() as conn:
                        return read(conn)
                except OperationalError as exc:
                    if "locked" not in str(exc.orig) and "busy" not in str(exc.orig):
                        raise
            async with self._engine.connect() as aconn:
                return await aconn.run_sync(read)
        async with self._sessions() as session:
            sconn = await session.connection()
            return await sconn.run_sync(read)


def read_card(
    conn: Connection, customer_id: int
) -> tuple[Customer, list[int], list[Identity], list[StoredEvent]]:
    """The canonical customer, its merged family, identities and latest stored history."""
    with Session(conn) as session:
        customer = session.get(Customer, customer_id)
        seen: set[int] = set()
        while customer is not None and customer.merged_into_id is not None:
            if customer.id in seen or len(seen) > 100:
                break
            seen.add(customer.id)
            customer = session.get(Customer, customer.merged_into_id)
        if customer is None:
            raise NotFound(f"customer {customer_id} does not exist", customer_id=customer_id)
        family = family_ids(conn, customer.id)
        identities = list(
            session.scalars(
                select(Identity).where(Identity.customer_id.in_(family)).order_by(Identity.id)
            )
        )
        session.expunge_all()
    return customer, family, identities, read_page(conn, customer.id, POP_HISTORY, None)


class ScreenPop:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        customers: CustomerService,
        history: HistoryWriter,
        hub: EventHub,
        *,
        max_age: float = 30.0,
    ) -> None:
        self._sessions = sessions
        self._customers = customers
        self._history = history
        self._hub = hub
        self.max_age = max_age
        self.reads = InlineReads(sessions)
        self.from_memory = 0
        self.from_database = 0

    async def build(
        self, conv: Conversation, interaction: dict[str, Any], owner_login: str | None = None
    ) -> dict[str, Any]:
        self.from_database += 1
        customer = await self._customers.get(conv.customer_id)
        async with self._sessions() as session:
            family = await merged_family(session, customer.id)
        # Snapshot the writer's backlog BEFORE reading the table: an entry written
        # in between then shows up twice (dropped below) rather than not at all.
        backlog = self._history.pending_for(family)
        events, _ = await timeline(self._sessions, customer.id, limit=POP_HISTORY)
        return {
            "channel": conv.channel,
            "customer": await self._customers.card(customer),
            "conversation": conversation_json(conv, owner_login),
            "history": _merged_history([event_json(e) for e in events], backlog),
            "interaction": interaction,
        }

    async def snapshot(self, customer_id: int) -> CardSnapshot:
        """Read the card now, to pop from memory later (see from_snapshot)."""
        mark = self._history.mark()  # BEFORE the reads: later entries come from the writer
        taken = time.monotonic()
        customer, family, identities, events = await self.reads.run(
            lambda conn: read_card(conn, customer_id)
        )
        return CardSnapshot(
            customer_id=customer.id,
            family=frozenset(family),
            card=card_json(customer, identities),
            stored=[event_json(e) for e in events],
            mark=mark,
            taken=taken,
        )

    def from_snapshot(
        self,
        snap: CardSnapshot,
        conv: Conversation,
        interaction: dict[str, Any],
        owner_login: str | None = None,
    ) -> dict[str, Any] | None:
        """The pop body from a snapshot plus the writer's entries since; None if stale."""
        if time.monotonic() - snap.taken > self.max_age:
            return None
        since = self._history.entries_since(snap.mark)
        if since is None:
            return None
        family = snap.family
        mine = []
        for e in since:
            if e.kind in CARD_EVENTS and (
                e.customer_id in family or e.payload.get("source_id") in family
            ):
                return None  # merged / unmerged since: card and family changed
            if e.customer_id in family:
                mine.append(e)
        self.from_memory += 1
        return {
            "channel": conv.channel,
            "customer": snap.card,
            "conversation": conversation_json(conv, owner_login),
            "history": _merged_history(snap.stored, mine),
            "interaction": interaction,
        }

    async def pop(self, agent: Agent, conv: Conversation, interaction: dict[str, Any]) -> int:
        body = await self.build(conv, interaction)
        return self._hub.publish([agent.id], "screen_pop", body)

    def publish(self, agent: Agent, body: dict[str, Any]) -> int:
        return self._hub.publish([agent.id], "screen_pop", body)

    async def on_text_assigned(self, conv: Conversation, agent: Agent) -> None:
        await self.pop(agent, conv, {"queue": conv.queue, "contact": conv.contact})
