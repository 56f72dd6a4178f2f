"""The customer side of web chat: rooms of open sockets, inbound frames, outbound replies.

Theory of operation: each open customer socket joins the room of its
conversation (an in-memory set per conversation id). A frame from the
customer is rate-limited per token (a token bucket, shared by every node in
cluster mode: ``cti.webchat.limiter``), validated, recorded in the
history as ``message_in`` (the same kind and payload shape as an inbound SMS,
with channel ``chat``), pushed to every socket of the room (that echo is the
sender's confirmation) and to the owner agent's hub; a queued conversation
with no owner makes the text queue serve its line (``inbox.serve_waiting``,
oldest queue entry first). Agent replies go through ``conversations.outbound``:
this service sits in front of the previous sender, pushes replies of its
conversations to the room and hands other channels (and the SMS copy of an
SMS conversation) to the sender before it. A chat reply with no window open
goes by SMS when the conversation's contact is a phone number (a deflected
caller who answered our SMS instead of opening the link).
``ConversationService.send_message`` records the ``message_out``.

Several nodes: a customer's socket and the agent who answers may be on
different nodes. Every push to a room is also sent to the other nodes over the
live channel (``ClusterHub.request_live``, ``chat_push``), which push it to
their own sockets of that room; an agent's reply waits (at most
``PUSH_ACK_WITHIN``) for their counts so ``delivered``/``stored`` and the SMS
fallback of a deflected caller are decided on the whole cluster.

A socket joins its room first, then reads the snapshot of the messages so
far (after flushing the history writer), then gets live messages. Every
message pushed to the socket between joining and the snapshot is kept aside
and its copy is removed from the snapshot (customer messages by id, agent
replies by text, newest first), so each message shows once whatever order
the history row and the push happen in (a reply with an Idempotency-Key
writes its row before the send, a plain reply after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select

from cti.cluster.hub import ClusterHub
from cti.conversations import MAX_TEXT, OutboundSender
from cti.errors import DomainError, NotFound
from cti.history import HistoryEntry
from cti.models import Agent, Conversation, HistoryEvent, utcnow
from cti.services import Services
from cti.webchat import chat_signer
from cti.webchat.limiter import ChatRateLimiter
from cti.webchat.tokens import ChatClosed, ChatTokenInvalid

TEXT_CHANNELS = ("sms", "chat")
MESSAGE_KINDS = ("message_in", "message_out")
MAX_SNAPSHOT = 200
FLUSH_TIMEOUT = 5.0
PHONE = re.compile(r"\+[1-9][0-9]{6,14}")  # E.164, as identities normalise numbers
SAME_REPLY_WINDOW = 120.0  # seconds between a reply's history row and its push
PUSH_ACK_WITHIN = 1.0  # seconds an agent's reply waits for the other nodes' room counts


class TooManySockets(DomainError):
    status = 429
    code = "too_many_sockets"


@dataclass(frozen=True, slots=True)
class ChatLimits:
    max_text: int = MAX_TEXT
    per_second: float = 0.5  # 5 messages per 10 s sustained
    burst: int = 10
    max_sockets: int = 5
    socket_queue: int = 256
    max_buckets: int = 10_000


@dataclass(eq=False, slots=True)
class ChatSocket:
    conversation_id: int
    token: str
    queue: asyncio.Queue[str]
    overflowed: bool = False
    # Messages pushed before the snapshot was taken (None once it is).
    early: list[dict[str, Any]] | None = field(default_factory=list)

    def offer(self, text: str) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.overflowed = True


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, **extra}


def _frame_text(data: str) -> str | dict[str, Any]:
    """The text of a customer's message frame, or the error frame to answer."""
    try:
        frame = json.loads(data)
    except ValueError:
        return _error("invalid_json", "frames are JSON objects")
    if not isinstance(frame, dict) or frame.get("type") != "message":
        return _error("invalid_message", 'send {"type": "message", "text": "..."}')
    text = frame.get("text")
    if not isinstance(text, str):
        return _error("invalid_message", "text must be a string")
    return text


class ChatService:
    def __init__(self, services: Services, limits: ChatLimits | None = None) -> None:
        self._services = services
        self.limits = limits or ChatLimits()
        self.signer = chat_signer(services)
        self._rooms: dict[int, set[ChatSocket]] = {}
        self.limiter = ChatRateLimiter(self.limits.per_second, self.limits.burst,
                                       self.limits.max_buckets)
        self._previous: OutboundSender | None = None

    # -- wiring -------------------------------------------------------------

    def install(self) -> None:
        if self._services.redis is not None and isinstance(self._services.hub, ClusterHub):
            self.limiter = ChatRateLimiter(self.limits.per_second, self.limits.burst,
                                           self.limits.max_buckets, redis=self._services.redis)
            limiter = self.limiter

            async def probe() -> dict[str, Any]:
                return limiter.health()

            self._services.links.register("webchat", probe)
        if isinstance(self._services.hub, ClusterHub):
            self._services.hub.on_live("chat_push", self._on_remote_push)
        conversations = self._services.conversations
        self._previous = conversations.outbound
        conversations.outbound = self
        conversations.on_assigned.append(self.on_assigned)

    def uninstall(self) -> None:
        conversations = self._services.conversations
        if conversations.outbound is self and self._previous is not None:
            conversations.outbound = self._previous
        with contextlib.suppress(ValueError):
            conversations.on_assigned.remove(self.on_assigned)

    # -- tokens and the customer's view ---------------------------------------

    async def open(self, token: str) -> Conversation:
        """The open text conversation the token was issued for; 403 otherwise."""
        conversation_id = self.signer.verify(token)
        try:
            conv = await self._services.conversations.get(conversation_id)
        except NotFound:
            raise ChatTokenInvalid("this chat link is not valid") from None
        if conv.channel not in TEXT_CHANNELS:
            raise ChatTokenInvalid("this chat link is not valid")
        if conv.status == "closed":
            raise ChatClosed("this conversation is closed")
        return conv

    async def summary(self, conv: Conversation) -> dict[str, Any]:
        out: dict[str, Any] = {
            "conversation_id": conv.id,
            "state": "closed" if conv.status == "closed" else "waiting",
            "agent": None,
            "position": None,
            "max_text": self.limits.max_text,
        }
        async with self._services.sessions() as session:
            if conv.status == "queued":
                same_queue = (
                    Conversation.queue.is_(None)
                    if conv.queue is None
                    else Conversation.queue == conv.queue
                )
                ahead = await session.scalar(
                    select(func.count())
                    .select_from(Conversation)
                    .where(
                        Conversation.status == "queued",
                        Conversation.channel.in_(TEXT_CHANNELS),
                        same_queue,
                        or_(
                            Conversation.queued_at < conv.queued_at,
                            and_(
                                Conversation.queued_at == conv.queued_at,
                                Conversation.id < conv.id,
                            ),
                        ),
                    )
                )
                out["position"] = int(ahead or 0) + 1
            elif conv.status == "assigned" and conv.owner_id is not None:
                out["state"] = "assigned"
                agent = await session.get(Agent, conv.owner_id)
                out["agent"] = _display_name(agent)
        return out

    async def messages(self, conv: Conversation) -> list[dict[str, Any]]:
        """Customer and agent messages of the conversation, oldest first (no notes)."""
        history = self._services.history
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_TIMEOUT):
                await history.flush()
        async with self._services.sessions() as session:
            query = select(HistoryEvent).where(
                HistoryEvent.conversation_id == conv.id, HistoryEvent.kind.in_(MESSAGE_KINDS)
            )
            rows = list(
                await session.scalars(
                    query.order_by(HistoryEvent.occurred_at.desc(), HistoryEvent.id.desc()).limit(
                        MAX_SNAPSHOT
                    )
                )
            )
            agent_ids = {
                int(r.payload["agent_id"])
                for r in rows
                if r.kind == "message_out" and isinstance(r.payload.get("agent_id"), int)
            }
            names = {
                a.id: _display_name(a)
                for a in await session.scalars(select(Agent).where(Agent.id.in_(agent_ids)))
            }
        rows.reverse()
        return [_message_json(r, names) for r in rows]

    async def snapshot(self, conv: Conversation, sock: ChatSocket) -> dict[str, Any]:
        summary = await self.summary(conv)
        messages = await self.messages(conv)
        for early in sock.early or ():
            for i in range(len(messages) - 1, -1, -1):
                m = messages[i]
                same = m["id"] == early["id"] or (
                    early["from"] == "agent" == m["from"]
                    and m["text"] == early["text"]
                    and _seconds_apart(m["at"], early["at"]) < SAME_REPLY_WINDOW
                )
                if same:
                    del messages[i]
                    break
        sock.early = None
        return {"type": "snapshot", "conversation": summary, "messages": messages}

    # -- sockets ------------------------------------------------------------

    def join(self, conversation_id: int, token: str) -> ChatSocket:
        open_for_token = sum(1 for s in self._rooms.get(conversation_id, ()) if s.token == token)
        if open_for_token >= self.limits.max_sockets:
            raise TooManySockets(
                "too many chat windows are open for this link", max=self.limits.max_sockets
            )
        sock = ChatSocket(conversation_id, token, asyncio.Queue(self.limits.socket_queue))
        self._rooms.setdefault(conversation_id, set()).add(sock)
        return sock

    def leave(self, sock: ChatSocket) -> None:
        room = self._rooms.get(sock.conversation_id)
        if room is not None:
            room.discard(sock)
            if not room:
                del self._rooms[sock.conversation_id]

    def sockets(self, conversation_id: int) -> int:
        return len(self._rooms.get(conversation_id, ()))

    def _push(self, conversation_id: int, body: dict[str, Any]) -> int:
        room = self._rooms.get(conversation_id, ())
        text = json.dumps(body, ensure_ascii=False, default=str)
        for sock in room:
            if sock.early is not None and body.get("type") == "message":
                sock.early.append(body["message"])
            sock.offer(text)
        return len(room)

    async def _push_everywhere(self, conversation_id: int, body: dict[str, Any],
                               within: float = PUSH_ACK_WITHIN) -> int:
        """Push to this room on every node; how many sockets got it (counted within ``within``)."""
        reached = self._push(conversation_id, body)
        hub = self._services.hub
        if isinstance(hub, ClusterHub):
            replies = await hub.request_live(
                "chat_push", {"conversation_id": conversation_id, "body": body}, within=within)
            for reply in replies or ():
                count = reply.get("reached")
                reached += count if isinstance(count, int) else 0
        return reached

    async def _on_remote_push(self, data: dict[str, Any]) -> dict[str, Any]:
        conversation_id, body = data.get("conversation_id"), data.get("body")
        if not isinstance(conversation_id, int) or not isinstance(body, dict):
            return {"reached": 0}
        if conversation_id not in self._rooms:
            return {"reached": 0}
        return {"reached": self._push(conversation_id, body)}

    # -- customer -> agent ----------------------------------------------------

    async def handle_frame(self, sock: ChatSocket, data: str) -> dict[str, Any] | None:
        """Handle one text frame; returns the error frame to send back, if any."""
        wait = await self.limiter.take(sock.token)
        if wait > 0:
            return _error(
                "rate_limited",
                "too many messages; wait a moment",
                retry_after=math.ceil(wait * 10) / 10,
            )
        parsed = _frame_text(data)
        if isinstance(parsed, dict):
            return parsed
        if len(parsed) > self.limits.max_text:
            return _error(
                "too_large",
                f"a message has at most {self.limits.max_text} characters",
                max=self.limits.max_text,
            )
        if not parsed.strip():
            return _error("empty", "the message is empty")
        await self.receive(sock.conversation_id, parsed)
        return None

    async def receive(self, conversation_id: int, text: str) -> dict[str, Any]:
        """Record one customer message and deliver it to the room and the agent."""
        conv = await self._services.conversations.get(conversation_id)
        if conv.status == "closed":
            raise ChatClosed("this conversation is closed")
        mid = uuid.uuid4().hex
        entry = HistoryEntry(
            customer_id=conv.customer_id,
            conversation_id=conv.id,
            kind="message_in",
            channel="chat",
            payload={"text": text, "from": conv.contact or "webchat", "mid": mid},
        )
        await self._services.history.add(entry)
        message = {"id": mid, "from": "customer", "text": text, "at": entry.occurred_at.isoformat()}
        await self._push_everywhere(conv.id, {"type": "message", "message": message}, within=0)
        if conv.owner_id is not None:
            self._services.hub.publish(
                [conv.owner_id],
                "message",
                {
                    "conversation_id": conv.id,
                    "channel": "chat",
                    "text": text,
                    "from": conv.contact or "webchat",
                },
            )
        elif conv.status == "queued":
            # In line order (original queue entry time): nobody jumps the line.
            await self._services.inbox.serve_waiting(conv.queue)
        return message

    async def on_assigned(self, conv: Conversation, agent: Agent) -> None:
        cluster = isinstance(self._services.hub, ClusterHub)
        if conv.id in self._rooms or (cluster and conv.channel in TEXT_CHANNELS):
            body = {"type": "status", "conversation": await self.summary(conv)}
            await self._push_everywhere(conv.id, body, within=0)

    # -- agent -> customer (conversations.outbound) ----------------------------

    async def send(self, channel: str, contact: str, text: str, conversation_id: int) -> str:
        if channel not in TEXT_CHANNELS:
            return await self._fallback(channel, contact, text, conversation_id)
        cluster = isinstance(self._services.hub, ClusterHub)
        if channel == "sms" and not cluster and conversation_id not in self._rooms:
            return await self._fallback(channel, contact, text, conversation_id)
        status = "delivered"
        if channel == "sms":
            status = await self._fallback(channel, contact, text, conversation_id)
        name = await self._owner_name(conversation_id)
        message = {
            "id": uuid.uuid4().hex,
            "from": "agent",
            "agent": name,
            "text": text,
            "at": utcnow().isoformat(),
        }
        reached = await self._push_everywhere(conversation_id,
                                              {"type": "message", "message": message})
        if channel == "sms":
            return status
        if reached:
            return "delivered"
        if PHONE.fullmatch(contact):
            # A deflected caller who answered our SMS instead of opening the link
            # (the chat conversation's contact is their number) gets the reply by SMS.
            status = await self._fallback("sms", contact, text, conversation_id)
            return "stored" if status == "no_gateway" else status
        return "stored"

    async def _fallback(self, channel: str, contact: str, text: str, conversation_id: int) -> str:
        if self._previous is None:
            return "no_gateway"
        return await self._previous.send(channel, contact, text, conversation_id)

    async def _owner_name(self, conversation_id: int) -> str:
        async with self._services.sessions() as session:
            agent = await session.scalar(
                select(Agent)
                .join(Conversation, Conversation.owner_id == Agent.id)
                .where(Conversation.id == conversation_id)
            )
        return _display_name(agent)


def _seconds_apart(a: str, b: str) -> float:
    return abs((datetime.fromisoformat(a) - datetime.fromisoformat(b)).total_seconds())


def _display_name(agent: Agent | None) -> str:
    if agent is None or not agent.name.strip():
        return "Agent"
    return agent.name.strip()


def _message_json(ev: HistoryEvent, names: dict[int, str]) -> dict[str, Any]:
    text = ev.payload.get("text")
    out: dict[str, Any] = {
        "id": str(ev.payload.get("mid") or f"h{ev.id}"),
        "from": "customer" if ev.kind == "message_in" else "agent",
        "text": text if isinstance(text, str) else "",
        "at": ev.occurred_at.isoformat(),
    }
    if ev.kind == "message_out":
        agent_id = ev.payload.get("agent_id")
        out["agent"] = names.get(agent_id, "Agent") if isinstance(agent_id, int) else "Agent"
    return out
