"""Conversations: open, take (atomic), transfer, close, replies, text assignment.

Theory of operation: a conversation is ``queued`` (no owner) -> ``assigned``
(one owner) -> ``wrapup`` (voice, after hang-up) -> ``closed``. Taking is a
compare-and-set in the database, ``UPDATE ... SET owner_id = me WHERE id = X
AND owner_id IS NULL AND status = 'queued'``: whatever the number of server
processes, exactly one UPDATE changes the row; every other taker re-reads the
row and gets 409 naming the owner. Capacity is one voice plus ``max_text``
text conversations per agent; automatic text assignment picks the available
agent with the skill that has the fewest open text conversations, under a
process-wide lock so two assignments do not both see the same free slot.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import FlushError

from cti.auth import Principal, Role
from cti.errors import AlreadyTaken, AtCapacity, Conflict, Forbidden, InvalidInput, NotFound
from cti.history import HistoryEntry, HistoryWriter
from cti.models import Agent, Conversation, HistoryEvent, WrapUpCode, utcnow

CHANNELS = ("voice", "sms", "chat")
OPEN = ("queued", "assigned", "wrapup")
MAX_TEXT = 4096
MAX_IDEMPOTENCY_KEY = 128
SENDING = "sending"
REPLAY_WAIT = 30.0
REPLAY_POLL = 0.05


class IdempotencyKeyReused(InvalidInput):
    code = "idempotency_key_reused"


def check_idempotency_key(key: str) -> None:
    """1..128 printable ASCII characters (space to tilde)."""
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in key):
        raise InvalidInput(
            f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            field="Idempotency-Key",
        )


def _reply_dedup_key(conversation_id: int, key: str) -> str:
    return f"reply:{conversation_id}:{key}"


def _reply_json(conversation_id: int, event_id: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "conversation_id": conversation_id,
        "message_id": event_id,
        "status": payload.get("status"),
        "text": payload.get("text"),
        "idempotency_key": payload.get("idempotency_key"),
    }


class OutboundSender(Protocol):
    """Seam for SMS/chat replies; the lead wires the SMS gateway and web chat."""

    async def send(self, channel: str, contact: str, text: str, conversation_id: int) -> str:
        """Hand the message over; return a status such as "queued" or "sent"."""
        ...


class NoOutbound:
    async def send(self, channel: str, contact: str, text: str, conversation_id: int) -> str:
        return "no_gateway"


def conversation_json(conv: Conversation, owner_login: str | None = None) -> dict[str, Any]:
    return {
        "id": conv.id,
        "channel": conv.channel,
        "status": conv.status,
        "queue": conv.queue,
        "skill": conv.skill,
        "customer_id": conv.customer_id,
        "contact": conv.contact,
        "owner_id": conv.owner_id,
        "owner_login": owner_login,
        "tags": conv.tags,
        "wrap_up_code": conv.wrap_up_code,
        "external_ref": conv.external_ref,
        "linked_to_id": conv.linked_to_id,
        "queued_at": conv.queued_at.isoformat(),
        "created_at": conv.created_at.isoformat(),
        "closed_at": conv.closed_at.isoformat() if conv.closed_at else None,
    }


AssignedHook = Callable[[Conversation, Agent], Awaitable[None]]


class ConversationService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        history: HistoryWriter,
        outbound: OutboundSender | None = None,
    ) -> None:
        self._sessions = sessions
        self._history = history
        self.outbound: OutboundSender = outbound or NoOutbound()
        self._assign_lock = asyncio.Lock()
        self.on_assigned: list[AssignedHook] = []

    async def open(
        self,
        channel: str,
        customer_id: int,
        *,
        queue: str | None = None,
        skill: str | None = None,
        contact: str = "",
        external_ref: str | None = None,
        linked_to_id: int | None = None,
        queued_at: datetime | None = None,
    ) -> tuple[Conversation, bool]:
        """Open a conversation; with ``external_ref`` it is idempotent (created flag)."""
        if channel not in CHANNELS:
            raise InvalidInput(f"channel must be one of {CHANNELS}", field="channel")
        if external_ref is not None:
            found = await self.by_ref(external_ref)
            if found is not None:
                return found, False
        conv = Conversation(
            channel=channel,
            status="queued",
            queue=queue,
            skill=skill,
            customer_id=customer_id,
            contact=contact[:256],
            tags=[],
            external_ref=external_ref,
            linked_to_id=linked_to_id,
            queued_at=queued_at or utcnow(),
        )
        try:
            async with self._sessions() as session, session.begin():
                session.add(conv)
        except IntegrityError:
            if external_ref is None:
                raise
            found = await self.by_ref(external_ref)
            if found is None:
                raise
            return found, False
        return conv, True

    async def by_ref(self, external_ref: str) -> Conversation | None:
        async with self._sessions() as session:
            return await session.scalar(
                select(Conversation).where(Conversation.external_ref == external_ref)
            )

    async def get(self, conversation_id: int) -> Conversation:
        async with self._sessions() as session:
            conv = await session.get(Conversation, conversation_id)
        if conv is None:
            raise NotFound(
                f"conversation {conversation_id} does not exist", conversation_id=conversation_id
            )
        return conv

    async def owner_login(self, conv: Conversation) -> str | None:
        if conv.owner_id is None:
            return None
        async with self._sessions() as session:
            return await session.scalar(select(Agent.login).where(Agent.id == conv.owner_id))

    async def load(self, agent_id: int) -> tuple[int, int]:
        """(open voice, open text) conversations owned by the agent."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(Conversation.channel, func.count())
                .where(Conversation.owner_id == agent_id, Conversation.status == "assigned")
                .group_by(Conversation.channel)
            )
            counts = {channel: int(n) for channel, n in rows}
        return counts.get("voice", 0), counts.get("sms", 0) + counts.get("chat", 0)

    async def _check_capacity(self, agent: Agent, channel: str) -> None:
        voice, text = await self.load(agent.id)
        if channel == "voice" and voice >= 1:
            raise AtCapacity("the agent is already on a call", agent=agent.login)
        if channel != "voice" and text >= agent.max_text:
            raise AtCapacity(
                f"the agent already has {text} text conversations",
                agent=agent.login,
                limit=agent.max_text,
            )

    async def take(self, conversation_id: int, agent_id: int) -> Conversation:
        conv = await self.get(conversation_id)
        async with self._sessions() as session:
            agent = await session.get(Agent, agent_id)
        if agent is None:
            raise NotFound(f"agent {agent_id} does not exist", agent_id=agent_id)
        if conv.owner_id == agent_id and conv.status == "assigned":
            return conv
        await self._check_capacity(agent, conv.channel)
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(Conversation)
                .where(
                    Conversation.id == conversation_id,
                    Conversation.owner_id.is_(None),
                    Conversation.status == "queued",
                )
                .values(owner_id=agent_id, status="assigned")
                .execution_options(synchronize_session=False)
            )
            won = result.rowcount == 1  # type: ignore[attr-defined]
        conv = await self.get(conversation_id)
        if not won:
            if conv.owner_id == agent_id and conv.status == "assigned":
                return conv
            if conv.owner_id is not None:
                owner = await self.owner_login(conv)
                raise AlreadyTaken(
                    f"conversation {conversation_id} is already taken by {owner}",
                    conversation_id=conversation_id,
                    owner=owner,
                    owner_id=conv.owner_id,
                )
            raise Conflict(
                f"conversation {conversation_id} is {conv.status}",
                conversation_id=conversation_id,
                status=conv.status,
            )
        await self._history.add(
            HistoryEntry(
                customer_id=conv.customer_id,
                conversation_id=conv.id,
                kind="assigned",
                channel=conv.channel,
                payload={"agent_id": agent_id, "agent": agent.login, "how": "taken"},
            )
        )
        return conv

    def _check_owner(self, conv: Conversation, actor: Principal) -> None:
        if conv.owner_id != actor.agent_id and not actor.at_least(Role.SUPERVISOR):
            raise Forbidden(
                "this conversation belongs to another agent",
                conversation_id=conv.id,
                owner_id=conv.owner_id,
            )

    async def transfer(
        self,
        conversation_id: int,
        actor: Principal,
        *,
        to_agent: str | None = None,
        to_queue: str | None = None,
    ) -> Conversation:
        if (to_agent is None) == (to_queue is None):
            raise InvalidInput("give exactly one of agent or queue", field="agent")
        conv = await self.get(conversation_id)
        self._check_owner(conv, actor)
        if conv.status not in ("assigned", "queued"):
            raise Conflict(f"conversation {conversation_id} is {conv.status}", status=conv.status)
        payload: dict[str, Any] = {"from_agent_id": conv.owner_id, "by": actor.agent_id}
        async with self._sessions() as session:
            target = (
                await session.scalar(select(Agent).where(Agent.login == to_agent))
                if to_agent is not None
                else None
            )
        if to_agent is not None:
            if target is None:
                raise NotFound(f"agent {to_agent} does not exist", field="agent")
            await self._check_capacity(target, conv.channel)
            values: dict[str, Any] = {"owner_id": target.id, "status": "assigned"}
            payload["to_agent"] = target.login
        else:
            values = {
                "owner_id": None,
                "status": "queued",
                "queue": to_queue,
                "queued_at": utcnow(),
            }
            payload["to_queue"] = to_queue
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(Conversation)
                .where(Conversation.id == conv.id, Conversation.owner_id == conv.owner_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise Conflict("the conversation changed meanwhile; retry", conversation_id=conv.id)
        await self._history.add(
            HistoryEntry(
                customer_id=conv.customer_id,
                conversation_id=conv.id,
                kind="transferred",
                channel=conv.channel,
                payload=payload,
            )
        )
        conv = await self.get(conversation_id)
        if target is not None:
            for hook in self.on_assigned:
                await hook(conv, target)
        return conv

    async def close(
        self, conversation_id: int, actor: Principal, wrap_up_code: str | None
    ) -> Conversation:
        conv = await self.get(conversation_id)
        self._check_owner(conv, actor)
        if conv.status == "closed":
            raise Conflict(f"conversation {conversation_id} is already closed", status="closed")
        async with self._sessions() as session, session.begin():
            if wrap_up_code is not None:
                known = await session.scalar(
                    select(WrapUpCode.id).where(WrapUpCode.code == wrap_up_code)
                )
                if known is None:
                    raise InvalidInput(
                        f"unknown wrap-up code {wrap_up_code!r}", field="wrap_up_code"
                    )
            await session.execute(
                update(Conversation)
                .where(Conversation.id == conv.id)
                .values(status="closed", wrap_up_code=wrap_up_code, closed_at=utcnow())
                .execution_options(synchronize_session=False)
            )
        await self._history.add(
            HistoryEntry(
                customer_id=conv.customer_id,
                conversation_id=conv.id,
                kind="closed",
                channel=conv.channel,
                payload={"wrap_up_code": wrap_up_code, "by": actor.agent_id},
            )
        )
        return await self.get(conversation_id)

    async def send_message(
        self,
        conversation_id: int,
        actor: Principal,
        text: str,
        idempotency_key: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Send a reply; returns (result, sent now). With a key, a repeat replays."""
        if not text.strip() or len(text) > MAX_TEXT:
            raise InvalidInput(f"text must have 1..{MAX_TEXT} characters", field="text")
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        conv = await self.get(conversation_id)
        if conv.owner_id != actor.agent_id:
            raise Forbidden("only the owner can reply", conversation_id=conv.id)
        if idempotency_key is not None:
            done = await self._replay(conv.id, idempotency_key, text)
            if done is not None:
                return done, False
        if conv.status != "assigned":
            raise Conflict(f"conversation {conversation_id} is {conv.status}", status=conv.status)
        if conv.channel == "voice":
            raise Conflict("a voice conversation takes no text replies", channel="voice")
        if idempotency_key is not None:
            return await self._send_once(conv, actor, text, idempotency_key)
        status = await self.outbound.send(conv.channel, conv.contact, text, conv.id)
        entry = HistoryEntry(
            customer_id=conv.customer_id,
            conversation_id=conv.id,
            kind="message_out",
            channel=conv.channel,
            payload={"text": text, "agent_id": actor.agent_id, "status": status},
        )
        await self._history.add(entry)
        return {"conversation_id": conv.id, "status": status, "text": text}, True

    # Theory of operation (Idempotency-Key): the reply's own history row is the
    # claim. It is inserted, in its own short transaction, BEFORE the outbound
    # call, with dedup_key "reply:<conversation>:<key>" (unique), payload status
    # "sending" and the SHA-256 of the text. Of two concurrent requests exactly
    # one INSERT succeeds; the other waits for the row to leave "sending" and
    # replays it. After the send the row gets the final status; if the send
    # raises, the claim is deleted so the client may retry with the same key.
    # No transaction or lock is held while the gateway is called.
    async def _send_once(
        self, conv: Conversation, actor: Principal, text: str, key: str
    ) -> tuple[dict[str, Any], bool]:
        digest = hashlib.sha256(text.encode()).hexdigest()
        claim = HistoryEvent(
            customer_id=conv.customer_id,
            conversation_id=conv.id,
            kind="message_out",
            channel=conv.channel,
            occurred_at=utcnow(),
            payload={
                "text": text,
                "agent_id": actor.agent_id,
                "status": SENDING,
                "idempotency_key": key,
                "text_sha256": digest,
            },
            dedup_key=_reply_dedup_key(conv.id, key),
        )
        try:
            async with self._sessions() as session, session.begin():
                session.add(claim)
        # PostgreSQL: the history_dedup trigger skips a taken key (cti.partitions).
        except (IntegrityError, FlushError):
            done = await self._replay(conv.id, key, text)
            if done is None:
                raise Conflict(
                    "a request with this Idempotency-Key was just abandoned; retry",
                    idempotency_key=key,
                ) from None
            return done, False
        try:
            status = await self.outbound.send(conv.channel, conv.contact, text, conv.id)
        except Exception:
            async with self._sessions() as session, session.begin():
                await session.execute(delete(HistoryEvent).where(HistoryEvent.id == claim.id))
            raise
        payload = {**claim.payload, "status": status}
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(HistoryEvent)
                .where(HistoryEvent.id == claim.id)
                .values(payload=payload)
                .execution_options(synchronize_session=False)
            )
        return _reply_json(conv.id, claim.id, payload), True

    async def _replay(self, conversation_id: int, key: str, text: str) -> dict[str, Any] | None:
        """The original response for this key, waiting while it is being sent; None if absent."""
        dedup_key = _reply_dedup_key(conversation_id, key)
        digest = hashlib.sha256(text.encode()).hexdigest()
        deadline = asyncio.get_running_loop().time() + REPLAY_WAIT
        while True:
            async with self._sessions() as session:
                row = await session.scalar(
                    select(HistoryEvent).where(HistoryEvent.dedup_key == dedup_key)
                )
            if row is None:
                return None
            if row.payload.get("text_sha256") != digest:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used with a different body",
                    field="Idempotency-Key",
                    conversation_id=conversation_id,
                )
            if row.payload.get("status") != SENDING:
                return _reply_json(conversation_id, row.id, row.payload)
            if asyncio.get_running_loop().time() > deadline:
                raise Conflict(
                    "the request with this Idempotency-Key is still being sent",
                    idempotency_key=key,
                )
            await asyncio.sleep(REPLAY_POLL)

    async def mine(self, agent_id: int) -> list[Conversation]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Conversation)
                .where(Conversation.owner_id == agent_id, Conversation.status.in_(OPEN))
                .order_by(Conversation.id)
            )
            return list(rows)

    async def queued(self, queue: str | None = None, limit: int = 100) -> list[Conversation]:
        async with self._sessions() as session:
            query = select(Conversation).where(Conversation.status == "queued")
            if queue is not None:
                query = query.where(Conversation.queue == queue)
            rows = await session.scalars(
                query.order_by(Conversation.queued_at, Conversation.id).limit(limit)
            )
            return list(rows)

    async def assign_text(self, conversation_id: int) -> Agent | None:
        """Give a queued text conversation to the least-loaded agent with its skill."""
        async with self._assign_lock:
            conv = await self.get(conversation_id)
            if conv.channel == "voice" or conv.status != "queued":
                return None
            async with self._sessions() as session:
                agents = list(await session.scalars(select(Agent).where(Agent.available.is_(True))))
                rows = await session.execute(
                    select(Conversation.owner_id, func.count())
                    .where(
                        Conversation.status == "assigned",
                        Conversation.channel != "voice",
                        Conversation.owner_id.is_not(None),
                    )
                    .group_by(Conversation.owner_id)
                )
                counts: dict[int, int] = {int(owner): int(n) for owner, n in rows if owner}
            candidates = [
                a
                for a in agents
                if a.role == Role.AGENT.value
                and (conv.skill is None or conv.skill in a.skills)
                and (conv.queue is None or not a.queues or conv.queue in a.queues)
                and counts.get(a.id, 0) < a.max_text
            ]
            if not candidates:
                return None
            best = min(candidates, key=lambda a: (counts.get(a.id, 0), a.id))
            try:
                await self.take(conv.id, best.id)
            except (AlreadyTaken, Conflict, AtCapacity):
                return None
        conv = await self.get(conversation_id)
        for hook in self.on_assigned:
            await hook(conv, best)
        return best
