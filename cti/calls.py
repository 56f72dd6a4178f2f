"""Calls from the PBX (pbx.changes) become voice conversations and history.

Theory of operation: one voice conversation per ``call_id`` (its
``external_ref``), created by the first change that carries the caller's
number (CallStarted, CallQueued or CallOffered) after identifying the caller.
Each change becomes at most one history event whose ``dedup_key`` is derived
from the change itself, so the same change delivered twice (after an AMI
reconnect and resync) is recorded once. CallOffered is the screen-pop moment:
the agent whose endpoint is the offered interface gets the pop before the
phone is answered. Changes for calls we never saw start (we connected
mid-call) and that carry no caller number are ignored.

Screen-pop without waiting (theory of operation): once a call's conversation
exists, its customer card is prefetched (``ScreenPop.snapshot``, refreshed
every CARD_REFRESH s while the call lives, dropped at CallEnded), so the pop
is built from memory plus the history writer's entries since. The forwarder
calls ``early(change)`` as soon as a CallOffered arrives, before the call's
earlier changes finish in its lane: the pop is published from its own task as
soon as the conversation exists (its CallStarted's ``open()``) and the card is
ready, never behind the lane's other work (listeners, bookkeeping writes).
The lane's CallOffered then only records the offer (after waiting for that
task, so the pop precedes the call's later events); if the early pop could
not be made it pops the classic way (read everything), so no pop is lost.

A caller the IVR moved to SMS / web chat (``mark_deflected``) left the queue
with the outcome ``deflected`` (a ``call_deflected`` event): a CallAbandoned for
that call is not recorded, and its ``call_ended`` carries ``outcome:
deflected``, so reports never count it as abandoned.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Executable, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from cti.agents import AgentService
from cti.conversations import ConversationService
from cti.customers import CustomerService
from cti.errors import InvalidInput
from cti.history import HistoryEntry, HistoryWriter
from cti.hub import EventHub
from cti.identities import IdentityKind
from cti.logs import correlate
from cti.models import Conversation, Customer, HistoryEvent, Identity
from cti.screenpop import CardSnapshot, ScreenPop
from pbx.changes import (
    CallAbandoned,
    CallAnswered,
    CallEnded,
    CallHeld,
    CallOffered,
    CallQueued,
    CallStarted,
    CallTransferred,
    Change,
    PbxLinkChanged,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_CALL_IDS = 10_000

MAX_DEFLECTED_MEMO = 10_000
CARD_REFRESH = 15.0  # a live call's prefetched card is read again this often
MAX_EARLY = 10_000
ANONYMOUS = {"", "anonymous", "unknown", "restricted", "<unknown>"}


Op = Callable[[AsyncSession], Awaitable[Any]]


class _Updates:
    """Group commit of the bookkeeping writes of every call: one writer task.

    Concurrent calls each needed their own write transaction (new conversation,
    queue, owner, status); on SQLite they queued for its one write lock, each
    parking a pool connection in the busy handler (measured under the bench's
    load: a call's conversation INSERT p50 4.3 s, p90 14.7 s), and a call's
    screen-pop waited for it. Here every write submitted while a batch is being
    written goes into the next batch: one transaction for all of them, in
    submission order (so a call's writes land in its order). A batch that fails
    is retried one write per transaction, so one bad write fails only its own
    caller. ``insert`` adds a new row made by ``make()`` (made afresh on a
    retry) and returns it with its id.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.statements = 0

    def _submit(self, op: Op) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="calls-updates")
        return fut

    def submit(self, stmt: Executable) -> asyncio.Future[None]:
        async def op(session: AsyncSession) -> None:
            await session.execute(stmt)

        return self._submit(op)

    def insert(self, make: Callable[[], T]) -> asyncio.Future[T]:
        async def op(session: AsyncSession) -> T:
            row = make()
            session.add(row)
            await session.flush()
            return row

        return self._submit(op)

    def later(self, stmt: Executable, what: str) -> None:
        """Write-behind: nobody waits; a failure is logged."""

        def done(fut: asyncio.Future[None]) -> None:
            if not fut.cancelled() and (exc := fut.exception()) is not None:
                log.error("could not write %s: %s", what, exc)

        self.submit(stmt).add_done_callback(done)

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            self.batches += 1
            self.statements += len(batch)
            results: list[Any] = []
            try:
                async with self._sessions() as session, session.begin():
                    for op, _ in batch:
                        results.append(await op(session))
            except asyncio.CancelledError:
                for _, fut in batch + self._pending:
                    fut.cancel()
                raise
            except Exception as exc:
                if len(batch) > 1:
                    await self._one_by_one(batch)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    async def _one_by_one(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        """After a failed batch: each write alone; the failing ones keep theirs."""
        for op, fut in batch:
            try:
                async with self._sessions() as session, session.begin():
                    result = await op(session)
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(result)


@dataclass(eq=False, slots=True)
class _Card:
    """A live call's prefetched card: the latest snapshot and the task keeping it."""

    ready: asyncio.Event = field(default_factory=asyncio.Event)
    snap: CardSnapshot | None = None
    task: asyncio.Task[None] | None = None


def _by_ref(conn: Connection, call_id: str) -> Conversation | None:
    with Session(conn) as session:
        conv = session.scalar(select(Conversation).where(Conversation.external_ref == call_id))
        session.expunge_all()
    return conv


def _caller(conn: Connection, kind: str, value: str) -> int | None:
    """The (canonical) customer owning this identity, or None."""
    customer_id = conn.scalar(
        select(Identity.customer_id).where(Identity.kind == kind, Identity.value == value)
    )
    seen: set[int] = set()
    while customer_id is not None and customer_id not in seen and len(seen) <= 100:
        seen.add(customer_id)
        parent = conn.scalar(select(Customer.merged_into_id).where(Customer.id == customer_id))
        if parent is None:
            break
        customer_id = parent
    return customer_id


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC) if ts > 0 else datetime.now(UTC)


def _consume(fut: asyncio.Future[Conversation]) -> None:
    """Nobody may wait for an opening conversation: its failure is the lane's to log."""
    if not fut.cancelled():
        fut.exception()


class CallHandler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        customers: CustomerService,
        conversations: ConversationService,
        agents: AgentService,
        history: HistoryWriter,
        screen_pop: ScreenPop,
        hub: EventHub,
    ) -> None:
        self._sessions = sessions
        self._customers = customers
        self._conversations = conversations
        self._agents = agents
        self._history = history
        self._pop = screen_pop
        self._hub = hub
        self.link_state: dict[str, PbxLinkChanged] = {}
        # call id -> (conversation id, customer id) of live calls (see _record)
        self._call_ids: OrderedDict[str, tuple[int, int]] = OrderedDict()
        # call id -> its voice conversation, for live calls: CallStarted, CallQueued
        # and every CallOffered of a call need it; one query per call, not per change.
        self._convs: OrderedDict[str, Conversation] = OrderedDict()
        # Other services that follow PBX changes (presence, IVR, callbacks, wallboard):
        # each is awaited after the call bookkeeping, in order; one failing is logged.
        self.listeners: list[Callable[[Change], Awaitable[None]]] = []
        self._deflected: dict[str, int] = {}  # call_id -> text conversation (memo)
        self._updates = _Updates(sessions)
        bind = sessions.kw.get("bind")
        self._sqlite = bind is not None and bind.dialect.name == "sqlite"
        # call id -> the conversation being opened (for early pops waiting on it)
        self._opening: dict[str, asyncio.Future[Conversation]] = {}
        self._cards: OrderedDict[str, _Card] = OrderedDict()  # call id -> prefetched card
        # (call id, interface, at) of a CallOffered -> its early pop (True: done)
        self._early: OrderedDict[tuple[str, str, float], asyncio.Task[bool]] = OrderedDict()
        self.early_pops = 0

    async def close(self) -> None:
        """Stop the card prefetches and early pops (server shutdown)."""
        tasks: list[asyncio.Task[Any]] = list(self._early.values())
        for call_id in list(self._cards):
            card = self._cards[call_id]
            if card.task is not None:
                tasks.append(card.task)
            self._drop_card(call_id)
        self._early.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self, change: Change) -> None:
        call_id: str | None = getattr(change, "call_id", None)
        if call_id is None:
            await self._handle(change)
            await self._notify(change)
            return
        with correlate(f"call:{call_id}"):
            await self._handle(change)
            await self._notify(change)

    async def _notify(self, change: Change) -> None:
        for listener in list(self.listeners):
            try:
                await listener(change)
            except Exception:
                log.exception("listener %r failed on %s", listener, type(change).__name__)

    async def _handle(self, change: Change) -> None:
        match change:
            case CallStarted():
                await self._ensure(
                    change.call_id, change.caller_number, change.caller_name, None, change.at
                )
                await self._record(
                    change.call_id,
                    "call_started",
                    change.at,
                    {"dialled": change.dialled, "caller": change.caller_number},
                    "started",
                )
            case CallQueued():
                conv = await self._ensure(
                    change.call_id,
                    change.caller_number,
                    change.caller_name,
                    change.queue,
                    change.at,
                )
                await self._set_queue(conv, change.queue)
                await self._record(
                    change.call_id,
                    "call_queued",
                    change.at,
                    {"queue": change.queue, "position": change.position},
                    f"queued:{change.queue}",
                )
            case CallOffered():
                await self._offered(change)
            case CallAnswered():
                await self._answered(change)
            case CallHeld():
                kind = "call_held" if change.held else "call_unheld"
                await self._record(change.call_id, kind, change.at, {}, f"{kind}:{change.at:.3f}")
            case CallTransferred():
                await self._record(
                    change.call_id,
                    "call_transferred",
                    change.at,
                    {
                        "kind": change.kind,
                        "target": change.target,
                        "agent_interface": change.agent_interface,
                    },
                    f"transferred:{change.target}:{change.at:.3f}",
                )
            case CallAbandoned():
                if await self.deflected_to(change.call_id) is not None:
                    return
                await self._record(
                    change.call_id,
                    "call_abandoned",
                    change.at,
                    {"queue": change.queue, "position": change.position, "wait": change.wait},
                    "abandoned",
                )
            case CallEnded():
                await self._ended(change)
                self._call_ids.pop(change.call_id, None)
                self._convs.pop(change.call_id, None)
                self._drop_card(change.call_id)
            case PbxLinkChanged():
                self.link_state[change.pbx] = change
            case _:
                pass

    async def mark_deflected(self, call_id: str, conversation_id: int, queue: str) -> None:
        """The IVR moved this waiting caller to a text conversation (outcome ``deflected``)."""
        if len(self._deflected) >= MAX_DEFLECTED_MEMO:
            self._deflected.pop(next(iter(self._deflected)))
        self._deflected[call_id] = conversation_id
        await self._record(
            call_id,
            "call_deflected",
            datetime.now(UTC).timestamp(),
            {"queue": queue, "outcome": "deflected", "conversation_id": conversation_id},
            "deflected",
        )

    async def deflected_to(self, call_id: str) -> int | None:
        """The text conversation a deflected call went to (memo, else the history)."""
        found = self._deflected.get(call_id)
        if found is not None:
            return found
        async with self._sessions() as session:
            payload = await session.scalar(
                select(HistoryEvent.payload).where(
                    HistoryEvent.dedup_key == f"{call_id}:deflected"[:200]
                )
            )
        if isinstance(payload, dict) and isinstance(payload.get("conversation_id"), int):
            return int(payload["conversation_id"])
        return None

    async def _ensure(
        self, call_id: str, number: str, name: str, queue: str | None, at: float
    ) -> Conversation:
        cached = self._convs.get(call_id)
        if cached is not None:
            return cached
        opening = self._opening.get(call_id)
        if opening is not None:
            return await asyncio.shield(opening)
        fut: asyncio.Future[Conversation] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume)
        self._opening[call_id] = fut
        try:
            conv = await self._open(call_id, number, name, queue, at)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            fut.set_exception(exc)
            raise
        else:
            fut.set_result(conv)
        finally:
            if self._opening.get(call_id) is fut:
                del self._opening[call_id]
        return conv

    async def _open(
        self, call_id: str, number: str, name: str, queue: str | None, at: float
    ) -> Conversation:
        # Reads first (inline on SQLite: no pool connection, no wait for writers):
        # a call we knew before a resync, then the caller. Only an unknown caller
        # costs a write before the conversation's own INSERT, which on SQLite goes
        # through the group commit (one transaction with every other call's
        # writes). On PostgreSQL it stays one transaction per call: there the
        # one writer task serialising every INSERT was slower (bench.screenpop
        # --db postgresql, B p50 3.5-4.5 s vs 1.3-3.2 s before it).
        existing = await self._pop.reads.run(lambda conn: _by_ref(conn, call_id))
        if existing is not None:
            self._remember(call_id, existing)
            self._prefetch(call_id, existing.customer_id)
            return existing
        customer_id: int | None = None
        if number.strip().lower() in ANONYMOUS:
            customer_id = (await self._customers.new_anonymous(name or "Anonymous caller")).id
        else:
            try:
                ident = self._customers.normalise(IdentityKind.PHONE, number)
            except InvalidInput:
                pass  # identify() below says why
            else:
                customer_id = await self._pop.reads.run(
                    lambda conn: _caller(conn, ident.kind.value, ident.value)
                )
            if customer_id is None:
                customer, _ = await self._customers.identify(IdentityKind.PHONE, number, name=name)
                customer_id = customer.id
        self._prefetch(call_id, customer_id)  # the card is read while the INSERT waits

        def make() -> Conversation:
            return Conversation(
                channel="voice",
                status="queued",
                queue=queue,
                customer_id=customer_id,
                contact=number[:256],
                tags=[],
                external_ref=call_id,
                queued_at=_at(at),
            )

        try:
            if self._sqlite:
                conv = await self._updates.insert(make)
            else:  # no single write lock: each call's INSERT on its own, concurrently
                async with self._sessions() as session, session.begin():
                    conv = make()
                    session.add(conv)
        except IntegrityError:  # external_ref is unique: opened meanwhile (another node)
            found = await self._conversations.by_ref(call_id)
            if found is None:
                raise
            conv = found
        self._remember(call_id, conv)
        return conv

    def _prefetch(self, call_id: str, customer_id: int) -> None:
        """Start keeping this live call's card in memory (see the module docstring)."""
        if call_id in self._cards:
            return
        if len(self._cards) >= MAX_CALL_IDS:
            self._drop_card(next(iter(self._cards)))
        card = _Card()
        card.task = asyncio.create_task(self._keep_card(card, customer_id), name="calls-card")
        self._cards[call_id] = card

    async def _keep_card(self, card: _Card, customer_id: int) -> None:
        while True:
            try:
                card.snap = await self._pop.snapshot(customer_id)
            except Exception as exc:
                log.warning("could not prefetch the card of customer %s: %s", customer_id, exc)
                card.snap = None
            card.ready.set()
            await asyncio.sleep(CARD_REFRESH)

    def _drop_card(self, call_id: str) -> None:
        card = self._cards.pop(call_id, None)
        if card is not None:
            if card.task is not None:
                card.task.cancel()
            card.ready.set()  # a pop waiting for it reads the database instead

    def _remember(self, call_id: str, conv: Conversation) -> None:
        if len(self._call_ids) >= MAX_CALL_IDS:
            self._call_ids.popitem(last=False)
        self._call_ids[call_id] = (conv.id, conv.customer_id)
        if len(self._convs) >= MAX_CALL_IDS:
            self._convs.popitem(last=False)
        self._convs[call_id] = conv

    async def _set_queue(self, conv: Conversation, queue: str) -> None:
        if conv.queue != queue:
            # Write-behind: the call's next change (often its CallOffered, the
            # screen-pop, milliseconds later) does not wait for this write; the
            # cached conversation has the queue now, and the call's later
            # updates go through the same ordered batches after it.
            self._updates.later(
                update(Conversation).where(Conversation.id == conv.id).values(queue=queue),
                f"the queue of conversation {conv.id}",
            )
            conv.queue = queue

    async def _record(
        self, call_id: str, kind: str, at: float, payload: dict[str, Any], key: str
    ) -> None:
        # The ids of a call's conversation never change while it lasts: remembered
        # per call id (bounded), one query per call instead of one per change.
        ids = self._call_ids.get(call_id)
        if ids is None:
            conv = await self._conversations.by_ref(call_id)
            if conv is None:
                log.debug("%s for unknown call %s ignored", kind, call_id)
                return
            self._remember(call_id, conv)
            ids = (conv.id, conv.customer_id)
        conv_id, customer_id = ids
        await self._history.add(
            HistoryEntry(
                customer_id=customer_id,
                conversation_id=conv_id,
                kind=kind,
                channel="voice",
                occurred_at=_at(at),
                payload={"call_id": call_id, **payload},
                dedup_key=f"{call_id}:{key}"[:200],
            )
        )

    def early(self, change: Change) -> None:
        """A change just arrived (before its lane runs): start a CallOffered's pop now.

        Only for a call whose conversation exists or is being opened; the lane's
        CallOffered waits for the result (and pops itself if this one failed).
        """
        if not isinstance(change, CallOffered):
            return
        call_id = change.call_id
        if call_id not in self._convs and call_id not in self._opening:
            return
        key = (call_id, change.agent_interface, change.at)
        if key in self._early:
            return
        if len(self._early) >= MAX_EARLY:
            _, old = self._early.popitem(last=False)
            old.cancel()
        self._early[key] = asyncio.create_task(self._early_pop(change), name="calls-early-pop")

    async def _early_pop(self, change: CallOffered) -> bool:
        try:
            with correlate(f"call:{change.call_id}"):
                conv = self._convs.get(change.call_id)
                if conv is None:
                    opening = self._opening.get(change.call_id)
                    if opening is None:
                        return False
                    conv = await asyncio.shield(opening)
                agent = await self._agents.by_endpoint(change.agent_interface)
                if agent is not None:
                    body = await self._pop_body(change, conv)
                    self._pop.publish(agent, body)
                    self.early_pops += 1
                return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("early screen-pop of call %s not made (%s); the lane pops",
                        change.call_id, exc)
            return False

    @staticmethod
    def _interaction(change: CallOffered) -> dict[str, Any]:
        return {
            "queue": change.queue,
            "wait": change.wait,
            "dialled": change.dialled,
            "caller": change.caller_number,
            "caller_name": change.caller_name,
            "call_id": change.call_id,
            "pbx": change.pbx,
        }

    async def _pop_body(self, change: CallOffered, conv: Conversation) -> dict[str, Any]:
        """From the prefetched card when it is fresh, else read from the database."""
        interaction = self._interaction(change)
        card = self._cards.get(change.call_id)
        if card is not None:
            await card.ready.wait()
            snap = card.snap
            if snap is not None and conv.customer_id in snap.family:
                body = self._pop.from_snapshot(snap, conv, interaction)
                if body is not None:
                    return body
        return await self._pop.build(conv, interaction)

    async def _offered(self, change: CallOffered) -> None:
        popped = False
        early = self._early.pop((change.call_id, change.agent_interface, change.at), None)
        if early is not None:
            try:
                popped = await early
            except asyncio.CancelledError:
                if not early.cancelled():
                    raise  # we were cancelled, not the early pop
        conv = await self._ensure(
            change.call_id,
            change.caller_number,
            change.caller_name,
            change.queue,
            change.at - change.wait,
        )
        agent = await self._agents.by_endpoint(change.agent_interface)
        if agent is not None and not popped:
            self._pop.publish(agent, await self._pop_body(change, conv))
        await self._record(
            change.call_id,
            "call_offered",
            change.at,
            {
                "queue": change.queue,
                "agent_interface": change.agent_interface,
                "agent": agent.login if agent else None,
                "wait": change.wait,
            },
            f"offered:{change.agent_interface}:{change.at:.3f}",
        )

    async def _answered(self, change: CallAnswered) -> None:
        conv = self._convs.get(change.call_id) or await self._conversations.by_ref(change.call_id)
        if conv is None:
            return
        agent = await self._agents.by_endpoint(change.agent_interface)
        if agent is not None:
            await self._updates.submit(
                update(Conversation)
                .where(Conversation.id == conv.id, Conversation.status != "closed")
                .values(owner_id=agent.id, status="assigned")
            )
            if conv.status != "closed":  # the cached copy follows the row
                conv.owner_id = agent.id
                conv.status = "assigned"
            self._hub.publish(
                [agent.id], "call_answered", {"conversation_id": conv.id, "call_id": change.call_id}
            )
        await self._record(
            change.call_id,
            "call_answered",
            change.at,
            {
                "queue": change.queue,
                "agent_interface": change.agent_interface,
                "agent": agent.login if agent else None,
                "wait": change.wait,
                "ring": change.ring,
            },
            f"answered:{change.agent_interface}",
        )

    async def _ended(self, change: CallEnded) -> None:
        conv = await self._conversations.by_ref(change.call_id)
        if conv is None:
            return
        status = "wrapup" if conv.owner_id is not None else "closed"
        await self._updates.submit(
            update(Conversation)
            .where(Conversation.id == conv.id, Conversation.status.in_(("queued", "assigned")))
            .values(status=status, closed_at=_at(change.at) if status == "closed" else None)
        )
        d = change.durations
        deflected_to = await self.deflected_to(change.call_id)
        outcome = {"outcome": "deflected", "deflected_to": deflected_to} if deflected_to else {}
        await self._record(
            change.call_id,
            "call_ended",
            change.at,
            {
                "cause": change.cause,
                "cause_text": change.cause_text,
                "reason": change.reason,
                "queue": change.queue,
                "agent_interface": change.agent_interface,
                "wait": d.wait,
                "ring": d.ring,
                "talk": d.talk,
                "hold": d.hold,
                **outcome,
            },
            "ended",
        )
        if conv.owner_id is not None:
            self._hub.publish(
                [conv.owner_id],
                "call_ended",
                {"conversation_id": conv.id, "call_id": change.call_id},
            )
