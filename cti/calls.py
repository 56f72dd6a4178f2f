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
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Executable, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cti.agents import AgentService
from cti.conversations import ConversationService
from cti.customers import CustomerService
from cti.history import HistoryEntry, HistoryWriter
from cti.hub import EventHub
from cti.identities import IdentityKind
from cti.logs import correlate
from cti.models import Conversation, HistoryEvent
from cti.screenpop import ScreenPop
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
MAX_CALL_IDS = 10_000

MAX_DEFLECTED_MEMO = 10_000
ANONYMOUS = {"", "anonymous", "unknown", "restricted", "<unknown>"}


class _Updates:
    """Group commit of the bookkeeping UPDATEs of every call: one writer task.

    Concurrent calls each needed their own write transaction (queue, owner,
    status); on SQLite they queued for its one write lock, each parking a pool
    connection in the busy handler, and a call's screen-pop waited behind its
    own CallQueued UPDATE in its lane. Here every UPDATE submitted while a
    batch is being written goes into the next batch: one transaction for all
    of them, in submission order (so a call's updates land in its order). A
    batch that fails is retried one statement per transaction, so one bad
    statement fails only its own caller.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._pending: list[tuple[Executable, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.statements = 0

    def submit(self, stmt: Executable) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((stmt, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="calls-updates")
        return fut

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
            try:
                async with self._sessions() as session, session.begin():
                    for stmt, _ in batch:
                        await session.execute(stmt)
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
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def _one_by_one(self, batch: list[tuple[Executable, asyncio.Future[None]]]) -> None:
        """After a failed batch: each statement alone; the failing ones keep theirs."""
        for stmt, fut in batch:
            try:
                async with self._sessions() as session, session.begin():
                    await session.execute(stmt)
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(None)


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC) if ts > 0 else datetime.now(UTC)


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
        if number.strip().lower() in ANONYMOUS:
            existing = await self._conversations.by_ref(call_id)
            if existing is not None:
                self._remember(call_id, existing)
                return existing
            customer = await self._customers.new_anonymous(name or "Anonymous caller")
        else:
            # open() below finds a conversation that exists already (by external_ref):
            # no separate lookup first; identify() finds the same customer again.
            customer, _ = await self._customers.identify(IdentityKind.PHONE, number, name=name)
        conv, _ = await self._conversations.open(
            "voice",
            customer.id,
            queue=queue,
            contact=number[:256],
            external_ref=call_id,
            queued_at=_at(at),
        )
        self._remember(call_id, conv)
        return conv

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

    async def _offered(self, change: CallOffered) -> None:
        conv = await self._ensure(
            change.call_id,
            change.caller_number,
            change.caller_name,
            change.queue,
            change.at - change.wait,
        )
        agent = await self._agents.by_endpoint(change.agent_interface)
        if agent is not None:
            interaction = {
                "queue": change.queue,
                "wait": change.wait,
                "dialled": change.dialled,
                "caller": change.caller_number,
                "caller_name": change.caller_name,
                "call_id": change.call_id,
                "pbx": change.pbx,
            }
            await self._pop.pop(agent, conv, interaction)
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
