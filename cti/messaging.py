"""Inbound SMS and chat: the seam the SMS gateway and web chat feed.

An inbound message is identified by its sender, lands in the customer's open
conversation on that channel (or a new one), is recorded in the history and
is pushed to the owner's socket; a new conversation is offered to the
least-loaded agent with the skill (screen-pop). ``deflect_call`` turns a
waiting caller into a text conversation linked to the call that keeps the
caller's queue entry time, so the caller keeps their place in line;
``deflect_to_chat`` does the same for the IVR's "continue by SMS / web chat"
(a ``chat`` conversation whose contact is the caller's number, so an SMS reply
from that number lands in it too), and
``serve_waiting`` offers queued text conversations oldest first (original queue
entry time), so a deflected caller is served in their place in line.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cti.conversations import ConversationService, conversation_json
from cti.customers import CustomerService
from cti.errors import InvalidInput, NotFound
from cti.history import HistoryEntry, HistoryWriter
from cti.hub import EventHub
from cti.identities import IdentityKind
from cti.models import Agent, Conversation, utcnow

log = logging.getLogger(__name__)

MAX_INBOUND_TEXT = 16 * 1024
TEXT_CHANNELS = {"sms": IdentityKind.PHONE, "chat": IdentityKind.WEBCHAT}
DEFLECTED_CHAT = ":deflected:chat"
SERVE_BATCH = 100


class TextInbox:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        customers: CustomerService,
        conversations: ConversationService,
        history: HistoryWriter,
        hub: EventHub,
    ) -> None:
        self._sessions = sessions
        self._customers = customers
        self._conversations = conversations
        self._history = history
        self._hub = hub

    async def _open_for(self, channel: str, customer_id: int, contact: str) -> Conversation | None:
        async with self._sessions() as session:
            found = await session.scalar(
                select(Conversation)
                .where(
                    Conversation.channel == channel,
                    Conversation.customer_id == customer_id,
                    Conversation.contact == contact,
                    Conversation.status.in_(("queued", "assigned")),
                )
                .order_by(Conversation.id.desc())
                .limit(1)
            )
            if found is not None or channel != "sms":
                return found
            # A caller deflected from the voice queue may answer the SMS instead of
            # opening the chat link: the reply joins that deflected conversation.
            return await session.scalar(
                select(Conversation)
                .where(
                    Conversation.channel == "chat",
                    Conversation.customer_id == customer_id,
                    Conversation.contact == contact,
                    Conversation.status.in_(("queued", "assigned")),
                    Conversation.external_ref.like(f"%{DEFLECTED_CHAT}"),
                )
                .order_by(Conversation.id.desc())
                .limit(1)
            )

    async def receive(
        self,
        channel: str,
        sender: str,
        text: str,
        *,
        kind: IdentityKind | None = None,
        name: str = "",
        queue: str | None = None,
        skill: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> Conversation:
        """Record one inbound message; returns its conversation."""
        if channel not in TEXT_CHANNELS:
            raise InvalidInput("channel must be sms or chat", field="channel")
        if len(text) > MAX_INBOUND_TEXT:
            raise InvalidInput("the message is too long", field="text")
        ident = self._customers.normalise(kind or TEXT_CHANNELS[channel], sender, "sender")
        customer, _ = await self._customers.identify(ident.kind, sender, name=name)
        conv = await self._open_for(channel, customer.id, ident.value)
        created = conv is None
        if conv is None:
            conv, _ = await self._conversations.open(
                channel, customer.id, queue=queue, skill=skill, contact=ident.value
            )
        await self._history.add(
            HistoryEntry(
                customer_id=customer.id,
                conversation_id=conv.id,
                kind="message_in",
                channel=channel,
                payload={"text": text, "from": ident.value, **(details or {})},
            )
        )
        if conv.owner_id is not None:
            self._hub.publish(
                [conv.owner_id],
                "message",
                {"conversation_id": conv.id, "channel": channel, "text": text, "from": ident.value},
            )
        elif created:
            await self._conversations.assign_text(conv.id)
        return await self._conversations.get(conv.id)

    async def delivery_status(
        self, conversation_id: int, message_ref: str, status: str, detail: str = ""
    ) -> None:
        """A delivery receipt (SMSC DLR) for an outbound message."""
        conv = await self._conversations.get(conversation_id)
        await self._history.add(
            HistoryEntry(
                customer_id=conv.customer_id,
                conversation_id=conv.id,
                kind="delivery_status",
                channel=conv.channel,
                payload={"message_ref": message_ref, "status": status, "detail": detail},
                dedup_key=f"dlr:{message_ref}:{status}"[:200],
            )
        )
        if conv.owner_id is not None:
            self._hub.publish(
                [conv.owner_id],
                "delivery_status",
                {"conversation_id": conv.id, "message_ref": message_ref, "status": status},
            )

    async def deflect_call(self, call_id: str, channel: str = "sms") -> dict[str, Any]:
        """A queued caller switches to SMS/chat without losing their place."""
        voice = await self._conversations.by_ref(call_id)
        if voice is None:
            raise NotFound(f"call {call_id} is unknown", call_id=call_id)
        via_ivr = await self._conversations.by_ref(f"{call_id}{DEFLECTED_CHAT}"[:160])
        if via_ivr is not None and via_ivr.status in ("queued", "assigned"):
            return conversation_json(via_ivr)  # the IVR already moved this caller
        conv, created = await self._conversations.open(
            channel,
            voice.customer_id,
            queue=voice.queue,
            contact=voice.contact if channel == "sms" else "",
            external_ref=f"{call_id}:deflected:{channel}",
            linked_to_id=voice.id,
            queued_at=voice.queued_at,
        )
        if created:
            await self._history.add(
                HistoryEntry(
                    customer_id=voice.customer_id,
                    conversation_id=conv.id,
                    kind="deflected",
                    channel=channel,
                    payload={"from_conversation_id": voice.id, "call_id": call_id},
                )
            )
        return conversation_json(conv)

    async def deflect_to_chat(
        self,
        call_ref: str,
        customer_id: int,
        contact: str,
        *,
        queue: str | None,
        queued_at: datetime,
        voice: Conversation | None,
        choices: list[dict[str, Any]],
    ) -> Conversation:
        """The IVR's deflection: a ``chat`` conversation linked to the call, ranked by
        ``queued_at`` (the original queue entry), carrying the IVR choices.
        Idempotent per call (``external_ref`` ``<call>:deflected:chat``)."""
        conv, created = await self._conversations.open(
            "chat",
            customer_id,
            queue=queue,
            contact=contact,
            external_ref=f"{call_ref}{DEFLECTED_CHAT}"[:160],
            linked_to_id=voice.id if voice is not None else None,
            queued_at=queued_at,
        )
        if created:
            await self._history.add(
                HistoryEntry(
                    customer_id=customer_id,
                    conversation_id=conv.id,
                    kind="deflected",
                    channel="chat",
                    payload={
                        "from_conversation_id": voice.id if voice is not None else None,
                        "call_id": call_ref,
                        "queue": queue,
                        "queued_at": queued_at.isoformat(),
                        "ivr_choices": choices,
                    },
                    dedup_key=f"{call_ref}{DEFLECTED_CHAT}"[:200],
                )
            )
        return conv

    async def serve_waiting(self, queue: str | None = None) -> int:
        """Offer queued text conversations to free agents, oldest ``queued_at`` first;
        in each (queue, skill) line it stops at the first one nobody can take
        (nobody jumps the line). Returns how many
        were assigned."""
        assigned = 0
        blocked: set[tuple[str | None, str | None]] = set()
        for conv in await self._conversations.queued(queue, limit=SERVE_BATCH):
            line = (conv.queue, conv.skill)
            if conv.channel == "voice" or line in blocked:
                continue
            if await self._conversations.assign_text(conv.id) is None:
                blocked.add(line)
            else:
                assigned += 1
        return assigned

    async def set_text_available(self, endpoint: str, available: bool) -> bool:
        """Follow the agent's pause on the PBX for text work: a paused agent takes no
        new text conversations; on unpause the waiting ones are offered. Returns
        whether the agent's availability changed."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(Agent)
                .where(Agent.endpoint == endpoint, Agent.available.is_not(available))
                .values(available=available)
                .execution_options(synchronize_session=False)
            )
            changed = bool(result.rowcount)  # type: ignore[attr-defined]
        if changed:
            log.info("agent %s %s for text conversations", endpoint,
                     "available" if available else "paused")
            if available:
                await self.serve_waiting()
        return changed

    async def cancel_deflection(self, conversation_id: int, reason: str) -> None:
        """The deflection failed after its conversation was opened (the SMS could not
        be sent): close it unless someone took it meanwhile."""
        conv = await self._conversations.get(conversation_id)
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id, Conversation.status == "queued")
                # Frees the call's external_ref: a later press of 1 deflects afresh.
                .values(status="closed", closed_at=utcnow(),
                        external_ref=f"failed:{conversation_id}:{conv.external_ref}"[:160])
                .execution_options(synchronize_session=False)
            )
            closed = bool(result.rowcount)  # type: ignore[attr-defined]
        if closed:
            await self._history.add(
                HistoryEntry(
                    customer_id=conv.customer_id,
                    conversation_id=conv.id,
                    kind="deflection_failed",
                    channel=conv.channel,
                    payload={"reason": reason[:200]},
                )
            )
